"""The phantom generator and the synthetic_cxr TFDS builder."""

import numpy as np
import pytest

from cxr_tf import labels
from cxr_tf.data import features as fk
from cxr_tf.data import phantom


def test_same_seed_same_case_and_different_seed_differs():
    a = phantom.make_case([3, 0, 7], 64)
    b = phantom.make_case([3, 0, 7], 64)
    c = phantom.make_case([3, 0, 8], 64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_masks_are_exact_anatomy():
    for i in range(20):
        image, masks, _ = phantom.make_case([0, 0, i], 128)
        assert image.dtype == np.uint8 and image.shape == (128, 128)
        assert masks.shape == (128, 128, 3) and set(np.unique(masks)) <= {0, 1}
        left, right, heart = (masks[..., k].astype(bool) for k in range(3))
        assert left.sum() > 500 and right.sum() > 500 and heart.sum() > 300
        cols = np.arange(128)
        # Patient's left lung is on the image's right.
        left_x = (cols[None, :] * left).sum() / left.sum()
        assert left_x > 64 > (cols[None, :] * right).sum() / right.sum()
        assert not (left & right).any()
        assert not ((left | right) & heart).any()  # lung fields exclude the heart shadow
        # Lungs are dark: mean intensity inside lungs well below the mediastinum/heart.
        assert image[left | right].mean() + 40 < image[heart].mean()


def test_each_finding_changes_the_image_inside_lungs_or_heart():
    for k, name in enumerate(labels.FINDINGS):
        prevalence = np.zeros(labels.NUM_FINDINGS)
        prevalence[k] = 1.0
        with_f, masks, y = phantom.make_case([5, k], 128, prevalence=prevalence)
        assert y[k] == 1, name
        # Same seed without the finding: the same random stream up to the labels.
        without, masks0, y0 = phantom.make_case([5, k], 128, prevalence=np.zeros(14))
        region = (masks.any(-1) | masks0.any(-1))
        diff = np.abs(with_f.astype(int) - without.astype(int))
        assert diff[region].mean() > 1.0, f"{name} barely visible inside lungs/heart"
        # Findings live inside the lung-and-heart region (blur may spill a few pixels).
        assert diff[~region].mean() < diff[region].mean(), name


def test_label_prevalence_follows_the_configuration():
    rng = np.random.default_rng(0)
    y = np.stack([phantom.sample_labels(rng) for _ in range(4000)])
    rates = y.mean(0)
    infiltration = labels.finding_index("Infiltration")
    hernia = labels.finding_index("Hernia")
    assert rates[infiltration] == pytest.approx(phantom.DEFAULT_PREVALENCE[infiltration], abs=0.04)
    assert rates[hernia] < rates[infiltration]
    assert (y.sum(1) >= 2).mean() > 0.05  # several findings per image happen
    assert (y.sum(1) == 0).mean() > 0.2   # and normal images


def _tag_states(image):
    """Reads the 14 shortcut tags back from an image (bright squares in the lower strip)."""
    size = image.shape[0]
    states = []
    for k in range(labels.NUM_FINDINGS):
        row, col = divmod(k, 7)
        x, y = 0.2 + col * 0.1, 0.89 + row * 0.06
        states.append(image[int(y * size), int(x * size)] > 200)
    return np.array(states)


def test_shortcut_tags_follow_labels_in_train_and_not_in_test():
    agree_train, agree_test = [], []
    for i in range(150):
        image, masks, y = phantom.make_case([1, 0, i], 128, shortcut="train")
        agree_train.append(_tag_states(image) == y.astype(bool))
        # Tags are outside the lung-and-heart region.
        image2, masks2, y2 = phantom.make_case([1, 2, i], 128, shortcut="test")
        agree_test.append(_tag_states(image2)[y2 == 1].mean() if y2.any() else np.nan)
    assert np.mean(agree_train) > 0.9
    # In test a positive finding has its tag only at the base rate of that tag.
    assert np.nanmean(agree_test) < 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 32"):
        phantom.make_case(0, 16)
    with pytest.raises(ValueError, match="shortcut must be"):
        phantom.make_case(0, 64, shortcut="yes")
    with pytest.raises(ValueError, match="14 entries"):
        phantom.make_case(0, 64, prevalence=[0.1] * 3)


def test_builder_is_deterministic_and_complete(tiny_builder, tiny_config, tmp_path):
    from cxr_tf.data import datasets
    info = tiny_builder.info
    assert {s: info.splits[s].num_examples for s in info.splits} == {
        "train": tiny_config.data.num_train, "validation": tiny_config.data.num_validation,
        "test": tiny_config.data.num_test}
    assert list(info.metadata["label_names"]) == list(labels.FINDINGS)
    again = datasets.prepare(datasets.get_builder(tiny_config.data, str(tmp_path)))
    for split in ("train", "test"):
        a = list(datasets.load_split(tiny_builder, split).as_numpy_iterator())
        b = list(datasets.load_split(again, split).as_numpy_iterator())
        assert len(a) == len(b)
        for ea, eb in zip(a, b):
            for key in (fk.IMAGE, fk.MASKS, fk.LABELS, fk.IMAGE_ID):
                np.testing.assert_array_equal(ea[key], eb[key])
    example = a[0]
    assert example[fk.IMAGE].shape == (64, 64, 1)
    assert set(np.unique(example[fk.MASKS])) <= {0, 255}
    # Records hold what the generator makes.
    index = int(example[fk.IMAGE_ID].decode().split("_")[-1].split(".")[0])
    image, masks, y = phantom.make_case([tiny_config.data.seed, 2, index], 64)
    np.testing.assert_array_equal(example[fk.IMAGE][..., 0], image)
    np.testing.assert_array_equal(example[fk.MASKS], masks * 255)
    np.testing.assert_array_equal(example[fk.LABELS], y)
    # Splits never share a patient.
    ids = {s: {e[fk.PATIENT_ID] for e in datasets.load_split(tiny_builder, s).as_numpy_iterator()}
           for s in ("train", "validation", "test")}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
