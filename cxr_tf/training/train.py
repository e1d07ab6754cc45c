"""Training the segmenter and the classifier from an ExperimentConfig.

Both functions write into a work directory (checkpoints, history.json, best.keras,
experiment.json) and return the path of the best model, chosen on the validation split.
"""

import functools
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import configs as configs_lib
from cxr_tf import labels as labels_lib
from cxr_tf.data import datasets, pipeline
from cxr_tf.evaluation import inference, metrics
from cxr_tf.models import classifier as classifier_lib
from cxr_tf.models.losses import SoftDiceLoss
from cxr_tf.models.unet import UNetSegmenter
from cxr_tf.training import loop

log = logging.getLogger("cxr_tf")

EXPERIMENT = "experiment.json"
# Batch size of validation passes: inference only, so larger than training batches.
EVAL_BATCH = 64


def segmentation_datasets(config, builder, split, training):
    """(image, masks) batches for the segmenter from a split with masks."""
    seg = config.segmenter
    parse = functools.partial(pipeline.parse_segmentation, size=seg.input_size)
    aug = pipeline.Augmentation(min_crop_fraction=seg.min_crop_fraction)
    return pipeline.make_dataset(
        datasets.load_split(builder, split), parse,
        seg.batch_size if training else EVAL_BATCH, training, aug=aug, seed=config.seed,
        cache=config.data.cache)


def classification_dataset(config, builder, split, training, with_ids=False, batch_size=None):
    """(image, labels[, id]) batches for the classifier."""
    clf = config.classifier
    parse = functools.partial(pipeline.parse_classification, size=clf.input_size,
                              resize_size=clf.resize_size)
    aug = pipeline.Augmentation(min_crop_fraction=clf.min_crop_fraction,
                                brightness=clf.brightness, contrast=clf.contrast)
    return pipeline.make_dataset(
        datasets.load_split(builder, split), parse,
        batch_size or (clf.batch_size if training else EVAL_BATCH), training, aug=aug,
        seed=config.seed, cache=config.data.cache, with_ids=with_ids)


def segmenter_validation(dataset):
    """validate() for the segmenter: Dice per structure, lungs and union on `dataset`."""
    def validate(model):
        res = inference.collect(model, dataset)
        scores = metrics.segmentation_scores(res["targets"], res["outputs"],
                                             labels_lib.STRUCTURES)
        out = {f"dice_{k}": v["dice"] for k, v in scores.items()}
        out["mean_dice"] = float(np.mean([scores[s]["dice"] for s in labels_lib.STRUCTURES]))
        return out
    return validate


def classifier_validation(dataset):
    """validate() for the classifier: per-class and mean AUROC on `dataset` (scikit-learn)."""
    def validate(model):
        res = inference.collect(model, dataset)
        per_class = metrics.auroc_per_class(res["targets"], res["outputs"])
        out = {"mean_auroc": metrics.mean_auroc(per_class)}
        out.update({f"auroc_{n}": float(v) for n, v in zip(labels_lib.FINDINGS, per_class)})
        return out
    return validate


def _seed_everything(seed):
    keras.utils.set_random_seed(seed)


def _write_experiment(work_dir, config, **extra):
    loop.write_json_atomic(os.path.join(work_dir, EXPERIMENT),
                           {"config": configs_lib.to_dict(config), **extra})


def train_segmenter(config, builder, work_dir, strategy=None, verbose=1):
    """Trains the U-Net on the builder's train split, selecting on validation mean Dice.

    Returns the path of the best model (work_dir/best.keras).
    """
    strategy = strategy or tf.distribute.get_strategy()
    seg = config.segmenter
    os.makedirs(work_dir, exist_ok=True)
    _seed_everything(config.seed)
    train_ds = segmentation_datasets(config, builder, "train", training=True)
    val_ds = segmentation_datasets(config, builder, "validation", training=False)
    with strategy.scope():
        model = UNetSegmenter(input_size=seg.input_size, base_filters=seg.base_filters,
                              depth=seg.depth)
        optimizer = keras.optimizers.Adam(seg.learning_rate)
    dice = SoftDiceLoss(reduction=None)
    trainer = loop.Trainer(model, dice, optimizer, strategy, work_dir, "mean_dice")
    log.info("Training segmenter: %d parameters, input %d px, %d epochs, batch %d",
             model.count_params(), seg.input_size, seg.epochs, seg.batch_size)
    _write_experiment(work_dir, config, role="segmenter")
    trainer.fit(train_ds, seg.epochs, seg.batch_size, segmenter_validation(val_ds),
                verbose=verbose)
    return trainer.best_path


def build_classifier_from_config(config, segmenter=None, backbone_weights=None):
    """The classifier a ClassifierConfig describes (random init unless backbone_weights)."""
    clf = config.classifier
    return classifier_lib.build_classifier(
        clf.variant, backbone=clf.backbone or None, input_size=clf.input_size,
        segmenter=segmenter if classifier_lib.VARIANTS[clf.variant][2] else None,
        mask_threshold=clf.mask_threshold, min_mask_coverage=clf.min_mask_coverage,
        feature_activation=clf.feature_activation or None, dropout=clf.dropout,
        backbone_weights=backbone_weights)


def train_classifier(config, builder, work_dir, segmenter_path=None, strategy=None,
                     backbone_weights=None, verbose=1):
    """Trains the classifier on the train split, selecting on validation mean AUROC.

    Args:
      config: an ExperimentConfig.
      builder: TFDS builder with train and validation splits.
      work_dir: output directory.
      segmenter_path: trained segmenter (.keras), required by variants with feature weighting.
      strategy: tf.distribute strategy (default: no distribution).
      backbone_weights: optional local weights file for the backbone.

    Returns the path of the best model (work_dir/best.keras).
    """
    strategy = strategy or tf.distribute.get_strategy()
    clf = config.classifier
    os.makedirs(work_dir, exist_ok=True)
    _seed_everything(config.seed)
    needs_segmenter = classifier_lib.VARIANTS[clf.variant][2]
    if needs_segmenter and not segmenter_path:
        raise ValueError(f"Variant {clf.variant!r} weights features by the lung-and-heart mask and "
                         f"needs a trained segmenter; pass its .keras path")
    train_ds = classification_dataset(config, builder, "train", training=True)
    val_ds = classification_dataset(config, builder, "validation", training=False)
    with strategy.scope():
        segmenter = classifier_lib.load_model(segmenter_path) if needs_segmenter else None
        model = build_classifier_from_config(config, segmenter, backbone_weights)
        optimizer = keras.optimizers.Adam(clf.learning_rate, weight_decay=clf.weight_decay or None)
    trainer = loop.Trainer(model, keras.losses.binary_crossentropy, optimizer, strategy, work_dir,
                           "mean_auroc")
    log.info("Training %s (%s backbone): %d parameters (%d trainable), input %d px, %d epochs, "
             "batch %d", clf.variant, model.backbone_name, model.count_params(),
             sum(int(np.prod(v.shape)) for v in model.trainable_variables), clf.input_size,
             clf.epochs, clf.batch_size)
    _write_experiment(work_dir, config, role="classifier", segmenter=segmenter_path)
    trainer.fit(train_ds, clf.epochs, clf.batch_size, classifier_validation(val_ds),
                verbose=verbose)
    return trainer.best_path
