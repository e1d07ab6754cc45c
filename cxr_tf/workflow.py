"""The steps of a cxr_tf run, on paths inside one work directory.

Each binary in `pipelines/` parses its flags and calls one of these; the demo calls them in
order. Layout of a work directory:

    WORK_DIR/
      tfds/                 built data sets (TFDS records)
      segmenter/            best.keras, history.json, experiment.json, checkpoints/
      classifier/           the same for CXR-IRNet (classifier_<variant>/ for the others)
      eval/                 report.json, report.md, predictions.csv
      export/<version>/     SavedModel for TF Serving
"""

import json
import logging
import os

from cxr_tf import configs as configs_lib
from cxr_tf import labels as labels_lib
from cxr_tf.data import datasets
from cxr_tf.training import loop, train

log = logging.getLogger("cxr_tf")

SEGMENTER_DIR = "segmenter"
CLASSIFIER_DIR = "classifier"
EVAL_DIR = "eval"
EXPORT_DIR = "export"


def subdir(work_dir, name):
    return os.path.join(str(work_dir), name)


def classifier_dir(work_dir, variant="cxr_irnet"):
    """WORK_DIR/classifier for CXR-IRNet, WORK_DIR/classifier_<variant> for the others."""
    name = CLASSIFIER_DIR if variant == "cxr_irnet" else f"{CLASSIFIER_DIR}_{variant}"
    return subdir(work_dir, name)


def best_model(run_dir):
    return os.path.join(run_dir, loop.BEST_MODEL)


def segmenter_for_classifier(work_dir, explicit=None):
    """The segmenter a classifier in `work_dir` weights its features with, and where it came
    from: `explicit` when given, else WORK_DIR/segmenter/best.keras when trained there, else the
    segmenter shipped with cxr_tf (cxr_tf.pretrained; trained on public JSRT + SCR fold 1,
    Montgomery and Shenzhen films).

    Returns:
      (path, source) with source "given", "work_dir" or "pretrained".
    """
    if explicit:
        return _require(explicit, "Segmenter"), "given"
    trained = best_model(subdir(work_dir, SEGMENTER_DIR))
    if os.path.exists(trained):
        return trained, "work_dir"
    from cxr_tf import pretrained
    path = pretrained.segmenter_path()
    log.info("No segmenter given (--segmenter) or trained in %s: using the one shipped with "
             "cxr_tf, %s (112 px U-Net trained on public JSRT + SCR fold 1, Montgomery and "
             "Shenzhen films; model card: cxr_tf/pretrained/MODEL_CARD.md)",
             subdir(work_dir, SEGMENTER_DIR), path)
    return path, "pretrained"


