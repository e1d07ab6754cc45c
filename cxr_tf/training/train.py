"""Training the segmenter and the classifier from an ExperimentConfig.

Both functions write into a work directory (checkpoints/, tensorboard/, history.json, best.keras,
experiment.json) and return the path of the best model, chosen on the validation split.
Re-running an interrupted call with the same arguments resumes it (mid-epoch included).

Each epoch's training batches are a pure function of (config.seed, epoch): a freshly seeded
shuffle and augmentation stream per epoch. That is what lets an interrupted run skip exactly the
batches it already trained on, and lets every worker of a multi-worker run draw its shard of the
same global batches.
"""

import contextlib
import contextvars
import functools
import inspect
import logging
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_tf import configs as configs_lib
from cxr_tf import files, layout
from cxr_tf import labels as labels_lib
from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.evaluation import inference, metrics
from cxr_tf.models import backbones
from cxr_tf.models import classifier as classifier_lib
from cxr_tf.models.losses import partial_dice_loss
from cxr_tf.models.unet import UNetSegmenter
from cxr_tf.training import loop, objectives, strategies

log = logging.getLogger("cxr_tf")

EXPERIMENT, LABEL_COUNTS = layout.EXPERIMENT, layout.LABEL_COUNTS


def _runner_for(runners, model, strategy):
    """The InferenceRunner of `model`, built on the first validation and reused after."""
    if runners.get("model") is not model:
        runners.update(model=model, runner=inference.InferenceRunner(model, strategy))
    return runners["runner"]


def _finite(outputs):
    """`outputs`, or FloatingPointError when any is NaN or infinite (the loop calls that a
    divergence)."""
    bad = int(np.size(outputs) - np.count_nonzero(np.isfinite(outputs)))
    if bad:
        raise FloatingPointError(f"{bad} of {np.size(outputs)} model outputs on the validation "
                                 f"split are NaN or infinite")
    return outputs


def segmenter_validation(val_sets, strategy=None):
    """validate() for the segmenter: Dice per target and data set, and the selection metric.

    Args:
      val_sets: {data set name: (image, (masks, known)) batches}, see
        cxr_tf.data.pipeline.segmentation_validation_sets.
      strategy: the training strategy (validation runs distributed over its replicas).

    The returned dict holds `dice_<target>` (with one data set) or `dice_<target>_<data set>`
    (with several) for every target the data set labels, and `mean_dice`: the mean over data
    sets of their primary targets' Dice (left lung, right lung and heart where the heart is
    labelled, both lungs together for lungs-only sets). With one lung-and-heart data set this
    is the mean Dice of the three structures. The model's inference step is traced once, on the
    first call, and reused every epoch.
    """
    runners = {}
    targets = labels_lib.SEGMENTATION_TARGETS

    def validate(model):
        runner = _runner_for(runners, model, strategy)
        out, primary = {}, []
        for name, dataset in val_sets.items():
            res = runner(dataset)
            masks, known = res["targets"]
            probs = _finite(res["outputs"])
            probs = np.concatenate([probs, np.maximum(probs[..., :1], probs[..., 1:2])], -1)
            scores, _ = metrics.partial_segmentation_scores(masks, probs, known, targets)
            suffix = f"_{name}" if len(val_sets) > 1 else ""
            out.update({f"dice_{k}{suffix}": v["dice"] for k, v in scores.items()})
            keys = (labels_lib.STRUCTURES if "heart" in scores else (labels_lib.LUNGS,))
            primary += [scores[k]["dice"] for k in keys if k in scores]
        out["mean_dice"] = float(np.mean(primary))
        return out
    return validate


def classifier_validation(dataset, strategy=None):
    """validate() for the classifier: per-class and mean AUROC on `dataset` (scikit-learn).

    Traced once and reused every epoch, distributed under a multi-replica `strategy` (see
    segmenter_validation).
    """
    runners = {}

    def validate(model):
        res = _runner_for(runners, model, strategy)(dataset)
        per_class = metrics.auroc_per_class(res["targets"], _finite(res["outputs"]))
        out = {"mean_auroc": metrics.mean_auroc(per_class)}
        out.update({f"auroc_{n}": float(v) for n, v in zip(labels_lib.FINDINGS, per_class)})
        return out
    return validate


PICTURES = 4  # validation films per TensorBoard image summary


def _first_images(dataset, n=PICTURES):
    return next(iter(dataset.unbatch().batch(n)))[0].numpy()


