"""The exported SavedModel as readers see it: its layout, names and metadata, and loading it.

Written by cxr_tf.serving.export; read by evaluation (a SavedModel scored like a .keras
model), cxr-predict, cxr-rest and any TF Serving client. Layout:

    EXPORT_DIR/<version>/saved_model.pb, variables/, assets.extra/cxr_tf_metadata.json

Signatures: `serving_default` (encoded PNG/JPEG bytes in), `predict_pixels` (float pixels in)
and `metadata` (label names, thresholds, geometry, version). See cxr_tf.serving.export for what
each returns.
"""

import json
import logging
import os

import tensorflow as tf

from cxr_tf import files
from cxr_tf import labels as labels_lib

log = logging.getLogger("cxr_tf")

# Signatures and their inputs.
SERVING_DEFAULT = "serving_default"
PREDICT_PIXELS = "predict_pixels"
METADATA = "metadata"
PREDICTION_SIGNATURES = (PREDICT_PIXELS, SERVING_DEFAULT)
IMAGE_BYTES = "image_bytes"
IMAGES = "images"
METADATA_INPUT = "ignored"
METADATA_JSON = "metadata_json"
# Outputs of the prediction signatures besides the model's own (probabilities,
# class_activation_maps, mask_coverage, grid_mask: cxr_tf.models.classifier).
DECISIONS = "decisions"
LOW_MASK_COVERAGE = "low_mask_coverage"
ANATOMY_OK = "anatomy_ok"
ANATOMY_REASON = "anatomy_reason"
# The human-readable copy of the metadata and the model card, beside the graph.
METADATA_FILE = os.path.join("assets.extra", "cxr_tf_metadata.json")
SAVED_MODEL_FILE = "saved_model.pb"


def versions(base):
    """The numeric version directories under an export base directory that hold a SavedModel,
    highest first."""
    if not files.isdir(base):
        return []
    return sorted((int(d) for d in files.listdir(base)
                   if d.isdigit() and files.exists(os.path.join(base, d, SAVED_MODEL_FILE))),
                  reverse=True)


def resolve_version(path):
    """A SavedModel version directory from `path`: the directory itself when it holds
    saved_model.pb, else its highest numeric version subdirectory (the one TF Serving serves
    by default).

    Raises:
      FileNotFoundError: when neither is there.
    """
    path = os.fspath(path)
    if files.exists(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(f"No SavedModel at {path}: expected saved_model.pb in it, or "
                                f"numeric version subdirectories holding one "
                                f"(EXPORT_DIR/<version>/)")
    return os.path.join(path, str(found[0]))


def read_metadata(loaded):
    """The metadata dict stored in a loaded export's `metadata` signature."""
    raw = loaded.signatures[METADATA](**{METADATA_INPUT: tf.constant(0)})
    return json.loads(raw[METADATA_JSON].numpy().decode())


def load_exported(path):
    """Loads an exported version directory; returns (loaded SavedModel, metadata dict).

    This is the loader TF Serving itself uses (`tf.saved_model.load`). The metadata comes from
    the graph's `metadata` signature; the copy in assets.extra must agree with it.

    Raises:
      ValueError: naming the export, when its labels are not this version's label list or the
        two metadata copies disagree.
    """
    loaded = tf.saved_model.load(path)
    if METADATA not in loaded.signatures:
        raise ValueError(f"{path} has no {METADATA!r} signature: not a cxr_tf export (its "
                         f"signatures: {', '.join(loaded.signatures)})")
    meta = read_metadata(loaded)
    labels_lib.check_label_names(meta["label_names"], what=f"export {path}")
    meta_path = os.path.join(path, METADATA_FILE)
    if files.exists(meta_path):
        with files.open_file(meta_path) as f:
            side = json.load(f)
        for key, value in meta.items():
            if side.get(key) != value:
                raise ValueError(f"{meta_path}: {key} is {side.get(key)!r} but the SavedModel "
                                 f"says {value!r}; the files of {path} do not belong together")
    base = os.path.basename(os.path.normpath(path))
    if base.isdigit() and int(base) != meta["version"]:
        log.warning("%s holds model version %d (the directory was renamed or copied)", path,
                    meta["version"])
    return loaded, meta
