"""The one facade of cxr_tf: every step a binary runs, on paths inside one work directory.

Each binary in `pipelines/` parses its flags and calls functions of this module only; the demo
calls them in order. The work directory's layout is cxr_tf.layout (re-exported here as
`workflow.layout`):

    build_data / build_segmentation_data     data sets (TFDS records)
    train_segmenter / train_classifier        training runs (any tf.distribute strategy)
    evaluate                                  reports (classifier, segmenter, screening)
    export                                    TF Serving SavedModels
    run_ablation                              CXR-IRNet, its ablations and baselines side by side
    file_predictor / render_overlay           predictions on files (cxr-predict)
    rest_server / answer_rest_request         TF Serving's REST API offline (cxr-rest)
"""

import dataclasses
import json
import logging
import os
import time

import cv2
import tensorflow as tf

from cxr_tf import configs as configs_lib
from cxr_tf import files, layout, pretrained, saved_models
from cxr_tf import labels as labels_lib
from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.evaluation import ablation as ablation_lib
from cxr_tf.evaluation import inference, localization, screening
from cxr_tf.evaluation import report as report_lib
from cxr_tf.models import load_model
from cxr_tf.serving import export as export_lib
from cxr_tf.serving import grpc_service, tf_serving
from cxr_tf.serving import overlay as overlay_lib
from cxr_tf.serving import predict as predict_lib
from cxr_tf.serving import rest as rest_lib
from cxr_tf.training import strategies, train

log = logging.getLogger("cxr_tf")

__all__ = ["layout", "build_data", "build_segmentation_data", "segmenter_for_classifier",
           "load_experiment", "train_segmenter", "train_classifier", "evaluate", "export",
           "run_ablation", "predict_encoded", "file_predictor", "render_overlay", "rest_server",
           "answer_rest_request", "FilePredictor", "waiting_for_stages"]

FilePredictor = predict_lib.FilePredictor
SYNTHETIC = datasets.SYNTHETIC
# Within this block a busy stage is waited for instead of refused (the binaries' --wait_for_lock).
waiting_for_stages = files.waiting_for_stages


def segmenter_for_classifier(work_dir, explicit=None, train_on=None, config=None, verbose=0):
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
        return _require(explicit, "Segmenter"), "given"
    trained = layout.best_model(layout.segmenter_dir(work_dir))
    if os.path.exists(trained):
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


def load_experiment(run_dir):
    """The ExperimentConfig a training run in `run_dir` used (from its experiment.json)."""
    path = os.path.join(run_dir, layout.EXPERIMENT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a cxr_tf training directory "
                                f"(train first, or point to the directory holding best.keras)")
    with open(path) as f:
        stored = json.load(f)
    return configs_lib.from_dict(stored["config"]), stored


def build_data(config, data_dir, manual_dir=None):
    """Builds (or reuses) the data set of `config.data`; returns its TFDS builder."""
    builder = datasets.get_builder(config.data, data_dir)
    datasets.prepare(builder, manual_dir=manual_dir)
    for split, info in builder.info.splits.items():
        log.info("  %s: %d examples", split, info.num_examples)
    return builder


def build_segmentation_data(config, data_dir, manual_dir=None):
    """Builds (or reuses) every data set `config.segmenter.datasets` names (default
    `config.data.dataset`), each stored at `config.data.image_size`; returns {name: builder}
    in that order, for train_segmenter."""
    builders = {}
    for name, _ in configs_lib.segmenter_sources(config.segmenter, config.data.dataset):
        data = dataclasses.replace(config.data, dataset=name)
        builders[name] = build_data(dataclasses.replace(config, data=data), data_dir,
                                    manual_dir)
    return builders