def segmenter_pictures(dataset):
    """image_summary_fn of the segmenter: a few validation films with the predicted left lung
    (red), right lung (green) and heart (blue) blended in."""
    def pictures(model):
        images = _first_images(dataset)
        probs = np.asarray(model(images, training=False)) >= 0.5
        grey = np.repeat(images, 3, axis=-1)
        blended = 0.6 * grey + 0.4 * probs.astype(np.float32)
        return {"validation/segmenter_masks": np.round(255 * np.clip(blended, 0, 1))}
    return pictures


def classifier_pictures(dataset):
    """image_summary_fn of the classifier: a few validation films with the class activation
    map of each film's most probable finding in red, and, for models with feature weighting,
    the cells outside the feature mask darkened."""
    def pictures(model):
        images = _first_images(dataset)
        out = model.explain_model()(images, training=False)
        probs = np.asarray(out[classifier_lib.PROBABILITIES])
        cams = np.asarray(out[classifier_lib.CAMS])
        masks = np.asarray(out[classifier_lib.GRID_MASK])
        size = images.shape[1]
        pictures = []
        for image, p, cam, mask in zip(images, probs, cams, masks):
            heat = cam[..., int(np.argmax(p))]
            heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-6)
            heat = tf.image.resize(heat[..., None], (size, size)).numpy()
            keep = tf.image.resize(mask, (size, size), method="nearest").numpy()
            grey = image * (0.5 + 0.5 * keep)
            pictures.append(np.concatenate([np.clip(grey + 0.5 * heat, 0, 1), grey, grey], -1))
        return {"validation/classifier_cams": np.round(255 * np.stack(pictures))}
    return pictures


def label_frequencies(builder, split="train", work_dir=None, write=True):
    """(num_examples, positives per class) of a split, decoding the labels only.

    With `work_dir`, the counts are kept in work_dir/label_counts.json and reused by a resumed
    run (a full pass over ChestX-ray14's records takes a while); `write=False` only reads that
    file (non-chief workers).
    """
    cache = os.path.join(work_dir, LABEL_COUNTS) if work_dir else None
    key = {"dataset": builder.info.full_name, "split": split,
           "num_examples": int(builder.info.splits[split].num_examples)}
    if cache and files.exists(cache):
        stored = files.read_json(cache)
        if all(stored.get(k) == v for k, v in key.items()):
            return stored["num_examples"], np.asarray(stored["positives"], np.int64)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({fk.LABELS: True}),
                            read_config=tfds.ReadConfig(try_autocache=False))
    positives = np.zeros(len(labels_lib.FINDINGS), np.int64)
    total = 0
    for batch in ds.map(lambda ex: ex[fk.LABELS]).batch(4096):
        labels = batch.numpy()
        positives += (labels > 0).sum(axis=0)
        total += labels.shape[0]
    if cache and write:
        files.write_json_atomic(cache, {**key, "num_examples": total,
                                       "positives": positives.tolist()})
    return total, positives


def _seed_everything(seed):
    keras.utils.set_random_seed(seed)


# Settings a resumed run may change: they do not change what is computed (how often to
# checkpoint, preemption handling, XLA, deterministic kernels, in-memory caching), or, for
# `epochs`, only how long the run goes on; each change is recorded as a new segment.
RESUMABLE_CHANGES = frozenset({"epochs", "checkpoint_every_steps", "handle_preemption",
                               "jit_compile", "deterministic", "cache", "image_summaries_every",
                               "profile_steps"})


class ResumeMismatch(ValueError):
    """A work directory holds checkpoints of a run whose settings differ from the ones given.

    The message lists each difference (checkpointed value, value given) and the two ways out:
    the original settings to continue, or another work directory to start afresh.
    """


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _compared(run, by_content=True):
    """The settings of an experiment.json record that must not change on resume.

    The segmenter is compared by its file's SHA-256 (`by_content`, when the record has it), so a
    work directory copied or moved elsewhere resumes with its own segmenter; records written
    before the hash was kept compare the absolute path.
    """
    section = run["role"]
    config = run["config"]
    keep = {"data": config["data"], section: config[section], "seed": config["seed"]}
    flat = _flatten(keep)
    for key in ("segmenter", "datasets"):
        if key in run:
            flat[key] = run[key]
    if by_content and run.get("segmenter_sha256"):
        flat["segmenter"] = f"sha256:{run['segmenter_sha256']}"
    elif flat.get("segmenter"):  # the same file, whether named relative or absolute
        flat["segmenter"] = files.absolute(flat["segmenter"])
    return flat



