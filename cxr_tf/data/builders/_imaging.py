"""Image reading for the real-data builders: decode, convert to 8-bit grey, resize, encode.

This module imports only NumPy and OpenCV (no TensorFlow), so the "spawn" worker processes the
builders start to decode images in parallel come up in a fraction of a second. Worker functions
never raise for a bad file: they return `ImageError` messages that the builder counts and logs.
"""

import concurrent.futures
import concurrent.futures.process
import ctypes
import itertools
import multiprocessing
import os
import signal
import threading
import time

import cv2
import numpy as np

# One OpenCV thread per worker process: the builders parallelise over processes instead.
cv2.setNumThreads(1)

PNG_COMPRESSION = 3  # zlib level of the stored PNGs (0-9): 3 is ~2x faster than 9, ~5% larger

JSRT_SIDE = 2048          # official JSRT .IMG: 2048 x 2048 ...
JSRT_MAX = 4095           # ... big-endian 16-bit words holding 12-bit values


class ImageError(ValueError):
    """A file that cannot be read as the image it should be (the message names the file)."""


def _watch_parent(parent_pid):
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def die_with_parent(parent_pid):
    """Worker-process initializer: the worker ends when the process that started it ends, even
    when that one is killed with SIGKILL (no chance to stop its pool). Linux: the kernel sends
    SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a thread polls the parent
    once a second."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def worker_pool(workers):
    """A ProcessPoolExecutor of `workers` "spawn" processes that die with this process.

    "spawn": the parent has TensorFlow loaded, whose threads make fork unsafe; the workers
    import only NumPy and OpenCV (this module)."""
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
        initargs=(os.getpid(),))


def default_workers():
    """Worker processes for decoding: all cores (at most 8), or $CXR_TF_BUILD_WORKERS."""
    env = os.environ.get("CXR_TF_BUILD_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


def to_grey8(image, source="image"):
    """Any decoded image array -> (H, W) uint8 grey.

    Accepts what `cv2.imread(..., cv2.IMREAD_UNCHANGED)` returns: grey (H, W) or (H, W, 1),
    BGR (H, W, 3), BGRA (H, W, 4; alpha dropped), at 8 or 16 bits. 16-bit data is scaled by
    its full range (65535), except when every value is <= 4095: such files hold 12-bit data in
    16-bit words (common for JSRT/medical redistributions) and are scaled by 4095.

    Returns:
      (grey uint8 array, note) where note is "" or "12bit-in-16bit".
    Raises:
      ImageError: for other dtypes or channel counts.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(image.shape[2])
        if code is None:
            raise ImageError(f"{source}: {image.shape[2]} channels; expected 1, 3 or 4")
        image = cv2.cvtColor(image, code)
    elif image.ndim != 2:
        raise ImageError(f"{source}: array of shape {image.shape}; expected an image")
    note = ""
    if image.dtype == np.uint16:
        top = JSRT_MAX if int(image.max()) <= JSRT_MAX else 65535
        note = "12bit-in-16bit" if top == JSRT_MAX else ""
        image = np.round(image.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{source}: pixel type {image.dtype}; expected 8- or 16-bit integers")
    return image, note


def read_file_bytes(path):
    """The bytes of `path`; ImageError if it is missing or empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror})") from None
    if not data:
        raise ImageError(f"{path}: empty file (0 bytes); expected an image")
    return data


def read_grey8(path):
    """Decodes a PNG/GIF/JPEG/BMP file with OpenCV to (H, W) uint8 grey (see to_grey8).

    Returns:
      (grey array, note).
    Raises:
      ImageError: empty, truncated or otherwise undecodable file, naming the path.
    """
    data = read_file_bytes(path)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None and data[:4] == b"GIF8":
        image = _decode_gif_with_pil(data)  # OpenCV < 4.11 has no GIF decoder
    if image is None:
        raise ImageError(f"{path}: not a decodable image ({len(data)} bytes; truncated or "
                         f"corrupt?)")
    return to_grey8(image, path)


def _decode_gif_with_pil(data):
    """First frame of a GIF as a grey uint8 array with Pillow, or None if it cannot be read."""
    try:
        import io

        from PIL import Image
        with Image.open(io.BytesIO(data)) as gif:
            return np.asarray(gif.convert("L"))
    except Exception:  # noqa: BLE001  (any decoder failure means "not decodable")
        return None


def read_jsrt_raw(path):
    """Reads an official JSRT `.IMG` file to a (2048, 2048) uint8 image in display polarity.

    The file is headerless: 2048 x 2048 big-endian 16-bit words holding 12-bit values stored with
    inverted polarity. Display value = 4095 - stored value (lungs dark, bone bright), scaled to
    0..255. Values above 4095 (not expected) are clipped; the note says how many.

    Raises:
      ImageError: when the file size is not 2048 * 2048 * 2 bytes.
    """
    expected = JSRT_SIDE * JSRT_SIDE * 2
    data = read_file_bytes(path)
    if len(data) != expected:
        raise ImageError(f"{path}: {len(data):,} bytes; a JSRT .IMG file holds exactly "
                         f"{expected:,} (2048 x 2048 big-endian 16-bit words)")
    raw = np.frombuffer(data, ">u2").reshape(JSRT_SIDE, JSRT_SIDE)
    over = int(np.count_nonzero(raw > JSRT_MAX))
    display = JSRT_MAX - np.minimum(raw, JSRT_MAX).astype(np.float32)
    image = np.round(display * (255.0 / JSRT_MAX)).astype(np.uint8)
    return image, (f"{over} values above 4095 clipped" if over else "")


def read_mask(path):
    """Reads a binary mask (GIF or PNG, any depth or channel count) to an (H, W) bool array.

    Foreground is any pixel above half of the file's range (so 0/255 and 0/1 masks both work).
    """
    grey, _ = read_grey8(path)
    return grey > (127 if int(grey.max()) > 1 else 0)


def resize_image(image, size):
    """(H, W) uint8 -> (size, size) uint8: area filter when shrinking, bilinear when enlarging."""
    if image.shape == (size, size):
        return image
    shrink = size < max(image.shape)
    return cv2.resize(image, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask, size):
    """(H, W) bool -> (size, size) bool: the area-weighted coverage of each new pixel >= 0.5.

    The same geometry as resize_image, so a mask stays aligned with its image whatever the two
    source resolutions are, as long as both cover the same field of view.
    """
    if mask.shape == (size, size):
        return mask.copy()
    shrink = size < max(mask.shape)
    cover = cv2.resize(mask.astype(np.float32), (size, size),
                       interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cover >= 0.5


def encode_png(array):
    """uint8 (H, W), (H, W, 1) or (H, W, 3) array -> PNG bytes, channels kept in the given order.

    (OpenCV writes 3-channel arrays as BGR; channels are reversed first so that TensorFlow's PNG
    decoder returns them in the caller's order.)
    """
    array = np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ImageError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def check_same_aspect(image_shape, mask_shape, source):
    """Raises ImageError when a mask's aspect ratio differs from its image's by more than 1%."""
    ri = image_shape[1] / image_shape[0]
    rm = mask_shape[1] / mask_shape[0]
    if abs(ri - rm) > 0.01 * ri:
        raise ImageError(f"{source}: mask is {mask_shape[1]}x{mask_shape[0]} but the image is "
                         f"{image_shape[1]}x{image_shape[0]}; they must cover the same field")


def order_lungs(first, second, source):
    """Returns (left_lung, right_lung, swapped) from two lung masks by where they lie.

    "Left" is the patient's left, the IMAGE's right on a PA film: the mask whose centroid lies
    further right in the image is the left lung. `swapped` is True when that is `second`, i.e.
    when the files' left/right naming followed the image rather than the patient.

    Raises:
      ImageError: when a mask is empty.
    """
    cols = []
    for name, m in (("first", first), ("second", second)):
        xs = np.nonzero(m)[1]
        if xs.size == 0:
            raise ImageError(f"{source}: the {name} lung mask is empty")
        cols.append(xs.mean())
    if cols[0] >= cols[1]:
        return first, second, False
    return second, first, True


# --- Jobs run in worker processes (top-level functions, so they pickle by reference). ---------

def chestxray14_job(job):
    """(key, path, size, image_format) -> (key, image or None, error message or note).

    The image is PNG bytes for image_format "png", else a (size, size, 1) uint8 array.
    """
    key, path, size, image_format = job
    try:
        grey, note = read_grey8(path)
        image = resize_image(grey, size)
        return key, (encode_png(image) if image_format == "png" else image[..., None]), note
    except ImageError as e:
        return key, None, str(e)


def _read_any(path):
    """A radiograph: official JSRT raw `.IMG`, or any image file OpenCV decodes."""
    if path.lower().endswith(".img"):
        return read_jsrt_raw(path)
    return read_grey8(path)


def _read_masks(paths, image_shape, source):
    masks = []
    for path in paths:
        mask = read_mask(path)
        check_same_aspect(image_shape, mask.shape, path)
        masks.append(mask)
    return masks


def _to_255(masks, size):
    return np.stack([resize_mask(m, size) for m in masks], axis=-1).astype(np.uint8) * 255


def jsrt_job(job):
    """One JSRT film with its SCR masks, resized to `size`.

    job: (key, image path, (left lung, right lung, heart) mask paths, (left clavicle, right
      clavicle) mask paths or None, size).
    Returns:
      (key, result or None, message): result is a dict with `image` (PNG bytes), `masks` (PNG
      bytes, 3 channels in (left lung, right lung, heart) order, 0/255), `clavicles` ((size, size,
      2) uint8 0/255 or None) and `notes` (list of str); message is the error when result is None.
    """
    key, image_path, mask_paths, clavicle_paths, size = job
    try:
        image, note = _read_any(image_path)
        notes = [note] if note else []
        left, right, heart = _read_masks(mask_paths, image.shape, key)
        left, right, swapped = order_lungs(left, right, f"{key} lung masks")
        if swapped:
            notes.append("lung masks named by image side (swapped)")
        clavicles = None
        if clavicle_paths:
            lc, rc = _read_masks(clavicle_paths, image.shape, key)
            lc, rc, swapped = order_lungs(lc, rc, f"{key} clavicle masks")
            if swapped:
                notes.append("clavicle masks named by image side (swapped)")
            clavicles = _to_255([lc, rc], size)
        return key, {"image": encode_png(resize_image(image, size)),
                     "masks": encode_png(_to_255([left, right, heart], size)),
                     "clavicles": clavicles, "notes": notes}, ""
    except ImageError as e:
        return key, None, str(e)


def split_lungs(union, source="mask"):
    """Splits a both-lungs mask into (left lung, right lung), or returns None when unreliable.

    Reliable: exactly two 8-connected components of at least 5% of the mask's area each, and any
    further specks together under 1% of it (each joined to the component whose centroid column is
    nearer). "Left" is the patient's left: the component further right in the image.
    """
    union = np.asarray(union, bool)
    total = int(union.sum())
    if not total:
        raise ImageError(f"{source}: the both-lungs mask is empty")
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(union.astype(np.uint8),
                                                                   connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1] + 1
    big = [c for c in order if stats[c, cv2.CC_STAT_AREA] >= 0.05 * total]
    rest = total - sum(int(stats[c, cv2.CC_STAT_AREA]) for c in big)
    if len(big) != 2 or rest >= 0.01 * total:
        return None
    a, b = big
    owner = {a: a, b: b}
    for c in order:
        if c not in owner:
            x = centroids[c, 0]
            owner[c] = a if abs(x - centroids[a, 0]) <= abs(x - centroids[b, 0]) else b
    lookup = np.zeros(n, np.int32)
    for c, o in owner.items():
        lookup[c] = o
    owners = lookup[labels]
    first, second = owners == a, owners == b
    left, right, _ = order_lungs(first, second, source)
    return left, right


def lungs_job(job):
    """One radiograph with its lung outline (Montgomery, Shenzhen), resized to `size`.

    job: (key, image path, (kind, masks), size): kind "sides" with (first, second) lung mask paths
      (which is the patient's left is decided by position, order_lungs, whatever the folders are
      called), or kind "union" with the path of one both-lungs mask (split by split_lungs where
      reliable).
    Returns:
      (key, result or None, message): result holds `image` (PNG bytes), `union` ((size, size, 1)
      uint8 0/255, both lungs), `lungs` ((size, size, 2) uint8 0/255 in (left lung, right lung)
      order, zeros when the sides are unknown), `sides_known` (bool) and `notes`.
    """
    key, image_path, (kind, mask_paths), size = job
    try:
        image, note = _read_any(image_path)
        notes = [note] if note else []
        if kind == "sides":
            first, second = _read_masks(mask_paths, image.shape, key)
            left, right, swapped = order_lungs(first, second, f"{key} lung masks")
            if swapped:
                notes.append("lung masks named by image side (swapped)")
            union = left | right
        else:
            (union,) = _read_masks([mask_paths], image.shape, key)
            split = split_lungs(union, f"{key} both-lungs mask")
            if split is None:
                notes.append("both-lungs mask not split into sides (lungs touch or extra "
                             "pieces): union only")
                left = right = np.zeros_like(union)
            else:
                left, right = split
                notes.append("both-lungs mask split into sides")
        sides_known = bool(left.any() and right.any())
        return key, {"image": encode_png(resize_image(image, size)),
                     "union": _to_255([union], size),
                     "lungs": _to_255([left, right], size), "sides_known": sides_known,
                     "notes": notes}, ""
    except ImageError as e:
        return key, None, str(e)


def bare_decode_resize_job(job):
    """(path, size) -> CPU seconds spent decoding and resizing it (throughput baseline)."""
    path, size = job
    start = time.process_time()
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    resize_image(to_grey8(image, path)[0], size)
    return time.process_time() - start


def _run_chunk(fn, chunk):
    return [fn(job) for job in chunk]


class Pool:
    """Spawn-context worker processes, started on first use and reused until close().

    A builder keeps one for all its splits, so the processes start once per build.
    """

    def __init__(self, workers=None):
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self._executor = None

    def map(self, fn, jobs, chunksize=8, max_pending_chunks=None):
        """Yields fn(job) for every job, computed in the worker processes.

        Results come back in completion order (TFDS orders examples by key anyway). At most
        `max_pending_chunks` chunks (default 4 per worker) are in flight, so memory stays bounded
        when the consumer is slower than the workers. With one worker, or fewer jobs than one
        chunk, runs in this process.

        Args:
          fn: a top-level function of one job (spawned workers import it by module path).
          jobs: iterable of picklable jobs.
          chunksize: jobs sent to a worker at a time.
          max_pending_chunks: in-flight chunk limit.
        """
        jobs = list(jobs)
        if self.workers <= 1 or len(jobs) <= chunksize:
            for job in jobs:
                yield fn(job)
            return
        if self._executor is None:
            self._executor = worker_pool(self.workers)
        chunks = iter([jobs[i:i + chunksize] for i in range(0, len(jobs), chunksize)])
        limit = max_pending_chunks or 4 * self.workers
        pending = {self._executor.submit(_run_chunk, fn, c)
                   for c in itertools.islice(chunks, limit)}
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    nxt = next(chunks, None)
                    if nxt is not None:
                        pending.add(self._executor.submit(_run_chunk, fn, nxt))
                    yield from future.result()
        except concurrent.futures.process.BrokenProcessPool as e:
            raise RuntimeError(
                "A worker process decoding images died. Common causes: the machine ran out of "
                "memory (set CXR_TF_BUILD_WORKERS to fewer workers), the process was killed, or "
                "the build was started from a script without an `if __name__ == \"__main__\":` "
                "guard (workers are spawned and import the main module again). "
                "CXR_TF_BUILD_WORKERS=1 decodes in this process.") from e
        finally:
            for future in pending:
                future.cancel()

    def close(self):
        """Stops the worker processes (a later map() starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def parallel_map(fn, jobs, workers=None, chunksize=8, max_pending_chunks=None):
    """Pool(workers).map(...) with the processes stopped at the end (see Pool.map)."""
    pool = Pool(workers)
    try:
        yield from pool.map(fn, jobs, chunksize, max_pending_chunks)
    finally:
        pool.close()