def _require(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found at {path}")
    return path


def evaluate(classifier_path, builder, config, out_dir, split="test", segmenter_path=None,
             n_resamples=1000, signature="predict_pixels", box_builder=None, box_split=None,
             cam_threshold=None, max_overlays=24, seg_builder=None, seg_split=None):
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
        return _evaluate(classifier_path, builder, config, out_dir, split, segmenter_path,
                         n_resamples, signature, box_builder, box_split, cam_threshold,
                         max_overlays, seg_builder, seg_split)


def _evaluate(classifier_path, builder, config, out_dir, split, segmenter_path, n_resamples,
              signature, box_builder, box_split, cam_threshold, max_overlays, seg_builder,
              seg_split):
    cam_threshold = localization.DEFAULT_CAM_THRESHOLD if cam_threshold is None else cam_threshold
    os.makedirs(out_dir, exist_ok=True)
    report = {"meta": {"dataset": builder.info.full_name, "split": split},
              "label_names": list(labels_lib.FINDINGS)}
    if classifier_path is not None:
        predictor = inference.load_predictor(_require(classifier_path, "Classifier"),
                                             resize_size=config.classifier.resize_size,
                                             signature=signature)
        report["meta"].update(model=os.path.abspath(classifier_path),
                              model_source=predictor.source, model_name=predictor.name,
                              predictor=predictor.describe())
        eval_ds = pipeline.examples_dataset(builder, split)
        val_ds = None
        if split != "validation" and "validation" in builder.info.splits:
            val_ds = pipeline.examples_dataset(builder, "validation")
        else:
            log.warning("No separate validation split: thresholds are 0.5 for every class")
        clf_report, predictions = report_lib.evaluate_classifier(
            predictor, eval_ds, val_ds, n_resamples=n_resamples, seed=config.seed,
            figures_dir=out_dir)
        report["classification"] = clf_report
        report_lib.write_predictions_csv(predictions,
                                         os.path.join(out_dir, layout.PREDICTIONS_CSV))
        log.info("Classification on %s (%d images):\n%s", split, clf_report["n_images"],
                 report_lib.classification_table(clf_report))

        overlay_dir = os.path.join(out_dir, report_lib.OVERLAY_DIR)
        if box_builder is None and fk.BOXES in builder.info.features:
            box_builder = builder
        if box_builder is not None:
            box_split = box_split or ("bbox" if "bbox" in box_builder.info.splits else split)
            summary, records = localization.evaluate_localisation(
                predictor, pipeline.examples_dataset(box_builder, box_split, batch_size=16,
                                                      with_boxes=True),
                threshold=cam_threshold, overlay_dir=overlay_dir if max_overlays else None,
                max_overlays=max_overlays)
            summary["overlays"] = [os.path.relpath(p, out_dir) for p in summary["overlays"]]
            summary.update(dataset=box_builder.info.full_name, split=box_split)
            report["localisation"] = summary
            files.write_json_atomic(os.path.join(out_dir, "localisation_boxes.json"), records)
            mask_segmenter = getattr(getattr(predictor, "model", None), "segmenter", None)
            if mask_segmenter is None and segmenter_path:
                mask_segmenter = load_model(_require(segmenter_path, "Segmenter"))
            if mask_segmenter is not None:
                keeps, keep_records = localization.evaluate_mask_keeps(
                    predictor.input_size, predictor.resize_size, mask_segmenter,
                    pipeline.examples_dataset(
                        box_builder, box_split, batch_size=16, with_boxes=True))
                report["mask_keeps"] = keeps
                files.write_json_atomic(os.path.join(out_dir, "mask_keeps_boxes.json"),
                                       keep_records)
                log.info("Share of box area inside the lung-and-heart mask:\n%s",
                         report_lib.mask_keeps_table(keeps))
        elif max_overlays:
            written = localization.overlay_positive_findings(
                predictor, pipeline.examples_dataset(builder, split, batch_size=16),
                overlay_dir, threshold=cam_threshold, max_overlays=max_overlays)
            for w in written:
                w["path"] = os.path.relpath(w["path"], out_dir)
            report["cam_overlays"] = {
                "note": f"{builder.info.full_name} has no ground-truth boxes: overlays of true "
                        f"findings with their CAM box, no IoU",
                "box_rule": localization.BOX_RULE.format(threshold=cam_threshold),
                "overlays": written}

    if segmenter_path:
        segmenter = load_model(_require(segmenter_path, "Segmenter"))
        seg_builder = seg_builder or builder
        seg_split = seg_split or split
        features = seg_builder.info.features
        if fk.MASKS in features or fk.LUNGS in features:
            seg_ds, structures = pipeline.segmentation_dataset(seg_builder, seg_split,
                                                                segmenter.input_size)
            seg = report_lib.evaluate_segmenter(segmenter, seg_ds, structures,
                                                n_resamples=n_resamples, seed=config.seed)
            seg.update(model=os.path.abspath(segmenter_path),
                       dataset=seg_builder.info.full_name, split=seg_split)
            report["segmentation"] = seg
            log.info("Segmentation on %s %s (%d images, %d px, masks at 0.5):\n%s",
                     seg["dataset"], seg_split, seg["n_images"], seg["resolution"],
                     report_lib.segmentation_table(seg))
        else:
            report.update(_screen_segmenter(segmenter, segmenter_path, seg_builder, seg_split,
                                            config, out_dir, max_overlays,
                                            with_boxes=classifier_path is None))
    report_lib.write_report(report, out_dir)
    return report


def _screen_segmenter(segmenter, segmenter_path, builder, split, config, out_dir, max_overlays,
                      with_boxes):
    """Report sections for a segmenter on a data set without masks (e.g. ChestX-ray14): mask
    coverage as the configured classifier computes it, a contact sheet, and (`with_boxes`, on
    the data set's box split) the share of boxes each grid rule keeps."""
    clf = config.classifier
    geometry = dict(input_size=clf.input_size, resize_size=clf.resize_size)
    summary, records = screening.screen_segmenter(
        segmenter, builder, split, min_coverage=clf.min_mask_coverage,
        threshold=clf.mask_threshold, dilation=clf.mask_dilation, **geometry)
    summary["model"] = os.path.abspath(segmenter_path)
    files.write_json_atomic(os.path.join(out_dir, layout.SEGMENTER_COVERAGE_JSON), records)
    if max_overlays:
        sheet = screening.contact_sheet(
            segmenter, builder, split, screening.choose_for_sheet(records),
            os.path.join(out_dir, layout.SEGMENTER_CONTACT_SHEET), threshold=clf.mask_threshold,
            dilation=clf.mask_dilation, **geometry)
        summary["contact_sheet"] = os.path.relpath(sheet, out_dir)
    log.info("Segmenter mask coverage on %s %s:\n%s", builder.info.full_name, split,
             screening.coverage_markdown(summary))
    out = {"segmenter_screening": summary}
    if with_boxes and fk.BOXES in builder.info.features:
        box_split = "bbox" if "bbox" in builder.info.splits else split
        keeps, keep_records = localization.evaluate_mask_keeps(
            clf.input_size, clf.resize_size, segmenter,
            pipeline.examples_dataset(builder, box_split, batch_size=16, with_boxes=True))
        keeps.update(dataset=builder.info.full_name, split=box_split)
        files.write_json_atomic(os.path.join(out_dir, "mask_keeps_boxes.json"), keep_records)
        log.info("Share of box area inside the lung-and-heart mask:\n%s",
                 report_lib.mask_keeps_table(keeps))
        out["mask_keeps"] = keeps
    return out


def thresholds_from_report(report_path):
    """The per-class thresholds stored in an evaluation report.json (chosen on validation)."""
    with open(report_path) as f:
        report = json.load(f)
    classes = report["classification"]["classes"]
    labels_lib.check_label_names([c["name"] for c in classes], what=f"report {report_path}")
    return [c["threshold"] for c in classes]


WARMUP_CHOICES = ("required", "if_available", "skip")


def export(classifier_path, export_dir, resize_size=None, report_path=None, version=None,
           max_image_pixels=export_lib.DEFAULT_MAX_IMAGE_PIXELS, model_name="cxr",
           serving_base_path=None, warmup="required"):
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
    model = load_model(_require(classifier_path, "Classifier"))
    thresholds = report = None
    if report_path:
        thresholds = thresholds_from_report(_require(report_path, "Evaluation report"))
        with open(report_path) as f:
            report = json.load(f)
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
        _, stored = load_experiment(os.path.dirname(os.path.abspath(classifier_path)))
        used = stored.get("segmenter")
        return bool(used) and os.path.exists(used) and os.path.samefile(
            used, pretrained.segmenter_path())
    except (OSError, ValueError):
        return False


# ---- Training -----------------------------------------------------------------------------------

def train_segmenter(config, work_dir, data_dir=None, manual_dir=None, strategy="default",
                    builders=None, verbose=1):
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
    configs_lib.check_training_options(config.segmenter, "segmenter")  # before building data
    configs_lib.segmenter_sources(config.segmenter, config.data.dataset)
    distribution = strategies.make_strategy(strategy)
    run_dir = layout.segmenter_dir(work_dir)
    with train.writing_stage(run_dir, distribution):  # refused before any data is built
        if builders is None:
            builders = build_segmentation_data(config, data_dir or layout.data_dir(work_dir),
                                               manual_dir)
        return train.train_segmenter(config, builders, run_dir, strategy=distribution,
                                     verbose=verbose)


def train_classifier(config, work_dir, data_dir=None, manual_dir=None, strategy="default",
                     segmenter=None, backbone_weights=None, builder=None, verbose=1):
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
    configs_lib.check_training_options(config.classifier, "classifier")
    distribution = strategies.make_strategy(strategy)
    run_dir = layout.classifier_dir(work_dir, config.classifier.variant)
    with train.writing_stage(run_dir, distribution):  # refused before any data is built
        if builder is None:
            builder = build_data(config, data_dir or layout.data_dir(work_dir), manual_dir)
        segmenter_path = None
        if configs_lib.needs_segmenter(config.classifier.variant):
            segmenter_path, _ = segmenter_for_classifier(work_dir, segmenter)
        return train.train_classifier(
            config, builder, run_dir, segmenter_path=segmenter_path, strategy=distribution,
            backbone_weights=backbone_weights, verbose=verbose)


# ---- Ablation -----------------------------------------------------------------------------------

def run_ablation(config, data_dir, work_dir, variants=ablation_lib.VARIANTS, overrides=None,
                 segmenter_path=None, n_resamples=1000, max_overlays=4, manual_dir=None,
                 verbose=0):
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
    unknown = [v for v in variants if v not in ablation_lib.VARIANTS]
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; expected some of "
                         f"{', '.join(ablation_lib.VARIANTS)}")
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
        cfg = ablation_lib.variant_config(config, variant, overrides)
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
        rows.append(ablation_lib.variant_row(variant, cfg, load_model(best), rep, run_dir,
                                             eval_dir, wall_train, wall_eval))
    return ablation_lib.summarise(config, builder.info.full_name, rows, predictions, work_dir,
                                  overrides=overrides, segmenter_path=segmenter_path,
                                  segmenter_seconds=segmenter_seconds, n_resamples=n_resamples,
                                  wall_seconds=time.time() - t_start)