def load_experiment(run_dir):
    """The ExperimentConfig a training run in `run_dir` used (from its experiment.json)."""
    path = os.path.join(run_dir, train.EXPERIMENT)
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
    in that order, for train.train_segmenter."""
    import dataclasses
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
    from cxr_tf.data import features as fk
    from cxr_tf.evaluation import inference, localization
    from cxr_tf.evaluation import report as report_lib
    from cxr_tf.models import load_model

    if classifier_path is None and segmenter_path is None:
        raise ValueError("Nothing to evaluate: give a classifier, a segmenter, or both")
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
        eval_ds = inference.examples_dataset(builder, split)
        val_ds = None
        if split != "validation" and "validation" in builder.info.splits:
            val_ds = inference.examples_dataset(builder, "validation")
        else:
            log.warning("No separate validation split: thresholds are 0.5 for every class")
        clf_report, predictions = report_lib.evaluate_classifier(
            predictor, eval_ds, val_ds, n_resamples=n_resamples, seed=config.seed,
            figures_dir=out_dir)
        report["classification"] = clf_report
        report_lib.write_predictions_csv(predictions, os.path.join(out_dir, "predictions.csv"))
        log.info("Classification on %s (%d images):\n%s", split, clf_report["n_images"],
                 report_lib.classification_table(clf_report))

        overlay_dir = os.path.join(out_dir, report_lib.OVERLAY_DIR)
        if box_builder is None and fk.BOXES in builder.info.features:
            box_builder = builder
        if box_builder is not None:
            box_split = box_split or ("bbox" if "bbox" in box_builder.info.splits else split)
            summary, records = localization.evaluate_localisation(
                predictor, inference.examples_dataset(box_builder, box_split, batch_size=16,
                                                      with_boxes=True),
                threshold=cam_threshold, overlay_dir=overlay_dir if max_overlays else None,
                max_overlays=max_overlays)
            summary["overlays"] = [os.path.relpath(p, out_dir) for p in summary["overlays"]]
            summary.update(dataset=box_builder.info.full_name, split=box_split)
            report["localisation"] = summary
            loop.write_json_atomic(os.path.join(out_dir, "localisation_boxes.json"), records)
            mask_segmenter = getattr(getattr(predictor, "model", None), "segmenter", None)
            if mask_segmenter is None and segmenter_path:
                mask_segmenter = load_model(_require(segmenter_path, "Segmenter"))
            if mask_segmenter is not None:
                keeps, keep_records = localization.evaluate_mask_keeps(
                    predictor.input_size, predictor.resize_size, mask_segmenter,
                    inference.examples_dataset(
                        box_builder, box_split, batch_size=16, with_boxes=True))
                report["mask_keeps"] = keeps
                loop.write_json_atomic(os.path.join(out_dir, "mask_keeps_boxes.json"),
                                       keep_records)
                log.info("Share of box area inside the lung-and-heart mask:\n%s",
                         report_lib.mask_keeps_table(keeps))
        elif max_overlays:
            written = localization.overlay_positive_findings(
                predictor, inference.examples_dataset(builder, split, batch_size=16),
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
            seg_ds, structures = inference.segmentation_dataset(seg_builder, seg_split,
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
    from cxr_tf.data import features as fk
    from cxr_tf.evaluation import inference, localization, screening
    from cxr_tf.evaluation import report as report_lib

    clf = config.classifier
    geometry = dict(input_size=clf.input_size, resize_size=clf.resize_size)
    summary, records = screening.screen_segmenter(
        segmenter, builder, split, min_coverage=clf.min_mask_coverage,
        threshold=clf.mask_threshold, dilation=clf.mask_dilation, **geometry)
    summary["model"] = os.path.abspath(segmenter_path)
    loop.write_json_atomic(os.path.join(out_dir, "segmenter_coverage.json"), records)
    if max_overlays:
        sheet = screening.contact_sheet(
            segmenter, builder, split, screening.choose_for_sheet(records),
            os.path.join(out_dir, "segmenter_contact_sheet.png"), threshold=clf.mask_threshold,
            dilation=clf.mask_dilation, **geometry)
        summary["contact_sheet"] = os.path.relpath(sheet, out_dir)
    log.info("Segmenter mask coverage on %s %s:\n%s", builder.info.full_name, split,
             screening.coverage_markdown(summary))
    out = {"segmenter_screening": summary}
    if with_boxes and fk.BOXES in builder.info.features:
        box_split = "bbox" if "bbox" in builder.info.splits else split
        keeps, keep_records = localization.evaluate_mask_keeps(
            clf.input_size, clf.resize_size, segmenter,
            inference.examples_dataset(builder, box_split, batch_size=16, with_boxes=True))
        keeps.update(dataset=builder.info.full_name, split=box_split)
        loop.write_json_atomic(os.path.join(out_dir, "mask_keeps_boxes.json"), keep_records)
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


def export(classifier_path, export_dir, resize_size=None, report_path=None, version=None):
    """Exports a trained classifier; thresholds come from an evaluation report when given."""
    from cxr_tf.models import load_model
    from cxr_tf.serving import export as export_lib

    model = load_model(_require(classifier_path, "Classifier"))
    thresholds = None
    if report_path:
        thresholds = thresholds_from_report(_require(report_path, "Evaluation report"))
    else:
        log.warning("No evaluation report given: exporting with threshold 0.5 for every class")
    path = export_lib.export_classifier(model, export_dir, resize_size=resize_size,
                                        thresholds=thresholds, version=version)
    log.info("Exported SavedModel to %s", path)
    return path
