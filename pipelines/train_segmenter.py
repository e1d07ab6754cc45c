"""Trains the lung/heart U-Net; the best model on validation Dice is WORK_DIR/segmenter/best.keras.

Builds the data sets first if needed. --datasets lists them with their repeats per epoch
('jsrt_scr:3,montgomery,shenzhen'; default: the preset's, or --dataset alone when given); each
film is supervised on what its data set labels (Montgomery and Shenzhen: lungs only). One
--manual_dir may hold all the raw copies: each builder takes its own files. Re-running the same
command resumes an interrupted run (mid-epoch with --checkpoint_every_steps). See
docs/segmenter.md for the shipped model's recipe, docs/training.md for GPUs and clusters.
  cxr-train-segmenter --work_dir=work --config=demo
  cxr-train-segmenter --work_dir=runs/seg --config=paper --manual_dir=~/data/public
  cxr-train-segmenter --work_dir=work --config=paper --dataset=jsrt_scr --manual_dir=~/data/jsrt
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
    f = flags.FLAGS
    config = cxr_flags.experiment_config()
    if f["dataset"].present and not f["datasets"].present:
        config.segmenter.datasets = f.dataset  # --dataset alone: train on that one
    configs.check_training_options(config.segmenter, "segmenter")  # before building any data
    configs.segmenter_sources(config.segmenter, config.data.dataset)  # malformed --datasets
    strategy = strategies.make_strategy(f.strategy, tpu_address=f.tpu)
    builders = workflow.build_segmentation_data(config, cxr_flags.data_dir(),
                                                manual_dir=f.manual_dir)
    path = train.train_segmenter(config, builders,
                                 workflow.subdir(flags.FLAGS.work_dir, workflow.SEGMENTER_DIR),
                                 strategy=strategy, verbose=0 if flags.FLAGS.quiet else 1)
    print(f"segmenter {path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
