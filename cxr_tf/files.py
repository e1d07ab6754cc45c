"""Writing files whole or not at all: the one atomic-write helper of cxr_tf.

Every writer goes through a temporary file in the destination's directory and an `os.replace`,
so a reader (TF Serving, a resumed run, a notebook) never sees half a file, and a failure (an
exception, a full disk, Ctrl-C) removes the temporary file instead of leaving it behind.
Temporary names start with `.tmp-`, which the project's readers ignore.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile

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
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        model.save(tmp + ".keras")  # Keras insists on the extension
        os.replace(tmp + ".keras", tmp)


def remove_stale_temporaries(directory):
    """Removes `.tmp-*` files and folders left in `directory` by writers that were killed
    (SIGKILL leaves no chance to clean up). Returns the names removed."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(directory, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
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
