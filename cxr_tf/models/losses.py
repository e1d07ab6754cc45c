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


def partial_dice_loss(smooth=1.0, bce_weight=0.0):
    """Soft Dice over the targets each image labels, for training on data sets that label
    different structures (JSRT: lungs and heart; Montgomery, Shenzhen: lungs only).

    The returned `loss(y_true, y_pred)` takes y_true = (masks (B, H, W, 4), known (B, 4)) as
    made by cxr_tf.data.pipeline.parse_partial_segmentation (targets in
    labels.SEGMENTATION_TARGETS order: left lung, right lung, heart, both lungs) and y_pred the
    segmenter's (B, H, W, 3) probabilities. The segmenter's "both lungs" is the probabilistic
    union p_l + p_r - p_l p_r (differentiable in both lungs). Per image, the loss averages
    1 - Dice (as in SoftDiceLoss) over the targets it scores: left lung, right lung and heart
    where known, and both lungs only where the sides are unknown (where they are known it
    would count the lungs twice). An image with the three structures known therefore gets
    exactly SoftDiceLoss; a lungs-only image gives the heart channel no gradient at all.

    Args:
      smooth: Dice smoothing (SoftDiceLoss).
      bce_weight: adds this times the pixel-wise binary cross-entropy of the scored targets
        (0: Dice only).

    Returns:
      `fn(y_true, y_pred) -> (B,)` per-example losses.
    """
    smooth = float(smooth)
    bce_weight = float(bce_weight)
    if smooth < 0 or bce_weight < 0:
        raise ValueError(f"partial_dice_loss needs smooth >= 0 and bce_weight >= 0, got "
                         f"smooth={smooth}, bce_weight={bce_weight}")

    def loss(y_true, y_pred):
        masks, known = y_true
        p = ops.cast(y_pred, "float32")
        masks = ops.cast(masks, "float32")
        known = ops.cast(known, "float32")
        lungs = p[..., 0:1] + p[..., 1:2] - p[..., 0:1] * p[..., 1:2]
        p = ops.concatenate([p, lungs], axis=-1)
        axes = (1, 2)
        intersection = ops.sum(masks * p, axis=axes)
        total = ops.sum(masks, axis=axes) + ops.sum(p, axis=axes)
        dice = (2.0 * intersection + smooth) / (total + smooth)
        sides = known[:, 0] * known[:, 1]
        weights = ops.concatenate([known[:, :3], (known[:, 3] * (1.0 - sides))[:, None]], axis=-1)
        per_target = 1.0 - dice
        if bce_weight:
            q = ops.clip(p, 1e-7, 1.0 - 1e-7)
            bce = -(masks * ops.log(q) + (1.0 - masks) * ops.log(1.0 - q))
            per_target = per_target + bce_weight * ops.mean(bce, axis=axes)
        scored = ops.maximum(ops.sum(weights, axis=-1), 1.0)
        return ops.sum(weights * per_target, axis=-1) / scored

    return loss
