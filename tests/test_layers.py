"""Golden-value tests of the custom layers on tiny tensors."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cxr_tf.models.layers import FeatureWeighting, GreyToBackboneInput, MultiScaleAttention


def conv_same(x, kernel):
    """Reference 'same' cross-correlation (zero padding): x (H, W, Cin), kernel (kh, kw, Cin,
    Co)."""
    out = np.zeros(x.shape[:2] + (kernel.shape[-1],))
    for o in range(kernel.shape[-1]):
        for c in range(x.shape[-1]):
            out[..., o] += ndimage.correlate(x[..., c], kernel[:, :, c, o], mode="constant")
    return out


def attention_reference(x, kernels, fuse):
    maps = []
    for t in [x] + [conv_same(x, k) for k in kernels]:
        maps += [t.max(-1, keepdims=True), t.mean(-1, keepdims=True)]
    att = 1 / (1 + np.exp(-conv_same(np.concatenate(maps, -1), fuse)))
    return x * att, att


class TestMultiScaleAttention:
    def test_zero_weights_halve_the_input(self):
        layer = MultiScaleAttention()
        x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
        layer.build(x.shape)
        for w in layer.weights:
            w.assign(np.zeros(w.shape))
        np.testing.assert_allclose(layer(x), 0.5 * x, rtol=1e-6)

    def test_matches_reference_implementation(self):
        rng = np.random.default_rng(1)
        layer = MultiScaleAttention(filters=3, kernel_sizes=(5, 9), fuse_kernel_size=3)
        x = rng.normal(size=(1, 11, 10, 3)).astype("float32")
        layer.build(x.shape)
        weights = [rng.normal(scale=0.2, size=w.shape).astype("float32") for w in layer.weights]
        for w, v in zip(layer.weights, weights):
            w.assign(v)
        # Weight order: conv5, conv9, fuse (the order the layer creates them).
        assert [tuple(w.shape) for w in layer.weights] == [(5, 5, 3, 3), (9, 9, 3, 3), (3, 3, 6, 1)]
        expected, att = attention_reference(x[0].astype(np.float64), weights[:2], weights[2])
        np.testing.assert_allclose(layer(x)[0], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.attention_map(x)[0], att, rtol=1e-4, atol=1e-5)

    def test_output_shape_and_no_resampling(self):
        layer = MultiScaleAttention()
        assert tuple(layer(np.zeros((1, 32, 24, 3), "float32")).shape) == (1, 32, 24, 3)

    @pytest.mark.parametrize("kwargs, message", [
        ({"filters": 0}, "filters must be >= 1, got 0"),
        ({"kernel_sizes": (5, -1)}, "kernel_sizes must be positive integers, got (5, -1)"),
    ])
    def test_bad_arguments_say_what_was_received(self, kwargs, message):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            MultiScaleAttention(**kwargs)


class TestFeatureWeighting:
    @staticmethod
    def _masks():
        """4x4 structure maps whose union covers the 2x2 feature grid cells by 1, .5, .25, 0."""
        m = np.zeros((1, 4, 4, 3), "float32")
        m[0, :2, :2, 0] = 1.0              # left lung fills cell (0, 0)
        m[0, :2, 2, 2] = 1.0               # heart fills half of cell (0, 1)
        m[0, 2, 0, 1] = 1.0                # right lung fills a quarter of cell (1, 0)
        m[0, :2, :2, 2] = 0.3              # overlapping heart inside (0, 0): union is the max
        return m

    def test_keeps_cells_with_pooled_mask_at_least_threshold(self):
        features = np.arange(1, 9, dtype="float32").reshape(1, 2, 2, 2)
        weighted, grid, coverage = FeatureWeighting(threshold=0.5, min_coverage=0.0)(
            [features, self._masks()])
        expected_grid = np.array([[1, 1], [0, 0]], "float32")
        np.testing.assert_array_equal(grid[0, ..., 0], expected_grid)
        np.testing.assert_array_equal(weighted, features * expected_grid[None, :, :, None])
        np.testing.assert_allclose(coverage, [0.5])

    def test_zeroes_exactly_the_cells_outside_the_mask(self):
        rng = np.random.default_rng(0)
        features = rng.uniform(1, 2, size=(3, 4, 4, 5)).astype("float32")
        masks = (rng.random((3, 16, 16, 3)) > 0.5).astype("float32")
        weighted, grid, _ = FeatureWeighting(min_coverage=0.0)([features, masks])
        grid = np.asarray(grid)
        weighted = np.asarray(weighted)
        outside = np.broadcast_to(grid == 0, weighted.shape)
        assert np.all(weighted[outside] == 0)
        np.testing.assert_array_equal(weighted[~outside], features[~outside])

    def test_threshold_is_inclusive_and_configurable(self):
        features = np.ones((1, 2, 2, 1), "float32")
        _, grid, _ = FeatureWeighting(threshold=0.25, min_coverage=0.0)([features, self._masks()])
        np.testing.assert_array_equal(grid[0, ..., 0], [[1, 1], [1, 0]])

    def test_low_coverage_falls_back_to_no_weighting(self):
        features = np.ones((2, 2, 2, 1), "float32")
        masks = np.concatenate([self._masks(), np.zeros((1, 4, 4, 3), "float32")])
        weighted, grid, coverage = FeatureWeighting(min_coverage=0.6)([features, masks])
        np.testing.assert_allclose(coverage, [0.5, 0.0])  # coverage before fallback
        np.testing.assert_array_equal(weighted, features)  # both below 0.6: nothing zeroed
        np.testing.assert_array_equal(grid, np.ones((2, 2, 2, 1)))

    def test_only_low_coverage_images_fall_back(self):
        features = np.ones((2, 2, 2, 1), "float32")
        masks = np.concatenate([self._masks(), np.zeros((1, 4, 4, 3), "float32")])
        weighted, _, _ = FeatureWeighting(min_coverage=0.05)([features, masks])
        np.testing.assert_array_equal(weighted[0, ..., 0], [[1, 1], [0, 0]])
        np.testing.assert_array_equal(weighted[1, ..., 0], np.ones((2, 2)))

    def test_no_gradient_reaches_the_mask(self):
        layer = FeatureWeighting(min_coverage=0.0)
        features = tf.ones((1, 2, 2, 1))
        masks = tf.constant(self._masks())
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([features, masks])
            weighted, _, _ = layer([features, masks])
            total = tf.reduce_sum(weighted)
        grad_mask = tape.gradient(total, masks)
        assert grad_mask is None or float(tf.reduce_max(tf.abs(grad_mask))) == 0.0
        np.testing.assert_array_equal(tape.gradient(total, features)[0, ..., 0], [[1, 1], [0, 0]])

    def test_mask_size_must_be_a_multiple_of_the_grid(self):
        with pytest.raises(ValueError, match="multiple of the feature grid"):
            FeatureWeighting()([np.ones((1, 3, 3, 1), "float32"), np.ones((1, 8, 8, 3), "float32")])

    @pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5},
                                        {"min_coverage": 1.0}, {"min_coverage": -0.1}])
    def test_bad_arguments(self, kwargs):
        with pytest.raises(ValueError, match="got"):
            FeatureWeighting(**kwargs)


class TestGreyToBackboneInput:
    def test_torch_mode_is_imagenet_normalisation(self):
        x = np.array([[[[0.0]], [[1.0]]]], "float32")  # (1, 2, 1, 1)
        y = np.asarray(GreyToBackboneInput("torch")(x))
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        np.testing.assert_allclose(y[0, 0, 0], (0 - mean) / std, rtol=1e-6)
        np.testing.assert_allclose(y[0, 1, 0], (1 - mean) / std, rtol=1e-6)

    def test_caffe_mode(self):
        y = np.asarray(GreyToBackboneInput("caffe")(np.full((1, 1, 1, 1), 0.5, "float32")))
        np.testing.assert_allclose(y[0, 0, 0], 127.5 - np.array([103.939, 116.779, 123.68]),
                                   rtol=1e-6)

    def test_rejects_rgb_input(self):
        with pytest.raises(ValueError, match="one-channel"):
            GreyToBackboneInput()(np.zeros((1, 4, 4, 3), "float32"))
