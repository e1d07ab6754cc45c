"""Metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_tf.evaluation import metrics


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 4)) < [0.1, 0.3, 0.5, 0.05]).astype(int)
    s = rng.random((300, 4)) + y * [0.3, 0.6, 0.1, 1.0]
    return y, s


def test_auroc_matches_sklearn(scores):
    y, s = scores
    ours = metrics.auroc_per_class(y, s)
    np.testing.assert_allclose(ours, [skm.roc_auc_score(y[:, c], s[:, c]) for c in range(4)])
    assert metrics.mean_auroc(ours) == pytest.approx(np.mean(ours))


def test_undefined_classes_are_nan_and_left_out_of_the_mean(scores):
    y, s = scores
    y = y.copy()
    y[:, 3] = 0
    per_class = metrics.auroc_per_class(y, s)
    assert np.isnan(per_class[3])
    assert metrics.mean_auroc(per_class) == pytest.approx(np.mean(per_class[:3]))


def test_hand_computed_auroc():
    # Positives 0.9 and 0.4, negatives 0.5 and 0.1: 3 of 4 pairs ordered -> 0.75.
    np.testing.assert_allclose(
        metrics.auroc_per_class(np.array([[1], [1], [0], [0]]),
                                np.array([[0.9], [0.4], [0.5], [0.1]])), [0.75])


def test_youden_threshold_separates_perfectly_separable_scores():
    y = np.array([[0], [0], [0], [1], [1]])
    s = np.array([[0.1], [0.2], [0.3], [0.7], [0.8]])
    t = metrics.youden_thresholds(y, s)
    assert 0.3 < t[0] <= 0.7
    ops = metrics.operating_points(y, s, t)
    assert ops["sensitivity"][0] == 1 and ops["specificity"][0] == 1


def test_operating_points_match_sklearn(scores):
    y, s = scores
    t = np.array([0.6, 0.8, 0.5, 1.0])
    ops = metrics.operating_points(y, s, t)
    for c in range(4):
        pred = s[:, c] >= t[c]
        assert ops["sensitivity"][c] == pytest.approx(skm.recall_score(y[:, c], pred))
        assert ops["ppv"][c] == pytest.approx(skm.precision_score(y[:, c], pred))
        assert ops["f1"][c] == pytest.approx(skm.f1_score(y[:, c], pred))
        assert ops["specificity"][c] == pytest.approx(skm.recall_score(1 - y[:, c], ~pred))


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded(scores):
    y, s = scores
    a = metrics.bootstrap_auroc(y, s, n_resamples=200, seed=3)
    b = metrics.bootstrap_auroc(y, s, n_resamples=200, seed=3)
    np.testing.assert_array_equal(a["low"], b["low"])
    point = np.append(metrics.auroc_per_class(y, s), metrics.mean_auroc(metrics.auroc_per_class(y, s)))
    assert np.all(a["low"] <= point) and np.all(point <= a["high"])
    assert np.all(a["high"] - a["low"] < 0.3)


def test_dice_and_iou_on_hand_made_masks():
    t = np.zeros((1, 4, 4, 2), bool)
    p = np.zeros((1, 4, 4, 2), bool)
    t[0, :2, :, 0] = True       # 8 pixels
    p[0, :, :2, 0] = True       # 8 pixels, 4 shared -> Dice 8/16, IoU 4/12
    dice, iou = metrics.dice_iou_per_image(t, p)
    assert dice[0, 0] == pytest.approx(0.5) and iou[0, 0] == pytest.approx(1 / 3)
    assert dice[0, 1] == 1.0 and iou[0, 1] == 1.0  # absent and not predicted


def test_segmentation_scores_lungs_and_union():
    t = np.zeros((1, 4, 4, 3))
    t[0, :, :2, 1] = 1  # right lung (image left)
    t[0, :, 2:, 0] = 1  # left lung
    p = t.copy()
    p[0, :, 3, 0] = 0   # miss half the left lung
    s = metrics.segmentation_scores(t, p, ["left_lung", "right_lung", "heart"])
    assert s["left_lung"]["dice"] == pytest.approx(2 * 4 / 12)
    assert s["right_lung"]["dice"] == 1.0
    assert s["lungs"]["dice"] == pytest.approx(2 * 12 / 28)
    assert s["union"]["iou"] == pytest.approx(12 / 16)
