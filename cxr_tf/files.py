"""Writing files whole or not at all: the one atomic-write helper of cxr_tf.

Every writer goes through a temporary file in the destination's directory and an `os.replace`,
so a reader (TF Serving, a resumed run, a notebook) never sees half a file, and a failure (an
exception, a full disk, Ctrl-C) removes the temporary file instead of leaving it behind.
Temporary names start with `.tmp-`, which the project's readers ignore.
"""

import contextlib
import json
import os
import shutil
import tempfile

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
