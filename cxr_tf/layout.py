"""The work directory, defined once. Every binary writes into one:

    WORK_DIR/
      tfds/                   built data sets (TFDS records; --data_dir moves them)
      segmenter/              best.keras, history.json, experiment.json, checkpoints/, tensorboard/
      classifier/             the same for CXR-IRNet (classifier_<variant>/ for the others)
      eval/                   report.json, report.md, predictions.csv, figures, overlays
                              (+ segmenter_coverage.json, segmenter_contact_sheet.png when a
                              segmenter is screened on films without masks)
      export/<version>/       SavedModel for TF Serving
      ablation/<clean|shortcut>/   cxr-ablation's runs and tables: classifier_<variant>/ and
                              eval_<variant>/ for every variant, CXR-IRNet included

and inside each training run directory:

      best.keras              the model with the best validation score
      history.json            one record per epoch
      experiment.json         the settings the run used (per segment of a resumed run)
      label_counts.json       class counts of the train split (class weighting)
      checkpoints/            tf.train checkpoints (resume)
      tensorboard/            TensorBoard event files
"""

import os

DATA = "tfds"
SEGMENTER = "segmenter"
CLASSIFIER = "classifier"
EVAL = "eval"
EXPORT = "export"
ABLATION = "ablation"

BEST_MODEL = "best.keras"
HISTORY = "history.json"
EXPERIMENT = "experiment.json"
LABEL_COUNTS = "label_counts.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREDICTIONS_CSV = "predictions.csv"
SEGMENTER_COVERAGE_JSON = "segmenter_coverage.json"
SEGMENTER_CONTACT_SHEET = "segmenter_contact_sheet.png"
SEGMENTER_WORST_SHEET = "segmenter_worst_films.png"
LOCALISATION_JSON = "localisation_boxes.json"
MASK_KEEPS_JSON = "mask_keeps_boxes.json"


def data_dir(work_dir):
    """WORK_DIR/tfds: where the data sets of a work directory are built."""
    return os.path.join(str(work_dir), DATA)


def segmenter_dir(work_dir):
    """WORK_DIR/segmenter: the segmenter's training run."""
    return os.path.join(str(work_dir), SEGMENTER)


def classifier_dir(work_dir, variant="cxr_irnet"):
    """WORK_DIR/classifier for CXR-IRNet, WORK_DIR/classifier_<variant> for the others."""
    name = CLASSIFIER if variant == "cxr_irnet" else f"{CLASSIFIER}_{variant}"
    return os.path.join(str(work_dir), name)


def eval_dir(work_dir):
    """WORK_DIR/eval: the evaluation report."""
    return os.path.join(str(work_dir), EVAL)


def export_dir(work_dir):
    """WORK_DIR/export: the model base path TF Serving watches (versions inside)."""
    return os.path.join(str(work_dir), EXPORT)


def ablation_dir(work_dir):
    """WORK_DIR/ablation: cxr-ablation's runs and tables."""
    return os.path.join(str(work_dir), ABLATION)


def ablation_run_dirs(work_dir, variant):
    """(WORK_DIR/classifier_<variant>, WORK_DIR/eval_<variant>): one ablation variant's training
    run and its evaluation. Every variant gets a suffix, CXR-IRNet included, so an ablation's runs
    sit side by side and never collide with a plain run's classifier/ and eval/."""
    return (os.path.join(str(work_dir), f"{CLASSIFIER}_{variant}"),
            os.path.join(str(work_dir), f"{EVAL}_{variant}"))


def best_model(run_dir):
    """RUN_DIR/best.keras."""
    return os.path.join(str(run_dir), BEST_MODEL)


def report_json(out_dir):
    """OUT_DIR/report.json of an evaluation."""
    return os.path.join(str(out_dir), REPORT_JSON)


def history(run_dir):
    """RUN_DIR/history.json."""
    return os.path.join(str(run_dir), HISTORY)


def experiment(run_dir):
    """RUN_DIR/experiment.json."""
    return os.path.join(str(run_dir), EXPERIMENT)