def compare_shortcut(clean, shortcut, out_dir, n_resamples=1000):
    """The clean and shortcut ablations side by side (see ablation.compare_shortcut)."""
    return ablation_lib.compare_shortcut(clean, shortcut, out_dir, n_resamples=n_resamples)


def shortcut_markdown(comparison):
    """The clean-vs-shortcut comparison as Markdown."""
    return ablation_lib.shortcut_markdown(comparison)


def ablation_markdown(summary):
    """An ablation summary's comparison table as Markdown."""
    return ablation_lib.ablation_markdown(summary)


def variant_names():
    """The classifier variants in table order."""
    return ablation_lib.VARIANTS


# ---- Serving -------------------------------------------------------------------------------------

def predict_encoded(export_path, encoded_images):
    """Runs encoded PNG/JPEG images through an export's serving_default signature, as a TF
    Serving client would; returns (outputs as numpy arrays, the export's metadata)."""
    loaded, meta = export_lib.load_exported(saved_models.resolve_version(export_path))
    out = loaded.signatures[export_lib.SERVING_DEFAULT](
        **{export_lib.IMAGE_BYTES: tf.constant(list(encoded_images))})
    return {k: v.numpy() for k, v in out.items()}, meta


def first_test_png(builder, split="test"):
    """(image id, PNG bytes, names of its true findings) of a split's first image, as stored."""
    example = next(iter(datasets.load_split(builder, split).take(1)))
    ok, png = cv2.imencode(".png", example[fk.IMAGE].numpy())
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as PNG")
    truth = [n for n, t in zip(labels_lib.FINDINGS, example[fk.LABELS].numpy()) if t]
    return example[fk.IMAGE_ID].numpy().decode(), png.tobytes(), truth


