"""Writing files whole or not at all: the one atomic-write helper of cxr_tf.

Every writer goes through a temporary file in the destination's directory and an `os.replace`,
so a reader (TF Serving, a resumed run, a notebook) never sees half a file, and a failure (an
exception, a full disk, Ctrl-C) removes the temporary file instead of leaving it behind.
Temporary names start with `.tmp-`, which the project's readers ignore.
"""

import contextlib
import contextvars
import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading

from cxr_tf import errors

log = logging.getLogger("cxr_tf")

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is
    removed (file or directory) and the exception propagates."""
    directory, base = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{base}-", dir=directory)
    os.close(fd)
    os.unlink(tmp)  # the writer creates it (a file or, for Keras, its own archive)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not e.filename:  # e.g. "[Errno 27] File too large"
            raise OSError(e.errno, f"{e.strerror or e} while writing {path}") from e
        raise


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def write_bytes_atomic(path, data):
    """Writes `data` (bytes) to `path`, whole or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path, text):
    """Writes `text` (UTF-8) to `path`, whole or not at all."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, indent=2):
    """Writes `obj` as JSON to `path`, whole or not at all (serialised before anything is
    written, so an object JSON cannot hold leaves the old file untouched)."""
    write_text_atomic(path, json.dumps(obj, indent=indent))


def save_model_atomic(model, path):
    """Saves a Keras model to a `.keras` file, whole or not at all."""
    with atomic_path(path) as tmp:
        try:
            model.save(tmp + ".keras")  # Keras insists on the extension
            os.replace(tmp + ".keras", tmp)
        finally:
            _remove(tmp + ".keras")


def file_digest(path, algorithm="sha256"):
    """The hex digest of a file's bytes (hashlib's `algorithm`), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temporaries(directory):
    """Removes `.tmp-*` files and folders left in `directory` by writers that were killed
    (SIGKILL leaves no chance to clean up). Returns the names removed."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        if name.startswith(TMP_PREFIX):
            _remove(os.path.join(directory, name))
            removed.append(name)
    return removed


def current_umask():
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path):
    """Gives a tree written through temporary files (tempfile creates them 0700 / 0600) the modes
    a plain `mkdir` / `open` would have given them: 0777 and 0666 less the umask."""
    mask = current_umask()
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, names in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for n in names:
            os.chmod(os.path.join(root, n), 0o666 & ~mask)


def lock_path_for(directory):
    """A lock file for writers into `directory` that lives outside it (in the system's temporary
    folder, named by a hash of the directory's absolute path), so data folders stay clean.
    Processes on one machine take turns; other machines sharing the folder are not covered."""
    key = hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:20]
    return os.path.join(tempfile.gettempdir(), "cxr_tf_locks", f"{key}.lock")


@contextlib.contextmanager
def exclusive_lock(path, what="cxr_tf"):
    """Holds an exclusive advisory lock (flock) on `path` for the block: processes that write
    into the same place take turns instead of tripping over each other's files. A process that
    has to wait logs which process holds the lock. The lock dies with its process, so a killed
    writer never blocks the next one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            log.warning("%s: waiting for process %s, which is writing into %s", what, holder,
                        os.path.dirname(os.path.abspath(path)))
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---- One writer per stage -----------------------------------------------------------------------

STAGE_LOCK = ".cxr_tf_stage.lock"

_WAIT_FOR_STAGES = contextvars.ContextVar("cxr_tf_wait_for_stages", default=False)
# Stage locks this process holds: {real path of the lock file: depth}. A process may enter its
# own stage again (the facade locks before building data, the trainer again inside).
_HELD = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def waiting_for_stages(wait=True):
    """Within the block, stage_lock waits for a busy stage instead of refusing it."""
    token = _WAIT_FOR_STAGES.set(bool(wait))
    try:
        yield
    finally:
        _WAIT_FOR_STAGES.reset(token)


def _holder_of(fd):
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "another process"
    return (f"process {info.get('pid', '?')} ({info.get('command', '?')}, since "
            f"{info.get('since', '?')})")


@contextlib.contextmanager
def stage_lock(directory, stage, wait=None):
    """Holds the write lock of one stage of a work directory (e.g. WORK_DIR/classifier) for the
    block: a second process that tries to write the same stage is refused at once, or waits
    with `wait=True` (default: False, or True inside `waiting_for_stages()`).

    The lock is an advisory flock on DIRECTORY/.cxr_tf_stage.lock, which records the holder's
    process id, command line and start time. It dies with its process (a killed writer never
    blocks the next one). It covers processes on one machine, and on file systems with working
    flock (local disks, NFSv4) also across machines; object stores have no such lock.
    Readers (evaluating a model while another stage trains) take no lock.

    Raises:
      cxr_tf.errors.StageBusy: naming the stage, the directory and the holding process.
    """
    wait = _WAIT_FOR_STAGES.get() if wait is None else wait
    os.makedirs(directory, exist_ok=True)
    path = os.path.realpath(os.path.join(directory, STAGE_LOCK))
    with _HELD_LOCK:
        if path in _HELD:
            _HELD[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_LOCK:
                _HELD[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            if not wait:
                raise errors.StageBusy(
                    f"the {stage} stage {os.path.abspath(directory)} is being written by "
                    f"{holder}; let it finish or stop it, or rerun with --wait_for_lock to "
                    f"wait for it") from None
            log.warning("The %s stage %s is being written by %s: waiting for it", stage,
                        directory, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        info = {"pid": os.getpid(), "command": " ".join(
            [os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]]), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        with _HELD_LOCK:
            _HELD[path] = 1
        try:
            yield
        finally:
            with _HELD_LOCK:
                del _HELD[path]
            os.ftruncate(fd, 0)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
