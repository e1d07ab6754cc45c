"""Exports a trained classifier as a TF Serving SavedModel: EXPORT_DIR/<version>/.

Thresholds for the `decisions` output come from an evaluation report (chosen on validation).
  cxr-export --work_dir=work            # WORK_DIR/classifier/best.keras -> WORK_DIR/export/<n>/
"""

import os

from absl import flags

from pipelines import flags as cxr_flags

cxr_flags.define_export()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import workflow
    f = flags.FLAGS
    layout = workflow.layout
    model = f.model or layout.best_model(layout.classifier_dir(f.work_dir))
    config, _ = workflow.load_experiment(os.path.dirname(workflow.files.absolute(model)))
    report = f.report
    if report is None:
        default = layout.report_json(layout.eval_dir(f.work_dir))
        report = default if workflow.files.exists(default) else None
    path = workflow.export(model, f.export_dir or layout.export_dir(f.work_dir),
                           resize_size=config.classifier.resize_size, report_path=report,
                           version=f.version, max_image_pixels=f.max_image_pixels,
                           model_name=f.model_name, serving_base_path=f.serving_base_path,
                           warmup="required" if f.warmup else "skip")
    print(f"saved_model {path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
