"""tf.data pipelines and the shared preprocessing."""

import functools

import cv2
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.data import datasets, pipeline, preprocessing
from cxr_tf.data import features as fk


def _examples(builder, split="train"):
    return datasets.load_split(builder, split)


def test_classification_batches(tiny_builder):
    parse = functools.partial(pipeline.parse_classification, size=32, resize_size=40)
    ds = pipeline.make_dataset(_examples(tiny_builder), parse, 8, training=True)
    x, y = next(iter(ds))
    assert x.shape == (8, 32, 32, 1) and x.dtype == tf.float32
    assert y.shape == (8, 14) and y.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert int(ds.cardinality()) == 48 // 8  # drop_remainder when training


def test_eval_dataset_keeps_order_ids_and_last_partial_batch(tiny_builder):
    parse = functools.partial(pipeline.parse_classification, size=64)
    ds = pipeline.make_dataset(_examples(tiny_builder, "test"), parse, 10, training=False,
                               with_ids=True)
    ids = [i.decode() for batch in ds for i in batch[2].numpy()]
    stored = [e[fk.IMAGE_ID].decode() for e in _examples(tiny_builder, "test").as_numpy_iterator()]
    assert ids == stored and len(ids) == 24


def test_same_seed_same_batches_and_epochs_differ(tiny_builder):
    aug = pipeline.Augmentation(min_crop_fraction=0.8, brightness=0.1, contrast=0.1)
    parse = functools.partial(pipeline.parse_classification, size=64)

    def first_epochs(seed):
        ds = pipeline.make_dataset(_examples(tiny_builder), parse, 8, True, aug=aug, seed=seed,
                                   deterministic=True)
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(2)]

    a, b = first_epochs(1), first_epochs(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # reshuffled and re-augmented every epoch


def test_segmentation_augmentation_keeps_image_and_mask_aligned(tiny_builder):
    aug = pipeline.Augmentation(min_crop_fraction=0.6)
    parse = functools.partial(pipeline.parse_segmentation, size=64)
    ds = pipeline.make_dataset(_examples(tiny_builder), parse, 16, True, aug=aug, seed=3)
    x, m = next(iter(ds))
    assert m.shape == (16, 64, 64, 3)
    assert set(np.unique(m.numpy())) <= {0.0, 1.0}
    x, m = x.numpy()[..., 0], m.numpy()
    lungs = m[..., 0].astype(bool) | m[..., 1].astype(bool)
    heart = m[..., 2].astype(bool)
    for i in range(len(x)):
        # Phantom lungs are dark and the heart bright: holds only if the crop is shared.
        assert x[i][lungs[i]].mean() + 0.1 < x[i][heart[i]].mean()


def test_no_left_right_flip_by_default():
    assert pipeline.Augmentation() == pipeline.NO_AUGMENTATION
    assert not hasattr(pipeline.Augmentation(), "flip")


def test_resize_and_crop_matches_paper_geometry():
    image = tf.reshape(tf.range(256 * 256, dtype=tf.float32), (256, 256, 1))
    out = preprocessing.resize_and_crop(image, 224, 256)
    np.testing.assert_array_equal(out.numpy(), image.numpy()[16:240, 16:240])
    batch = preprocessing.resize_and_crop(tf.zeros((2, 300, 200, 1)), 224, 256)
    assert batch.shape == (2, 224, 224, 1)
    with pytest.raises(ValueError, match="must be >= the crop size"):
        preprocessing.resize_and_crop(image, 224, 200)


@pytest.mark.parametrize("encode", ["png8", "png16", "rgb", "rgba", "jpeg"])
def test_decode_image_bytes_any_format_to_one_channel(encode):
    grey = np.add.outer(np.arange(48) * 2, np.arange(64) * 2).astype(np.uint8)  # smooth, < 256
    if encode == "png8":
        data, expected = cv2.imencode(".png", grey)[1], grey / 255.0
    elif encode == "png16":
        g16 = grey.astype(np.uint16) * 257 + 3
        data, expected = cv2.imencode(".png", g16)[1], g16 / 65535.0
    elif encode == "rgb":
        data, expected = cv2.imencode(".png", np.dstack([grey] * 3))[1], grey / 255.0
    elif encode == "rgba":
        rgba = np.dstack([grey] * 3 + [np.full_like(grey, 255)])
        data, expected = cv2.imencode(".png", rgba)[1], grey / 255.0
    else:
        data = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 100])[1]
        expected = grey / 255.0
    out = preprocessing.decode_image_bytes(tf.constant(data.tobytes())).numpy()
    assert out.shape == (48, 64, 1)
    np.testing.assert_allclose(out[..., 0], expected, atol=0.02 if encode == "jpeg" else 1e-6)


@pytest.mark.parametrize("data, message", [(b"", "empty image bytes"),
                                           (b"\x89PNG\r\n\x1a\nbroken", "PNG")])
def test_decode_rejects_bad_bytes(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        preprocessing.decode_image_bytes(tf.constant(data))


def test_served_full_resolution_image_matches_stored_record_within_8bit_rounding():
    # A full-size radiograph sent to the SavedModel is resized in the graph; the records a model
    # trains on were resized offline by the builders (OpenCV INTER_AREA, stored as 8 bit). The
    # two paths must agree up to that 8-bit rounding, or training and serving see different
    # images.
    from cxr_tf.data.builders import _imaging
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.random((1024, 1000)).astype(np.float32), (0, 0), 6)
    grey = cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    grey[300:320, 100:900] = 255  # sharp edges, where interpolation kernels differ most
    stored = _imaging.resize_image(grey, 256)
    via_records = preprocessing.resize_and_crop(tf.constant(stored[..., None] / 255.0, tf.float32),
                                                224, 256).numpy()
    via_bytes = preprocessing.model_input_from_bytes(
        tf.constant(cv2.imencode(".png", grey)[1].tobytes()), 224, 256).numpy()
    assert np.abs(via_records - via_bytes).max() <= 0.5 / 255 + 1e-6


