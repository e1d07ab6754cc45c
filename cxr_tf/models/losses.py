"""Losses: soft Dice for the segmenter (BCE for the classifier comes from Keras)."""

import keras
from keras import ops

from cxr_tf.models.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class SoftDiceLoss(keras.losses.Loss):
    """Soft Dice loss, 1 - Dice, per image and structure channel, averaged over channels.

    For probabilities p and binary targets g of one channel of one image:
        dice = (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)
    The per-example loss is the mean of (1 - dice) over channels; Keras' reduction then averages
    over the batch. `smooth` keeps the loss defined (= 0) when a structure is absent and not
    predicted.

    Args:
      smooth: additive smoothing in numerator and denominator (1.0 is customary).
    """

    def __init__(self, smooth=1.0, name="soft_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        if float(smooth) < 0:
            raise ValueError(f"SoftDiceLoss smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        axes = tuple(range(1, len(y_pred.shape) - 1))  # spatial axes
        intersection = ops.sum(y_true * y_pred, axis=axes)
        total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return ops.mean(1.0 - dice, axis=-1)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}
