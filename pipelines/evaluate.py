"""Evaluates a trained classifier (.keras or exported SavedModel) and/or a segmenter on a split.

What it measures (written to --out_dir, default WORK_DIR/eval):
  report.json / report.md   per-class AUROC and mean with 95% percentile-bootstrap intervals
                            (fixed seed), in the layout of Fang et al. (2021) Table 2 with the
                            paper's published means beside ours (marked: not measured here);
                            per-class thresholds chosen on the VALIDATION split by Youden's J,
                            with sensitivity, specificity, PPV and F1 on the evaluated split;
                            calibration (Brier score, expected calibration error); CAM
                            localisation; Dice and IoU per structure.
  roc.png, reliability.png  ROC curves of all 14 classes; pooled reliability diagram.
  predictions.csv           one row per image: id, 14 probabilities, 14 labels.
  cam_overlays/*.png        image, class activation map, feature mask, true and CAM boxes.
  localisation_boxes.json   every ground-truth box with its CAM box and IoU (data with boxes).

Localisation: on data sets with ground-truth boxes (chestxray14: its `bbox` split, built from
BBox_List_2017.csv), a box is predicted from the CAM of the true class by a stated non-oracle rule
(CAM upsampled, normalised to [0, 1], thresholded at --cam_threshold, the connected component
holding the peak) and scored by IoU, with the share of boxes found at IoU >= 0.1, 0.25, 0.5.

Examples:
  # the model trained in WORK_DIR, on its test split (config from classifier/experiment.json)
  cxr-evaluate --work_dir=work
  # another split, another model, no segmenter
  cxr-evaluate --work_dir=work --split=validation --model=other/best.keras --segmenter_model=none
  # an exported SavedModel (version dir or export base dir); the data set comes from
  # --config and the data flags, since a SavedModel carries no training config
  cxr-evaluate --work_dir=work --model=work/export/1 --config=demo
  # ChestX-ray14 with boxes
  cxr-evaluate --work_dir=cx14 --config=paper --model=cx14/export --manual_dir=/data/cxr14
  # only a segmenter, on JSRT/SCR masks
  cxr-evaluate --work_dir=w --model=none --segmenter_model=w/segmenter/best.keras \
      --segmentation_dataset=jsrt_scr --segmentation_manual_dir=/data/jsrt
"""

import os

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
cxr_flags.define_evaluate()
flags.adopt_module_key_flags(cxr_flags)


def _config_for(model):
    """The ExperimentConfig: from a .keras run's experiment.json, else the --config preset."""
    from absl import logging

    from cxr_tf import workflow
    if model and model.endswith(".keras"):
        run_dir = os.path.dirname(workflow.files.absolute(model))
        try:
            base, _ = workflow.load_experiment(run_dir)
        except FileNotFoundError:
            logging.warning("No experiment.json beside %s: using --config=%s and the data flags",
                            model, flags.FLAGS.config)
            base = None
        return cxr_flags.experiment_config(base)
    return cxr_flags.experiment_config()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cxr_flags.setup_logging()
    import copy

    from cxr_tf import workflow
    f = flags.FLAGS
    layout = workflow.layout
    model = f.model or layout.best_model(layout.classifier_dir(f.work_dir))
    if model == "none":
        model = None
    elif not workflow.files.exists(model):
        raise app.UsageError(f"--model {model} does not exist (train first, or give a .keras "
                             f"file or an exported SavedModel directory)")
    segmenter = f.segmenter_model
    if segmenter is None:
        default = layout.best_model(layout.segmenter_dir(f.work_dir))
        segmenter = default if workflow.files.exists(default) else None
    elif segmenter == "none":
        segmenter = None
    elif segmenter == "pretrained":
        segmenter = workflow.pretrained.segmenter_path()
    if model is None and segmenter is None:
        raise app.UsageError("Nothing to evaluate: --model=none and no segmenter")
    config = _config_for(model)
    builder = workflow.build_data(config, cxr_flags.data_dir(), manual_dir=f.manual_dir)
    seg_builder = None
    if f.segmentation_dataset:
        seg_config = copy.deepcopy(config)
        seg_config.data.dataset = f.segmentation_dataset
        seg_builder = workflow.build_data(seg_config, cxr_flags.data_dir(),
                                          manual_dir=f.segmentation_manual_dir)
    out_dir = f.out_dir or layout.eval_dir(f.work_dir)
    report = workflow.evaluate(model, builder, config, out_dir, split=f.split,
                               segmenter_path=segmenter, n_resamples=f.bootstrap,
                               signature=f.signature, box_split=f.box_split,
                               cam_threshold=f.cam_threshold, max_overlays=f.overlays,
                               seg_builder=seg_builder, seg_split=f.segmentation_split)
    if "classification" in report:
        clf = report["classification"]
        lo, hi = clf["mean_auroc_ci"]
        ci = f" (95% CI {lo:.4f}-{hi:.4f})" if lo is not None else ""
        print(f"mean AUROC {clf['mean_auroc']:.4f}{ci}")
    if "localisation" in report:
        loc = report["localisation"]["overall"]
        if loc["n_boxes"]:
            print(f"localisation {loc['n_boxes']} boxes, mean IoU {loc['mean_iou']:.4f}, "
                  + ", ".join(f"IoU>={t} {v:.3f}" for t, v in loc["hit_rate"].items()))
    if "segmentation" in report:
        print("segmentation Dice " + ", ".join(
            f"{k} {v['dice']:.4f}" for k, v in report["segmentation"]["structures"].items()))
    print(f"report {os.path.join(out_dir, workflow.layout.REPORT_MD)}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
