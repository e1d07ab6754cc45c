"""The builders on the public redistributions users find: JSRT as PNG with SCR's gifs without
fold folders, and lungs-only sets with one both-lungs mask per film (Montgomery and Shenzhen
mixed in one folder)."""

import numpy as np
import pytest

from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.data.builders import jsrt_scr, montgomery, shenzhen

import builder_fixtures as bf

SIZE = 64


def examples(builder):
    return {e[fk.IMAGE_ID].decode(): (split, e) for split in builder.info.splits
            for e in datasets.load_split(builder, split).as_numpy_iterator()}


def test_jsrt_png_copy_with_nested_mask_folders_and_folds_from_numbers(tmp_path):
    manual = bf.make_jsrt_public_copy(tmp_path / "raw")
    images, masks, folds = jsrt_scr.find_cases(manual)
    assert sorted(images) == ["JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002"]
    assert images["JPCLN001"].endswith("JPCLN001.IMG.png")
    assert sorted(masks["JPCLN001"]) == ["heart", "left_clavicle", "left_lung", "right_clavicle",
                                         "right_lung"]
    assert all(p.endswith(".gif") for p in masks["JPCLN001"].values())  # _png copies ignored
    # SCR: odd film numbers are fold 1, even fold 2.
    assert {n: f for n, (f, _) in folds.items()} == {"JPCLN001": 1, "JPCLN002": 2,
                                                     "JPCNN001": 1, "JPCNN002": 2}
    builder = datasets.prepare(jsrt_scr.make_builder(str(tmp_path / "tfds"), image_size=SIZE),
                               manual_dir=manual)
    got = examples(builder)
    assert {n: s for n, (s, _) in got.items() if s == "test"} == {"JPCLN002": "test",
                                                                  "JPCNN002": "test"}
    _, e = got["JPCLN001"]
    cols = [np.nonzero(e[fk.MASKS][..., k])[1].mean() for k in range(2)]
    assert cols[0] > SIZE / 2 > cols[1]  # left lung (patient's left) on the image's right
    assert e[fk.IMAGE][..., 0].mean() > 0  # an RGB PNG became one grey channel


@pytest.fixture(scope="module")
def nlm_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlm")
    manual = bf.make_nlm_public_copy(root / "raw", mask_suffix=("CHNCXR_0002_1",))
    built = {}
    for module in (montgomery, shenzhen):
        builder = module.make_builder(str(root / "tfds"), image_size=SIZE)
        built[builder.name] = datasets.prepare(builder, manual_dir=manual)
    return built


def test_mixed_nlm_folder_splits_between_the_two_builders(nlm_copy):
    mcu, chn = examples(nlm_copy["montgomery"]), examples(nlm_copy["shenzhen"])
    assert sorted(mcu) == ["MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0"]
    assert sorted(chn) == ["CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0003_0", "CHNCXR_0004_1"]
    summary = nlm_copy["montgomery"].info.metadata["build_summary"]
    assert summary["skipped"]["other_data_set"] == 4  # counted, not silently dropped
    assert nlm_copy["shenzhen"].info.metadata["build_summary"]["skipped"]["other_data_set"] == 3
    assert bool(chn["CHNCXR_0002_1"][1][fk.TUBERCULOSIS])  # the _mask suffix was matched


def test_both_lungs_masks_are_split_into_sides_only_where_reliable(nlm_copy):
    chn = examples(nlm_copy["shenzhen"])
    _, e = chn["CHNCXR_0001_0"]
    assert bool(e[fk.LUNG_SIDES])
    left, right = e[fk.LUNG_MASKS][..., 0] > 0, e[fk.LUNG_MASKS][..., 1] > 0
    assert np.nonzero(left)[1].mean() > SIZE / 2 > np.nonzero(right)[1].mean()
    np.testing.assert_array_equal(left | right, e[fk.LUNGS][..., 0] > 0)
    _, touching = chn["CHNCXR_0004_1"]
    assert not bool(touching[fk.LUNG_SIDES])
    assert not touching[fk.LUNG_MASKS].any() and touching[fk.LUNGS].any()
    notes = nlm_copy["shenzhen"].info.metadata["build_summary"]["notes"]
    assert notes["both-lungs mask split into sides"] == 3
    assert notes["both-lungs mask not split into sides (lungs touch or extra pieces): "
                 "union only"] == 1


def test_partial_targets_know_only_what_each_data_set_labels(nlm_copy):
    for name, expected_known in (("CHNCXR_0001_0", [1, 1, 0, 1]),
                                 ("CHNCXR_0004_1", [0, 0, 0, 1])):
        _, e = examples(nlm_copy["shenzhen"])[name]
        _, (masks, known) = pipeline.parse_partial_segmentation(e, size=32)
        np.testing.assert_array_equal(known.numpy(), expected_known)
        assert masks.shape == (32, 32, 4) and not masks.numpy()[..., 2].any()  # no heart
