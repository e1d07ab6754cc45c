"""The end-to-end demo on generated phantoms: data -> segmenter -> CXR-IRNet -> evaluation ->
SavedModel -> one encoded PNG through the exported signature.

  cxr-demo --work_dir=demo_work

Needs no data and no network (it attempts no outbound connection). Re-running resumes finished
steps from WORK_DIR (delete it for a fresh run). The last lines are machine-readable:
  mean AUROC <float>      mean test AUROC of CXR-IRNet
  lung Dice <float>       Dice of both lungs together on the test split
  heart Dice <float>
  work_dir / report / saved_model <path>
"""

import os
import time

from absl import flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
flags.adopt_module_key_flags(cxr_flags)


def _banner(text):
    print(f"\n=== {text} ===", flush=True)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    t0 = time.time()
    from cxr_tf import workflow

    f = flags.FLAGS
    work_dir = workflow.files.absolute(f.work_dir)
    verbose = 0 if f.quiet else 1
    config = cxr_flags.experiment_config()
    # A one-shot local run: no preemption handler, whose creation probes the Google Cloud
    # metadata server over HTTP, so the demo attempts no network access at all.
    config.segmenter.handle_preemption = config.classifier.handle_preemption = False

    _banner(f"1/6 phantom data set ({config.data.num_train} train, {config.data.num_validation} "
            f"validation, {config.data.num_test} test, {config.data.image_size} px)")
    builder = workflow.build_data(config, cxr_flags.data_dir())

    _banner("2/6 segmenter (U-Net: left lung, right lung, heart)")
    seg_path = workflow.train_segmenter(config, work_dir, builders=builder, verbose=verbose)

    _banner(f"3/6 classifier ({config.classifier.variant}, {config.classifier.backbone or 'paper'} "
            f"backbone, {config.classifier.input_size} px)")
    clf_path = workflow.train_classifier(config, work_dir, builder=builder, segmenter=seg_path,
                                         verbose=verbose)

    _banner("4/6 evaluation on the test split (thresholds from validation)")
    eval_dir = workflow.layout.eval_dir(work_dir)
    report = workflow.evaluate(clf_path, builder, config, eval_dir, split="test",
                               segmenter_path=seg_path)
    # workflow.evaluate logs the AUROC and Dice tables; the figures are repeated at the end.

    _banner("5/6 export (TF Serving SavedModel)")
    export_path = workflow.export(clf_path, workflow.layout.export_dir(work_dir),
                                  resize_size=config.classifier.resize_size,
                                  report_path=workflow.layout.report_json(eval_dir),
                                  warmup="if_available")  # a bare `pip install cxr_tf[cpu]` too

    _banner("6/6 one encoded PNG through the exported serving_default signature")
    image_id, png, truth = workflow.datasets.first_png(builder)
    out, meta = workflow.predict.predict_encoded(export_path, [png])
    print(f"image {image_id} (true findings: {', '.join(truth) or 'none'})")
    for name, p, d in zip(meta["label_names"], out["probabilities"][0], out["decisions"][0]):
        print(f"  {name:<20} {p:.4f}{'  positive' if d else ''}")
    print(f"  mask coverage {float(out['mask_coverage'][0]):.3f}")

    seg = report["segmentation"]["structures"]
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"mean AUROC {report['classification']['mean_auroc']:.4f}")
    print(f"lung Dice {seg['lungs']['dice']:.4f}")
    print(f"heart Dice {seg['heart']['dice']:.4f}")
    print(f"work_dir {work_dir}")
    print(f"report {os.path.join(eval_dir, workflow.layout.REPORT_MD)}")
    print(f"saved_model {export_path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