def test_hospital_augmentation_is_deterministic_for_a_seed_and_keeps_masks_aligned():
    import tensorflow as tf
    size = 48
    image = np.zeros((64, 64, 1), np.uint8)
    image[16:48, 8:28] = 200
    masks = np.zeros((64, 64, 3), np.uint8)
    masks[16:48, 8:28, 1] = 255  # right lung where the bright block is
    example = {"image": image, "masks": masks, "image_id": "a"}
    aug = pipeline.Augmentation(min_crop_fraction=0.9, brightness=0.1, contrast=0.2, gamma=0.3,
                                noise=0.03, blur=1.0, scale=0.12, rotation=8.0, shift=0.05,
                                borders=1.0, overlays=1.0)
    run = lambda s: pipeline.parse_partial_segmentation(  # noqa: E731
        example, size, aug=aug, seed=tf.constant(s, tf.int64))
    (x1, (m1, k1)), (x2, (m2, _)), (x3, _) = run([1, 2]), run([1, 2]), run([3, 4])
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    np.testing.assert_array_equal(m1.numpy(), m2.numpy())
    assert not np.array_equal(x1.numpy(), x3.numpy())
    assert x1.shape == (size, size, 1) and m1.shape == (size, size, 4)
    assert 0.0 <= float(x1.numpy().min()) and float(x1.numpy().max()) <= 1.0
    np.testing.assert_array_equal(k1.numpy(), [1, 1, 1, 1])
    # Geometry moves image and mask together: the bright block and the mask still coincide.
    geometry = pipeline.Augmentation(scale=0.12, rotation=8.0, shift=0.05)
    for s in ([1, 2], [3, 4], [5, 6]):
        x, (m, _) = pipeline.parse_partial_segmentation(example, size, aug=geometry,
                                                        seed=tf.constant(s, tf.int64))
        bright, lung = x.numpy()[..., 0] > 0.4, m.numpy()[..., 1] > 0.5
        assert (bright & lung).sum() / (bright | lung).sum() > 0.9
    # Without geometric augmentation the mask does not move at all.
    still = pipeline.Augmentation(gamma=0.3, noise=0.03, blur=1.0, borders=1.0, overlays=1.0)
    _, (m, _) = pipeline.parse_partial_segmentation(example, 64, aug=still,
                                                    seed=tf.constant([5, 6], tf.int64))
    np.testing.assert_array_equal(m.numpy()[..., 1] > 0.5, masks[..., 1] > 0)


def test_opacity_synthesis_stays_inside_the_lungs_keeps_masks_and_is_deterministic():
    """Pasted opacities change lung pixels only, leave the masks (and every other draw) as they
    were, and are a pure function of the seed; both kinds occur (meniscus, blobs)."""
    import tensorflow as tf

    from cxr_tf.data import augment
    size = 64
    image = np.full((size, size, 1), 60, np.uint8)  # dark lungs, so an opacity shows
    masks = np.zeros((size, size, 3), np.uint8)
    masks[12:54, 6:28, 1] = 255   # right lung (image left)
    masks[12:54, 36:58, 0] = 255  # left lung (image right)
    example = {"image": image, "masks": masks, "image_id": "a"}
    lungs = (masks[..., :2] > 0).any(axis=-1)
    base = pipeline.Augmentation(min_crop_fraction=0.9, noise=0.02, scale=0.1)
    with_opacity = pipeline.Augmentation(min_crop_fraction=0.9, noise=0.02, scale=0.1,
                                         opacities=1.0)
    run = lambda aug, s: pipeline.parse_partial_segmentation(  # noqa: E731
        example, size, aug=aug, seed=tf.constant(s, tf.int64))
    (x1, (m1, _)), (x2, (m2, _)) = run(with_opacity, [1, 2]), run(with_opacity, [1, 2])
    np.testing.assert_array_equal(m1.numpy(), m2.numpy())
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    _, (m0, _) = run(base, [1, 2])
    np.testing.assert_array_equal(m1.numpy(), m0.numpy())  # masks unchanged, and aligned

    # The op itself, no other augmentation: only lung pixels change, and they get brighter.
    x = tf.constant(image / 255.0, tf.float32)
    m = tf.constant(masks / 255.0, tf.float32)
    kinds = set()
    changed_any = 0
    for s in range(12):
        out = augment.opacities(x, m, tf.constant([s, 7], tf.int64), 1.0).numpy()[..., 0]
        diff = out - x.numpy()[..., 0]
        assert np.abs(diff[~lungs]).max() == 0.0
        assert diff.min() >= -1e-6
        changed = diff > 0.05
        changed_any += changed.any()
        if changed.any():
            rows = np.nonzero(changed.any(axis=1))[0]
            # A meniscus reaches the lung's lowest row; blobs are inside, mostly above it.
            kinds.add("meniscus" if rows.max() == 53 and changed[53].sum() > 5 else "blobs")
        again = augment.opacities(x, m, tf.constant([s, 7], tf.int64), 1.0).numpy()[..., 0]
        np.testing.assert_array_equal(out, again)
    assert changed_any == 12 and kinds == {"meniscus", "blobs"}
    off = augment.opacities(x, m, tf.constant([0, 7], tf.int64), 0.0)
    np.testing.assert_array_equal(off.numpy(), x.numpy())
    empty = augment.opacities(x, tf.zeros_like(m), tf.constant([0, 7], tf.int64), 1.0)
    np.testing.assert_array_equal(empty.numpy(), x.numpy())  # no lung: nothing to paste into
