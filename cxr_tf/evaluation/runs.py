"""One evaluation run: a classifier and/or a segmenter scored on a built data set, the report
written (cxr_tf.workflow.evaluate holds the stage lock around it and documents the arguments).

Sections of the report and where they come from:
  classification      report.evaluate_classifier (thresholds chosen on validation)
  localisation        localization.evaluate_localisation on the box split, or cam_overlays
  mask_keeps          mask_keeps: the share of each box the lung-and-heart mask keeps
  segmentation        report.evaluate_segmenter on data with masks, or
  segmenter_screening screening.screen_segmenter on data without them
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from cxr_tf import files, layout
from cxr_tf import labels as labels_lib
from cxr_tf.data import features as fk
from cxr_tf.data import pipeline
from cxr_tf.evaluation import inference, localization, screening
from cxr_tf.evaluation import report as report_lib
from cxr_tf.files import PathLike
from cxr_tf.models import load_model

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

    from cxr_tf.configs import ExperimentConfig
    from cxr_tf.models.unet import UNetSegmenter

    Builder = tfds.core.DatasetBuilder

log = logging.getLogger("cxr_tf")


def require(path: PathLike, what: str) -> PathLike:
    """`path` when something exists there (any filesystem), else FileNotFoundError naming
    `what` ("Classifier", "Segmenter", ...)."""
    if not files.exists(path):
        raise FileNotFoundError(f"{what} not found at {path}")
    return path


def box_split_of(builder: Builder, split: str) -> str:
    """The split whose boxes are scored: "bbox" when the data set has it, else `split`."""
    return "bbox" if "bbox" in builder.info.splits else split


def mask_keeps(input_size: int, resize_size: int, segmenter: UNetSegmenter, builder: Builder,
               split: str, out_dir: PathLike) -> dict:
    """The share of box area the lung-and-heart mask keeps (pixel mask and grid rules) on the
    boxes of `builder`'s `split`, at the classifier geometry (`input_size`, `resize_size`);
    writes the per-box records to OUT_DIR/mask_keeps_boxes.json and returns the summary."""
    keeps, records = localization.evaluate_mask_keeps(
        input_size, resize_size, segmenter,
        pipeline.examples_dataset(builder, split, batch_size=16, with_boxes=True))
    keeps.update(dataset=builder.info.full_name, split=split)
    files.write_json_atomic(os.path.join(out_dir, layout.MASK_KEEPS_JSON), records)
    log.info("Share of box area inside the lung-and-heart mask:\n%s",
             report_lib.mask_keeps_table(keeps))
    return keeps


def evaluate(classifier_path: PathLike | None, builder: Builder, config: ExperimentConfig,
             out_dir: PathLike, split: str = "test", segmenter_path: PathLike | None = None,
             n_resamples: int = 1000, signature: str = "predict_pixels",
             box_builder: Builder | None = None, box_split: str | None = None,
             cam_threshold: float | None = None, max_overlays: int = 24,
             seg_builder: Builder | None = None, seg_split: str | None = None) -> dict:
    """Scores the models on `split` and writes the report into `out_dir` (arguments as
    cxr_tf.workflow.evaluate, which holds the stage lock); returns the report dict."""
    if classifier_path is None and segmenter_path is None:
        raise ValueError("Nothing to evaluate: give a classifier, a segmenter, or both")
    files.makedirs(out_dir)
    report = {"meta": {"dataset": builder.info.full_name, "split": split},
              "label_names": list(labels_lib.FINDINGS)}
    if classifier_path is not None:
        report.update(_classifier_sections(
            classifier_path, builder, config, out_dir, split, segmenter_path, n_resamples,
            signature, box_builder, box_split, cam_threshold, max_overlays, report["meta"]))
    if segmenter_path:
        report.update(_segmenter_sections(
            segmenter_path, seg_builder or builder, seg_split or split, config, out_dir,
            n_resamples, max_overlays, with_boxes=classifier_path is None))
    report_lib.write_report(report, out_dir)
    return report


def _classifier_sections(classifier_path, builder, config, out_dir, split, segmenter_path,
                         n_resamples, signature, box_builder, box_split, cam_threshold,
                         max_overlays, meta):
    cam_threshold = localization.DEFAULT_CAM_THRESHOLD if cam_threshold is None else cam_threshold
    predictor = inference.load_predictor(require(classifier_path, "Classifier"),
                                         resize_size=config.classifier.resize_size,
                                         signature=signature)
    meta.update(model=files.absolute(classifier_path), model_source=predictor.source,
                model_name=predictor.name, predictor=predictor.describe())
    val_ds = None
    if split != "validation" and "validation" in builder.info.splits:
        val_ds = pipeline.examples_dataset(builder, "validation")
    else:
        log.warning("No separate validation split: thresholds are 0.5 for every class")
    clf_report, predictions = report_lib.evaluate_classifier(
        predictor, pipeline.examples_dataset(builder, split), val_ds, n_resamples=n_resamples,
        seed=config.seed, figures_dir=out_dir)
    sections = {"classification": clf_report}
    report_lib.write_predictions_csv(predictions, os.path.join(out_dir, layout.PREDICTIONS_CSV))
    log.info("Classification on %s (%d images):\n%s", split, clf_report["n_images"],
             report_lib.classification_table(clf_report))

    overlay_dir = os.path.join(out_dir, report_lib.OVERLAY_DIR)
    if box_builder is None and fk.BOXES in builder.info.features:
        box_builder = builder
    if box_builder is not None:
        box_split = box_split or box_split_of(box_builder, split)
        summary, records = localization.evaluate_localisation(
            predictor, pipeline.examples_dataset(box_builder, box_split, batch_size=16,
                                                  with_boxes=True),
            threshold=cam_threshold, overlay_dir=overlay_dir if max_overlays else None,
            max_overlays=max_overlays)
        summary["overlays"] = [os.path.relpath(p, out_dir) for p in summary["overlays"]]
        summary.update(dataset=box_builder.info.full_name, split=box_split)
        sections["localisation"] = summary
        files.write_json_atomic(os.path.join(out_dir, layout.LOCALISATION_JSON), records)
        # The mask the model itself carries; else the segmenter given beside it.
        segmenter = getattr(getattr(predictor, "model", None), "segmenter", None)
        if segmenter is None and segmenter_path:
            segmenter = load_model(require(segmenter_path, "Segmenter"))
        if segmenter is not None:
            sections["mask_keeps"] = mask_keeps(predictor.input_size, predictor.resize_size,
                                                segmenter, box_builder, box_split, out_dir)
    elif max_overlays:
        written = localization.overlay_positive_findings(
            predictor, pipeline.examples_dataset(builder, split, batch_size=16),
            overlay_dir, threshold=cam_threshold, max_overlays=max_overlays)
        for w in written:
            w["path"] = os.path.relpath(w["path"], out_dir)
        sections["cam_overlays"] = {
            "note": f"{builder.info.full_name} has no ground-truth boxes: overlays of true "
                    f"findings with their CAM box, no IoU",
            "box_rule": localization.BOX_RULE.format(threshold=cam_threshold),
            "overlays": written}
    return sections


# Film attributes segmentation scores are split by, when a data set records them:
# (feature, grouping name, reference group the others are compared with).
GROUPINGS = ((fk.VIEW_POSITION, "view", "PA"), (fk.TUBERCULOSIS, "tuberculosis", "negative"),
             (fk.NODULE, "nodule", "negative"))
# Films on the contact sheet of a segmenter's worst films (data sets with masks).
WORST_FILMS = 32


def film_groups(builder, split):
    """{grouping: (image ids, group of each film, reference)} for evaluate_segmenter's
    `groups`, from the GROUPINGS attributes `builder` records (boolean findings become
    "positive" / "negative")."""
    keys = [key for key, _, _ in GROUPINGS if key in builder.info.features]
    if not keys:
        return {}  # nothing to group by: no pass over the split
    ids, values = pipeline.split_metadata(builder, split, keys)
    groups = {}
    for key, name, reference in GROUPINGS:
        if key in values:
            labels = [("positive" if v else "negative") if isinstance(v, (bool, np.bool_))
                      else str(v) for v in values[key]]
            groups[name] = (ids, labels, reference)
    return groups


def _segmenter_sections(segmenter_path, builder, split, config, out_dir, n_resamples,
                        max_overlays, with_boxes):
    segmenter = load_model(require(segmenter_path, "Segmenter"))
    features = builder.info.features
    if fk.MASKS not in features and fk.LUNGS not in features:
        return screen(segmenter, segmenter_path, builder, split, config, out_dir, max_overlays,
                      with_boxes)
    seg_ds, structures = pipeline.segmentation_dataset(builder, split, segmenter.input_size)
    seg = report_lib.evaluate_segmenter(segmenter, seg_ds, structures, n_resamples=n_resamples,
                                        seed=config.seed, groups=film_groups(builder, split),
                                        min_worst=WORST_FILMS if max_overlays else 1)
    if max_overlays:
        # The worst films of the widest target the data set outlines: lungs and heart, else lungs.
        target = "union" if "union" in seg["worst"] else labels_lib.LUNGS
        sheet = screening.worst_films_sheet(
            segmenter, seg_ds, seg["worst"][target][:WORST_FILMS],
            os.path.join(out_dir, layout.SEGMENTER_WORST_SHEET))
        seg["worst_films_sheet"] = {"path": os.path.relpath(sheet, out_dir), "target": target}
    seg.update(model=files.absolute(segmenter_path), dataset=builder.info.full_name,
               split=split)
    log.info("Segmentation on %s %s (%d images, %d px, masks at 0.5):\n%s", seg["dataset"],
             split, seg["n_images"], seg["resolution"], report_lib.segmentation_table(seg))
    return {"segmentation": seg}


def screen(segmenter: UNetSegmenter, segmenter_path: PathLike, builder: Builder, split: str,
           config: ExperimentConfig, out_dir: PathLike, max_overlays: int,
           with_boxes: bool) -> dict:
    """Report sections for a segmenter on a data set without masks (e.g. ChestX-ray14): mask
    coverage as the configured classifier computes it, a contact sheet, and (`with_boxes`, on
    the data set's box split) the share of boxes the mask keeps."""
    clf = config.classifier
    geometry = dict(input_size=clf.input_size, resize_size=clf.resize_size)
    summary, records = screening.screen_segmenter(
        segmenter, builder, split, min_coverage=clf.min_mask_coverage,
        threshold=clf.mask_threshold, dilation=clf.mask_dilation, **geometry)
    summary["model"] = files.absolute(segmenter_path)
    files.write_json_atomic(os.path.join(out_dir, layout.SEGMENTER_COVERAGE_JSON), records)
    if max_overlays:
        sheet = screening.contact_sheet(
            segmenter, builder, split, screening.choose_for_sheet(records),
            os.path.join(out_dir, layout.SEGMENTER_CONTACT_SHEET), threshold=clf.mask_threshold,
            dilation=clf.mask_dilation, **geometry)
        summary["contact_sheet"] = os.path.relpath(sheet, out_dir)
    log.info("Segmenter mask coverage on %s %s:\n%s", builder.info.full_name, split,
             screening.coverage_markdown(summary))
    sections = {"segmenter_screening": summary}
    if with_boxes and fk.BOXES in builder.info.features:
        sections["mask_keeps"] = mask_keeps(clf.input_size, clf.resize_size, segmenter, builder,
                                            box_split_of(builder, split), out_dir)
    return sections
