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

from absl import flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
cxr_flags.define_training()
cxr_flags.define_segmenter()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import workflow
    f = flags.FLAGS
    config = cxr_flags.experiment_config()
    if f["dataset"].present and not f["datasets"].present:
        config.segmenter.datasets = f.dataset  # --dataset alone: train on that one
    path = workflow.train_segmenter(config, f.work_dir, data_dir=cxr_flags.data_dir(),
                                    manual_dir=f.manual_dir, strategy=f.strategy,
                                    verbose=0 if f.quiet else 1)
    print(f"segmenter {path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
