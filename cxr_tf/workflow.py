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


def _require(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found at {path}")
    return path


def evaluate(classifier_path, builder, config, out_dir, split="test", segmenter_path=None,
             n_resamples=1000):
    """Evaluates a classifier (and optionally a segmenter) on `split`; writes the report.

    Thresholds come from the validation split. Returns the report dict.
    """
    from cxr_tf.evaluation import report as report_lib
    from cxr_tf.models import load_model

    model = load_model(_require(classifier_path, "Classifier"))
    eval_ds = train.classification_dataset(config, builder, split, training=False, with_ids=True)
    val_ds = None
    if split != "validation" and "validation" in builder.info.splits:
        val_ds = train.classification_dataset(config, builder, "validation", training=False)
    clf_report, predictions = report_lib.evaluate_classifier(model, eval_ds, val_ds,
                                                             n_resamples=n_resamples,
                                                             seed=config.seed)
    report = {"meta": {"model": os.path.abspath(classifier_path),
                       "dataset": builder.info.full_name, "split": split},
              "label_names": list(labels_lib.FINDINGS), "classification": clf_report}
    if segmenter_path:
        segmenter = load_model(_require(segmenter_path, "Segmenter"))
        seg_config = configs_lib.from_dict(configs_lib.to_dict(config))
        seg_config.segmenter.input_size = segmenter.input_size
        seg_ds = train.segmentation_datasets(seg_config, builder, split, training=False)
        report["segmentation"] = report_lib.evaluate_segmenter(segmenter, seg_ds)
    os.makedirs(out_dir, exist_ok=True)
    report_lib.write_predictions_csv(predictions, os.path.join(out_dir, "predictions.csv"))
    report_lib.write_report(report, out_dir)
    log.info("Classification on %s (%d images):\n%s", split, clf_report["n_images"],
             report_lib.classification_table(clf_report))
    return report


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
