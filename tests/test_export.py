"""Export: layout, metadata, both signatures, and parity of served and evaluated preprocessing.

Parity: the same image through (a) the tf.data evaluation pipeline and the in-memory model and
(b) the exported `serving_default` signature on its encoded bytes gives the same outputs within
1e-5, for the stored square size, a non-square image of another size, 16-bit and RGBA PNGs, and
with resize_size > input_size (the paper's resize-then-centre-crop).
"""

import functools
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.serving import export as export_lib

import serving_fixtures as sf

OUTPUTS = ("probabilities", "decisions", "mask_coverage", "low_mask_coverage",
           "class_activation_maps", "grid_mask", "anatomy_ok", "anatomy_reason")


@pytest.fixture(scope="module")
def exported(tiny_segmenter_path, tmp_path_factory):
    """No crop: resize_size == input_size == 64."""
    model, path = sf.tiny_export(tiny_segmenter_path, tmp_path_factory, resize_size=64)
    return model, path, sf.THRESHOLDS


@pytest.fixture(scope="module")
def exported_crop(tiny_segmenter_path, tmp_path_factory):
    """Resize to 80, centre-crop 64 (the paper's 256 -> 224 geometry, scaled down)."""
    return sf.tiny_export(tiny_segmenter_path, tmp_path_factory, resize_size=80)


def test_layout_metadata_and_versions(exported):
    model, path, thresholds = exported
    assert os.path.basename(path) == "1"
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]
    loaded, meta = export_lib.load_exported(path)
    assert meta["label_names"] == list(labels.FINDINGS)
    np.testing.assert_allclose(meta["thresholds"], thresholds, rtol=1e-6)
    assert meta["input_size"] == 64 and meta["resize_size"] == 64 and meta["version"] == 1
    assert meta["min_mask_coverage"] == pytest.approx(model.min_mask_coverage)
    assert meta["model_name"] == "cxr_irnet" and meta["feature_weighting"] is True
    assert export_lib.next_version(os.path.dirname(path)) == 2

    # The graph carries everything (TF Serving never reads assets.extra).
    raw = loaded.signatures[export_lib.METADATA](ignored=tf.constant(0))
    assert [s.decode() for s in raw["label_names"].numpy()] == list(labels.FINDINGS)
    np.testing.assert_allclose(raw["thresholds"].numpy(), thresholds, rtol=1e-6)
    assert int(raw["input_size"]) == 64 and int(raw["resize_size"]) == 64
    assert int(raw["version"]) == 1 and raw["model_name"].numpy() == b"cxr_irnet"
    assert float(raw["min_mask_coverage"]) == pytest.approx(model.min_mask_coverage)
    assert json.loads(raw["metadata_json"].numpy()) == meta
    with open(os.path.join(path, export_lib.METADATA_FILE)) as f:
        assert json.load(f) == meta


def test_load_refuses_metadata_that_disagrees_with_the_graph(exported, tmp_path):
    _, path, _ = exported
    copy = str(tmp_path / "7")
    shutil.copytree(path, copy)
    meta_file = os.path.join(copy, export_lib.METADATA_FILE)
    with open(meta_file) as f:
        meta = json.load(f)
    meta["thresholds"][0] = 0.99
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="thresholds is .* but the SavedModel says"):
        export_lib.load_exported(copy)


def test_both_signatures_have_the_same_outputs(exported):
    model, path, thresholds = exported
    loaded, _ = export_lib.load_exported(path)
    image = sf.radiograph(64, 64, seed=3)
    by_bytes = loaded.signatures[export_lib.SERVING_DEFAULT](
        image_bytes=tf.constant([sf.encode(image, "png")]))
    by_pixels = loaded.signatures[export_lib.PREDICT_PIXELS](
        images=tf.constant(image[None, ..., None] / np.float32(255)))
    assert sorted(by_bytes) == sorted(by_pixels) == sorted(OUTPUTS)
    for key in OUTPUTS:
        if key == "anatomy_reason":
            np.testing.assert_array_equal(by_bytes[key], by_pixels[key])
            continue
        np.testing.assert_allclose(by_bytes[key], by_pixels[key], atol=1e-6, err_msg=key)
    assert by_bytes["probabilities"].shape == (1, 14)
    assert by_bytes["class_activation_maps"].shape == (1, 2, 2, 14)
    assert by_bytes["decisions"].dtype == tf.int32
    np.testing.assert_array_equal(by_bytes["decisions"],
                                  (by_bytes["probabilities"].numpy() >= thresholds).astype(int)
                                  * by_bytes["anatomy_ok"].numpy()[:, None])


