"""Files of cxr_tf on any filesystem TensorFlow reads, written whole or not at all, and locks.

Paths are local paths or URIs TensorFlow's `tf.io.gfile` serves (`gs://bucket/run`, `s3://`
with tensorflow-io, `ram://` in tests); the helpers below are what the rest of cxr_tf uses
instead of `os`, `open` and `shutil`, so a work directory, its records, checkpoints, exports
and reports can live on an object store. Raw downloads (`--manual_dir`) stay on a local disk.

Atomic writes. Every writer goes through a temporary name in the destination's folder and a
rename, so a reader (TF Serving, a resumed run, a notebook) never sees half a file, and a
failure (an exception, a full disk, Ctrl-C) removes the temporary instead of leaving it behind.
Temporary names start with `.tmp-`, which the project's readers ignore. On a local disk the
rename is `os.replace` (atomic). On an object store (GCS) an object appears whole when its
upload closes and a rename is a copy then a delete: a reader never sees half an object, but a
writer killed between copy and delete can leave the `.tmp-` object behind (the next writer of
that folder removes it), and a directory rename (a SavedModel version) moves object by object,
so TF Serving should watch a base path only after cxr-export has returned.

Locks. Stage locks and build locks are flock()s: they hold between processes on one machine,
and across machines only on file systems with working flock (local disks, NFSv4). Object
stores have no exclusive create or lock, so for a work directory there cxr_tf takes no stage
lock (it says so in a warning): one writer per stage is then the team's rule to keep.
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
import uuid

from cxr_tf import errors

log = logging.getLogger("cxr_tf")

TMP_PREFIX = ".tmp-"
# A local path or a URI TensorFlow's filesystems serve (gs://bucket/run): what the helpers take.
PathLike = str | os.PathLike


def _gfile():
    import tensorflow as tf  # deferred: cxr_tf.files is imported by TensorFlow-free tools
    return tf.io.gfile


@contextlib.contextmanager
def _as_os_errors(path):
    """TensorFlow's filesystem errors as the OSError subclasses callers of `os` expect."""
    import tensorflow as tf
    try:
        yield
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(2, e.message or "not found", os.fspath(path)) from None
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(13, e.message or "permission denied", os.fspath(path)) from None
    except tf.errors.OpError as e:
        raise OSError(5, e.message or type(e).__name__, os.fspath(path)) from None


def is_local(path):
    """True for a path on a local disk; False for URIs such as gs://bucket/run or ram://x."""
    path = os.fspath(path)
    return "://" not in path or path.startswith("file://")


def absolute(path):
    """`path` made absolute (local paths; URIs are absolute already and returned unchanged)."""
    path = os.fspath(path)
    return os.path.abspath(path) if is_local(path) else path


# Local paths go through os and open (their errors and speed unchanged), URIs through gfile.

def exists(path):
    """Whether a file or folder exists at `path` (any filesystem)."""
    path = os.fspath(path)
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path):
    """Whether `path` is a folder (any filesystem)."""
    path = os.fspath(path)
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def makedirs(path):
    """Creates the folder `path` and its parents; an existing folder is fine."""
    path = os.fspath(path)
    if is_local(path):
        os.makedirs(path, exist_ok=True)
        return
    with _as_os_errors(path):
        _gfile().makedirs(path)