def file_predictor(export_path, warn_coverage=None):
    """A FilePredictor (PNG, JPEG and DICOM files) on an exported SavedModel."""
    return predict_lib.FilePredictor(export_path, warn_coverage=warn_coverage)


def render_overlay(*args, **kwargs):
    """PNG bytes of a heat-map overlay (see cxr_tf.serving.overlay.render_overlay)."""
    return overlay_lib.render_overlay(*args, **kwargs)


def find_image_files(inputs):
    """(image files, skipped files) of files and folders (see serving.predict.find_images)."""
    return predict_lib.find_images(inputs)


def rest_server(export_path, model_name, **limits):
    """A local TF Serving REST stand-in on an export base directory (see
    cxr_tf.serving.rest.ModelServer for `host`, `port` and the limits)."""
    base = export_path
    if os.path.exists(os.path.join(base, saved_models.SAVED_MODEL_FILE)):
        base = os.path.dirname(os.path.abspath(base))
    return rest_lib.ModelServer(base, model_name, **limits)


def grpc_server(export_path, model_name, host="127.0.0.1", port=8500):
    """TF Serving's gRPC PredictionService on an export (see cxr_tf.serving.grpc_service);
    returns (started server, bound port)."""
    return grpc_service.serve(export_path, model_name, host=host, port=port)


def answer_rest_request(export_path, body):
    """(HTTP status, response dict) TF Serving would give a :predict request body."""
    loaded = tf.saved_model.load(saved_models.resolve_version(export_path))
    return rest_lib.predict(loaded, body)


def write_atomic(path, data):
    """Writes bytes or text to `path` whole or not at all (cxr_tf.files)."""
    if isinstance(data, str):
        files.write_text_atomic(path, data)
    else:
        files.write_bytes_atomic(path, data)
