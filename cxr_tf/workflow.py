"""The one facade of cxr_tf: every step a binary runs, on paths inside one work directory.

Each binary in `pipelines/` parses its flags and calls this module only; the demo calls its
functions in order. Functions here orchestrate (lock a stage, build data, choose a segmenter,
train, score, export); what is a single call into a package the binaries make themselves, on
the package modules this facade carries:

    build_data / build_segmentation_data     data sets (TFDS records)
    train_segmenter / train_classifier        training runs (any tf.distribute strategy)
    evaluate                                  reports (classifier, segmenter, screening)
    export                                    TF Serving SavedModels
    run_ablation                              CXR-IRNet, its ablations and baselines side by side

    layout, files                             the work directory's names; files on any filesystem
    datasets                                  built data sets (first_png for the demo)
    ablation                                  ablation tables and the clean-vs-shortcut comparison
    predict, overlay                          predictions on files, heat-map overlays (cxr-predict)
    rest_json, rest_server, grpc_service      TF Serving's REST and gRPC APIs offline (cxr-rest)

Paths may be local or any URI TensorFlow's filesystems serve (gs://...; see cxr_tf.files).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cxr_tf import configs as configs_lib
from cxr_tf import files, layout, pretrained
from cxr_tf import labels as labels_lib
from cxr_tf.data import datasets
from cxr_tf.data import features as fk
from cxr_tf.evaluation import ablation
from cxr_tf.evaluation import report as report_lib
from cxr_tf.evaluation import runs as eval_runs
from cxr_tf.files import PathLike
from cxr_tf.models import load_model
from cxr_tf.serving import export as export_lib
from cxr_tf.serving import grpc_service, overlay, predict, rest_json, rest_server, tf_serving
from cxr_tf.training import strategies, train

if TYPE_CHECKING:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    Builder = tfds.core.DatasetBuilder

log = logging.getLogger("cxr_tf")

__all__ = [
    # orchestration
    "build_data", "build_segmentation_data", "segmenter_for_classifier", "load_experiment",
    "train_segmenter", "train_classifier", "evaluate", "thresholds_from_report", "export",
    "run_ablation",
    # package modules the binaries call
    "layout", "files", "datasets", "ablation", "predict", "overlay", "rest_json", "rest_server",
    "grpc_service"]

def segmenter_for_classifier(work_dir: PathLike, explicit: PathLike | None = None,
                             train_on: Builder | None = None,
                             config: configs_lib.ExperimentConfig | None = None,
                             verbose: int = 0) -> tuple[str, str]:
    """The segmenter a classifier in `work_dir` weights its features with, and where it came
    from; the one place that choice is made (training, the ablation runner). In order:
    `explicit` when given; WORK_DIR/segmenter/best.keras when trained there; with `train_on` (a
    built data set) that has lung-and-heart masks, one trained on it now into WORK_DIR/segmenter
    with `config.segmenter` (the ablation runner on phantoms); else the segmenter shipped with
    cxr_tf (cxr_tf.pretrained; trained on public JSRT + SCR fold 1, Montgomery and Shenzhen
    films).

    Returns:
      (path, source) with source "given", "work_dir", "trained" or "pretrained".
    """
    if explicit:
        return eval_runs.require(explicit, "Segmenter"), "given"
    trained = layout.best_model(layout.segmenter_dir(work_dir))
    if files.exists(trained):
        return trained, "work_dir"
    if train_on is not None and fk.MASKS in train_on.info.features:
        log.info("Training the segmenter on %s's masks into %s", train_on.info.full_name,
                 layout.segmenter_dir(work_dir))
        return train.train_segmenter(config, train_on, layout.segmenter_dir(work_dir),
                                     verbose=verbose), "trained"
    path = pretrained.segmenter_path()
    log.info("No segmenter given (--segmenter) or trained in %s: using the one shipped with "
             "cxr_tf, %s (112 px U-Net trained on public JSRT + SCR fold 1, Montgomery and "
             "Shenzhen films; model card: cxr_tf/pretrained/MODEL_CARD.md)",
             layout.segmenter_dir(work_dir), path)
    return path, "pretrained"


def load_experiment(run_dir: PathLike) -> tuple[configs_lib.ExperimentConfig, dict]:
    """The ExperimentConfig a training run in `run_dir` used (from its experiment.json)."""
    path = os.path.join(run_dir, layout.EXPERIMENT)
    if not files.exists(path):
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a cxr_tf training directory "
                                f"(train first, or point to the directory holding best.keras)")
    stored = files.read_json(path)
    return configs_lib.from_dict(stored["config"]), stored


def build_data(config: configs_lib.ExperimentConfig, data_dir: PathLike,
               manual_dir: PathLike | None = None) -> Builder:
    """Builds (or reuses) the data set of `config.data`; returns its TFDS builder."""
    builder = datasets.get_builder(config.data, data_dir)
    datasets.prepare(builder, manual_dir=manual_dir)
    for split, info in builder.info.splits.items():
        log.info("  %s: %d examples", split, info.num_examples)
    return builder


def build_segmentation_data(config: configs_lib.ExperimentConfig, data_dir: PathLike,
                            manual_dir: PathLike | None = None) -> dict[str, Builder]:
    """Builds (or reuses) every data set `config.segmenter.datasets` names (default
    `config.data.dataset`), each stored at `config.data.image_size`; returns {name: builder}
    in that order, for train_segmenter."""
    builders = {}
    for name, _ in configs_lib.segmenter_sources(config.segmenter, config.data.dataset):
        data = dataclasses.replace(config.data, dataset=name)
        builders[name] = build_data(dataclasses.replace(config, data=data), data_dir,
                                    manual_dir)
    return builders


def evaluate(classifier_path: PathLike | None, builder: Builder,
             config: configs_lib.ExperimentConfig, out_dir: PathLike, split: str = "test",
             segmenter_path: PathLike | None = None, n_resamples: int = 1000,
             signature: str = "predict_pixels", box_builder: Builder | None = None,
             box_split: str | None = None, cam_threshold: float | None = None,
             max_overlays: int = 24, seg_builder: Builder | None = None,
             seg_split: str | None = None) -> dict:
    """Evaluates a classifier (and optionally a segmenter) on `split`; writes the report.

    Writes into out_dir: report.json, report.md, predictions.csv, roc.png, reliability.png and
    cam_overlays/*.png (see cxr_tf.evaluation.report for what each holds and the rules it keeps).

    Args:
      classifier_path: a .keras classifier (its resize setting comes from `config`) or an exported
        SavedModel version directory (or export base directory); None scores only the segmenter.
      builder: prepared TFDS builder of the evaluated data set.
      config: the ExperimentConfig (bootstrap seed; the .keras model's resize size).
      out_dir: report directory.
      split: evaluated split. Thresholds are chosen on "validation" when the data set has it.
      segmenter_path: optional segmenter (.keras) scored with Dice/IoU per structure.
      n_resamples: bootstrap resamples (0: no intervals).
      signature: SavedModel signature to call ("predict_pixels" or "serving_default").
      box_builder, box_split: data set and split with ground-truth boxes for localisation.
        Default: `builder` itself when it has box features, on its "bbox" split if present,
        else on `split`. Without boxes, CAM overlays of true findings are drawn instead.
      cam_threshold: CAM threshold of the box rule (default localization.DEFAULT_CAM_THRESHOLD).
      max_overlays: number of CAM overlay PNGs (0: none).
      seg_builder, seg_split: data set and split for segmentation scores (default: `builder`
        and `split`; skipped with a warning when that data set has no masks).

    Returns the report dict.
    """
    if classifier_path is None and segmenter_path is None:
        raise ValueError("Nothing to evaluate: give a classifier, a segmenter, or both")
    with train.writing_stage(out_dir):
        return eval_runs.evaluate(
            classifier_path, builder, config, out_dir, split=split, segmenter_path=segmenter_path,
            n_resamples=n_resamples, signature=signature, box_builder=box_builder,
            box_split=box_split, cam_threshold=cam_threshold, max_overlays=max_overlays,
            seg_builder=seg_builder, seg_split=seg_split)


def thresholds_from_report(report_path: PathLike) -> list[float]:
    """The per-class thresholds stored in an evaluation report.json (chosen on validation)."""
    report = files.read_json(report_path)
    classes = report["classification"]["classes"]
    labels_lib.check_label_names([c["name"] for c in classes], what=f"report {report_path}")
    return [c["threshold"] for c in classes]


WARMUP_CHOICES = ("required", "if_available", "skip")


def export(classifier_path: PathLike, export_dir: PathLike, resize_size: int | None = None,
           report_path: PathLike | None = None, version: int | None = None,
           max_image_pixels: int = export_lib.DEFAULT_MAX_IMAGE_PIXELS, model_name: str = "cxr",
           serving_base_path: str | None = None, warmup: str = "required") -> str:
    """Exports a trained classifier to EXPORT_DIR/<version>/ and returns the version directory.

    Thresholds come from an evaluation report when given (chosen on validation), else 0.5. The
    version holds a model card generated from that report and TF Serving warm-up requests;
    EXPORT_DIR gets models.config (for `--model_config_file`; base path `serving_base_path`,
    default /models/<model_name> as in TF Serving's container) and batching_parameters.txt.

    `warmup`: "required" (cxr-export's default) refuses at once, before any work, when TF
    Serving's protos (the `serving` extra) are missing, since the export would lack its warm-up
    requests and models.config; "if_available" (the demo) writes them when it can and warns
    otherwise; "skip" writes neither.
    """
    if warmup not in WARMUP_CHOICES:
        raise ValueError(f"warmup={warmup!r}: expected one of {', '.join(WARMUP_CHOICES)}")
    protos = warmup != "skip" and tf_serving.available()
    if warmup == "required" and not protos:
        raise ValueError(
            "TF Serving's protos (the tensorflow-serving-api package) are not installed, so this "
            "export would lack its warm-up requests (assets.extra/tf_serving_warmup_requests: "
            "TF Serving's first request would pay the model's tracing) and models.config: pip "
            "install 'cxr_tf[serving]' (from a checkout: pip install -e '.[cpu,serving]'), or "
            "pass --nowarmup to export without them")
    if warmup == "if_available" and not protos:
        log.warning("TF Serving's protos are not installed (pip install 'cxr_tf[serving]'): the "
                    "export has no warm-up requests and no models.config")
    model = load_model(eval_runs.require(classifier_path, "Classifier"))
    thresholds = report = None
    if report_path:
        thresholds = thresholds_from_report(eval_runs.require(report_path, "Evaluation report"))
        report = files.read_json(report_path)
    else:
        log.warning("No evaluation report given: exporting with threshold 0.5 for every class")
    segmenter_info = None
    if model.feature_weighting and _uses_pretrained_segmenter(classifier_path):
        segmenter_info = pretrained.segmenter_info()
    path = export_lib.export_classifier(model, export_dir, resize_size=resize_size,
                                        thresholds=thresholds, version=version,
                                        max_image_pixels=max_image_pixels, model_name=model_name,
                                        report=report, segmenter_info=segmenter_info,
                                        warmup=protos)
    if protos:
        tf_serving.write_server_config(export_dir, model_name,
                                       serving_base_path or f"/models/{model_name}")
    log.info("Exported SavedModel to %s", path)
    return path


def _uses_pretrained_segmenter(classifier_path):
    """True when the classifier's training run weighted its features with the shipped
    segmenter (its experiment.json names that file)."""
    try:
        _, stored = load_experiment(os.path.dirname(files.absolute(classifier_path)))
        used = stored.get("segmenter")
        return (bool(used) and files.is_local(used) and os.path.exists(used)
                and os.path.samefile(used, pretrained.segmenter_path()))
    except (OSError, ValueError):
        return False


# ---- Training -----------------------------------------------------------------------------------

def train_segmenter(config: configs_lib.ExperimentConfig, work_dir: PathLike,
                    data_dir: PathLike | None = None, manual_dir: PathLike | None = None,
                    strategy: str | tf.distribute.Strategy = "default",
                    builders: Builder | dict[str, Builder] | None = None,
                    verbose: int = 1) -> str:
    """Builds the data sets `config.segmenter.datasets` names and trains the U-Net into
    WORK_DIR/segmenter (resuming an interrupted run); returns the path of its best.keras.

    Args:
      config: the ExperimentConfig.
      work_dir: the work directory.
      data_dir: where data sets are built (default WORK_DIR/tfds).
      manual_dir: the raw copies of real data sets (one folder may hold several).
      strategy: the tf.distribute strategy by name (configs.STRATEGIES).
      builders: already built data sets ({name: builder}, or one builder) instead.
      verbose: 1 progress bars, 0 per-epoch log lines only.
    """
    configs_lib.segmenter_sources(config.segmenter, config.data.dataset)
    distribution = strategies.make_strategy(strategy)
    run_dir = layout.segmenter_dir(work_dir)
    # Options checked and the stage locked before any data is built.
    with train.writing_stage(run_dir, distribution, options=config.segmenter, what="segmenter"):
        if builders is None:
            builders = build_segmentation_data(config, data_dir or layout.data_dir(work_dir),
                                               manual_dir)
        return train.train_segmenter(config, builders, run_dir, strategy=distribution,
                                     verbose=verbose)


def train_classifier(config: configs_lib.ExperimentConfig, work_dir: PathLike,
                     data_dir: PathLike | None = None, manual_dir: PathLike | None = None,
                     strategy: str | tf.distribute.Strategy = "default",
                     segmenter: PathLike | None = None, backbone_weights: str | None = None,
                     builder: Builder | None = None, verbose: int = 1) -> str:
    """Builds the data set and trains the classifier variant `config.classifier.variant` into
    WORK_DIR/classifier (classifier_<variant>/ for the others), resuming an interrupted run;
    returns the path of its best.keras. The test split is never used for model selection.

    Args:
      config, work_dir, data_dir, manual_dir, strategy, verbose: as train_segmenter.
      segmenter: the segmenter (.keras) of a variant with feature weighting (default: see
        segmenter_for_classifier).
      backbone_weights: None (random init), "imagenet" (from the Keras cache, downloaded once
        where the network is reachable) or a local weights file.
      builder: an already built data set instead.
    """
    distribution = strategies.make_strategy(strategy)
    run_dir = layout.classifier_dir(work_dir, config.classifier.variant)
    # Options checked and the stage locked before any data is built.
    with train.writing_stage(run_dir, distribution, options=config.classifier,
                             what="classifier"):
        if builder is None:
            builder = build_data(config, data_dir or layout.data_dir(work_dir), manual_dir)
        segmenter_path = None
        if configs_lib.needs_segmenter(config.classifier.variant):
            segmenter_path, _ = segmenter_for_classifier(work_dir, segmenter)
        return train.train_classifier(
            config, builder, run_dir, segmenter_path=segmenter_path, strategy=distribution,
            backbone_weights=backbone_weights, verbose=verbose)


# ---- Ablation -----------------------------------------------------------------------------------

def run_ablation(config: configs_lib.ExperimentConfig, data_dir: PathLike, work_dir: PathLike,
                 variants: Sequence[str] = ablation.VARIANTS,
                 overrides: Mapping[str, Mapping[str, object]] | None = None,
                 segmenter_path: PathLike | None = None, n_resamples: int = 1000,
                 max_overlays: int = 4, manual_dir: PathLike | None = None,
                 verbose: int = 0) -> dict:
    """Trains and evaluates each variant on the same data; writes ablation.json and .md.

    Re-running with the same work_dir resumes: finished trainings are reused (the training loop
    restores its checkpoints), evaluation is repeated.

    Args:
      config: the shared ExperimentConfig (data, segmenter, classifier training, seed).
      data_dir: where data sets are built.
      work_dir: one subdirectory per variant (classifier_<variant>/, eval_<variant>/), the
        segmenter (segmenter/) when trained here, and the summary files.
      variants: which of ablation.VARIANTS to run, in table order.
      overrides: per-variant ClassifierConfig fields (see ablation.variant_config).
      segmenter_path: a trained segmenter for the weighting variants. When None and needed,
        segmenter_for_classifier chooses: WORK_DIR/segmenter/best.keras if there, else one
        trained here with `config.segmenter` on a data set with masks (phantoms), else the
        shipped one (ChestX-ray14 with --config=paper).
      n_resamples: bootstrap resamples of every interval.
      max_overlays: CAM overlay PNGs per variant.
      manual_dir: raw download of a real data set.
      verbose: training progress bars (1) or per-epoch lines only (0).

    Returns:
      the summary dict (also in work_dir/ablation.json).
    """
    variants = tuple(variants)
    if not variants:
        raise ValueError("No variant to run")
    unknown = [v for v in variants if v not in ablation.VARIANTS]
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; expected some of "
                         f"{', '.join(ablation.VARIANTS)}")
    with train.writing_stage(work_dir, stage="ablation"):
        return _run_ablation(config, data_dir, work_dir, variants, overrides, segmenter_path,
                             n_resamples, max_overlays, manual_dir, verbose)


def _run_ablation(config, data_dir, work_dir, variants, overrides, segmenter_path, n_resamples,
                  max_overlays, manual_dir, verbose):
    t_start = time.time()
    builder = build_data(config, data_dir, manual_dir=manual_dir)
    segmenter_seconds = 0.0
    if any(configs_lib.needs_segmenter(v) for v in variants):
        t0 = time.time()
        segmenter_path, source = segmenter_for_classifier(
            work_dir, segmenter_path, train_on=builder, config=config, verbose=verbose)
        if source == "trained":
            segmenter_seconds = time.time() - t0

    rows, predictions = [], {}
    for variant in variants:
        cfg = ablation.variant_config(config, variant, overrides)
        spec = configs_lib.variant(variant)
        run_dir, eval_dir = layout.ablation_run_dirs(work_dir, variant)
        log.info("Ablation: %s (%s backbone, %d px)", variant,
                 cfg.classifier.backbone or spec.backbone, cfg.classifier.input_size)
        t0 = time.time()
        best = train.train_classifier(
            cfg, builder, run_dir,
            segmenter_path=segmenter_path if configs_lib.needs_segmenter(variant) else None,
            verbose=verbose)
        wall_train = time.time() - t0
        t0 = time.time()
        rep = evaluate(best, builder, cfg, eval_dir, split="test", n_resamples=n_resamples,
                       max_overlays=max_overlays)
        wall_eval = time.time() - t0
        predictions[variant] = report_lib.read_predictions_csv(
            os.path.join(eval_dir, layout.PREDICTIONS_CSV))
        rows.append(ablation.variant_row(variant, cfg, load_model(best), rep, run_dir,
                                             eval_dir, wall_train, wall_eval))
    return ablation.summarise(config, builder.info.full_name, rows, predictions, work_dir,
                                  overrides=overrides, segmenter_path=segmenter_path,
                                  segmenter_seconds=segmenter_seconds, n_resamples=n_resamples,
                                  wall_seconds=time.time() - t_start)
