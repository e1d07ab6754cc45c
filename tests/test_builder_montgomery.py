"""The montgomery TFDS builder (lung masks only) and the parsers that read lungs-only records."""

import functools
import os

import cv2
import numpy as np
import pytest

from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.data.builders import montgomery

import builder_fixtures as bf

SIZE = 64
NAMES = ("MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0", "MCUCXR_0004_1", "MCUCXR_0005_0",
         "MCUCXR_0006_1")


def build(manual_dir, data_dir):
    builder = montgomery.make_builder(str(data_dir), image_size=SIZE)
    return datasets.prepare(builder, manual_dir=str(manual_dir))


def all_examples(builder):
    return {e[fk.IMAGE_ID].decode(): (split, e) for split in builder.info.splits
            for e in datasets.load_split(builder, split).as_numpy_iterator()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("montgomery")
    # leftMask holds the lung on the image's left: the folders name lungs by image side.
    bf.make_montgomery(root / "raw", NAMES, left_folder_is_image_left=True)
    builder = build(root / "raw", root / "tfds")
    return builder, all_examples(builder)


def test_splits_labels_and_clinical_readings(built):
    builder, got = built
    assert set(got) == set(NAMES)
    counts = {s: info.num_examples for s, info in builder.info.splits.items()}
    assert counts == {"train": 4, "validation": 1, "test": 1}
    for i, name in enumerate(NAMES):
        _, e = got[name]
        assert bool(e[fk.TUBERCULOSIS]) == name.endswith("_1")
        assert e[fk.PATIENT_ID].decode() == name[:-2]
        assert (e[fk.SEX].decode(), int(e[fk.AGE])) == ("MF"[i % 2], 30 + i)


def test_lungs_only_with_patient_left_first_and_images_from_8_and_16_bit(built):
    builder, got = built
    for i, name in enumerate(NAMES):
        _, e = got[name]
        assert fk.MASKS not in e  # no heart annotation: no `masks` feature at all
        lungs = e[fk.LUNG_MASKS]
        assert lungs.shape == (SIZE, SIZE, 2) and set(np.unique(lungs)) <= {0, 255}
        cols = [np.nonzero(lungs[..., k])[1].mean() for k in range(2)]
        assert cols[0] > SIZE / 2 > cols[1]  # left lung (patient's left) on the image's right
        grey = bf.radiograph((120, 100), seed=i)  # the 16-bit files hold grey * 257
        expected = cv2.resize(grey, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        assert np.abs(e[fk.IMAGE][..., 0].astype(int) - expected).max() <= 1
    meta = builder.info.metadata
    assert meta["structure_names"] == ["left_lung", "right_lung"]
    assert meta["heart_annotated"] is False
    notes = meta["build_summary"]["notes"]
    assert notes["lung masks named by image side (swapped)"] == len(NAMES)


def test_parse_segmentation_refuses_lungs_only_records_and_lung_parser_reads_them(built):
    builder, _ = built
    examples = datasets.load_split(builder, "train")
    parse = functools.partial(pipeline.parse_segmentation, size=32)
    with pytest.raises(ValueError, match="parse_lung_segmentation"):
        pipeline.make_dataset(examples, parse, 2, training=False)
    lungs = functools.partial(pipeline.parse_lung_segmentation, size=32)
    x, y = next(iter(pipeline.make_dataset(examples, lungs, 2, training=False)))
    assert x.shape == (2, 32, 32, 1) and y.shape == (2, 32, 32, 2)
    assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0


def test_missing_masks_and_unreadable_images_are_counted_skips(tmp_path):
    manual = tmp_path / "raw"
    bf.make_montgomery(manual, NAMES, left_folder_is_image_left=False,
                       missing_right=("MCUCXR_0002_1",))
    open(os.path.join(manual, "CXR_png", "MCUCXR_0003_0.png"), "wb").close()
    builder = build(manual, tmp_path / "tfds")
    s = builder.info.metadata["build_summary"]
    assert s["skipped"]["image_without_both_masks"] == 1
    assert "MCUCXR_0002_1.png: no rightmask mask" in s["examples"]["image_without_both_masks"][0]
    assert s["skipped"]["image_unreadable"] == 1
    assert "MCUCXR_0003_0.png" in s["examples"]["image_unreadable"][0]
    assert sum(s["built"].values()) == 4
    assert "lung masks named by image side (swapped)" not in s["notes"]


def test_nothing_to_build_fails_cleanly(tmp_path):
    manual = tmp_path / "raw"
    bf.write_png(os.path.join(manual, "CXR_png", "MCUCXR_0001_0.png"),
                 np.zeros((32, 32), np.uint8))
    with pytest.raises(montgomery.DataError, match="ManualMask/leftMask"):
        build(manual, tmp_path / "tfds")
    assert not montgomery.make_builder(str(tmp_path / "tfds"), image_size=SIZE).is_prepared()


def test_a_mask_found_twice_fails_naming_both_files(tmp_path):
    manual = tmp_path / "raw"
    bf.make_montgomery(manual, NAMES[:2])
    dup = os.path.join(manual, "extra", "leftMask", NAMES[0] + ".png")
    bf.write_png(dup, np.zeros((120, 100), np.uint8))
    with pytest.raises(montgomery.DataError, match=f"leftmask file of {NAMES[0]} found twice"
                       ) as err:
        montgomery.find_cases(str(manual))
    assert dup in str(err.value)


def test_a_segmenter_is_scored_on_the_lungs_of_montgomery(built, tiny_segmenter_path):
    from cxr_tf.evaluation import report as report_lib
    from cxr_tf.models import load_model
    builder, _ = built
    segmenter = load_model(tiny_segmenter_path)
    ds, structures = pipeline.segmentation_dataset(builder, "train", segmenter.input_size)
    assert structures == ("left_lung", "right_lung", "lungs")
    _, (masks, known), _ = next(iter(ds))
    # Stored 0/255: both lungs present in every image after scaling and binarising; the heart
    # is never known, the sides are (this copy has one mask per lung).
    assert float(masks.numpy()[..., [0, 1, 3]].sum(axis=(1, 2)).min()) > 0
    np.testing.assert_array_equal(known.numpy()[0], [1, 1, 0, 1])
    seg = report_lib.evaluate_segmenter(segmenter, ds, structures)
    assert set(seg["structures"]) == {"left_lung", "right_lung", "lungs"}
    assert all(0.0 <= s["dice"] <= 1.0 for s in seg["structures"].values())


def test_segmenter_scores_are_split_by_tb_status(built, tiny_segmenter_path, tmp_path):
    """Dice per TB status (file name _1 / _0), each group against the negatives."""
    from cxr_tf.evaluation import report as report_lib
    from cxr_tf.evaluation import runs
    from cxr_tf.models import load_model
    builder, _ = built
    segmenter = load_model(tiny_segmenter_path)
    groups = runs.film_groups(builder, "train")
    assert set(groups) == {"tuberculosis"}
    ids, labels, reference = groups["tuberculosis"]
    assert reference == "negative" and len(ids) == builder.info.splits["train"].num_examples
    assert labels == ["positive" if i.rsplit(".", 1)[0].endswith("_1") else "negative"
                      for i in ids]
    ds, structures = pipeline.segmentation_dataset(builder, "train", segmenter.input_size)
    seg = report_lib.evaluate_segmenter(segmenter, ds, structures, n_resamples=50,
                                        groups=groups)
    lungs = seg["by_group"]["tuberculosis"]["targets"]["lungs"]
    assert sum(g["n"] for g in lungs.values()) == len(ids)
    assert "| lungs | negative |" in report_lib.segmentation_markdown(seg)
    sheet = tmp_path / "worst.png"
    from cxr_tf.evaluation import screening
    screening.worst_films_sheet(segmenter, ds, seg["worst"]["lungs"], str(sheet), columns=2,
                                tile=64)
    image = cv2.imread(str(sheet))
    rows = -(-len(seg["worst"]["lungs"]) // 2)
    assert image.shape == (64 * rows, 128, 3)
    # White above the caption line: the reference outline is drawn.
    assert (image[:44, :64] == 255).all(axis=-1).any()
    with pytest.raises(ValueError, match="other films"):
        report_lib.evaluate_segmenter(segmenter, ds, structures, n_resamples=0,
                                      groups={"tuberculosis": (ids[::-1], labels, reference)})
