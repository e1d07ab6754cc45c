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
import functools
import logging

import tensorflow as tf

from cxr_tf import labels as labels_lib
from cxr_tf.data import augment, datasets, preprocessing
from cxr_tf.data import features as fk

log = logging.getLogger("cxr_tf")

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
      opacities: probability of a dense opacity pasted inside a lung, masks unchanged
        (segmentation only; 0 = off).
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
    opacities: float = 0.0

    @property
    def geometric(self):
        return self.scale > 0 or self.rotation > 0 or self.shift > 0

    @property
    def enabled(self):
        return (self.min_crop_fraction < 1.0 or self.geometric
                or any(getattr(self, f) > 0 for f in ("brightness", "contrast", "gamma", "noise",
                                                      "blur", "borders", "overlays",
                                                      "opacities")))


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
    if aug.enabled and aug.opacities > 0:  # part of the film, so before exposure and noise
        image = augment.opacities(image, masks, seed, aug.opacities)
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
    float32, 1 where the data set labels that target, and "image_id" when the example has
    one}. Data sets with `masks` (jsrt_scr,
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


# ---- The streams of a run: training epochs, validation and evaluation batches ------------------

# Batch size of validation and evaluation passes: inference only, so larger than training batches.
EVAL_BATCH = 64
# Shuffle buffer of the training stream (examples).
SHUFFLE_BUFFER = 2048


class EpochInput:
    """Training data whose every epoch is a fixed sequence of batches, for exact resumption.

    Args:
      dataset_fn: `fn(epoch, start_step, input_context) -> tf.data.Dataset` yielding the
        (image, target) batches of `epoch` (0-based) that follow its first `start_step` global
        steps, batched per replica (`input_context.get_per_replica_batch_size(global_batch)`) and
        sharded per input pipeline (`input_context.input_pipeline_id` of
        `input_context.num_input_pipelines`). It must give the same batches every time it is
        called with the same arguments, and exactly `steps_per_epoch - start_step` batches per
        replica, on every worker (otherwise workers wait for each other forever).
      steps_per_epoch: global steps in one epoch.
      global_batch_size: examples per global step, over all replicas.
    """

    def __init__(self, dataset_fn, steps_per_epoch, global_batch_size):
        self.dataset_fn = dataset_fn
        self.steps_per_epoch = int(steps_per_epoch)
        self.global_batch_size = int(global_batch_size)


def epoch_seed(seed, epoch):
    """The shuffle/augmentation seed of one epoch: a fixed function of (seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) + 1) % (2 ** 62)


def epoch_input(config, examples, num_examples, parse_fn, aug, global_batch_size):
    """A loop.EpochInput over decoded examples: per-epoch seeded shuffle and augmentation.

    Epoch e shuffles the (optionally cached) examples with seed epoch_seed(config.seed, e),
    pairs each with a per-example augmentation seed from the same stream, keeps the first
    `steps_per_epoch * global_batch_size` (drop-remainder), skips those of already trained
    steps, shards them over input pipelines (workers) element by element, parses, and batches
    per replica. Every worker therefore trains on its share of the very same global batches a
    single device would see, in the same order.

    Args:
      config: ExperimentConfig (seed, data.cache).
      examples: tf.data.Dataset of decoded examples (e.g. `datasets.load_split(builder,
        "train")`) in a fixed order.
      num_examples: how many it holds.
      parse_fn: `fn(example, aug=..., seed=...) -> (image, target)`.
      aug: pipeline.Augmentation.
      global_batch_size: examples per global step.
    """
    if config.data.cache:
        examples = examples.cache()  # shared by the datasets of all epochs
    steps = int(num_examples) // global_batch_size
    seed = config.seed

    def dataset_fn(epoch, start_step, ctx):
        s = epoch_seed(seed, epoch)
        ds = examples.shuffle(SHUFFLE_BUFFER, seed=s, reshuffle_each_iteration=False)
        seeds = tf.data.Dataset.random(seed=s).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
        ds = ds.take(steps * global_batch_size).skip(start_step * global_batch_size)
        if ctx.num_input_pipelines > 1:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        ds = ds.map(lambda example, s_: parse_fn(example, aug=aug, seed=s_),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(ctx.get_per_replica_batch_size(global_batch_size), drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    return EpochInput(dataset_fn, steps, global_batch_size)


def split_examples(builder, split):
    """(decoded examples of a split in stored order, their number)."""
    return datasets.load_split(builder, split), builder.info.splits[split].num_examples


def segmentation_train_examples(builders, repeats):
    """The training examples of several segmentation data sets in one stream.

    Each source is put in the common layout of segmentation_targets (image, masks over
    the four targets, known flags), repeated `repeats[name]` times, and the sources are
    concatenated in the given order (the epoch's shuffle mixes them).

    Returns:
      (examples, number of examples, {name: examples per epoch}).
    """
    stream, total, per_source = None, 0, {}
    for name, builder in builders.items():
        examples, n = split_examples(builder, "train")
        examples = examples.map(segmentation_targets,
                                num_parallel_calls=tf.data.AUTOTUNE)
        examples = examples.repeat(repeats[name])
        per_source[name] = n * repeats[name]
        total += per_source[name]
        stream = examples if stream is None else stream.concatenate(examples)
    return stream, total, per_source


def classification_dataset(config, builder, split, training, with_ids=False, batch_size=None):
    """(image, labels[, id]) batches for the classifier."""
    clf = config.classifier
    parse = functools.partial(parse_classification, size=clf.input_size,
                              resize_size=clf.resize_size)
    aug = Augmentation(min_crop_fraction=clf.min_crop_fraction,
                                brightness=clf.brightness, contrast=clf.contrast)
    return make_dataset(
        datasets.load_split(builder, split), parse,
        batch_size or (clf.batch_size if training else EVAL_BATCH), training, aug=aug,
        seed=config.seed, cache=config.data.cache, with_ids=with_ids)


def segmentation_validation_sets(config, builders):
    """{data set name: (image, (masks, known)) validation batches at the segmenter's input size}
    for every source that has a validation split."""
    out = {}
    for name, builder in builders.items():
        if "validation" not in builder.info.splits:
            log.warning("%s has no validation split: it does not take part in model selection",
                        builder.info.full_name)
            continue
        ds, _ = segmentation_dataset(builder, "validation", config.segmenter.input_size,
                                               batch_size=EVAL_BATCH)
        out[name] = ds.map(lambda x, t, ids: (x, t))
    if not out:
        raise ValueError("No segmentation data set has a validation split to select on")
    return out


def examples_dataset(builder, split, batch_size=64, with_boxes=False):
    """Batches of a split as stored (no resizing: predictors preprocess themselves).

    Each element is a dict: "image" (B, H, W, 1) float32 in [0, 1], "labels" (B, 14) float32,
    "image_id" (B,) string and, with `with_boxes`, "boxes" (B, N, 4) float32 [x, y, w, h] in
    pixels of the stored image and "box_labels" (B, N) int32 finding indices, padded with -1.
    """
    examples = datasets.load_split(builder, split)
    if with_boxes:
        missing = [k for k in (fk.BOXES, fk.BOX_LABELS) if k not in builder.info.features]
        if missing:
            raise ValueError(f"{builder.info.full_name} has no box features ({', '.join(missing)}"
                             f"): localisation needs a data set with ground-truth boxes")

    def parse(ex):
        out = {"image": preprocessing.to_float(ex[fk.IMAGE]),
               "labels": tf.cast(ex[fk.LABELS], tf.float32), "image_id": ex[fk.IMAGE_ID]}
        if with_boxes:
            out["boxes"] = tf.reshape(tf.cast(ex[fk.BOXES], tf.float32), [-1, 4])
            out["box_labels"] = tf.cast(ex[fk.BOX_LABELS], tf.int32)
        return out

    ds = examples.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if with_boxes:
        ds = ds.padded_batch(batch_size, padding_values={
            "image": 0.0, "labels": 0.0, "image_id": "", "boxes": 0.0, "box_labels": -1})
    else:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def split_metadata(builder, split, keys):
    """(image ids, {key: list of values}) of every film of `split` in stored order (the order
    of segmentation_dataset and examples_dataset), for the scalar features `keys` the data set
    has (e.g. features.VIEW_POSITION, features.TUBERCULOSIS; text decoded); keys it lacks are
    left out."""
    features = builder.info.features
    present = [k for k in keys if k in features]
    ds = datasets.load_split(builder, split).map(
        lambda ex: {k: ex[k] for k in (fk.IMAGE_ID, *present)},
        num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    ids, values = [], {k: [] for k in present}
    for batch in ds.as_numpy_iterator():
        ids += [i.decode() for i in batch[fk.IMAGE_ID]]
        for k in present:
            values[k] += list(batch[k])
    decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return ids, {k: [decode(v) for v in vals] for k, vals in values.items()}


def segmentation_dataset(builder, split, size, batch_size=64):
    """(image, (masks, known), image_id) batches of a split with masks, at the segmenter's
    input size.

    Targets in labels.SEGMENTATION_TARGETS order (left lung, right lung, heart, both lungs) with
    their per-image known flags (cxr_tf.data.pipeline.segmentation_targets): data sets with
    `masks` (synthetic_cxr, jsrt_scr) label all four, lungs-only data sets (montgomery, shenzhen)
    both lungs and, where the mask tells them apart, each lung. Images and masks are resized
    together exactly as for training (cxr_tf.data.preprocessing.resize_and_crop), masks
    binarised at 0.5.

    Returns:
      (dataset, names of the targets the data set can label: all four, or the three lung
      targets for lungs-only data sets).
    """
    features = builder.info.features
    if fk.MASKS in features:
        structures = labels_lib.SEGMENTATION_TARGETS
    elif fk.LUNGS in features:
        structures = ("left_lung", "right_lung", labels_lib.LUNGS)
    else:
        raise ValueError(f"{builder.info.full_name} has no segmentation masks ({fk.MASKS!r} or "
                         f"{fk.LUNGS!r}); score the segmenter on a data set with masks, e.g. "
                         f"synthetic_cxr, jsrt_scr, montgomery or shenzhen (rebuild a montgomery "
                         f"data set made by cxr_tf < 0.2)")

    def parse(ex):
        image, targets = parse_partial_segmentation(ex, size)
        return image, targets, ex[fk.IMAGE_ID]

    ds = datasets.load_split(builder, split).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), tuple(structures)