def _checkpointed_epoch(trainer):
    """Completed epochs in the latest checkpoint (None when there is none), without restoring."""
    latest = trainer.manager.latest_checkpoint
    if not latest:
        return None
    # The reader itself, not tf.train.load_checkpoint: that one asks whether the prefix is a
    # folder first, which filesystems without real folders (ram://) answer yes for "ckpt-6"
    # beside "ckpt-6.index".
    reader = tf.compat.v1.train.NewCheckpointReader(latest)
    return int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def _diverged_last(trainer):
    """True when the run's history ends with a divergence (loop.Trainer writes that record)."""
    if not files.exists(trainer.history_path):
        return False
    history = files.read_json(trainer.history_path)
    return bool(history) and bool(history[-1].get("diverged"))


def _record_experiment(work_dir, trainer, config, **run):
    """Writes experiment.json, or, when `work_dir` holds checkpoints of an earlier run, checks
    the resume contract and appends a segment to it.

    The contract: a rerun continues the checkpointed run only with the same settings, except
    those in RESUMABLE_CHANGES (recorded per segment, e.g. more epochs), and a lower learning
    rate after the run diverged (the segment says `after_divergence`). Anything else (learning
    rate, batch size, schedule, architecture, data, segmenter, seed...) raises ResumeMismatch
    before any step runs, so experiment.json never states a setting that was not used.
    """
    path = os.path.join(work_dir, EXPERIMENT)
    run = {"config": configs_lib.to_dict(config), **run}
    segment = {key: run[key] for key in ("strategy", "replicas", "dtype_policy", "jit_compile")
               if key in run}
    section = run["role"]
    done = _checkpointed_epoch(trainer)
    if done is not None and files.exists(path):
        stored = files.read_json(path)
        by_content = bool(stored.get("segmenter_sha256"))
        before, now = _compared(stored, by_content), _compared(run, by_content)
        changed = sorted(k for k in set(before) | set(now)
                         if before.get(k) != now.get(k)
                         and k.rsplit(".", 1)[-1] not in RESUMABLE_CHANGES)
        lr_key = f"{section}.learning_rate"
        if (changed == [lr_key] and _diverged_last(trainer)
                and 0 < now[lr_key] < before[lr_key]):
            # A run that diverged may go on from its last finite checkpoint at a lower rate.
            changed = []
            segment["after_divergence"] = True
            if run["config"][section].get("lr_schedule") != "cosine":  # a schedule restarts
                trainer.resume_learning_rate = float(now[lr_key])
        if changed:
            lines = "\n".join(f"  {k}: checkpointed {before.get(k)!r}, now {now.get(k)!r}"
                               for k in changed)
            raise ResumeMismatch(
                f"{work_dir} holds checkpoints of a {section} run with other settings:\n{lines}"
                f"\nTo continue that run, rerun with its settings (they are in {path}); only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change. To train with the new "
                f"settings, use another work directory (or delete {work_dir}).")
        segments = stored.get("segments") or [{"from_epoch": 0, "epochs": before.get(
            f"{section}.epochs")}]
        segment.update(from_epoch=done,
                       epochs=run["config"][section]["epochs"])
        changes = {k: [before.get(k), now.get(k)] for k in set(before) | set(now)
                   if before.get(k) != now.get(k)}
        if changes:
            segment["changed"] = changes
        run["segments"] = segments + [segment]
    else:
        run["segments"] = [{"from_epoch": 0, "epochs": run["config"][section]["epochs"],
                            **segment}]
    if trainer.chief:  # every worker checks (they must all stop alike); the chief writes
        files.write_json_atomic(path, run)


