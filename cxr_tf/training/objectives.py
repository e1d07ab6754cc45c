"""Class-imbalance options of the classifier loss.

ChestX-ray14's findings are rare (Hernia: about 0.2% of images), so some practitioners weight the
positive examples of each class up. The paper trains with plain binary cross-entropy
(`keras.losses.binary_crossentropy`); `positive_weighted_bce` is the option.
"""

import numpy as np
from keras import ops

# Same clipping as keras.losses.binary_crossentropy (keras.config.epsilon()).
EPSILON = 1e-7


def positive_class_weights(positives, num_examples):
    """w_pos = N_negative / N_positive per class (1 for a class without positive examples).

    Args:
      positives: positive counts per class, shape (C,).
      num_examples: examples counted.

    Returns:
      float32 array (C,).
    """
    positives = np.asarray(positives, dtype=np.float64)
    num_examples = int(num_examples)
    if num_examples <= 0:
        raise ValueError(f"Cannot weight classes from {num_examples} examples")
    if np.any(positives < 0) or np.any(positives > num_examples):
        raise ValueError(f"Positive counts must lie in [0, {num_examples}], got {positives}")
    safe = np.maximum(positives, 1.0)
    weights = np.where(positives > 0, (num_examples - positives) / safe, 1.0)
    return weights.astype(np.float32)


def positive_weighted_bce(pos_weight):
    """Per-example binary cross-entropy with per-class weights on the positive term.

    loss(y, p) = mean over classes c of -(w_c * y_c * log p_c + (1 - y_c) * log(1 - p_c)),
    with p clipped to [1e-7, 1 - 1e-7] as Keras does. With all w_c = 1 it equals
    `keras.losses.binary_crossentropy`.

    Args:
      pos_weight: weights (C,), e.g. from positive_class_weights.

    Returns:
      `fn(y_true, y_pred) -> (batch,)` per-example losses (not reduced over the batch).
    """
    weights = np.asarray(pos_weight, dtype=np.float32)
    if weights.ndim != 1 or np.any(~np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"pos_weight must be positive finite numbers, one per class; got "
                         f"{pos_weight}")

    def loss(y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        w = ops.convert_to_tensor(weights)
        per_class = -(w * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        return ops.mean(per_class, axis=-1)

    return loss
