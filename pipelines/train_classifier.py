"""Trains CXR-IRNet (or an ablation/baseline); best model on validation mean AUROC is
WORK_DIR/classifier/best.keras (WORK_DIR/classifier_<variant>/ for other variants). The test split is never used for model selection.

Builds the data set first if needed. Re-running the same command resumes an interrupted run
(mid-epoch with --checkpoint_every_steps). See docs/training.md for GPUs, several machines,
mixed precision and TensorBoard.
  cxr-train-classifier --work_dir=work --config=demo
  cxr-train-classifier --work_dir=work --config=demo --variant=chexnet
  cxr-train-classifier --work_dir=work --config=paper --strategy=mirrored --mixed_precision
"""

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
cxr_flags.define_training()
cxr_flags.define_classifier()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import configs, workflow
    from cxr_tf.training import strategies, train
    f = flags.FLAGS
    config = cxr_flags.experiment_config()
    configs.check_training_options(config.classifier, "classifier")  # before building any data
    strategy = strategies.make_strategy(f.strategy, tpu_address=f.tpu)
    builder = workflow.build_data(config, cxr_flags.data_dir(), manual_dir=f.manual_dir)
    segmenter = None
    if configs.variant(config.classifier.variant).feature_weighting:
        segmenter, _ = workflow.segmenter_for_classifier(f.work_dir, f.segmenter)
    out_dir = workflow.classifier_dir(f.work_dir, config.classifier.variant)
    path = train.train_classifier(config, builder, out_dir, segmenter_path=segmenter,
                                  strategy=strategy, backbone_weights=f.backbone_weights,
                                  verbose=0 if f.quiet else 1)
    print(f"classifier {path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
