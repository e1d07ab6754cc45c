"""Soft Dice loss golden values."""

import numpy as np
import pytest

from cxr_tf.models.losses import SoftDiceLoss


def test_golden_values():
    y_true = np.zeros((1, 2, 2, 2), "float32")
    y_pred = np.zeros((1, 2, 2, 2), "float32")
    y_true[0, 0, :, 0] = 1           # channel 0: truth [[1, 1], [0, 0]]
    y_pred[0, 0, 0, 0] = 1           # prediction [[1, 0], [0, 0]] -> dice 2*1/(2+1)
    y_true[0, :, :, 1] = 1           # channel 1: truth all ones, prediction 0.5 everywhere
    y_pred[0, :, :, 1] = 0.5         # -> dice 2*2/(4+2)
    no_smooth = float(SoftDiceLoss(smooth=0.0)(y_true, y_pred))
    np.testing.assert_allclose(no_smooth, np.mean([1 - 2 / 3, 1 - 4 / 6]), rtol=1e-6)
    smooth = float(SoftDiceLoss(smooth=1.0)(y_true, y_pred))
    np.testing.assert_allclose(smooth, np.mean([1 - 3 / 4, 1 - 5 / 7]), rtol=1e-6)


def test_perfect_and_empty_predictions():
    y = np.zeros((2, 4, 4, 3), "float32")
    y[0, 1:3, 1:3] = 1
    assert float(SoftDiceLoss()(y, y)) == pytest.approx(0.0, abs=1e-7)  # empty channels too
    assert float(SoftDiceLoss(smooth=0.0)(y[:1], 1 - y[:1])) == pytest.approx(1.0)


def test_per_example_without_reduction():
    y = np.ones((3, 2, 2, 1), "float32")
    p = np.stack([np.ones((2, 2, 1)), np.zeros((2, 2, 1)),
                  np.full((2, 2, 1), 0.5)]).astype("float32")
    per_example = np.asarray(SoftDiceLoss(smooth=0.0, reduction=None)(y, p))
    np.testing.assert_allclose(per_example, [0.0, 1.0, 1 - 2 / 3], rtol=1e-6)


def test_rejects_negative_smoothing():
    with pytest.raises(ValueError, match="smooth must be >= 0, got -1"):
        SoftDiceLoss(smooth=-1)


# ------------------------------------------------------------ partial labels

def _partial(masks, known, pred, **kwargs):
    from cxr_tf.models.losses import partial_dice_loss
    loss = partial_dice_loss(**kwargs)
    return np.asarray(loss((np.asarray(masks, "float32"), np.asarray(known, "float32")),
                           np.asarray(pred, "float32")))


def test_partial_dice_scores_only_known_targets_golden_values():
    # One 1 x 2 image. Truth: left lung pixel 0, right lung pixel 1, no heart, both lungs
    # [1, 1]. Prediction: left [1, 0], right [0.5, 0.5], heart [1, 1].
    truth = np.zeros((1, 1, 2, 4))
    truth[0, 0, 0, 0] = truth[0, 0, 1, 1] = 1
    truth[0, 0, :, 3] = 1
    pred = np.zeros((1, 1, 2, 3))
    pred[0, 0, 0, 0] = 1
    pred[0, 0, :, 1] = 0.5
    pred[0, 0, :, 2] = 1
    left, right, heart = 1 - 2 * 1 / 2, 1 - 2 * 0.5 / 2, 1 - 0 / 2
    # All three structures known (JSRT): SoftDiceLoss's mean over the three channels.
    got = _partial(truth, [[1, 1, 1, 1]], pred, smooth=0.0)
    np.testing.assert_allclose(got, [(left + right + heart) / 3], rtol=1e-6)
    # Lungs-only with sides: the heart's wrong prediction costs nothing.
    np.testing.assert_allclose(_partial(truth, [[1, 1, 0, 1]], pred, smooth=0.0),
                               [(left + right) / 2], rtol=1e-6)
    # Lungs-only, sides unknown: both lungs against the probabilistic union of the two,
    # p = [1 + 0.5 - 0.5, 0 + 0.5 - 0] = [1, 0.5]: Dice 2 * 1.5 / (2 + 1.5).
    np.testing.assert_allclose(_partial(truth, [[0, 0, 0, 1]], pred, smooth=0.0),
                               [1 - 3 / 3.5], rtol=1e-6)


def test_partial_dice_gives_the_heart_no_gradient_from_lungs_only_images():
    import tensorflow as tf

    from cxr_tf.models.losses import partial_dice_loss
    truth = np.zeros((2, 4, 4, 4), "float32")
    truth[:, :, :2, 1] = truth[:, :, 2:, 0] = truth[:, :, :, 3] = 1
    truth[0, 1:3, 1:3, 2] = 1
    known = np.array([[1, 1, 1, 1], [1, 1, 0, 1]], "float32")
    pred = tf.Variable(np.full((2, 4, 4, 3), 0.5, "float32"))
    with tf.GradientTape() as tape:
        loss = partial_dice_loss()((truth, known), pred)
    grad = tape.gradient(loss, pred).numpy()
    assert np.abs(grad[0, ..., 2]).max() > 0      # JSRT image: heart supervised
    assert np.abs(grad[1, ..., 2]).max() == 0.0   # lungs-only image: heart untouched
    assert np.abs(grad[1, ..., :2]).max() > 0


def test_partial_dice_matches_soft_dice_when_everything_is_known():
    rng = np.random.default_rng(0)
    truth = (rng.random((3, 8, 8, 3)) > 0.5).astype("float32")
    pred = rng.random((3, 8, 8, 3)).astype("float32")
    lungs = np.maximum(truth[..., :1], truth[..., 1:2])
    got = _partial(np.concatenate([truth, lungs], -1), np.ones((3, 4)), pred)
    expected = np.asarray(SoftDiceLoss(reduction=None)(truth, pred))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="bce_weight >= 0"):
        _partial(truth, np.ones((3, 4)), pred, bce_weight=-1)
