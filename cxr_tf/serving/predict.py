"""Predictions on image files (PNG, JPEG, DICOM) with an exported SavedModel.

PNG and JPEG files go to the `serving_default` signature as their encoded bytes, exactly as a
TF Serving client would send them. DICOM files are decoded here with pydicom (modality LUT /
rescale, VOI LUT or window, MONOCHROME1 inverted so that lungs are dark, any bit depth scaled to
[0, 1]) and sent to the `predict_pixels` signature. Files are recognised by their content (PNG
and JPEG signatures, the DICOM "DICM" preamble), so DICOM files without a suffix work too.

Files are predicted in batches; a batch that fails is retried file by file, so one bad file
never takes others down with it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from cxr_tf import saved_models
from cxr_tf.data import preprocessing
from cxr_tf.models import classifier as classifier_lib
from cxr_tf.serving import error_codes
from cxr_tf.serving import export as export_lib

ENCODED_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUFFIXES = ENCODED_SUFFIXES + DICOM_SUFFIXES
PNG, JPEG, DICOM = "png", "jpeg", "dicom"
DICOM_MAGIC_OFFSET = 128  # a DICOM file: 128-byte preamble, then b"DICM"


def sniff_format(head):
    """PNG, JPEG or DICOM from a file's first 132 bytes; None for anything else."""
    if head.startswith(export_lib.PNG_SIGNATURE):
        return PNG
    if head.startswith(export_lib.JPEG_SIGNATURE):
        return JPEG
    if head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return DICOM
    return None


def file_format(path):
    """The format of `path` by content, else by suffix (a .dcm without preamble); None if
    neither says it is a PNG, JPEG or DICOM file. OSError when it cannot be read."""
    with open(path, "rb") as f:
        head = f.read(DICOM_MAGIC_OFFSET + 4)
    found = sniff_format(head)
    if found is None and path.lower().endswith(DICOM_SUFFIXES):
        return DICOM  # old files without the preamble: pydicom says whether it can read them
    return found


def find_images(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expands files and folders (recursively) into the image files to predict.

    Returns (paths, skipped): files named explicitly are always returned (so that a wrong file
    is reported, not ignored); inside folders, files with a PNG/JPEG/DICOM suffix are taken, as
    are files without a suffix that hold a DICOM preamble (PACS exports often have no suffix);
    other files are skipped and listed.
    """
    paths, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if name.lower().endswith(SUFFIXES):
                        paths.append(full)
                    elif "." not in name and _is_dicom(full):
                        paths.append(full)
                    else:
                        skipped.append(full)
        else:
            paths.append(item)
    return paths, skipped


def _is_dicom(path):
    try:
        return file_format(path) == DICOM
    except OSError:
        return False


def _display_range(ds, data):
    """(low, high) of the values a VOI transform can output, found by passing the extreme inputs
    through pydicom's own transform; None when the file has no VOI LUT or window."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return None
    extremes = np.array([min(-2**31, data.min()), max(2**31 - 1, data.max())], dtype=np.int64)
    with np.errstate(all="ignore"):
        ends = np.asarray(apply_voi_lut(extremes, ds, prefer_lut=True), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def read_dicom(path, max_pixels=None):
    """A DICOM radiograph as (H, W, 1) float32 in [0, 1], lungs dark, bone bright.

    Steps, all pydicom's: the pixel data at its stored bit depth (8, 12 in 16, 16 bits; unused
    high bits masked), the modality LUT or RescaleSlope/RescaleIntercept
    (`apply_modality_lut`), the VOI LUT sequence or else the first WindowCenter/WindowWidth
    (`apply_voi_lut`, LINEAR or SIGMOID). Then:
      - with a VOI LUT or window, the result is scaled by the transform's full output range
        (what a viewer displays: values below the window are black, above it white);
      - without one, by the image's own minimum and maximum;
      - MONOCHROME1 (high values dark) is inverted.

    Raises:
      ValueError: naming the file, when it is not readable DICOM, has no pixel data (or in a
        compression pydicom cannot decode here), is colour, multi-frame or constant, or holds
        more than `max_pixels` pixels (Rows x Columns, read before the pixel data is decoded).
    """
    import pydicom  # here, not at the top: only DICOM files need it (start-up time)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            # Old files without the preamble and "DICM" marker: read anyway, keep only images.
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" not in ds:
                raise ValueError("no DICM marker after the 128-byte preamble, and no image "
                                 "when read without it") from None
    except Exception as e:  # pydicom raises many types for bad files
        raise ValueError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file without pixel data (SOP class "
                         f"{getattr(ds, 'SOPClassUID', 'unknown')}); expected a radiograph")
    rows, columns = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if max_pixels and rows * columns > max_pixels:
        raise ValueError(f"{path}: {rows} x {columns} = {rows * columns:,} pixels; the model "
                         f"accepts at most {int(max_pixels):,} (max_image_pixels in its "
                         f"metadata)")
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: PhotometricInterpretation {photometric or 'missing'} is not "
                         f"supported (expected a greyscale MONOCHROME1/MONOCHROME2 radiograph)")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ValueError(f"{path}: cannot decode the pixel data (transfer syntax "
                         f"{getattr(syntax, 'name', syntax)}): {e}") from None
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D frame, got pixel array of shape "
                         f"{pixels.shape}")
    data = apply_modality_lut(pixels, ds)
    if "VOILUTSequence" in ds and data.dtype.kind == "f":
        data = np.round(data).astype(np.int64)  # LUTs are indexed by integer stored values
    display = _display_range(ds, data)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        data = np.asarray(apply_voi_lut(data, ds, prefer_lut=True), dtype=np.float64)
    lo, hi = display or (float(data.min()), float(data.max()))
    if hi <= lo or float(data.min()) == float(data.max()):
        raise ValueError(f"{path}: the image is constant (all pixels {data.flat[0]:g} after the "
                         f"modality and VOI transforms); nothing to classify")
    data = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # high values are dark; the model wants bone bright
        data = 1.0 - data
    return data[..., None].astype(np.float32)


