"""Augmentations that imitate how films differ between hospitals, for image-and-mask pairs.

Every function takes a stateless seed (a shape-[2] int tensor) and is a pure function of its
inputs and that seed, so an epoch's batches can be regenerated exactly on resume. Each draw
folds its own constant into the seed (`_seed(seed, k)`), so switching one augmentation on or off
does not change what the others draw.

Geometry (`affine`) moves image and masks together; everything else touches the image only:
  - exposure and contrast (linear), gamma (non-linear tone curve);
  - Gaussian blur (soft detectors, motion) and Gaussian noise (quantum noise of low-dose films);
  - collimation borders (black or white bands along the film edges);
  - burnt-in overlays: bright lines (wires, tubes, lead markers' edges) and blocks (text labels).
Overlays and borders do not change the masks: a wire over a lung is still lung. Nor do pasted
opacities (`opacities`: an effusion-like meniscus or patchy consolidation inside a lung): an
opacified lung is still lung, which is what the classifier's mask has to keep.
"""

import math

import tensorflow as tf


def _seed(seed, k):
    return tf.random.experimental.stateless_fold_in(seed, k)


def _uniform(seed, k, low, high, shape=()):
    return tf.random.stateless_uniform(shape, seed=_seed(seed, k), minval=low, maxval=high)


def _grid(size):
    """(y, x) pixel-centre coordinates of a size x size image, each (size, size) float32."""
    r = tf.range(size, dtype=tf.float32) + 0.5
    return tf.meshgrid(r, r, indexing="ij")