@contextlib.contextmanager
def _dtype_policy(name):
    """Sets Keras' global dtype policy for the block, restoring the previous one after it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _setup(options, strategy, what):
    """Checks the batch against the replicas, applies determinism; returns the dtype policy
    name to train under (the options themselves were checked by writing_stage)."""
    if options.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"{what}.batch_size = {options.batch_size} is the GLOBAL batch and must "
                         f"be a multiple of the {strategy.num_replicas_in_sync} replicas of "
                         f"{strategies.describe(strategy)}")
    if options.deterministic:
        # Process-wide and permanent: every later op in this process is deterministic too.
        tf.config.experimental.enable_op_determinism()
    policy = strategies.mixed_precision_policy(strategy) if options.mixed_precision else "float32"
    log.info("Strategy %s; dtype policy %s%s", strategies.describe(strategy), policy,
             "; deterministic ops" if options.deterministic else "")
    return policy


def _make_optimizer(options, steps_per_epoch, policy, weight_decay=None):
    """Adam with the configured learning-rate schedule; loss-scaled under mixed_float16."""
    lr = options.learning_rate
    if options.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            options.learning_rate, decay_steps=max(1, options.epochs * steps_per_epoch),
            alpha=options.min_learning_rate / options.learning_rate)
    optimizer = keras.optimizers.Adam(lr, weight_decay=weight_decay or None)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _plateau(options):
    if options.lr_schedule != "plateau":
        return None
    return (options.lr_plateau_factor, options.lr_plateau_patience, options.min_learning_rate)


def _synchronize_batch_norm(model):
    """Makes every trainable BatchNormalization layer use global-batch statistics."""
    count = 0
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.synchronized = True
            count += 1
        stack.extend(getattr(layer, "layers", []))
    return count


def _float32_saver(policy):
    """save_model_fn writing best.keras in float32 whatever the training policy.

    Variables are float32 under mixed precision anyway; rebuilding the model under the float32
    policy (from its get_config) keeps mixed-precision layers out of the files that evaluation
    and export load.
    """
    if policy == "float32":
        return files.save_model_atomic

    def save(model, path):
        with _dtype_policy("float32"):
            copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        files.save_model_atomic(copy, path)

    return save


def _trainer(model, loss_fn, optimizer, strategy, work_dir, metric, options, policy,
             pictures=None):
    if options.sync_batch_norm and strategy.num_replicas_in_sync > 1:
        log.info("Synchronised batch norm: %d layers use global-batch statistics",
                 _synchronize_batch_norm(model))
    return loop.Trainer(model, loss_fn, optimizer, strategy, work_dir, metric,
                        checkpoint_every_steps=options.checkpoint_every_steps,
                        jit_compile=options.jit_compile, plateau=_plateau(options),
                        save_model_fn=_float32_saver(policy),
                        handle_preemption=options.handle_preemption,
                        image_summary_fn=pictures,
                        image_summary_every=options.image_summaries_every,
                        profile_steps=configs_lib.parse_profile_steps(options.profile_steps))


# Stage directories whose training options an enclosing writing_stage has checked already.
_CHECKED = contextvars.ContextVar("cxr_tf_checked_stages", default=frozenset())


@contextlib.contextmanager
def writing_stage(directory, strategy=None, stage=None, options=None, what="training"):
    """The block writes the stage `directory`: it holds the stage's lock (files.stage_lock, the
    stage named `stage` or like the directory; a second writer is refused at once), and damaged
    records it meets are named (datasets.naming_damage). Under multi-worker training only the
    chief locks (`strategy`); the other workers write scratch files only.

    With `options` (a SegmenterConfig or ClassifierConfig) they are checked first
    (configs.check_training_options, errors naming `what`), once per stage: the facade checks
    before it builds any data, and the trainer it then calls does not check again."""
    name = stage or os.path.basename(os.path.normpath(directory))
    checked = _CHECKED.get()
    if options is not None and directory not in checked:
        configs_lib.check_training_options(options, what)
        checked = checked | {directory}
    token = _CHECKED.set(checked)
    lock = (files.stage_lock(directory, name)
            if strategy is None or strategies.is_chief(strategy) else contextlib.nullcontext())
    try:
        with lock, datasets.naming_damage():
            yield
    finally:
        _CHECKED.reset(token)


def one_writer(role):
    """Runs a training function `fn(config, builder, work_dir, ..., strategy=None, ...)` inside
    writing_stage(work_dir, strategy, options=config.<role>)."""
    return functools.partial(_one_writer, role)


def _one_writer(role, fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        strategy = bound.arguments.get("strategy") or tf.distribute.get_strategy()
        options = getattr(bound.arguments["config"], role)
        with writing_stage(str(bound.arguments["work_dir"]), strategy, options=options,
                           what=role):
            return fn(*args, **kwargs)

    return locked


def _weights_source(backbone_weights):
    """How experiment.json names the backbone's start: null (random), "imagenet", or a path."""
    if backbone_weights in (None, backbones.IMAGENET):
        return backbone_weights
    return files.absolute(backbone_weights)


