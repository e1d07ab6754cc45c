"""Running a model over a dataset and collecting its outputs as numpy arrays."""

import numpy as np
import tensorflow as tf


def collect(model, dataset, outputs_key=None):
    """Runs `model` (inference mode) over `dataset` and concatenates the results.

    Args:
      model: a Keras model or any callable taking an image batch.
      dataset: yields (image, target) or (image, target, image_id) batches.
      outputs_key: when the model returns a dict, keep only this key (None keeps the dict).

    Returns:
      dict with "outputs" (array, or dict of arrays), "targets" and, if present, "ids"
      (list of str).
    """
    @tf.function(reduce_retracing=True)
    def step(x):
        return model(x, training=False)

    outs, targets, ids = [], [], []
    for batch in dataset:
        y = step(batch[0])
        if isinstance(y, dict):
            y = {k: v.numpy() for k, v in y.items()}
            if outputs_key is not None:
                y = y[outputs_key]
        else:
            y = y.numpy()
        outs.append(y)
        targets.append(batch[1].numpy())
        if len(batch) > 2:
            ids.extend(s.decode() for s in batch[2].numpy())
    if not outs:
        raise ValueError("The evaluation dataset is empty: nothing to evaluate")
    if isinstance(outs[0], dict):
        merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    else:
        merged = np.concatenate(outs)
    result = {"outputs": merged, "targets": np.concatenate(targets)}
    if ids:
        result["ids"] = ids
    return result
