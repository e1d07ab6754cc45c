"""tf.data input pipelines for classification and segmentation.

Split in the tensorflow/models way: TFDS decodes records into feature dicts (the decoder); the
parsers here turn one decoded example into model inputs and targets. Geometric augmentation is
applied to image and mask together, so they stay aligned.

Every dataset yields batches of `(image, target)`:
  - classification: image (B, size, size, 1) float32 in [0, 1]; target (B, 14) float32 multi-hot;
  - segmentation: image (B, size, size, 1); target (B, size, size, 3) float32 in {0, 1}
    (parse_lung_segmentation: (B, size, size, 2), left and right lung only).
`with_ids=True` adds a third element, the image ids, for evaluation.
"""

import dataclasses

import tensorflow as tf

from cxr_tf import labels as labels_lib
from cxr_tf.data import augment
from cxr_tf.data import features as fk
from cxr_tf.data import preprocessing

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Anatomically safe augmentation. Left-right flips are absent on purpose: they move the heart.

    All fields default to off (the paper trains without augmentation). The fields after
    `contrast` imitate films from other hospitals (cxr_tf.data.augment); geometry moves the image
    and its masks together, the rest changes the image only.

    Attributes:
      min_crop_fraction: random square crop (uniform position) covering at least this fraction
        of the side, resized back to the input size (1 = off).
      brightness: max absolute brightness (exposure) shift (0 = off).
      contrast: max relative contrast change (0 = off).
      gamma: max |log gamma| of a tone curve image ** gamma (0 = off).
      noise: max standard deviation of additive Gaussian noise (0 = off).
      blur: max Gaussian blur sigma in input pixels (0 = off).
      scale: max relative zoom, drawn in [1 - scale, 1 + scale] (0 = off).
      rotation: max rotation in degrees (0 = off).
      shift: max shift as a fraction of the side (0 = off).
      borders: probability of collimation bands along the edges (0 = off).
      overlays: probability of burnt-in lines and text blocks (0 = off).
    """
    min_crop_fraction: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    scale: float = 0.0
    rotation: float = 0.0
    shift: float = 0.0
    borders: float = 0.0
    overlays: float = 0.0

    @property
    def geometric(self):
        return self.scale > 0 or self.rotation > 0 or self.shift > 0

    @property
    def enabled(self):
        return (self.min_crop_fraction < 1.0 or self.geometric
                or any(getattr(self, f) > 0 for f in ("brightness", "contrast", "gamma", "noise",
                                                      "blur", "borders", "overlays")))


NO_AUGMENTATION = Augmentation()


def _random_crop(stacked, fraction_low, seed):
    """Random square crop (shared by all channels) of side fraction in [fraction_low, 1]."""
    h = tf.shape(stacked)[0]
    w = tf.shape(stacked)[1]
    frac = tf.random.stateless_uniform([], seed=seed, minval=fraction_low, maxval=1.0)
    side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * frac, tf.int32)
    seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
    oy = tf.random.stateless_uniform([], seed=seed2, maxval=h - side + 1, dtype=tf.int32)
    seed3 = tf.random.experimental.stateless_fold_in(seed, 2)
    ox = tf.random.stateless_uniform([], seed=seed3, maxval=w - side + 1, dtype=tf.int32)
    return stacked[oy:oy + side, ox:ox + side, :]


def _photometric(image, aug, seed):
    # Tone first (gamma, contrast, exposure), then the detector (blur, noise), then what is burnt
    # into the film after acquisition (borders, overlays): the order films are made in.
    if aug.gamma > 0:
        image = augment.gamma(image, seed, aug.gamma)
    if aug.contrast > 0:
        s = tf.random.experimental.stateless_fold_in(seed, 3)
        factor = tf.random.stateless_uniform([], seed=s, minval=1 - aug.contrast,
                                             maxval=1 + aug.contrast)
        image = (image - 0.5) * factor + 0.5
    if aug.brightness > 0:
        s = tf.random.experimental.stateless_fold_in(seed, 4)
        image = image + tf.random.stateless_uniform([], seed=s, minval=-aug.brightness,
                                                    maxval=aug.brightness)
    if aug.blur > 0:
        image = augment.blur(image, seed, aug.blur)
    if aug.noise > 0:
        image = augment.noise(image, seed, aug.noise)
    image = tf.clip_by_value(image, 0.0, 1.0)
    if aug.borders > 0:
        image = augment.borders(image, seed, aug.borders)
    if aug.overlays > 0:
        image = augment.overlays(image, seed, aug.overlays)
    return image


def parse_classification(example, size, resize_size=None, aug=NO_AUGMENTATION, seed=None):
    """Decoded example -> (image (size, size, 1) float32, labels (14,) float32)."""
    image = preprocessing.to_float(example[fk.IMAGE])
    if aug.enabled:
        if aug.min_crop_fraction < 1.0:
            image = _random_crop(image, aug.min_crop_fraction, seed)
        image = preprocessing.resize_and_crop(image, size, resize_size)
        image = _photometric(image, aug, seed)
    else:
        image = preprocessing.resize_and_crop(image, size, resize_size)
    return image, tf.cast(example[fk.LABELS], tf.float32)


def _require_feature(example, key, parser, hint):
    if key not in example:
        raise ValueError(f"{parser}: the examples have no {key!r} feature (they have "
                         f"{sorted(example)}). {hint}")


def _segmentation_pair(image, masks, size, aug, seed):
    """Shared geometry of the segmentation parsers: one crop, resize and affine for image and
    masks, then the image-only augmentations."""
    n_masks = masks.shape[-1]
    stacked = tf.concat([image, masks], axis=-1)
    if aug.enabled and aug.min_crop_fraction < 1.0:
        stacked = _random_crop(stacked, aug.min_crop_fraction, seed)
    stacked = preprocessing.resize_and_crop(stacked, size)
    if aug.enabled and aug.geometric:
        stacked = augment.affine(stacked, seed, aug.scale, aug.rotation, aug.shift)
    image = stacked[..., :1]
    masks = tf.cast(stacked[..., 1:] >= 0.5, tf.float32)
    masks = tf.ensure_shape(masks, [size, size, n_masks])
    if aug.enabled:
        image = _photometric(image, aug, seed)
    return image, masks


def parse_segmentation(example, size, aug=NO_AUGMENTATION, seed=None):
    """Decoded example -> (image (size, size, 1), masks (size, size, S) float32 in {0, 1}).

    Needs the `masks` feature (left lung, right lung, heart: synthetic_cxr, jsrt_scr). Lungs-only
    data sets (montgomery) have none, so that a missing heart outline is never read as "no heart":
    use parse_lung_segmentation for them.
    """
    _require_feature(example, fk.MASKS, "parse_segmentation",
                     f"Lungs-only data sets (e.g. montgomery) store {fk.LUNG_MASKS!r} without a "
                     f"heart outline; use parse_lung_segmentation for them.")
    image = preprocessing.to_float(example[fk.IMAGE])
    masks = tf.cast(example[fk.MASKS], tf.float32) / 255.0
    return _segmentation_pair(image, masks, size, aug, seed)


def parse_lung_segmentation(example, size, aug=NO_AUGMENTATION, seed=None):
    """Decoded example -> (image (size, size, 1), lungs (size, size, 2) float32 in {0, 1}).

    Lungs in (left lung, right lung) order from any data set: `lung_masks` (montgomery) or the
    first two channels of `masks` (jsrt_scr, synthetic_cxr). For scoring a segmenter's lung
    channels across data sets, or training lungs only.
    """
    if fk.LUNG_MASKS in example:
        masks = example[fk.LUNG_MASKS]
    else:
        _require_feature(example, fk.MASKS, "parse_lung_segmentation",
                         f"Expected {fk.LUNG_MASKS!r} or {fk.MASKS!r}.")
        masks = example[fk.MASKS][..., :len(fk.LUNG_STRUCTURES)]
    image = preprocessing.to_float(example[fk.IMAGE])
    masks = tf.cast(masks, tf.float32) / 255.0
    return _segmentation_pair(image, masks, size, aug, seed)


def segmentation_targets(example):
    """The targets of any segmentation data set in one layout, for training on several at once.

    Returns {"image": (H, W, 1) uint8, "masks": (H, W, 4) uint8 0/255 in
    labels.SEGMENTATION_TARGETS order (left lung, right lung, heart, both lungs), "known": (4,)
    float32, 1 where the data set labels that target, and "image_id" when the example has one}. Data sets with `masks` (jsrt_scr,
    synthetic_cxr) know all four (both lungs = left | right); lungs-only data sets (montgomery,
    shenzhen) know both lungs, the sides where `lung_sides` says so, and never the heart.

    Raises:
      ValueError: the examples carry neither `masks` nor `lungs`.
    """
    ids = {fk.IMAGE_ID: example[fk.IMAGE_ID]} if fk.IMAGE_ID in example else {}
    if fk.MASKS in example:
        masks = example[fk.MASKS]
        lungs = tf.maximum(masks[..., 0:1], masks[..., 1:2])
        return {"image": example[fk.IMAGE], "masks": tf.concat([masks, lungs], axis=-1),
                "known": tf.ones([len(labels_lib.SEGMENTATION_TARGETS)], tf.float32), **ids}
    _require_feature(example, fk.LUNGS, "segmentation_targets",
                     f"Expected {fk.MASKS!r} (lungs and heart) or {fk.LUNGS!r} (lungs only).")
    sides = tf.cast(example[fk.LUNG_SIDES], tf.float32)
    lung_masks = example[fk.LUNG_MASKS]
    heart = tf.zeros_like(lung_masks[..., :1])
    return {"image": example[fk.IMAGE],
            "masks": tf.concat([lung_masks, heart, example[fk.LUNGS]], axis=-1),
            "known": tf.stack([sides, sides, 0.0, 1.0]), **ids}


def parse_partial_segmentation(example, size, aug=NO_AUGMENTATION, seed=None):
    """`segmentation_targets` output (or a decoded example) -> (image (size, size, 1),
    (masks (size, size, 4) float32 in {0, 1}, known (4,) float32)).

    The target pair feeds cxr_tf.models.losses.partial_dice_loss, which scores only the known
    targets of each image, and the partial segmentation metrics.
    """
    if "known" not in example:
        example = segmentation_targets(example)
    image = preprocessing.to_float(example["image"])
    masks = tf.cast(example["masks"], tf.float32) / 255.0
    image, masks = _segmentation_pair(image, masks, size, aug, seed)
    return image, (masks, example["known"])


def make_dataset(examples, parse_fn, batch_size, training, aug=NO_AUGMENTATION, seed=0,
                 shuffle_buffer=2048, cache=False, with_ids=False, deterministic=None):
    """Builds a batched, prefetched dataset from a dataset of decoded examples.

    Args:
      examples: tf.data.Dataset of decoded feature dicts (e.g. `builder.as_dataset(split)`).
      parse_fn: `fn(example, aug=..., seed=...) -> (image, target)`, e.g. a functools.partial of
        parse_classification or parse_segmentation.
      batch_size: global batch size.
      training: shuffle (reshuffled every epoch), augment, and drop the last partial batch.
      aug: Augmentation applied when training.
      seed: seed of shuffling and augmentation; the same seed gives the same batches.
      shuffle_buffer: shuffle buffer size.
      cache: cache decoded examples in memory after the first pass (for small data sets).
      with_ids: append the image id to every element (evaluation).
      deterministic: force deterministic element order (None: tf.data's default).
    """
    ds = examples
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        # A fresh stream of per-example seeds every epoch, reproducible from `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))

        def parse(example, s):
            return parse_fn(example, aug=aug, seed=s)
    else:
        def parse(example):
            out = parse_fn(example)
            return (*out, example[fk.IMAGE_ID]) if with_ids else out

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE)
