"""Metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from scipy import stats
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
    per_class = metrics.auroc_per_class(y, s)
    point = np.append(per_class, metrics.mean_auroc(per_class))
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


def test_bootstrap_interval_covers_the_population_auroc():
    """Coverage of the 95% percentile-bootstrap interval on a case with a known answer.

    Scores: negatives N(0, 1), positives N(d, 1), so the population AUROC is Phi(d / sqrt(2)).
    400 simulated data sets of 40 + 40 images, 200 resamples each (about a second). Expected
    coverage 0.95; with 400 simulations its binomial standard error is 0.011, so we accept 0.92
    to 0.98 (about +-2.7 SE; the percentile bootstrap may under-cover slightly on small samples).
    """
    from scipy import stats

    d = 1.0
    population = stats.norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(2024)
    y = np.repeat([1, 0], 40)[:, None]
    covered = 0
    for sim in range(400):
        s = rng.normal(size=(80, 1)) + d * y
        ci = metrics.bootstrap_auroc(y, s, n_resamples=200, seed=sim)
        covered += ci["low"][0] <= population <= ci["high"][0]
    assert 0.92 <= covered / 400 <= 0.98, covered / 400


def test_paired_difference_interval():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 3)) < 0.3).astype(int)
    good = rng.random((200, 3)) + y
    bad = rng.random((200, 3)) + 0.1 * y
    same = metrics.bootstrap_auroc_difference(y, good, good, n_resamples=100)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    diff = metrics.bootstrap_auroc_difference(y, good, bad, n_resamples=200, seed=0)
    expected = (metrics.mean_auroc(metrics.auroc_per_class(y, good))
                - metrics.mean_auroc(metrics.auroc_per_class(y, bad)))
    assert diff["difference"] == pytest.approx(expected)
    assert 0 < diff["low"] <= diff["difference"] <= diff["high"]
    with pytest.raises(ValueError, match="must all be"):
        metrics.bootstrap_auroc_difference(y, good, bad[:10])


def test_calibration_matches_sklearn_and_hand_computed_ece():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(0)
    p = rng.random((400, 3))
    y = (rng.random((400, 3)) < p).astype(int)  # calibrated by construction
    cal = metrics.calibration_summary(y, p, n_bins=5)
    for c in range(3):
        assert cal["brier"][c] == pytest.approx(skm.brier_score_loss(y[:, c], p[:, c]))
    assert cal["mean_brier"] == pytest.approx(np.mean(cal["brier"]))
    assert np.all(cal["ece"] < 0.1)
    frac, mean = calibration_curve(y.ravel(), p.ravel(), n_bins=5)
    np.testing.assert_allclose(cal["reliability"]["fraction_positive"], frac)
    np.testing.assert_allclose(cal["reliability"]["mean_predicted"], mean)
    assert cal["reliability"]["count"].sum() == y.size

    # Hand-computed: bin [0, 0.5) holds p = 0.1, 0.3 with labels 0, 1 -> |0.5 - 0.2| = 0.3;
    # bin [0.5, 1] holds p = 0.9, 0.9 with labels 1, 1 -> |1 - 0.9| = 0.1. ECE = 0.5*0.3 + 0.5*0.1.
    ece = metrics.expected_calibration_error([0, 1, 1, 1], [0.1, 0.3, 0.9, 0.9], n_bins=2)
    assert ece == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.calibration_summary(y, p + 1)


def test_box_iou_hand_computed():
    assert metrics.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert metrics.box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert metrics.box_iou([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0
    assert metrics.box_iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(16 / 100)
    np.testing.assert_allclose(metrics.box_iou([[0, 0, 2, 2], [0, 0, 4, 4]], [0, 0, 2, 2]),
                               [1.0, 0.25])
    with pytest.raises(ValueError, match=r"\[x, y, w, h\]"):
        metrics.box_iou([0, 0, 1], [0, 0, 1, 1])


def test_vectorised_bootstrap_statistic_equals_sklearn():
    rng = np.random.default_rng(5)
    y = (rng.random((50, 120)) < 0.3).astype(int)
    s = np.round(rng.random((50, 120)) + 0.4 * y, 1)  # rounding makes many ties
    y[3] = 0  # a row without positives is undefined
    ours = metrics.auroc_rows(y, s)
    assert np.isnan(ours[3])
    for i in range(50):
        if i != 3:
            assert ours[i] == pytest.approx(skm.roc_auc_score(y[i], s[i]), abs=1e-12)


# ------------------------------------------------------------ intervals vs an independent method

def _delong_placements(y, s):
    """DeLong's placement values: for each positive, the share of negatives it outranks (ties
    one half), and for each negative, the share of positives that outrank it."""
    pos, neg = s[y == 1], s[y == 0]
    beats = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return beats.mean(axis=1), beats.mean(axis=0)


def _delong(y, score_a, score_b=None):
    """AUROC (or the paired difference a - b) and its variance by DeLong et al. (1988)."""
    v10, v01 = _delong_placements(y, score_a)
    if score_b is not None:
        b10, b01 = _delong_placements(y, score_b)
        v10, v01 = v10 - b10, v01 - b01
    return v10.mean(), np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01)


@pytest.fixture(scope="module")
def two_correlated_scores():
    rng = np.random.default_rng(7)
    y = (rng.random(1500) < 0.3).astype(int)
    a = rng.normal(size=1500) + 0.9 * y
    b = 0.6 * a + 0.8 * rng.normal(size=1500) + 0.3 * y
    return y, a, b


def test_bootstrap_interval_agrees_with_delong(two_correlated_scores):
    """The 95% percentile-bootstrap interval of AUROC against DeLong's normal interval.

    With 1,500 images the AUROC is close to normal, so the two 95% intervals agree: measured
    width ratio 0.98-1.01 over three seeds. A 90% interval would be 0.84 times as wide and a
    97.5% one 1.14 times (z 1.645 and 2.241 against 1.960): the 6% tolerance tells them apart.
    """
    y, a, _ = two_correlated_scores
    auc, var = _delong(y, a)
    z = stats.norm.ppf(0.975)
    ci = metrics.bootstrap_auroc(y[:, None], a[:, None], n_resamples=2000, seed=0)
    width = ci["high"][0] - ci["low"][0]
    assert width / (2 * z * np.sqrt(var)) == pytest.approx(1.0, abs=0.06)
    assert abs((ci["high"][0] + ci["low"][0]) / 2 - auc) <= 0.1 * width
    assert ci["low"][-1] == ci["low"][0] and ci["high"][-1] == ci["high"][0]  # one-class mean


def test_paired_difference_interval_agrees_with_delong(two_correlated_scores):
    """The paired bootstrap interval of AUROC(a) - AUROC(b) against DeLong's paired variance
    (measured width ratio 0.98-1.00; a 50% interval would be 0.34 times as wide, an unpaired one
    wider)."""
    y, a, b = two_correlated_scores
    diff, var = _delong(y, a, b)
    z = stats.norm.ppf(0.975)
    res = metrics.bootstrap_auroc_difference(y[:, None], a[:, None], b[:, None],
                                             n_resamples=2000, seed=0)
    assert res["difference"] == pytest.approx(diff, abs=1e-12)
    width = res["high"] - res["low"]
    assert width / (2 * z * np.sqrt(var)) == pytest.approx(1.0, abs=0.06)
    assert abs((res["high"] + res["low"]) / 2 - diff) <= 0.1 * width


def test_dice_by_group_on_hand_made_masks():
    """Per-film Dice split by view: PA films segmented exactly, AP films with the lower half
    of the lung missed (Dice 2/3), one AP film that does not label the lung (left out)."""
    truth = np.zeros((5, 8, 8, 1), np.float32)
    truth[:, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[2:, 4:6] = 0  # AP films: half the lung missed -> Dice 2 * 8 / (16 + 8) = 2/3
    known = np.array([[1], [1], [1], [1], [0]], np.float32)
    _, per_image = metrics.partial_segmentation_scores(truth, pred, known, ["lungs"])
    views = ["PA", "PA", "AP", "AP", "AP"]
    found = metrics.mean_by_group(per_image["lungs"], views, n_resamples=200, reference="PA")
    assert list(found) == ["PA", "AP"]
    assert found["PA"]["n"] == 2 and found["PA"]["mean"] == pytest.approx(1.0)
    assert found["AP"]["n"] == 2 and found["AP"]["mean"] == pytest.approx(2 / 3)
    assert found["AP"]["minus_reference"] == pytest.approx(-1 / 3)
    assert "minus_reference" not in found["PA"]
    # Constant groups: the interval of the difference collapses onto it.
    lo, hi = found["AP"]["minus_reference_ci"]
    assert lo == pytest.approx(-1 / 3) and hi == pytest.approx(-1 / 3)
    tb = metrics.mean_by_group([0.9, 0.7, 0.8, 0.6], [False, True, False, True], n_resamples=0,
                               reference=False)
    assert tb["True"]["minus_reference"] == pytest.approx(-0.2)
    assert tb["True"]["minus_reference_ci"] == [None, None]  # no resamples asked for
    with pytest.raises(ValueError, match="same length"):
        metrics.mean_by_group([0.5], ["PA", "AP"])