def affine(stacked, seed, max_scale, max_rotation_degrees, max_shift=0.0):
    """Random zoom, rotation and shift about the centre, shared by all channels.

    Args:
      stacked: (S, S, C) float image with its masks stacked on the channel axis.
      seed: stateless seed.
      max_scale: zoom factor drawn in [1 - max_scale, 1 + max_scale] (0 = none).
      max_rotation_degrees: rotation drawn in [-max, max] degrees.
      max_shift: shift drawn in [-max, max] of the side, per axis.

    Returns:
      (S, S, C) float32, bilinear; pixels brought in from outside the film are 0 (black, no mask).
    """
    size = tf.shape(stacked)[0]
    s = tf.cast(size, tf.float32)
    scale = 1.0 + _uniform(seed, 10, -max_scale, max_scale)
    angle = _uniform(seed, 11, -max_rotation_degrees, max_rotation_degrees) * (math.pi / 180.0)
    shift = _uniform(seed, 12, -max_shift, max_shift, [2]) * s
    c = (s - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Output pixel (x, y) reads input pixel A (x - c - shift) + c (the inverse map, as
    # ImageProjectiveTransformV3 expects): rotation by -angle and zoom by 1 / scale.
    x0 = c - cos * (c + shift[0]) + sin * (c + shift[1])
    y0 = c - sin * (c + shift[0]) - cos * (c + shift[1])
    transform = tf.stack([cos, -sin, x0, sin, cos, y0, 0.0, 0.0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=stacked[None], transforms=transform, output_shape=tf.stack([size, size]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.ensure_shape(out[0], stacked.shape)


def gamma(image, seed, max_log_gamma):
    """image ** g with log(g) drawn in [-max, max] (image in [0, 1])."""
    g = tf.exp(_uniform(seed, 20, -max_log_gamma, max_log_gamma))
    return tf.pow(tf.clip_by_value(image, 0.0, 1.0), g)


def blur(image, seed, max_sigma):
    """Gaussian blur with sigma drawn in [0, max_sigma] pixels (separable, reflect-free 'SAME')."""
    sigma = tf.maximum(_uniform(seed, 21, 0.0, max_sigma), 1e-3)
    radius = max(1, int(math.ceil(3 * max_sigma)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    k = k / tf.reduce_sum(k)
    channels = image.shape[-1]
    row = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
    col = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, channels, 1])
    # Edge padding keeps the film's border from darkening under the kernel.
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                    mode="SYMMETRIC")
    out = tf.nn.depthwise_conv2d(padded, row, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, col, [1, 1, 1, 1], "VALID")
    return out[0]


def noise(image, seed, max_std):
    """Additive Gaussian noise with a standard deviation drawn in [0, max_std]."""
    std = _uniform(seed, 22, 0.0, max_std)
    return image + std * tf.random.stateless_normal(tf.shape(image), seed=_seed(seed, 23))


def borders(image, seed, probability, max_fraction=0.12):
    """With `probability`, collimation bands on each side (width in [0, max_fraction] of the
    side, drawn per side), all black or all white."""
    size = image.shape[0]
    y, x = _grid(size)
    widths = _uniform(seed, 30, 0.0, max_fraction * size, [4])
    band = ((x < widths[0]) | (x > size - widths[1]) | (y < widths[2]) | (y > size - widths[3]))
    fill = tf.round(_uniform(seed, 31, 0.0, 1.0))
    on = _uniform(seed, 32, 0.0, 1.0) < probability
    return tf.where(tf.logical_and(on, band)[..., None], fill, image)


def _segment_distance(y, x, p, q):
    """Distance of every pixel (y, x) to the segment from p to q ((x, y) points)."""
    d = q - p
    t = ((x - p[0]) * d[0] + (y - p[1]) * d[1]) / tf.maximum(tf.reduce_sum(d * d), 1e-6)
    t = tf.clip_by_value(t, 0.0, 1.0)
    return tf.sqrt(tf.square(x - p[0] - t * d[0]) + tf.square(y - p[1] - t * d[1]))


def overlays(image, seed, probability, lines=3, blocks=2):
    """With `probability`, burnt-in bright structures: `lines` thin lines anywhere (wires,
    tubes) and `blocks` small rectangles near the top or bottom edge (text labels, markers)."""
    size = image.shape[0]
    y, x = _grid(size)
    drawn = tf.zeros_like(y, dtype=tf.bool)
    for i in range(lines):
        ends = _uniform(seed, 40 + i, 0.0, float(size), [4])
        width = _uniform(seed, 50 + i, 0.6, 1.5) * size / 128.0
        drawn |= _segment_distance(y, x, ends[:2], ends[2:]) < width
    for i in range(blocks):
        box = _uniform(seed, 60 + i, 0.0, 1.0, [4])
        w, h = (0.04 + 0.12 * box[0]) * size, (0.02 + 0.04 * box[1]) * size
        left = box[2] * (size - w)
        top = tf.where(box[3] < 0.5, 0.02 * size, 0.92 * size - h)
        drawn |= (x >= left) & (x < left + w) & (y >= top) & (y < top + h)
    level = _uniform(seed, 70, 0.75, 1.0)
    on = _uniform(seed, 71, 0.0, 1.0) < probability
    return tf.where(tf.logical_and(on, drawn)[..., None], level, image)


def opacities(image, masks, seed, probability, strength=(0.35, 0.8)):
    """With `probability`, a dense opacity pasted inside one lung, the masks left as they are:
    the lung stays lung when it is opacified (what the classifier needs its mask to keep).

    One of two kinds, drawn per film, in the image-left or image-right lung (drawn):
      - an effusion-like meniscus: the lowest 10-45% of that lung's height filled, the line
        rising towards the lateral chest wall;
      - patchy consolidation: three Gaussian blobs inside that lung.
    The lung pixels are blended towards a bright level in [0.75, 0.95] by a weight in
    `strength`; pixels outside the lungs are never changed.

    Args:
      image: (size, size, 1) float32 in [0, 1].
      masks: (size, size, C) float32 {0, 1}: channels 0 and 1 the left and right lung, and for
        the 4-target layout (pipeline.segmentation_targets) channel 3 both lungs.
      seed: stateless seed (shape [2]).
      probability: chance of an opacity on a film.
    """
    size = image.shape[0]
    y, x = _grid(size)
    lungs = tf.reduce_max(masks[..., :2], axis=-1)
    if masks.shape[-1] >= 4:
        lungs = tf.maximum(lungs, masks[..., 3])
    left_half = _uniform(seed, 80, 0.0, 1.0) < 0.5
    half = tf.where(left_half, x < size / 2, x >= size / 2)
    region = tf.logical_and(lungs > 0.5, half)
    inside = tf.cast(region, tf.float32)
    big = float(size)
    y_min = tf.reduce_min(tf.where(region, y, big))
    y_max = tf.reduce_max(tf.where(region, y, -1.0))
    x_min = tf.reduce_min(tf.where(region, x, big))
    x_max = tf.reduce_max(tf.where(region, x, -1.0))
    height = tf.maximum(y_max - y_min, 1.0)
    width = tf.maximum(x_max - x_min, 1.0)

    # Meniscus: filled below a line that rises by up to 40% of the fill towards the chest wall
    # (the lateral edge: x_min in the image-left lung, x_max in the image-right one).
    fill = _uniform(seed, 81, 0.10, 0.45) * height
    lateral = tf.where(left_half, (x_max - x) / width, (x - x_min) / width)  # 0 at the wall
    line = y_max - fill - 0.4 * fill * (1.0 - tf.clip_by_value(lateral, 0.0, 1.0))
    meniscus = tf.sigmoid((y - line) / (0.01 * size + 0.5))

    # Consolidation: three blobs centred inside the lung's box.
    centres = _uniform(seed, 82, 0.15, 0.85, [3, 2])
    sigmas = _uniform(seed, 83, 0.05, 0.12, [3]) * size
    blobs = tf.zeros_like(y)
    for i in range(3):
        cy = y_min + centres[i, 0] * height
        cx = x_min + centres[i, 1] * width
        blobs = tf.maximum(blobs, tf.exp(-((y - cy) ** 2 + (x - cx) ** 2)
                                         / (2.0 * sigmas[i] ** 2)))
    shape = tf.where(_uniform(seed, 84, 0.0, 1.0) < 0.5, meniscus, blobs)
    weight = _uniform(seed, 85, strength[0], strength[1]) * shape * inside
    level = _uniform(seed, 86, 0.75, 0.95)
    on = tf.logical_and(_uniform(seed, 87, 0.0, 1.0) < probability, y_max >= 0.0)
    pasted = image * (1.0 - weight[..., None]) + level * weight[..., None]
    return tf.where(on, pasted, image)
