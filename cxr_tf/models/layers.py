"""Custom layers of CXR-IRNet: input normalisation, multi-scale attention and feature weighting.

All layers use `keras.layers` and `keras.ops` only, so the models run on the TensorFlow backend for
training and serving and on the JAX backend for GPU benchmarks, with the same graph.
"""

import keras
from keras import ops

PACKAGE = "cxr_tf"

# ImageNet statistics used by torchvision and by keras.applications' "torch" preprocessing mode
# (DenseNet). The paper normalises with these before the attention module.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications' "caffe" mode (ResNet50): BGR order, 0-255 scale, mean subtraction only.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _as_shape(input_shape):
    # On reload Keras may hand `build` a list instead of a tuple (docs/design.md).
    return tuple(input_shape)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GreyToBackboneInput(keras.layers.Layer):
    """Turns a one-channel image in [0, 1] into the three-channel input a backbone expects.

    Args:
      mode: "torch" (ImageNet mean/std on [0, 1], used by DenseNet and the paper) or "caffe"
        (BGR, 0-255, ImageNet mean subtracted, used by keras.applications.ResNet50).
    """

    MODES = ("torch", "caffe")

    def __init__(self, mode="torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"GreyToBackboneInput mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def build(self, input_shape):
        input_shape = _as_shape(input_shape)
        if input_shape[-1] != 1:
            raise ValueError(
                f"GreyToBackboneInput expects a one-channel image (..., 1), got shape "
                f"{input_shape}")
        self.built = True

    def call(self, x):
        x = ops.concatenate([x, x, x], axis=-1)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(IMAGENET_STD, dtype=x.dtype)
            return (x - mean) / std
        mean = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
        return x * 255.0 - mean  # grey input: channel order does not matter

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (3,)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Resize(keras.layers.Layer):
    """Bilinear resize of (B, H, W, C) images to a fixed square size, anti-aliased when shrinking.

    Used in front of the inline segmenter. (keras.layers.Resizing is a tf.data preprocessing
    layer; inside a functional model it makes a call without `training` run the whole model in
    training mode, so it is not used here.)
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1:
            raise ValueError(f"Resize size must be a positive integer, got {size}")
        self.size = int(size)

    def call(self, x):
        return ops.image.resize(x, (self.size, self.size), interpolation="bilinear",
                                antialias=True)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleAttention(keras.layers.Layer):
    """The multi-scale attention module (MA) of CXR-IRNet (Fang et al. 2021, Fig. 2).

    From the normalised image x it forms six one-channel maps: the channel-wise max and mean of x,
    of conv5(x) and of conv9(x) (each `filters` filters, stride 1, 'same', no bias). They are
    concatenated, fused by a 3x3 convolution to one channel (no bias), squashed by a sigmoid and
    multiplied into x. Output shape equals input shape. Stride 1 everywhere follows the authors'
    code (the paper's text mentions stride 2, which their code never uses).

    Args:
      filters: filters of each multi-scale convolution (3 in the paper).
      kernel_sizes: the multi-scale kernel sizes ((5, 9) in the paper).
      fuse_kernel_size: kernel of the fusing convolution (3 in the paper).
    """

    def __init__(self, filters=3, kernel_sizes=(5, 9), fuse_kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        if int(filters) < 1:
            raise ValueError(f"MultiScaleAttention filters must be >= 1, got {filters}")
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if not kernel_sizes or any(k < 1 for k in kernel_sizes):
            raise ValueError(
                f"MultiScaleAttention kernel_sizes must be positive integers, got {kernel_sizes}")
        self.filters = int(filters)
        self.kernel_sizes = kernel_sizes
        self.fuse_kernel_size = int(fuse_kernel_size)
        self.scale_convs = [
            keras.layers.Conv2D(self.filters, k, padding="same", use_bias=False,
                                dtype=self.dtype_policy, name=f"conv{k}")
            for k in self.kernel_sizes
        ]
        self.fuse_conv = keras.layers.Conv2D(1, self.fuse_kernel_size, padding="same",
                                             use_bias=False, dtype=self.dtype_policy, name="fuse")

    def build(self, input_shape):
        input_shape = _as_shape(input_shape)
        for conv in self.scale_convs:
            conv.build(input_shape)
        n_maps = 2 * (1 + len(self.kernel_sizes))
        self.fuse_conv.build(input_shape[:-1] + (n_maps,))
        self.built = True

    def attention_map(self, x):
        """The sigmoid attention map (..., 1) that `call` multiplies into x."""
        maps = []
        for t in [x] + [conv(x) for conv in self.scale_convs]:
            maps.append(ops.max(t, axis=-1, keepdims=True))
            maps.append(ops.mean(t, axis=-1, keepdims=True))
        return ops.sigmoid(self.fuse_conv(ops.concatenate(maps, axis=-1)))

    def call(self, x):
        return x * self.attention_map(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_sizes": list(self.kernel_sizes),
                "fuse_kernel_size": self.fuse_kernel_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FeatureWeighting(keras.layers.Layer):
    """Keeps only lung-and-heart features: F_l = F_g * M_g (Fang et al. 2021, Eq. 3).

    Inputs `[features, structure_probs]`: features (B, h, w, C) from the backbone, and the
    segmenter's per-structure probabilities (B, H, W, S) with H, W multiples of h, w. The union
    mask is the pixel-wise max over structures; it is average-pooled to the h x w feature grid and
    binarised (cell kept when its pooled value >= `threshold`). The gradient does not flow into
    the mask.

    When the kept share of cells (the mask coverage) is below `min_coverage` for an image (a
    lateral view, a photograph: the segmenter found almost no lung or heart), that image falls
    back to no weighting (all cells kept) instead of having every feature zeroed. Callers read
    the coverage output to flag such images.

    Returns `[weighted_features, grid_mask, coverage]`: (B, h, w, C), (B, h, w, 1) with the mask
    actually applied (after any fallback), and (B,) the coverage before fallback.

    The paper's rule is threshold 0.5 without dilation. Both are options because the rule is
    strict at the lung borders: a cell half outside the lungs is dropped, and with it the part
    of a pleural or cardiac finding that lies there (`cxr-evaluate` reports the share of
    radiologists' boxes each rule keeps).

    Args:
      threshold: binarisation threshold of the pooled mask (0.5 in the paper).
      min_coverage: coverage below which an image is not weighted (0 disables the fallback).
      dilation: after binarising, grow the kept cells by this many cells (3 x 3 neighbourhood,
        i.e. 8-connected) per step; 0 in the paper.
    """

    def __init__(self, threshold=0.5, min_coverage=0.05, dilation=0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"FeatureWeighting threshold must be in (0, 1], got {threshold}")
        if not 0.0 <= float(min_coverage) < 1.0:
            raise ValueError(f"FeatureWeighting min_coverage must be in [0, 1), got {min_coverage}")
        if int(dilation) != dilation or int(dilation) < 0:
            raise ValueError(f"FeatureWeighting dilation must be a whole number of cells >= 0, "
                             f"got {dilation}")
        self.threshold = float(threshold)
        self.min_coverage = float(min_coverage)
        self.dilation = int(dilation)

    def build(self, input_shape):
        f_shape, m_shape = (_as_shape(s) for s in input_shape)
        h, w = f_shape[1], f_shape[2]
        mh, mw = m_shape[1], m_shape[2]
        if None in (h, w, mh, mw) or mh % h or mw % w:
            raise ValueError(
                f"FeatureWeighting needs static mask size that is a multiple of the feature grid; "
                f"got features {f_shape} and mask {m_shape}. Choose a segmenter input size that "
                f"is a multiple of the classifier's feature grid ({h}x{w}).")
        self.pool_size = (mh // h, mw // w)
        self.built = True

    def grid_mask(self, structure_probs):
        """Union mask pooled to the feature grid and binarised, before any fallback."""
        union = ops.max(structure_probs, axis=-1, keepdims=True)
        pooled = ops.average_pool(union, self.pool_size, strides=self.pool_size, padding="valid")
        mask = ops.cast(pooled >= self.threshold, pooled.dtype)
        for _ in range(self.dilation):
            mask = ops.max_pool(mask, 3, strides=1, padding="same")
        return ops.stop_gradient(mask)

    def call(self, inputs):
        features, structure_probs = inputs
        mask = self.grid_mask(ops.cast(structure_probs, "float32"))
        coverage = ops.mean(mask, axis=(1, 2, 3))
        use_mask = ops.cast(coverage >= self.min_coverage, mask.dtype)[:, None, None, None]
        applied = mask * use_mask + (1.0 - use_mask)
        weighted = features * ops.cast(applied, features.dtype)
        return [weighted, applied, coverage]

    def compute_output_shape(self, input_shape):
        f_shape = tuple(input_shape[0])
        return [f_shape, f_shape[:-1] + (1,), (f_shape[0],)]

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold,
                "min_coverage": self.min_coverage, "dilation": self.dilation}
