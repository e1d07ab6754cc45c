"""Export of a trained classifier as a versioned, TF Serving-ready SavedModel.

Layout: `EXPORT_DIR/<version>/saved_model.pb`, `variables/`, and
`assets.extra/cxr_tf_metadata.json` (TF Serving ignores assets.extra; people and tools read it).

Signatures (names below are constants of this module):
  - `serving_default`: input `image_bytes`, a [batch] string tensor of encoded PNG or JPEG images
    of any size (grey, RGB or RGBA; 8- or 16-bit PNG). Decoding, grey conversion, resizing and
    cropping run inside the graph with the same code as evaluation (cxr_tf.data.preprocessing).
  - `predict_pixels`: input `images`, [batch, height, width, 1] float32 in [0, 1], for clients
    that decode themselves; resized and cropped in the graph the same way.
  - `metadata`: no input; returns the label names, thresholds, input size, resize size, model
    name and version.
Outputs of both prediction signatures:
  - `probabilities` [batch, 14] float32, in the order of `label_names`;
  - `decisions` [batch, 14] int32, 1 where probability >= the class threshold (chosen on the
    validation split at export time, see cxr_tf.evaluation.thresholds);
  - `mask_coverage` [batch] float32, share of feature cells inside the lung-and-heart mask;
  - `low_mask_coverage` [batch] int32, 1 when coverage is below the model's minimum (the image
    was not weighted: probably not a frontal chest X-ray);
  - `class_activation_maps` [batch, h, w, 14] float32, per-cell logits on the feature grid.
"""

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import labels as labels_lib
from cxr_tf.data import preprocessing
from cxr_tf.models import classifier as classifier_lib

SERVING_DEFAULT = "serving_default"
PREDICT_PIXELS = "predict_pixels"
METADATA = "metadata"
IMAGE_BYTES = "image_bytes"
IMAGES = "images"
DECISIONS = "decisions"
LOW_MASK_COVERAGE = "low_mask_coverage"
METADATA_FILE = os.path.join("assets.extra", "cxr_tf_metadata.json")


def next_version(export_dir):
    """1 + the largest numeric version directory under export_dir (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def export_classifier(model, export_dir, resize_size=None, thresholds=None, version=None):
    """Writes `model` to `export_dir/<version>/` and returns that path.

    Args:
      model: a trained CXRClassifier.
      export_dir: the model base path TF Serving watches.
      resize_size: side images are resized to before the centre crop to model.input_size
        (the training/evaluation setting; default: no crop).
      thresholds: per-class decision thresholds (14 floats); default 0.5 for every class.
      version: positive integer; default is the next free version.

    The version directory is written under a temporary name and renamed when complete, so a
    failed export never leaves a partial version that TF Serving would try to load.
    """
    if not isinstance(model, classifier_lib.CXRClassifier):
        raise TypeError(f"export_classifier needs a cxr_tf CXRClassifier, got "
                        f"{type(model).__name__}")
    labels_lib.check_label_names(model.label_names)
    size = model.input_size
    resize_size = int(resize_size or size)
    if resize_size < size:
        raise ValueError(f"resize_size ({resize_size}) must be >= the model input size ({size})")
    n = len(model.label_names)
    if thresholds is None:
        thresholds = [0.5] * n
    thresholds = np.asarray(thresholds, dtype=np.float32)
    if thresholds.shape != (n,) or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise ValueError(f"thresholds must be {n} values in [0, 1], got {thresholds.tolist()}")
    version = int(version) if version is not None else next_version(export_dir)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Export version directory already exists: {final}; choose another "
                              f"version or remove it")

    explain = model.explain_model()
    thresholds_t = tf.constant(thresholds)
    min_coverage = model.min_mask_coverage if model.feature_weighting else 0.0

    def outputs(images):
        out = explain(images, training=False)
        probs = out[classifier_lib.PROBABILITIES]
        coverage = out[classifier_lib.MASK_COVERAGE]
        return {
            classifier_lib.PROBABILITIES: probs,
            DECISIONS: tf.cast(probs >= thresholds_t, tf.int32),
            classifier_lib.MASK_COVERAGE: coverage,
            LOW_MASK_COVERAGE: tf.cast(coverage < min_coverage, tf.int32),
            classifier_lib.CAMS: tf.cast(out[classifier_lib.CAMS], tf.float32),
        }

    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda b: preprocessing.model_input_from_bytes(b, size, resize_size), image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
        return outputs(images)

    def serve_pixels(images):
        tf.debugging.assert_greater_equal(tf.reduce_min(images), 0.0,
                                          message="images must lie in [0, 1]")
        tf.debugging.assert_less_equal(tf.reduce_max(images), 1.0,
                                       message="images must lie in [0, 1]")
        return outputs(preprocessing.resize_and_crop(images, size, resize_size))

    meta = {
        "label_names": list(model.label_names),
        "thresholds": [float(t) for t in thresholds],
        "input_size": size,
        "resize_size": resize_size,
        "model_name": model.name,
        "backbone": model.backbone_name,
        "attention": model.attention,
        "feature_weighting": model.feature_weighting,
        "min_mask_coverage": min_coverage,
        "version": version,
        "input_contract": "encoded PNG/JPEG bytes, or float32 [0, 1] grey pixels (lungs dark)",
    }

    def metadata():
        return {
            "label_names": tf.constant(meta["label_names"]),
            "thresholds": thresholds_t,
            "input_size": tf.constant(size, tf.int32),
            "resize_size": tf.constant(resize_size, tf.int32),
            "model_name": tf.constant(model.name),
            "version": tf.constant(version, tf.int64),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_DEFAULT, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    archive.add_endpoint(PREDICT_PIXELS, serve_pixels,
                         input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32,
                                                        name=IMAGES)])
    archive.add_endpoint(METADATA, metadata, input_signature=[])

    os.makedirs(export_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_exported(path):
    """Loads an exported version directory; returns (loaded SavedModel, metadata dict).

    This is the loader TF Serving itself uses (`tf.saved_model.load`).
    """
    loaded = tf.saved_model.load(path)
    meta_path = os.path.join(path, METADATA_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    else:
        raw = loaded.signatures[METADATA]()
        meta = {k: v.numpy().tolist() for k, v in raw.items()}
        meta["label_names"] = [s.decode() for s in meta["label_names"]]
    labels_lib.check_label_names(meta["label_names"], what=f"export {path}")
    return loaded, meta
