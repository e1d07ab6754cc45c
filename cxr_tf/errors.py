"""The failures a person can act on, their exit codes, and how a binary reports them.

Every binary ends a known failure with one line on stderr, `<binary>: error: <what and what to
do>`, and the exit code of its class; anything else is a bug and keeps Python's traceback
(exit 1). The table is docs/errors.md; `--traceback` (or absl's `--pdb`) shows the traceback of
a known failure too, for bug reports.

| code | class      | for                                                                   |
|------|------------|-----------------------------------------------------------------------|
| 1    | (unknown)  | anything not below: a bug; the traceback is printed                   |
| 2    | usage      | a bad flag or config value; a resume refused because settings changed |
| 3    | data       | a data set or input file missing, damaged or unreadable               |
| 4    | divergence | the training loss or the weights became NaN or infinite               |
| 5    | disk       | no space left on the device, a file-size limit, a disk quota          |
| 6    | permission | permission denied on a file or folder                                 |
| 7    | model_file | a file given as a model that is not one (empty, truncated, text...)   |
| 8    | busy       | another process is writing the same stage of the work directory       |
| 42   | preempted  | TensorFlow's preemption handler saved a checkpoint; rerun to resume   |
"""

import errno
import os
import re

EXIT_CODES = {
    "usage": 2,
    "data": 3,
    "divergence": 4,
    "disk": 5,
    "permission": 6,
    "model_file": 7,
    "busy": 8,
    "preempted": 42,  # TensorFlow's PreemptionCheckpointHandler exits with it (its default)
}
UNKNOWN_EXIT_CODE = 1


class DataError(ValueError):
    """Data cannot be used as it is: raw files that cannot be built, or built records that are
    missing, short or damaged. The message names the file (and row or field where it applies),
    what was found, what was expected and what to do."""


class DamagedData(DataError):
    """Built records of a data set do not match what the build wrote (a shard missing, shorter
    or longer than written, or a record failing its checksum). The message names the data set,
    split and shard file and how to rebuild it."""


class NotAModelFile(ValueError):
    """A path given as a model holds something else (an empty, truncated or foreign file)."""


class StageBusy(RuntimeError):
    """Another process holds the write lock of a work directory's stage (segmenter, classifier,
    eval, ablation, export, a data set's build). The message names the stage, the directory and
    the holding process."""


class Diverged(FloatingPointError):
    """The training loss (or a weight) became NaN or infinite. The run's history records where;
    the last finite checkpoint and best.keras are kept."""


# errno values of "the disk cannot take it": no space, file-size limit (ulimit -f), quota.
_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)}
# TensorFlow's C++ file systems turn errno into a status code and a message: the messages keep
# strerror's text, which is what is left to recognise.
_DISK_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded")
_PERMISSION_TEXTS = ("Permission denied", "Read-only file system")

_OWN_CODE = tuple(os.path.dirname(os.path.abspath(p)) for p in (
    __file__, os.path.join(os.path.dirname(__file__), "..", "pipelines", "__init__.py")))


def _raised_by_own_code(exc):
    """True when the innermost frame of `exc`'s traceback is cxr_tf's or its binaries' code: a
    ValueError raised there is a refused input, one raised deep inside a library is a bug."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and os.path.abspath(last).startswith(_OWN_CODE)


def _tf_error(exc, name):
    """True when `exc` is tf.errors.<name> (without importing TensorFlow here)."""
    return any(c.__name__ == name and c.__module__.startswith("tensorflow")
               for c in type(exc).__mro__)


def classify(exc):
    """The failure class of an exception (a key of EXIT_CODES), or None for an unknown one.

    Order matters: cxr_tf's own classes first, then what the operating system or TensorFlow
    says (disk and permission errors can arrive as OSError, as TensorFlow status errors or
    wrapped by Keras), then refused inputs.
    """
    if isinstance(exc, StageBusy):
        return "busy"
    if isinstance(exc, NotAModelFile):
        return "model_file"
    if isinstance(exc, FloatingPointError):
        return "divergence"
    if isinstance(exc, DataError):
        return "data"
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS
            or any(t in text for t in _DISK_TEXTS)):
        return "disk"
    if isinstance(exc, PermissionError) or _tf_error(exc, "PermissionDeniedError") or (
            isinstance(exc, OSError) and any(t in text for t in _PERMISSION_TEXTS)):
        return "permission"
    if _tf_error(exc, "DataLossError") or _tf_error(exc, "NotFoundError"):
        return "data"
    if isinstance(exc, OSError):
        return "data"  # a missing or unreadable input file (FileNotFoundError, IsADirectory...)
    if isinstance(exc, ValueError) and _raised_by_own_code(exc):
        return "usage"
    return None


# What to do, added to the one-line message of classes whose raw messages (from the operating
# system or TensorFlow) do not say it.
HINTS = {
    "disk": "free space on that device (or raise the file-size limit or quota) and rerun; files "
            "written whole before this one are kept",
    "permission": "make the file or folder readable/writable for this user, or choose another "
                  "--work_dir",
}


def message(exc, kind):
    """The one-line message of a known failure: the exception's text, with the class's hint."""
    text = one_line(exc)
    hint = HINTS.get(kind)
    return f"{text}; {hint}" if hint else text


def one_line(message):
    """`message` on one line: its lines joined with ' | ', surrounding blanks dropped, and
    TensorFlow's graph-function prefix ({{function_node ...}}) and op suffix ([Op:...]) cut."""
    text = getattr(message, "message", None) or str(message)  # tf.errors.OpError: no op dump
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\](\s*name:\s*\S*)?", "", text)
    parts = [p.strip() for p in text.splitlines()]
    return " | ".join(p for p in parts if p)
