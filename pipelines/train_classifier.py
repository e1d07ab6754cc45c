"""Trains CXR-IRNet (or an ablation/baseline); best model on validation mean AUROC is
WORK_DIR/classifier/best.keras (WORK_DIR/classifier_<variant>/ for other variants). The test
split is never used for model selection. Variants with feature weighting use --segmenter, else
WORK_DIR/segmenter/best.keras, else the segmenter shipped with cxr_tf (said in the log).

Builds the data set first if needed. Re-running the same command resumes an interrupted run
(mid-epoch with --checkpoint_every_steps). See docs/training.md for GPUs, several machines,
mixed precision and TensorBoard.
  cxr-train-classifier --work_dir=work --config=demo
  cxr-train-classifier --work_dir=work --config=demo --variant=chexnet
  cxr-train-classifier --work_dir=work --config=paper --strategy=mirrored --mixed_precision
"""

from absl import flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
cxr_flags.define_training()
cxr_flags.define_classifier()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import workflow
    f = flags.FLAGS
    path = workflow.train_classifier(
        cxr_flags.experiment_config(), f.work_dir, data_dir=cxr_flags.data_dir(),
        manual_dir=f.manual_dir, strategy=f.strategy, segmenter=f.segmenter,
        backbone_weights=f.backbone_weights, verbose=0 if f.quiet else 1)
    print(f"classifier {path}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
