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

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
flags.adopt_module_key_flags(cxr_flags)


def _banner(text):
    print(f"\n=== {text} ===", flush=True)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    t0 = time.time()
    import cv2
    import tensorflow as tf

    from cxr_tf import labels, workflow
    from cxr_tf.data import datasets
    from cxr_tf.data import features as fk
    from cxr_tf.serving import export as export_lib
    from cxr_tf.training import train

    f = flags.FLAGS
    work_dir = os.path.abspath(f.work_dir)
    verbose = 0 if f.quiet else 1
    config = cxr_flags.experiment_config()
    # A one-shot local run: no preemption handler, whose creation probes the Google Cloud
    # metadata server over HTTP, so the demo attempts no network access at all.
    config.segmenter.handle_preemption = config.classifier.handle_preemption = False

    _banner(f"1/6 phantom data set ({config.data.num_train} train, {config.data.num_validation} "
            f"validation, {config.data.num_test} test, {config.data.image_size} px)")
    builder = workflow.build_data(config, cxr_flags.data_dir())

    _banner("2/6 segmenter (U-Net: left lung, right lung, heart)")
    seg_path = train.train_segmenter(config, builder,
                                     workflow.subdir(work_dir, workflow.SEGMENTER_DIR),
                                     verbose=verbose)

    _banner(f"3/6 classifier ({config.classifier.variant}, {config.classifier.backbone or 'paper'} "
            f"backbone, {config.classifier.input_size} px)")
    clf_path = train.train_classifier(config, builder, workflow.classifier_dir(work_dir),
                                      segmenter_path=seg_path, verbose=verbose)

    _banner("4/6 evaluation on the test split (thresholds from validation)")
    eval_dir = workflow.subdir(work_dir, workflow.EVAL_DIR)
    report = workflow.evaluate(clf_path, builder, config, eval_dir, split="test",
                               segmenter_path=seg_path)
    # workflow.evaluate logs the AUROC and Dice tables; the figures are repeated at the end.

    _banner("5/6 export (TF Serving SavedModel)")
    export_path = workflow.export(clf_path, workflow.subdir(work_dir, workflow.EXPORT_DIR),
                                  resize_size=config.classifier.resize_size,
                                  report_path=os.path.join(eval_dir, "report.json"))

    _banner("6/6 one encoded PNG through the exported serving_default signature")
    example = next(iter(datasets.load_split(builder, "test").take(1)))
    ok, png = cv2.imencode(".png", example[fk.IMAGE].numpy())
    if not ok:
        raise RuntimeError("OpenCV could not encode the demo PNG")
    loaded, meta = export_lib.load_exported(export_path)
    out = loaded.signatures[export_lib.SERVING_DEFAULT](
        **{export_lib.IMAGE_BYTES: tf.constant([png.tobytes()])})
    probs = out["probabilities"].numpy()[0]
    truth = example[fk.LABELS].numpy()
    print(f"image {example[fk.IMAGE_ID].numpy().decode()} (true findings: "
          f"{', '.join(n for n, t in zip(labels.FINDINGS, truth) if t) or 'none'})")
    for name, p, d in zip(meta["label_names"], probs, out["decisions"].numpy()[0]):
        print(f"  {name:<20} {p:.4f}{'  positive' if d else ''}")
    print(f"  mask coverage {float(out['mask_coverage'].numpy()[0]):.3f}")

    seg = report["segmentation"]["structures"]
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"mean AUROC {report['classification']['mean_auroc']:.4f}")
    print(f"lung Dice {seg['lungs']['dice']:.4f}")
    print(f"heart Dice {seg['heart']['dice']:.4f}")
    print(f"work_dir {work_dir}")
    print(f"report {os.path.join(eval_dir, 'report.md')}")
    print(f"saved_model {export_path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