def _run_info(strategy, policy, trainer):
    return {"strategy": strategies.describe(strategy),
            "replicas": strategy.num_replicas_in_sync, "dtype_policy": policy,
            "jit_compile": trainer.jit_compile}


@one_writer("segmenter")
def train_segmenter(config, builder, work_dir, strategy=None, verbose=1):
    """Trains the U-Net on the train split(s), selecting on validation mean Dice.

    Args:
      config: an ExperimentConfig; `config.segmenter` holds the model and training options.
      builder: a TFDS builder with train and validation splits carrying masks, or a dict
        {data set name: builder} of several (`config.segmenter.datasets` gives the repeats per
        epoch; lungs-only data sets supervise only the lungs, see partial_dice_loss).
      work_dir: output directory (re-running with the same one resumes).
      strategy: tf.distribute strategy (default: no distribution).
      verbose: 1 progress bars, 0 per-epoch log lines only.

    Returns the path of the best model (work_dir/best.keras).
    """
    strategy = strategy or tf.distribute.get_strategy()
    seg = config.segmenter
    policy = _setup(seg, strategy, "segmenter")
    builders = builder if isinstance(builder, dict) else {builder.name: builder}
    repeats = dict(configs_lib.segmenter_sources(seg, next(iter(builders))))
    missing = [n for n in builders if n not in repeats]
    if missing and seg.datasets:
        raise ValueError(f"Data set(s) {missing} given but segmenter.datasets = "
                         f"{seg.datasets!r} does not list them")
    repeats = {n: repeats.get(n, 1) for n in builders}
    files.makedirs(work_dir)
    _seed_everything(config.seed)
    parse = functools.partial(pipeline.parse_partial_segmentation, size=seg.input_size)
    aug = pipeline.Augmentation(**seg.augmentation_fields())
    examples, total, per_source = pipeline.segmentation_train_examples(builders, repeats)
    train_input = pipeline.epoch_input(config, examples, total, parse, aug, seg.batch_size)
    val_sets = pipeline.segmentation_validation_sets(config, builders)
    with _dtype_policy(policy):
        with strategy.scope():
            model = UNetSegmenter(input_size=seg.input_size, base_filters=seg.base_filters,
                                  depth=seg.depth)
            optimizer = _make_optimizer(seg, train_input.steps_per_epoch, policy)
        trainer = _trainer(model, partial_dice_loss(bce_weight=seg.bce_weight), optimizer,
                           strategy, work_dir, "mean_dice", seg, policy,
                           pictures=segmenter_pictures(next(iter(val_sets.values()))))
        log.info("Training segmenter: %d parameters, input %d px, %d epochs, global batch %d, "
                 "examples per epoch %s", model.count_params(), seg.input_size, seg.epochs,
                 seg.batch_size, ", ".join(f"{n} {k}" for n, k in per_source.items()))
        _record_experiment(work_dir, trainer, config, role="segmenter",
                           datasets={n: b.info.full_name for n, b in builders.items()},
                           **_run_info(strategy, policy, trainer))
        trainer.fit(train_input, seg.epochs, seg.batch_size,
                    segmenter_validation(val_sets, strategy), verbose=verbose)
    return trainer.best_path


def build_classifier_from_config(config, segmenter=None, backbone_weights=None):
    """The classifier a ClassifierConfig describes (random init unless backbone_weights)."""
    clf = config.classifier
    return classifier_lib.build_classifier(
        clf.variant, backbone=clf.backbone or None, input_size=clf.input_size,
        segmenter=segmenter if configs_lib.needs_segmenter(clf.variant) else None,
        mask_threshold=clf.mask_threshold, min_mask_coverage=clf.min_mask_coverage,
        mask_dilation=clf.mask_dilation,
        feature_activation=clf.feature_activation or None, dropout=clf.dropout,
        backbone_weights=backbone_weights)