def predict_encoded(export_path: str | os.PathLike,
                    encoded_images: Sequence[bytes]) -> tuple[dict[str, np.ndarray], dict]:
    """Runs encoded PNG/JPEG images (a list of bytes) through an export's serving_default
    signature, as a TF Serving client would; `export_path` is a version directory or the
    export base (latest version). Returns (outputs as numpy arrays, the export's metadata)."""
    loaded, meta = export_lib.load_exported(saved_models.resolve_version(export_path))
    out = loaded.signatures[export_lib.SERVING_DEFAULT](
        **{export_lib.IMAGE_BYTES: tf.constant(list(encoded_images))})
    return {k: v.numpy() for k, v in out.items()}, meta


class FilePredictor:
    """Runs an exported cxr_tf SavedModel on files (PNG, JPEG, DICOM).

    Args:
      export_path: an export version directory, or its base directory (highest version used).
      warn_coverage: warn when the lung-and-heart mask covers less than this share of the
        feature grid (default and minimum: the model's own fallback threshold, below which the
        features were not weighted at all).
    """

    def __init__(self, export_path: str | os.PathLike, warn_coverage: float | None = None):
        self.path = saved_models.resolve_version(export_path)
        self.loaded, self.meta = export_lib.load_exported(self.path)
        self._bytes_fn = self.loaded.signatures[export_lib.SERVING_DEFAULT]
        self._pixels_fn = self.loaded.signatures[export_lib.PREDICT_PIXELS]
        self.warn_coverage = max(float(warn_coverage or 0.0),
                                 float(self.meta["min_mask_coverage"]))

    @property
    def label_names(self):
        return self.meta["label_names"]

    def load(self, path):
        """(format, model input) for one file: the encoded bytes of a PNG/JPEG, the decoded
        (H, W, 1) pixels of a DICOM. Raises ValueError naming the file when it is neither."""
        try:
            fmt = file_format(path)
        except OSError as e:
            raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
        if fmt == DICOM:
            return fmt, read_dicom(path, max_pixels=self.meta.get("max_image_pixels"))
        if fmt is None:
            with open(path, "rb") as f:
                head = f.read(16)
            what = "empty file" if not head else f"starts with {head[:8]!r}"
            raise ValueError(f"{path}: not a PNG, JPEG or DICOM file ({what})")
        with open(path, "rb") as f:
            return fmt, f.read()

    def predict_file(self, path, raw=False):
        """Prediction dict for one file; raises ValueError naming the file when unreadable.

        With raw=True returns (dict, model outputs, decoded image) for overlays."""
        (path, result), = self.predict_files([path], raw=raw)
        if isinstance(result, Exception):
            raise result
        return result

    def predict_files(self, paths, batch_size=16, raw=False):
        """Yields (path, result) in input order; result is the prediction dict or, for a file
        that failed, a ValueError naming it. With raw=True, result is (dict, outputs, image)
        where outputs are this image's signature outputs and image its (H, W, 1) float pixels.
        """
        for start in range(0, len(paths), max(1, int(batch_size))):
            yield from self._predict_chunk(paths[start:start + batch_size], raw)

    def _predict_chunk(self, paths, raw):
        loaded, results = {}, {}
        for path in paths:
            try:
                loaded[path] = self.load(path)
            except (ValueError, OSError) as e:
                results[path] = e if isinstance(e, ValueError) else ValueError(f"{path}: {e}")
        encoded = [p for p in paths if p in loaded and loaded[p][0] != DICOM]
        results.update(self._run_encoded(encoded, {p: loaded[p][1] for p in encoded}))
        by_shape = {}
        for p in paths:
            if p in loaded and loaded[p][0] == DICOM:
                by_shape.setdefault(loaded[p][1].shape, []).append(p)
        for group in by_shape.values():
            results.update(self._run_pixels(group, {p: loaded[p][1] for p in group}))
        for path in paths:
            result = results[path]
            if isinstance(result, Exception):
                yield path, result
                continue
            fmt, data = loaded[path]
            summary = self._format(path, fmt, result)
            if raw:
                image = data if fmt == DICOM else decode_for_display(data)
                yield path, (summary, result, image)
            else:
                yield path, summary

    def _run_encoded(self, paths, data):
        if not paths:
            return {}
        try:
            outs = self._bytes_fn(**{export_lib.IMAGE_BYTES: tf.constant(
                [data[p] for p in paths])})
            return self._split(paths, outs)
        except tf.errors.InvalidArgumentError as e:
            if len(paths) > 1:  # find the bad file(s): one at a time
                results = {}
                for p in paths:
                    results.update(self._run_encoded([p], data))
                return results
            message = _op_message(e)
            what = ("refused by the model" if "max_image_pixels" in message
                    else "not a decodable PNG or JPEG image")
            return {paths[0]: ValueError(f"{paths[0]}: {what} ({message})")}

    def _run_pixels(self, paths, data):
        try:
            outs = self._pixels_fn(**{export_lib.IMAGES: tf.constant(
                np.stack([data[p] for p in paths]))})
            return self._split(paths, outs)
        except tf.errors.InvalidArgumentError as e:
            if len(paths) > 1:
                results = {}
                for p in paths:
                    results.update(self._run_pixels([p], data))
                return results
            return {paths[0]: ValueError(f"{paths[0]}: the decoded DICOM pixels were refused "
                                         f"({_op_message(e)})")}

    @staticmethod
    def _split(paths, outs):
        arrays = {k: v.numpy() for k, v in outs.items()}
        return {p: {k: v[i] for k, v in arrays.items()} for i, p in enumerate(paths)}

    def _format(self, path, fmt, out):
        names = self.label_names
        probs = out[classifier_lib.PROBABILITIES]
        coverage = float(out[classifier_lib.MASK_COVERAGE])
        result = {
            "file": path,
            "format": fmt,
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)},
            "positive_findings": [n for n, d in zip(names, out[export_lib.DECISIONS]) if d],
            "mask_coverage": round(coverage, 4),
        }
        anatomy_ok = int(out.get(export_lib.ANATOMY_OK, 1))
        result["anatomy_ok"] = bool(anatomy_ok)
        if not anatomy_ok:
            reason = out[export_lib.ANATOMY_REASON]
            reason = reason.decode() if isinstance(reason, bytes) else str(reason)
            result["reason"] = (f"not read as a frontal chest X-ray, so no finding is reported: "
                                f"{reason}")
        if int(out[export_lib.LOW_MASK_COVERAGE]) or coverage < self.warn_coverage:
            weighted = ("features were not weighted and the probabilities are unreliable"
                        if int(out[export_lib.LOW_MASK_COVERAGE]) else
                        "check the image before trusting the probabilities")
            result["warning"] = (
                f"low mask coverage: the lung-and-heart mask covers only {coverage:.1%} of the "
                f"image (warning below {self.warn_coverage:.0%}): probably not a frontal chest "
                f"X-ray (lateral view, other body part, photo); {weighted}")
        return result


def _op_message(error):
    return error_codes.op_error_message(error).splitlines()[0]


def decode_for_display(data):
    """Encoded PNG/JPEG bytes -> (H, W, 1) float32 in [0, 1], by the model's own decoder."""
    return preprocessing.decode_image_bytes(tf.constant(data)).numpy()
