"""Export of a trained classifier as a versioned, TF Serving-ready SavedModel.

Layout: `EXPORT_DIR/<version>/saved_model.pb`, `variables/`, and
`assets.extra/cxr_tf_metadata.json` (TF Serving ignores assets.extra; people and tools read it).

Signatures (names below are constants of this module):
  - `serving_default`: input `image_bytes`, a [batch] string tensor of encoded PNG or JPEG images
    of any size (grey, RGB or RGBA; 8- or 16-bit PNG). Decoding, grey conversion, resizing and
    cropping run inside the graph with the same code as evaluation (cxr_tf.data.preprocessing).
  - `predict_pixels`: input `images`, [batch, height, width, 1] float32 in [0, 1], for clients
    that decode themselves; resized and cropped in the graph the same way.
  - `metadata`: input `ignored` (an int32 scalar, any value: TF Serving's REST API refuses
    signatures without inputs); returns the label names, thresholds, input size, resize size,
    minimum mask coverage, model name, model version, cxr_tf version and all of it as
    `metadata_json`. REST: `{"signature_name": "metadata", "inputs": {"ignored": 0}}`.
Outputs of both prediction signatures:
  - `probabilities` [batch, 14] float32, in the order of `label_names`;
  - `decisions` [batch, 14] int32, 1 where probability >= the class threshold (chosen on the
    validation split at export time, see cxr_tf.evaluation.metrics.youden_thresholds) AND the
    image passed the anatomy check (all 0 otherwise);
  - `anatomy_ok` [batch] int32 and `anatomy_reason` [batch] string: whether the inline
    segmenter found a frontal chest film (both lungs side by side, the heart between them,
    enough coverage) and, if not, why (cxr_tf.serving.anatomy); models without a segmenter
    report 1 and "";
  - `mask_coverage` [batch] float32, share of feature cells inside the lung-and-heart mask;
  - `low_mask_coverage` [batch] int32, 1 when coverage is below the model's minimum (the image
    was not weighted: probably not a frontal chest X-ray);
  - `class_activation_maps` [batch, h, w, 14] float32, per-cell logits on the feature grid;
  - `grid_mask` [batch, h, w, 1] float32, the lung-and-heart mask applied to the features.

Images larger than `max_image_pixels` (height x width, read from the PNG/JPEG header before
anything is decoded; default 40 million, stored in the metadata) are refused with
InvalidArgument, so one request cannot make the server decode a 20000 x 20000 image.

Bad input is refused with an InvalidArgument error (HTTP 400 in TF Serving) whose message names
the problem: `image_bytes[i] is not a PNG or JPEG image ...` for bytes that do not start with a
PNG or JPEG signature (the index is the first bad element of the batch), the decoder's message
for truncated or corrupt files, `images must be grey pixels in [0, 1] ...` for out-of-range
pixels. See docs/serving.md for the TF Serving command line and REST examples.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

import cxr_tf
from cxr_tf import files
from cxr_tf import labels as labels_lib
from cxr_tf.data import preprocessing
from cxr_tf.models import classifier as classifier_lib
from cxr_tf.saved_models import (
    ANATOMY_OK,
    ANATOMY_REASON,
    DECISIONS,
    IMAGE_BYTES,
    IMAGES,
    LOW_MASK_COVERAGE,
    METADATA,
    METADATA_FILE,
    METADATA_INPUT,
    METADATA_JSON,
    PREDICT_PIXELS,
    SERVING_DEFAULT,
    load_exported,
    read_metadata,
)
from cxr_tf.serving import anatomy, model_card, tf_serving

EXPORT_LOCK = ".cxr_tf_export.lock"
# Largest image accepted (height x width): a 6000 x 6000 film is 36 million pixels; decoded to
# float32 one such image takes 144 MB, the limit 160 MB.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

log = logging.getLogger("cxr_tf")


def check_encoded_images(image_bytes, name=IMAGE_BYTES):
    """In-graph check that a [batch] string tensor holds at least one element and that every
    element is PNG or JPEG data.

    Returns `image_bytes` with a dependency on the check, so nothing decodes before it.

    Raises (when run):
      tf.errors.InvalidArgumentError: "image_bytes[i] is not a PNG or JPEG image: N bytes
        starting with ..." for the first bad element, with a hint for the usual mistakes
        (base64 text sent as bytes, DICOM files).
    """
    ok = tf.logical_or(tf.strings.substr(image_bytes, 0, len(PNG_SIGNATURE)) == PNG_SIGNATURE,
                       tf.strings.substr(image_bytes, 0, len(JPEG_SIGNATURE)) == JPEG_SIGNATURE)
    first = tf.concat([tf.where(tf.logical_not(ok))[:, 0], [0]], axis=0)[0]
    sample = tf.gather(tf.concat([image_bytes, [b""]], axis=0), first)  # safe on empty batches
    message = tf.strings.format(
        name + "[{}] is not a PNG or JPEG image: {} bytes starting with {}. Send the raw bytes "
        "of the encoded file (in a TF Serving REST request as a b64 object holding the base64 "
        "of the file; text starting with iVBOR or /9j/ is base64 encoded twice). DICOM and "
        "other formats are not accepted here: decode them and use the predict_pixels "
        "signature.",
        [first, tf.strings.length(sample), tf.strings.substr(sample, 0, 12)])
    checks = [
        tf.debugging.Assert(tf.size(image_bytes) > 0, [
            name + " is empty: send at least one encoded image (a batch of 0 images)"]),
        tf.debugging.Assert(tf.reduce_all(ok), [message], name="check_image_bytes"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(image_bytes)


def check_pixels(images, name=IMAGES):
    """In-graph check that decoded pixels are a non-empty batch of finite values in [0, 1]."""
    shape = tf.shape(images)
    lo, hi = tf.reduce_min(images), tf.reduce_max(images)
    checks = [
        tf.debugging.Assert(shape[0] > 0, [
            name + " is empty: send at least one image (a batch of 0 images)"]),
        tf.debugging.Assert(
            tf.logical_and(shape[1] > 0, shape[2] > 0),
            [tf.strings.format(name + " must have height and width > 0, got shape {}", shape)]),
        tf.debugging.Assert(
            tf.logical_or(tf.equal(tf.size(images), 0),  # reported by the checks above
                          tf.logical_and(lo >= 0.0, hi <= 1.0)),
            [tf.strings.format(name + " must be float32 grey pixels in [0, 1] (lungs dark), got "
                               "values from {} to {}", [lo, hi])]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def check_image_size(image_bytes, max_pixels, name=IMAGE_BYTES):
    """In-graph check, from the file headers and before any decoding, that every encoded image of
    a [batch] string tensor has at most `max_pixels` pixels; returns `image_bytes` with a
    dependency on it.

    Raises (when run):
      tf.errors.InvalidArgumentError: "image_bytes[i] is H x W = N pixels; this model accepts at
        most M (max_image_pixels in its metadata)" for the first image over the limit.
    """
    shapes = tf.map_fn(preprocessing.encoded_image_shape, image_bytes,
                       fn_output_signature=tf.TensorSpec([2], tf.int64))
    shapes = tf.reshape(shapes, [-1, 2])
    pixels = shapes[:, 0] * shapes[:, 1]
    too_big = pixels > max_pixels
    first = tf.concat([tf.where(too_big)[:, 0], [0]], axis=0)[0]
    shape = tf.gather(tf.concat([shapes, [[0, 0]]], axis=0), first)
    message = tf.strings.format(
        name + "[{}] is {} x {} = {} pixels; this model accepts at most " + f"{max_pixels:,}"
        + " (max_image_pixels in its metadata). Downscale the image before sending it.",
        [first, shape[0], shape[1], shape[0] * shape[1]])
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(too_big)), [message],
                                name="check_image_size")
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def next_version(export_dir):
    """1 + the largest numeric version directory under export_dir (1 when there is none)."""
    if not files.isdir(export_dir):
        return 1
    versions = [int(d) for d in files.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def export_classifier(model: classifier_lib.CXRClassifier, export_dir: str | os.PathLike,
                      resize_size: int | None = None, thresholds: Sequence[float] | None = None,
                      version: int | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                      model_name: str = "cxr", warmup: bool = True, report: dict | None = None,
                      segmenter_info: dict | None = None) -> str:
    """Writes `model` to `export_dir/<version>/` and returns that path.

    Args:
      model: a trained CXRClassifier.
      export_dir: the model base path TF Serving watches.
      resize_size: side images are resized to before the centre crop to model.input_size
        (the training/evaluation setting; default: no crop).
      thresholds: per-class decision thresholds (14 floats); default 0.5 for every class.
      version: positive integer; default is the next free version.
      max_image_pixels: largest image (height x width) the signatures accept.
      model_name: the name TF Serving serves it under (in the warm-up requests).
      warmup: write assets.extra/tf_serving_warmup_requests (TF Serving replays it on load;
        needs the tensorflow-serving-api protos: without them a warning, and no file).
      report: the evaluation report dict the thresholds came from, for the model card
        (assets.extra/MODEL_CARD.md, always written; without a report it says so).
      segmenter_info: the shipped segmenter's record when the model carries it, for the card.

    The version directory is written under a temporary name and renamed when complete, so a
    failed export never leaves a partial version that TF Serving would try to load; its folders
    and files get the usual modes (0755 and 0644 under umask 022), so a TF Serving process
    running as another user can read them. Exports into one `export_dir` take turns (a lock
    file), and the first to run removes what killed exports left behind (`.tmp-*`).
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
    version_given = version
    version = int(version) if version is not None else next_version(export_dir)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    if version_given is not None and files.exists(os.path.join(export_dir, str(version))):
        raise FileExistsError(f"Export version directory already exists: "
                              f"{os.path.join(export_dir, str(version))}; choose another version "
                              f"or remove it")
    max_image_pixels = int(max_image_pixels)
    if max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be a positive number of pixels, got "
                         f"{max_image_pixels}")
    explain = model.explain_model()
    thresholds_t = tf.constant(thresholds)
    min_coverage = model.min_mask_coverage if model.feature_weighting else 0.0

    def outputs(images):
        out = explain(images, training=False)
        probs = out[classifier_lib.PROBABILITIES]
        coverage = out[classifier_lib.MASK_COVERAGE]
        if model.feature_weighting:
            ok, reason = anatomy.check(out[classifier_lib.STRUCTURE_PROBS], coverage,
                                       min_coverage)
        else:
            ok, reason = tf.ones_like(coverage, tf.int32), tf.fill(tf.shape(coverage), "")
        return {
            classifier_lib.PROBABILITIES: probs,
            DECISIONS: tf.cast(probs >= thresholds_t, tf.int32) * ok[:, None],
            classifier_lib.MASK_COVERAGE: coverage,
            LOW_MASK_COVERAGE: tf.cast(coverage < min_coverage, tf.int32),
            ANATOMY_OK: ok,
            ANATOMY_REASON: reason,
            classifier_lib.CAMS: tf.cast(out[classifier_lib.CAMS], tf.float32),
            classifier_lib.GRID_MASK: tf.cast(out[classifier_lib.GRID_MASK], tf.float32),
        }

    def serve_bytes(image_bytes):
        image_bytes = check_image_size(check_encoded_images(image_bytes), max_image_pixels)
        images = tf.map_fn(
            lambda b: preprocessing.model_input_from_bytes(b, size, resize_size), image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
        return outputs(images)

    def serve_pixels(images):
        shape = tf.shape(images)
        check = tf.debugging.Assert(
            tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64) <= max_image_pixels,
            [tf.strings.format(IMAGES + " are {} x {} pixels each; this model accepts at most "
                               + f"{max_image_pixels:,}" + " (max_image_pixels in its metadata)",
                               [shape[1], shape[2]])])
        with tf.control_dependencies([check]):
            images = tf.identity(images)
        return outputs(preprocessing.resize_and_crop(check_pixels(images), size, resize_size))

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
        "mask_threshold": model.mask_threshold,
        "mask_dilation": model.mask_dilation,
        "anatomy_check": bool(model.feature_weighting),
        "max_image_pixels": max_image_pixels,
        "version": version,
        "cxr_tf_version": cxr_tf.__version__,
        "input_contract": "encoded PNG/JPEG bytes, or float32 [0, 1] grey pixels (lungs dark)",
    }
    def metadata_fn(meta_json, version):
        def metadata(ignored):
            del ignored  # TF Serving's REST API needs an input; the value does not matter
            return {
                "label_names": tf.constant(meta["label_names"]),
                "thresholds": thresholds_t,
                "input_size": tf.constant(size, tf.int32),
                "resize_size": tf.constant(resize_size, tf.int32),
                "min_mask_coverage": tf.constant(min_coverage, tf.float32),
                "max_image_pixels": tf.constant(max_image_pixels, tf.int64),
                "model_name": tf.constant(model.name),
                "version": tf.constant(version, tf.int64),
                "cxr_tf_version": tf.constant(cxr_tf.__version__),
                METADATA_JSON: tf.constant(meta_json),
            }
        return metadata

    files.makedirs(export_dir)
    # On an object store the lock file lives on this machine (files.lock_path_for).
    lock = (os.path.join(export_dir, EXPORT_LOCK) if files.is_local(export_dir)
            else files.lock_path_for(export_dir))
    with files.exclusive_lock(lock, "cxr-export"):
        stale = files.remove_stale_temporaries(export_dir)
        if stale:
            log.info("Removed %s left in %s by an interrupted export", ", ".join(stale),
                     export_dir)
        if version_given is None:
            version = next_version(export_dir)  # again: another export may have just finished
        final = os.path.join(export_dir, str(version))
        if files.exists(final):
            raise FileExistsError(f"Export version directory already exists: {final}; choose "
                                  f"another version or remove it")
        meta["version"] = version
        meta_json = json.dumps(meta, sort_keys=True)
        with files.atomic_path(final) as tmp:
            archive = _archive(model, serve_bytes, serve_pixels, metadata_fn(meta_json, version))
            archive.write_out(tmp, verbose=False)
            files.makedirs(os.path.join(tmp, "assets.extra"))
            with files.open_file(os.path.join(tmp, METADATA_FILE), "w") as f:
                f.write(json.dumps(meta, indent=2))
            with files.open_file(os.path.join(tmp, "assets.extra", model_card.CARD_FILE),
                                 "w") as f:
                f.write(model_card.model_card(meta, report, segmenter_info))
            if warmup:
                try:
                    tf_serving.write_warmup(tmp, model_name)
                except ImportError as e:
                    log.warning("No warm-up requests written: %s", e)
            if files.is_local(tmp):  # object stores have no file modes
                files.make_readable(tmp)
    return final


def _archive(model, serve_bytes, serve_pixels, metadata):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_DEFAULT, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    archive.add_endpoint(PREDICT_PIXELS, serve_pixels,
                         input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32,
                                                        name=IMAGES)])
    archive.add_endpoint(METADATA, metadata,
                         input_signature=[tf.TensorSpec([], tf.int32, name=METADATA_INPUT)])
    return archive


__all__ = ["ANATOMY_OK", "ANATOMY_REASON", "DECISIONS", "IMAGE_BYTES", "IMAGES",
           "LOW_MASK_COVERAGE", "METADATA", "METADATA_FILE", "METADATA_INPUT", "METADATA_JSON",
           "PREDICT_PIXELS", "SERVING_DEFAULT", "check_encoded_images", "check_image_size",
           "check_pixels", "export_classifier", "load_exported", "next_version", "read_metadata"]
