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
    p = np.stack([np.ones((2, 2, 1)), np.zeros((2, 2, 1)), np.full((2, 2, 1), 0.5)]).astype("float32")
    per_example = np.asarray(SoftDiceLoss(smooth=0.0, reduction=None)(y, p))
    np.testing.assert_allclose(per_example, [0.0, 1.0, 1 - 2 / 3], rtol=1e-6)


def test_rejects_negative_smoothing():
    with pytest.raises(ValueError, match="smooth must be >= 0, got -1"):
        SoftDiceLoss(smooth=-1)
