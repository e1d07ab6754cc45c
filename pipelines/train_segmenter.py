"""Trains the lung/heart U-Net; the best model on validation Dice is WORK_DIR/segmenter/best.keras.

Builds the data set first if needed. Re-running the same command resumes an interrupted run
(mid-epoch with --checkpoint_every_steps). See docs/training.md for GPUs, several machines,
mixed precision and TensorBoard.
  cxr-train-segmenter --work_dir=work --config=demo
  cxr-train-segmenter --work_dir=work --config=demo --strategy=mirrored --mixed_precision
"""

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
cxr_flags.define_training()
cxr_flags.define_segmenter()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import configs, workflow
    from cxr_tf.training import strategies, train
    config = cxr_flags.experiment_config()
    cxr_flags.apply_training_overrides(config.segmenter)
    configs.check_training_options(config.segmenter, "segmenter")  # before building any data
    strategy = strategies.make_strategy(flags.FLAGS.strategy, tpu_address=flags.FLAGS.tpu)
    builder = workflow.build_data(config, cxr_flags.data_dir(), manual_dir=flags.FLAGS.manual_dir)
    path = train.train_segmenter(config, builder,
                                 workflow.subdir(flags.FLAGS.work_dir, workflow.SEGMENTER_DIR),
                                 strategy=strategy, verbose=0 if flags.FLAGS.quiet else 1)
    print(f"segmenter {path}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