def classifier_loss(config, builder, work_dir=None, write=True):
    """The per-example classifier loss `config.classifier.class_weighting` asks for.

    "none": keras.losses.binary_crossentropy (the paper). "positive": positive_weighted_bce with
    w_pos = N_negative / N_positive per class, counted on the builder's train split.

    Counts are cached in work_dir (see label_frequencies; `write=False` on non-chief workers).

    Returns (loss_fn, positive weights as a list or None).
    """
    weighting = config.classifier.class_weighting
    if weighting == "none":
        return keras.losses.binary_crossentropy, None
    if weighting == "positive":
        total, positives = label_frequencies(builder, "train", work_dir, write=write)
        weights = objectives.positive_class_weights(positives, total)
        for name, count in zip(labels_lib.FINDINGS, positives):
            if count == 0:
                log.warning("Class %s has no positive example in the train split: weight 1",
                            name)
        log.info("Positive-class weights: %s", ", ".join(
            f"{n} {w:.1f}" for n, w in zip(labels_lib.FINDINGS, weights)))
        return objectives.positive_weighted_bce(weights), weights.tolist()
    raise ValueError(f"classifier.class_weighting = {weighting!r}: expected one of "
                     f"{', '.join(configs_lib.CLASS_WEIGHTINGS)}")


@one_writer("classifier")
def train_classifier(config, builder, work_dir, segmenter_path=None, strategy=None,
                     backbone_weights=None, verbose=1):
    """Trains the classifier on the train split, selecting on validation mean AUROC.

    Args:
      config: an ExperimentConfig; `config.classifier` holds the model and training options.
      builder: TFDS builder with train and validation splits.
      work_dir: output directory (re-running with the same one resumes).
      segmenter_path: trained segmenter (.keras), required by variants with feature weighting.
        It runs frozen and in float32 even under mixed precision, so masks do not depend on it.
      strategy: tf.distribute strategy (default: no distribution).
      backbone_weights: None (random init), "imagenet" (keras.applications' ImageNet weights,
        see models.backbones.imagenet_weights_path) or a local weights file.
      verbose: 1 progress bars, 0 per-epoch log lines only.

    Returns the path of the best model (work_dir/best.keras).
    """
    strategy = strategy or tf.distribute.get_strategy()
    clf = config.classifier
    policy = _setup(clf, strategy, "classifier")
    needs_segmenter = configs_lib.needs_segmenter(clf.variant)
    if needs_segmenter and not segmenter_path:
        raise ValueError(f"Variant {clf.variant!r} weights features by the lung-and-heart mask and "
                         f"needs a trained segmenter; pass its .keras path")
    files.makedirs(work_dir)
    _seed_everything(config.seed)
    parse = functools.partial(pipeline.parse_classification, size=clf.input_size,
                              resize_size=clf.resize_size)
    aug = pipeline.Augmentation(min_crop_fraction=clf.min_crop_fraction,
                                brightness=clf.brightness, contrast=clf.contrast)
    train_input = pipeline.epoch_input(config, *pipeline.split_examples(builder, "train"),
                                       parse, aug, clf.batch_size)
    val_ds = pipeline.classification_dataset(config, builder, "validation", training=False)
    loss_fn, pos_weights = classifier_loss(config, builder, work_dir,
                                           write=strategies.is_chief(strategy))
    with _dtype_policy("float32"), strategy.scope():
        # The frozen segmenter keeps float32: the same masks in training, evaluation, serving.
        segmenter = classifier_lib.load_model(segmenter_path) if needs_segmenter else None
    with _dtype_policy(policy):
        with strategy.scope():
            model = build_classifier_from_config(config, segmenter, backbone_weights)
            optimizer = _make_optimizer(clf, train_input.steps_per_epoch, policy,
                                        weight_decay=clf.weight_decay)
        trainer = _trainer(model, loss_fn, optimizer, strategy, work_dir, "mean_auroc", clf,
                           policy, pictures=classifier_pictures(val_ds))
        log.info("Training %s (%s backbone): %d parameters (%d trainable), input %d px, %d "
                 "epochs, global batch %d", clf.variant, model.backbone_name, model.count_params(),
                 sum(int(np.prod(v.shape)) for v in model.trainable_variables), clf.input_size,
                 clf.epochs, clf.batch_size)
        _record_experiment(work_dir, trainer, config, role="classifier",
                           segmenter=segmenter_path and files.absolute(segmenter_path),
                           segmenter_sha256=segmenter_path and files.file_digest(segmenter_path),
                           backbone_weights=_weights_source(backbone_weights),
                           positive_class_weights=pos_weights,
                           **_run_info(strategy, policy, trainer))
        trainer.fit(train_input, clf.epochs, clf.batch_size,
                    classifier_validation(val_ds, strategy),
                    verbose=verbose)
    return trainer.best_path
