"""One eager smoke test of the paper-size model: DenseNet121 at 224 with a 224 px U-Net inline."""

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.models import UNetSegmenter, build_classifier


def test_paper_size_cxr_irnet_forward_and_one_training_step():
    keras.utils.set_random_seed(0)
    segmenter = UNetSegmenter(input_size=224, base_filters=16, depth=4)
    model = build_classifier("cxr_irnet", input_size=224, segmenter=segmenter)
    assert model.backbone_name == "densenet121"
    backbone = model.get_layer("backbone")
    assert backbone.output.shape[1:] == (7, 7, 1024)  # F_g of the paper at 224 input
    x = np.random.default_rng(0).random((2, 224, 224, 1)).astype("float32")
    y = np.zeros((2, labels.NUM_FINDINGS), "float32")
    y[0, 1] = 1
    out = model.explain_model()(x, training=False)
    assert out["probabilities"].shape == (2, 14)
    assert out["class_activation_maps"].shape == (2, 7, 7, 14)
    assert out["grid_mask"].shape == (2, 7, 7, 1)

    # One eager training step: loss finite, backbone updated, segmenter untouched.
    opt = keras.optimizers.Adam(1e-3)
    seg_before = [np.array(w) for w in segmenter.weights[:4]]
    bb_before = np.array(backbone.trainable_weights[0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    assert np.isfinite(float(loss))
    assert not np.array_equal(bb_before, np.array(backbone.trainable_weights[0]))
    for b, w in zip(seg_before, segmenter.weights[:4]):
        np.testing.assert_array_equal(b, np.array(w))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    # DenseNet121 without top (~6.95M trainable) + attention (~1k) + head (1024*14+14).
    assert 6_900_000 < trainable < 7_100_000