def listdir(path):
    """The names in folder `path` (no trailing slashes; any filesystem)."""
    path = os.fspath(path)
    if is_local(path):
        return os.listdir(path)
    with _as_os_errors(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def getsize(path):
    """The size of file `path` in bytes (any filesystem)."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.getsize(path)
    with _as_os_errors(path):
        return _gfile().stat(path).length


def open_file(path, mode="r"):
    """A file object for `path` in `mode` ("r", "rb", "w", "wb", "a"; any filesystem)."""
    path = os.fspath(path)
    if is_local(path):
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    return _gfile().GFile(path, mode)


def read_text(path):
    """The text of file `path` (UTF-8; any filesystem)."""
    with _as_os_errors(path), open_file(path, "r") as f:
        return f.read()


def read_json(path):
    """The JSON object stored in file `path` (any filesystem)."""
    return json.loads(read_text(path))


def remove(path):
    """Removes a file or folder tree at `path` if there is one (any filesystem)."""
    path = os.fspath(path)
    if is_local(path):
        _remove(path)
        return
    try:
        with _as_os_errors(path):
            if _gfile().isdir(path):
                _gfile().rmtree(path)
            elif _gfile().exists(path):
                _gfile().remove(path)
    except FileNotFoundError:
        pass  # gone already (or a folder that only existed through its objects)


def rename(src, dst):
    """Moves `src` (a file, or a folder into a new name) to `dst`, replacing a file there:
    `os.replace` on a local disk; elsewhere gfile's rename (a copy then a delete per object),
    file by file for a folder."""
    src, dst = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
    if is_local(src) and is_local(dst):
        os.replace(src, dst)
        return
    gfile = _gfile()
    with _as_os_errors(src):
        if not gfile.isdir(src):
            gfile.rename(src, dst, overwrite=True)
            return
        # Object stores have no folders to rename (GCS's own folder rename is this loop too;
        # some filesystems, ram:// among them, rename the folder entry only).
        for root, _, names in gfile.walk(src):
            target = dst + root[len(src):]
            gfile.makedirs(target)
            for name in names:
                path = f"{root}/{name}"
                if gfile.exists(path):  # ram:// lists "assets/.extra" for assets.extra/...
                    gfile.rename(path, f"{target}/{name}", overwrite=True)
    remove(src)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is
    removed (file or directory) and the exception propagates."""
    path = os.fspath(path)
    directory, base = os.path.split(absolute(path))
    makedirs(directory)
    if is_local(directory):
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{base}-", dir=directory)
        os.close(fd)
        os.unlink(tmp)  # the writer creates it (a file or, for Keras, its own archive)
    else:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{base}-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        rename(tmp, path)
    except BaseException as e:
        remove(tmp)
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
        with _as_os_errors(path), open_file(tmp, "wb") as f:
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
            rename(tmp + ".keras", tmp)
        finally:
            remove(tmp + ".keras")


def file_digest(path, algorithm="sha256"):
    """The hex digest of a file's bytes (hashlib's `algorithm`), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open_file(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temporaries(directory):
    """Removes `.tmp-*` files and folders left in `directory` by writers that were killed
    (SIGKILL leaves no chance to clean up). Returns the names removed."""
    removed = []
    if not isdir(directory):
        return removed
    for name in sorted(listdir(directory)):
        if name.startswith(TMP_PREFIX):
            remove(os.path.join(directory, name))
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
    """A lock file for writers into `directory` (a local path or a URI) that lives outside it,
    in the system's temporary folder, named by a hash of the directory's absolute path, so data
    folders stay clean. Processes on one machine take turns; other machines sharing the folder
    are not covered."""
    key = hashlib.sha256(absolute(directory).encode()).hexdigest()[:20]
    return os.path.join(tempfile.gettempdir(), "cxr_tf_locks", f"{key}.lock")


@contextlib.contextmanager
def exclusive_lock(path, what="cxr_tf"):
    """Holds an exclusive advisory lock (flock) on `path` for the block: processes that write
    into the same place take turns instead of tripping over each other's files. A process that
    has to wait logs which process holds the lock. The lock dies with its process, so a killed
    writer never blocks the next one. `path` is a local file (see lock_path_for for writers
    into a folder elsewhere)."""
    if not is_local(path):
        raise ValueError(f"exclusive_lock needs a lock file on a local disk, not {path}: object "
                         f"stores have no lock (use lock_path_for(directory))")
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
_WARNED_UNLOCKED = set()


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
    flock (local disks, NFSv4) also across machines. Object stores (gs://) have no lock: there
    the block runs without one after a warning, and one writer per stage is the team's rule.
    Readers (evaluating a model while another stage trains) take no lock.

    Raises:
      cxr_tf.errors.StageBusy: naming the stage, the directory and the holding process.
    """
    wait = _WAIT_FOR_STAGES.get() if wait is None else wait
    makedirs(directory)
    if not is_local(directory):
        if directory not in _WARNED_UNLOCKED:
            _WARNED_UNLOCKED.add(directory)
            log.warning("The %s stage %s is on an object store, which has no lock: cxr_tf takes "
                        "none there, so make sure no other process writes this stage", stage,
                        directory)
        yield
        return
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
