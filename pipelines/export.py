"""Exports a trained classifier as a TF Serving SavedModel: EXPORT_DIR/<version>/.

Thresholds for the `decisions` output come from an evaluation report (chosen on validation).
  cxr-export --work_dir=work            # WORK_DIR/classifier/best.keras -> WORK_DIR/export/<n>/
"""

import os

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_export()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import workflow
    f = flags.FLAGS
    model = f.model or workflow.best_model(workflow.classifier_dir(f.work_dir))
    config, _ = workflow.load_experiment(os.path.dirname(os.path.abspath(model)))
    report = f.report
    if report is None:
        default = os.path.join(workflow.subdir(f.work_dir, workflow.EVAL_DIR), "report.json")
        report = default if os.path.exists(default) else None
    path = workflow.export(model, f.export_dir or workflow.subdir(f.work_dir, workflow.EXPORT_DIR),
                           resize_size=config.classifier.resize_size, report_path=report,
                           version=f.version)
    print(f"saved_model {path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
