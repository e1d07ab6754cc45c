"""Predictions on image files (PNG, JPEG, DICOM) with an exported SavedModel.

PNG and JPEG files go to the `serving_default` signature as their encoded bytes, exactly as a
TF Serving client would send them. DICOM files are decoded here with pydicom (modality and VOI
LUT / window applied, MONOCHROME1 inverted so that lungs are dark, any bit depth scaled to
[0, 1]) and sent to the `predict_pixels` signature.
"""

import os

import numpy as np
import tensorflow as tf

from cxr_tf.models import classifier as classifier_lib
from cxr_tf.serving import export as export_lib

ENCODED_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUFFIXES = ENCODED_SUFFIXES + DICOM_SUFFIXES


def resolve_export(path):
    """An export version directory; a base directory resolves to its highest numeric version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True)
        for v in versions:
            candidate = os.path.join(path, str(v))
            if os.path.exists(os.path.join(candidate, "saved_model.pb")):
                return candidate
    raise FileNotFoundError(f"No SavedModel at {path} (expected saved_model.pb in it or in a "
                            f"numeric version subdirectory)")


def find_images(inputs):
    """Expands files and folders (recursively) into image paths with a supported suffix.

    Returns (paths, skipped): files named explicitly are always returned (so that a wrong file
    is reported, not ignored); inside folders, files with other suffixes are skipped and listed.
    """
    paths, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, files in os.walk(item):
                for name in sorted(files):
                    full = os.path.join(root, name)
                    (paths if name.lower().endswith(SUFFIXES) else skipped).append(full)
        else:
            paths.append(item)
    return paths, skipped


def read_dicom(path):
    """A DICOM radiograph as (H, W, 1) float32 in [0, 1], lungs dark.

    Applies the modality LUT (rescale slope/intercept) and the VOI LUT or window stored in the
    file, inverts MONOCHROME1, and scales the result's own range to [0, 1].

    Raises:
      ValueError: naming the file, when it holds no pixel data or is not a greyscale image.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad files
        raise ValueError(f"{path}: not a readable DICOM image ({e})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: PhotometricInterpretation {photometric} is not supported "
                         f"(expected a greyscale MONOCHROME1/MONOCHROME2 radiograph)")
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D frame, got pixel array of shape "
                         f"{pixels.shape}")
    data = apply_modality_lut(pixels, ds)
    data = apply_voi_lut(data, ds, prefer_lut=True)
    data = np.asarray(data, dtype=np.float64)
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        raise ValueError(f"{path}: the image is constant (all pixels {lo}); nothing to classify")
    data = (data - lo) / (hi - lo)
    if photometric == "MONOCHROME1":  # MONOCHROME1: high values are dark; the model wants bright
        data = 1.0 - data
    return data[..., None].astype(np.float32)


class Predictor:
    """Runs an exported cxr_tf SavedModel on files.

    Args:
      export_path: an export version directory, or its base directory (highest version used).
    """

    def __init__(self, export_path):
        self.path = resolve_export(export_path)
        self.loaded, self.meta = export_lib.load_exported(self.path)
        self._bytes_fn = self.loaded.signatures[export_lib.SERVING_DEFAULT]
        self._pixels_fn = self.loaded.signatures[export_lib.PREDICT_PIXELS]

    def predict_file(self, path):
        """Prediction dict for one file; raises ValueError naming the file when unreadable."""
        lower = path.lower()
        if lower.endswith(DICOM_SUFFIXES):
            out = self._pixels_fn(**{export_lib.IMAGES: tf.constant(read_dicom(path)[None])})
        else:
            with open(path, "rb") as f:
                data = f.read()
            try:
                out = self._bytes_fn(**{export_lib.IMAGE_BYTES: tf.constant([data])})
            except tf.errors.InvalidArgumentError as e:
                raise ValueError(f"{path}: not a decodable PNG or JPEG image "
                                 f"({e.message.splitlines()[0]})") from None
        return self._format(path, {k: v.numpy()[0] for k, v in out.items()})

    def _format(self, path, out):
        names = self.meta["label_names"]
        probs = out[classifier_lib.PROBABILITIES]
        result = {
            "file": path,
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)},
            "positive_findings": [n for n, d in zip(names, out[export_lib.DECISIONS]) if d],
            "mask_coverage": round(float(out[classifier_lib.MASK_COVERAGE]), 4),
        }
        if int(out[export_lib.LOW_MASK_COVERAGE]):
            result["warning"] = (
                f"lung-and-heart mask covers only {result['mask_coverage']:.1%} of the image "
                f"(minimum {self.meta['min_mask_coverage']:.0%}): probably not a frontal chest "
                f"X-ray (lateral view, other body part, photo); features were not weighted and "
                f"the probabilities are unreliable")
        return result
