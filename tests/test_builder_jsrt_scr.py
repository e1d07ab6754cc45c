"""The jsrt_scr TFDS builder on generated raw .IMG films and SCR .gif / .png masks."""

import functools
import os

import cv2
import numpy as np
import pytest

from cxr_tf import labels
from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.data.builders import _common, _imaging, jsrt_scr

import builder_fixtures as bf

SIZE = 64
FOLD1 = {"JPCLN001", "JPCLN003", "JPCNN001"}  # odd numbers
FOLD2 = {"JPCLN002", "JPCLN004", "JPCNN002"}


def build(manual_dir, data_dir):
    builder = jsrt_scr.make_builder(str(data_dir), image_size=SIZE)
    return datasets.prepare(builder, manual_dir=str(manual_dir))


def examples(builder, split):
    return {e[fk.IMAGE_ID].decode(): e
            for e in datasets.load_split(builder, split).as_numpy_iterator()}


def all_examples(builder, got=None):
    got = got or {s: examples(builder, s) for s in builder.info.splits}
    return {k: v for split in got.values() for k, v in split.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("jsrt")
    shown = bf.make_jsrt_scr(root / "raw", swap_lung_folders=("JPCLN002",),
                             no_clavicles=("JPCNN001",))
    builder = build(root / "raw", root / "tfds")
    return shown, builder, {s: examples(builder, s) for s in builder.info.splits}


def expected_mask(frac, source_side=1024):
    """The stored mask a fixture rectangle should give: pixels whose centre lies inside the
    rectangle as drawn in the source frame (bf.box_mask truncates its edges to source pixels)."""
    edges = [int(f * source_side) / source_side for f in frac]
    centres = (np.arange(SIZE) + 0.5) / SIZE
    rows = (centres >= edges[1]) & (centres < edges[3])
    cols = (centres >= edges[0]) & (centres < edges[2])
    return rows[:, None] & cols[None, :]


def centroid_x(mask):
    return np.nonzero(mask)[1].mean()


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_splits_follow_the_scr_folds(built):
    _, builder, got = built
    train, val, test = (set(got[s]) for s in ("train", "validation", "test"))
    assert test == FOLD2 and train | val == FOLD1 and len(val) == 1 and not train & val
    assert val == _common.hash_pick(FOLD1, 0.1, 0)
    got = all_examples(builder, got)
    assert {k: int(e[fk.FOLD]) for k, e in got.items()} == {
        **{k: 1 for k in FOLD1}, **{k: 2 for k in FOLD2}}
    assert all(bool(e[fk.NODULE]) == k.startswith("JPCLN") for k, e in got.items())


def test_raw_img_is_read_big_endian_12_bit_with_inverted_polarity(built):
    shown, builder, got = built
    got = all_examples(builder, got)
    for name in ("JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002",  # .IMG
                 "JPCLN003", "JPCLN004"):  # 16-bit PNG redistribution
        display8 = np.round(shown[name] * (255 / 4095)).astype(np.uint8)
        expected = cv2.resize(display8, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        image = got[name][fk.IMAGE]
        assert image.shape == (SIZE, SIZE, 1) and image.dtype == np.uint8
        assert np.abs(image[..., 0].astype(int) - expected).max() <= 1, name


def test_masks_aligned_in_structure_order_with_left_meaning_patient_left(built):
    _, builder, got = built
    truth = {s: expected_mask(f) for s, f in
             zip(labels.STRUCTURES, (bf.LEFT_LUNG, bf.RIGHT_LUNG, bf.HEART))}
    for name, e in all_examples(builder, got).items():
        masks = e[fk.MASKS]
        assert masks.shape == (SIZE, SIZE, 3) and set(np.unique(masks)) <= {0, 255}
        for k, s in enumerate(labels.STRUCTURES):
            assert iou(masks[..., k] > 0, truth[s]) > 0.97, (name, s)
        # Patient's left lung lies on the image's right, also for JPCLN002 whose files were
        # named by image side.
        assert centroid_x(masks[..., 0]) > SIZE / 2 > centroid_x(masks[..., 1])
        lungs = (masks[..., 0] > 0) | (masks[..., 1] > 0)
        image = e[fk.IMAGE][..., 0]
        assert image[lungs].mean() < 60 < image[~lungs & (masks[..., 2] == 0)].mean()
    notes = builder.info.metadata["build_summary"]["notes"]
    assert notes["lung masks named by image side (swapped)"] == 1
    assert builder.info.metadata["structure_names"] == list(labels.STRUCTURES)


def test_clavicles_kept_when_present(built):
    _, builder, got = built
    for name, e in all_examples(builder, got).items():
        clav = e[fk.CLAVICLES]
        assert clav.shape == (SIZE, SIZE, 2)
        if name == "JPCNN001":
            assert not e[fk.HAS_CLAVICLES] and not clav.any()
        else:
            assert e[fk.HAS_CLAVICLES]
            assert iou(clav[..., 0] > 0, expected_mask(bf.LEFT_CLAVICLE)) > 0.97
            assert iou(clav[..., 1] > 0, expected_mask(bf.RIGHT_CLAVICLE)) > 0.97


def test_segmentation_pipeline_reads_the_records_unchanged(built):
    _, builder, _ = built
    parse = functools.partial(pipeline.parse_segmentation, size=32)
    x, y = next(iter(pipeline.make_dataset(datasets.load_split(builder, "test"), parse, 3,
                                           training=False)))
    assert x.shape == (3, 32, 32, 1) and y.shape == (3, 32, 32, 3)
    assert set(np.unique(y.numpy())) == {0.0, 1.0}
    lungs = functools.partial(pipeline.parse_lung_segmentation, size=32)
    x, y = next(iter(pipeline.make_dataset(datasets.load_split(builder, "test"), lungs, 3,
                                           training=False)))
    assert y.shape == (3, 32, 32, 2)


def test_unreadable_img_and_incomplete_masks_are_counted_skips(tmp_path):
    manual = tmp_path / "raw"
    bf.make_jsrt_scr(manual, raw=("JPCLN001", "JPCLN002", "JPCLN003", "JPCLN004", "JPCLN007",
                                  "JPCNN002"),
                     png=(), mask_ext=".png", missing_heart=("JPCLN007",), mask_side=512)
    bad = os.path.join(manual, "All247images", "JPCLN004.IMG")
    with open(bad, "r+b") as f:
        f.truncate(1000)
    builder = build(manual, tmp_path / "tfds")
    s = builder.info.metadata["build_summary"]
    assert s["skipped"]["image_unreadable"] == 1
    assert "JPCLN004.IMG" in s["examples"]["image_unreadable"][0]
    assert "1,000 bytes" in s["examples"]["image_unreadable"][0]
    assert s["skipped"]["incomplete_masks"] == 1
    assert "JPCLN007" in s["examples"]["incomplete_masks"][0]
    assert "heart" in s["examples"]["incomplete_masks"][0]
    assert set(all_examples(builder)) == {"JPCLN001", "JPCLN002", "JPCLN003", "JPCNN002"}


def test_duplicate_image_fails_cleanly_and_rerun_is_idempotent(tmp_path):
    manual = tmp_path / "raw"
    bf.make_jsrt_scr(manual, raw=("JPCLN001", "JPCLN002", "JPCLN003"), png=())
    dup = os.path.join(manual, "png", "JPCLN002.png")
    bf.write_png(dup, np.zeros((64, 64), np.uint8))
    with pytest.raises(jsrt_scr.DataError, match="Image JPCLN002 found twice") as err:
        build(manual, tmp_path / "tfds")
    assert dup in str(err.value)
    assert not jsrt_scr.make_builder(str(tmp_path / "tfds"), image_size=SIZE).is_prepared()
    os.remove(dup)
    first = build(manual, tmp_path / "tfds")
    shards = sorted(f for f in os.listdir(first.data_dir) if ".tfrecord" in f)
    mtimes = [os.stat(os.path.join(first.data_dir, f)).st_mtime_ns for f in shards]
    again = build(manual, tmp_path / "tfds")
    assert [os.stat(os.path.join(again.data_dir, f)).st_mtime_ns for f in shards] == mtimes


def test_no_masks_at_all_says_what_layout_is_expected(tmp_path):
    manual = tmp_path / "raw"
    bf.write_jsrt_raw(os.path.join(manual, "All247images", "JPCLN001.IMG"),
                      np.zeros((2048, 2048), np.uint16))
    with pytest.raises(jsrt_scr.DataError, match="fold1/masks/left lung"):
        build(manual, tmp_path / "tfds")


def test_16_bit_files_holding_12_bit_values_use_the_12_bit_range(tmp_path):
    grey, note = _imaging.to_grey8(np.array([[0, 2048, 4095]], np.uint16))
    assert grey.tolist() == [[0, 128, 255]] and note == "12bit-in-16bit"
    grey, note = _imaging.to_grey8(np.array([[0, 257 * 128, 65535]], np.uint16))
    assert grey.tolist() == [[0, 128, 255]] and note == ""


def test_gif_masks_read_without_opencv_gif_support(tmp_path):
    mask = bf.box_mask((40, 30), bf.HEART)
    bf.write_gif(str(tmp_path / "m.gif"), mask)
    with open(tmp_path / "m.gif", "rb") as f:
        grey = _imaging._decode_gif_with_pil(f.read())
    np.testing.assert_array_equal(grey > 127, mask)
    np.testing.assert_array_equal(_imaging.read_mask(str(tmp_path / "m.gif")), mask)


def test_a_mask_found_twice_fails_naming_both_files(tmp_path):
    manual = tmp_path / "raw"
    bf.make_jsrt_scr(manual, raw=("JPCLN001",), png=())
    dup = os.path.join(manual, "extra", "fold1", "masks", "heart", "JPCLN001.png")
    bf.write_png(dup, np.zeros((64, 64), np.uint8))
    with pytest.raises(jsrt_scr.DataError, match="Heart mask of JPCLN001 found twice") as err:
        jsrt_scr.find_cases(str(manual))
    assert dup in str(err.value)
