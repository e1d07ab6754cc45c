"""Evaluates a trained classifier (and segmenter) on a data set split.

Writes WORK_DIR/eval/report.json, report.md and predictions.csv (or --out_dir): per-class AUROC
with 95% bootstrap intervals, thresholds chosen on the validation split with sensitivity,
specificity, PPV and F1 at them, and Dice/IoU per structure.
  cxr-evaluate --work_dir=work                 # test split, models in WORK_DIR
  cxr-evaluate --work_dir=work --split=validation --model=other/best.keras
"""

import os

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
flags.DEFINE_string("model", None, "Classifier .keras file (default WORK_DIR/classifier/"
                    "best.keras). Its directory's experiment.json gives the preprocessing.")
flags.DEFINE_string("segmenter_model", None, "Segmenter .keras file to score on the split "
                    "(default WORK_DIR/segmenter/best.keras when it exists; 'none' skips).")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_string("out_dir", None, "Report directory (default WORK_DIR/eval).")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the intervals (0: none).")
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import workflow
    f = flags.FLAGS
    model = f.model or workflow.best_model(workflow.classifier_dir(f.work_dir))
    base, _ = workflow.load_experiment(os.path.dirname(os.path.abspath(model)))
    config = cxr_flags.experiment_config(base)
    segmenter = f.segmenter_model
    if segmenter is None:
        default = workflow.best_model(workflow.subdir(f.work_dir, workflow.SEGMENTER_DIR))
        segmenter = default if os.path.exists(default) else None
    elif segmenter == "none":
        segmenter = None
    builder = workflow.build_data(config, cxr_flags.data_dir(), manual_dir=f.manual_dir)
    out_dir = f.out_dir or workflow.subdir(f.work_dir, workflow.EVAL_DIR)
    report = workflow.evaluate(model, builder, config, out_dir, split=f.split,
                               segmenter_path=segmenter, n_resamples=f.bootstrap)
    print(f"mean AUROC {report['classification']['mean_auroc']:.4f}")
    print(f"report {os.path.join(out_dir, 'report.md')}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