def _evaluation_path(model, stored, resize_size):
    """Outputs for stored images via the tf.data evaluation pipeline and the in-memory model."""
    examples = tf.data.Dataset.from_generator(
        lambda: ({fk.IMAGE: img, fk.LABELS: np.zeros(14, np.int64), fk.IMAGE_ID: b"x"}
                 for img in stored),
        output_signature={fk.IMAGE: tf.TensorSpec([None, None, 1], tf.as_dtype(stored[0].dtype)),
                          fk.LABELS: tf.TensorSpec([14], tf.int64),
                          fk.IMAGE_ID: tf.TensorSpec([], tf.string)})
    parse = functools.partial(pipeline.parse_classification, size=model.input_size,
                              resize_size=resize_size)
    explain = model.explain_model()
    outs = [explain(x, training=False)
            for x, _ in pipeline.make_dataset(examples, parse, batch_size=8, training=False)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _assert_parity(model, path, stored, encodings, resize_size):
    loaded, meta = export_lib.load_exported(path)
    assert meta["resize_size"] == resize_size
    expected = _evaluation_path(model, stored, resize_size)
    served = loaded.signatures[export_lib.SERVING_DEFAULT](image_bytes=tf.constant(
        [sf.encode(img[..., 0], enc) for img, enc in zip(stored, encodings)]))
    for key in ("probabilities", "mask_coverage", "class_activation_maps"):
        np.testing.assert_allclose(served[key].numpy(), expected[key], atol=1e-5, rtol=0,
                                   err_msg=key)
    np.testing.assert_array_equal(
        served["decisions"], (expected["probabilities"] >= sf.THRESHOLDS).astype(int)
        * served["anatomy_ok"].numpy()[:, None])


def test_parity_on_the_stored_images(exported, tiny_builder):
    model, path, _ = exported
    stored = [e[fk.IMAGE] for e in
              datasets.load_split(tiny_builder, "test").take(4).as_numpy_iterator()]
    assert stored[0].shape == (64, 64, 1)
    _assert_parity(model, path, stored, ["png"] * 4, resize_size=64)


@pytest.mark.parametrize("crop", [False, True], ids=["resize", "resize_and_crop"])
def test_parity_on_other_sizes_depths_and_channels(exported, exported_crop, crop):
    model, path = exported_crop if crop else exported[:2]
    stored = [sf.radiograph(90, 70, seed=1)[..., None],            # non-square, larger
              sf.radiograph(50, 120, seed=2)[..., None],           # non-square, other way
              sf.radiograph(100, 75, seed=3, depth=np.uint16)[..., None],  # 16-bit PNG
              sf.radiograph(64, 64, seed=4)[..., None]]            # grey stored as RGBA
    # 16-bit images cannot share a batch with 8-bit ones in the tf.data path: run separately.
    _assert_parity(model, path, stored[:2] + stored[3:], ["png", "png", "rgba"],
                   resize_size=80 if crop else 64)
    _assert_parity(model, path, stored[2:3], ["png"], resize_size=80 if crop else 64)


@pytest.mark.parametrize("data, message", [
    (b"not an image", r"image_bytes\[1\] is not a PNG or JPEG image: 12 bytes"),
    (b"", r"image_bytes\[1\] is not a PNG or JPEG image: 0 bytes"),
    (b"iVBORw0KGgoAAAANSUhEUg", r"image_bytes\[1\] .* base64 encoded twice"),
    (b"\x00" * 128 + b"DICM", r"image_bytes\[1\] .* DICOM"),
    (b"\x89PNG\r\n\x1a\n not really", "PNG"),
    (b"\xff\xd8\xff\xe0 truncated", "JPEG"),
])
def test_bad_bytes_are_an_invalid_argument_that_names_the_problem(exported, data, message):
    _, path, _ = exported
    loaded, _ = export_lib.load_exported(path)
    good = sf.encode(sf.radiograph(64, 64), "png")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[export_lib.SERVING_DEFAULT](image_bytes=tf.constant([good, data]))


@pytest.mark.parametrize("images, message", [
    (np.full((1, 8, 8, 1), 2.0, np.float32), r"in \[0, 1\].*from 2 to 2"),
    (np.full((1, 8, 8, 1), np.nan, np.float32), r"in \[0, 1\]"),
    (np.zeros((1, 0, 8, 1), np.float32), "height and width > 0"),
])
def test_bad_pixels_are_an_invalid_argument(exported, images, message):
    _, path, _ = exported
    loaded, _ = export_lib.load_exported(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[export_lib.PREDICT_PIXELS](images=tf.constant(images))


def test_empty_batches_are_refused_clearly(exported):
    _, path, _ = exported
    loaded, _ = export_lib.load_exported(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes is empty"):
        loaded.signatures[export_lib.SERVING_DEFAULT](image_bytes=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images is empty"):
        loaded.signatures[export_lib.PREDICT_PIXELS](images=tf.zeros((0, 8, 8, 1)))


def test_export_refuses_bad_arguments(exported, tmp_path):
    model, path, _ = exported
    with pytest.raises(ValueError, match="thresholds must be 14 values"):
        export_lib.export_classifier(model, str(tmp_path), thresholds=[0.5] * 3)
    with pytest.raises(ValueError, match="resize_size"):
        export_lib.export_classifier(model, str(tmp_path), resize_size=32)
    with pytest.raises(FileExistsError, match="already exists"):
        export_lib.export_classifier(model, os.path.dirname(path), version=1)
    with pytest.raises(TypeError, match="CXRClassifier"):
        export_lib.export_classifier(model.segmenter, str(tmp_path))
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------ hardening

@pytest.fixture(scope="module")
def region_exported(tmp_path_factory):
    return sf.region_export(tmp_path_factory, max_image_pixels=5000)


def test_anatomy_check_gates_the_decisions_in_the_saved_model(region_exported):
    # A bright film reads as frontal (lungs side by side, heart between): every finding passes
    # its threshold of 0. A black image: no positive finding and a reason, probabilities kept.
    _, path = region_exported
    loaded, meta = export_lib.load_exported(path)
    assert meta["anatomy_check"] is True
    bright = np.full((64, 64), 230, np.uint8)
    black = np.zeros((64, 64), np.uint8)
    out = loaded.signatures[export_lib.SERVING_DEFAULT](image_bytes=tf.constant(
        [sf.encode(bright, "png"), sf.encode(black, "png")]))
    assert out["anatomy_ok"].numpy().tolist() == [1, 0]
    reasons = [r.decode() for r in out["anatomy_reason"].numpy()]
    assert reasons[0] == "" and "covers 0.000 of the feature grid" in reasons[1]
    assert out["decisions"].numpy()[0].sum() == 14 and out["decisions"].numpy()[1].sum() == 0
    assert np.all(out["probabilities"].numpy()[1] > 0)
    np.testing.assert_array_equal(out["grid_mask"].numpy()[0, ..., 0], [[1, 1], [1, 1]])


def test_images_over_the_pixel_limit_are_refused_before_decoding(region_exported):
    _, path = region_exported
    loaded, meta = export_lib.load_exported(path)
    assert meta["max_image_pixels"] == 5000
    serve = loaded.signatures[export_lib.SERVING_DEFAULT]
    ok = sf.encode(np.full((64, 64), 200, np.uint8), "png")  # 4,096 pixels
    big = sf.encode(np.full((100, 60), 200, np.uint8), "jpeg")  # 6,000 pixels
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\] is 100 x 60 = 6000 pixels; this model accepts "
                             r"at most 5,000 \(max_image_pixels"):
        serve(image_bytes=tf.constant([ok, big]))
    # Only the header is read: a 20000 x 20000 PNG header with no image data behind it.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"20000 x 20000 = 400000000"):
        serve(image_bytes=tf.constant([sf.png_header_only(20000, 20000)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"80 x 80 pixels each"):
        loaded.signatures[export_lib.PREDICT_PIXELS](images=tf.zeros([1, 80, 80, 1]))
    assert serve(image_bytes=tf.constant([ok]))["probabilities"].shape == (1, 14)


def test_export_folders_are_readable_by_other_users(tmp_path, region_exported):
    model, _ = region_exported
    previous = os.umask(0o022)
    try:
        path = export_lib.export_classifier(model, str(tmp_path / "export"),
                                            thresholds=np.zeros(14))
    finally:
        os.umask(previous)
    modes = {os.path.relpath(os.path.join(root, name), path): os.stat(
        os.path.join(root, name)).st_mode & 0o777
        for root, dirs, names in os.walk(path) for name in dirs + names}
    modes["."] = os.stat(path).st_mode & 0o777
    dirs = {k for k in modes if os.path.isdir(os.path.join(path, k))}
    assert {modes[k] for k in dirs} == {0o755}
    assert {modes[k] for k in set(modes) - dirs} == {0o644}
    assert "saved_model.pb" in modes and "assets.extra" in dirs


def test_interrupted_exports_are_cleaned_and_exports_take_turns(tmp_path, region_exported):
    import threading

    from cxr_tf import files
    model, _ = region_exported
    base = tmp_path / "export"
    stale = base / ".tmp-1-abcd1234"  # what a killed export (old or new naming) leaves
    (stale / "variables").mkdir(parents=True)
    (base / ".tmp-2-xyz").write_text("half")
    results = []
    with files.exclusive_lock(str(base / export_lib.EXPORT_LOCK)):
        worker = threading.Thread(target=lambda: results.append(export_lib.export_classifier(
            model, str(base), thresholds=np.zeros(14))))
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and not results  # waits for the lock holder
        (base / "1").mkdir()  # the holder finishes a version 1 meanwhile
        (base / "1" / "saved_model.pb").write_bytes(b"")
    worker.join(timeout=300)
    assert results == [str(base / "2")]  # the version is chosen once the turn comes
    assert sorted(os.listdir(base)) == [export_lib.EXPORT_LOCK, "1", "2"]
