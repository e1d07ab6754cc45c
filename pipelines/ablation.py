"""Ablation: trains and evaluates CXR-IRNet, its ablations and baselines on the same data.

Variants (--variants): cxr_irnet (attention + feature weighting), no_weighting (without F_l),
no_attention, chexnet (plain DenseNet), dcnn (ResNet-50). All share the data, seed, epochs,
optimiser and preprocessing of --config; DenseNet variants use the preset's backbone (the demo's
small `densenet_tiny`), dcnn uses ResNet-50. Each model is chosen on validation mean AUROC and
scored on test (thresholds from validation, 95% bootstrap intervals). Output, per data variant:

  WORK_DIR/ablation/<clean|shortcut>/ablation.md, ablation.json   the comparison table
  WORK_DIR/ablation/<...>/eval_<variant>/report.md                 full report of each model
  WORK_DIR/ablation/shortcut_comparison.md, .json                  clean vs shortcut side by side

On synthetic phantoms, --data_variants=clean,shortcut also runs the shortcut variant (tags outside
the lungs and heart that agree with the labels in train/validation and are random in test) and
reports whether feature weighting resists the shortcut. The segmenter of the weighting variants
is --segmenter when given, else WORK_DIR/ablation/<variant>/segmenter/best.keras when trained
there, else trained once on the phantoms' masks (first data variant) and shared; on a data set
without masks (ChestX-ray14, --config=paper) the segmenter shipped with cxr_tf. Re-running
resumes finished trainings.

ResNet-50 is slow on a CPU (about 3 images/s at 128 px on 2 busy cores, against 30-110 for the
small DenseNets): --dcnn_input_size=64 trains it at 64 px instead (stated in the tables).

  cxr-ablation --work_dir=abl --config=demo --epochs=3 --num_train=1600 --dcnn_input_size=64
  cxr-ablation --work_dir=abl --config=tiny --variants=cxr_irnet,chexnet --data_variants=clean
"""

import os
import time

from absl import app, flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
cxr_flags.define_ablation()
flags.adopt_module_key_flags(cxr_flags)

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cxr_flags.setup_logging()
    from cxr_tf import workflow

    f = flags.FLAGS
    t0 = time.time()
    if f["shortcut"].present:
        raise app.UsageError("Use --data_variants=clean,shortcut (or one of them) instead of "
                             "--shortcut")
    unknown = [v for v in f.variants if v not in workflow.ablation.VARIANTS]
    if unknown:
        raise app.UsageError(f"Unknown --variants {unknown}; expected some of "
                             f"{', '.join(workflow.ablation.VARIANTS)}")
    bad = [v for v in f.data_variants if v not in ("clean", "shortcut")]
    if bad or not f.data_variants:
        raise app.UsageError(f"--data_variants must be 'clean' and/or 'shortcut', got "
                             f"{f.data_variants}")
    if f.segmenter and not workflow.files.exists(f.segmenter):
        raise app.UsageError(f"--segmenter {f.segmenter} does not exist")
    config = cxr_flags.experiment_config()
    if config.data.dataset != workflow.datasets.SYNTHETIC and "shortcut" in f.data_variants:
        raise app.UsageError("The shortcut variant exists for synthetic_cxr only; pass "
                             "--data_variants=clean for a real data set")
    overrides = {}
    if f.dcnn_input_size:
        if f.dcnn_input_size % 32:
            raise app.UsageError(f"--dcnn_input_size must be a multiple of 32, got "
                                 f"{f.dcnn_input_size}")
        overrides["dcnn"] = {"input_size": f.dcnn_input_size,
                             "resize_size": f.dcnn_input_size * config.classifier.resize_size
                             // config.classifier.input_size}

    root = workflow.layout.ablation_dir(workflow.files.absolute(f.work_dir))
    segmenter = f.segmenter
    summaries = {}
    for data_variant in f.data_variants:
        cfg = cxr_flags.experiment_config()
        cfg.classifier = config.classifier
        cfg.data.shortcut = data_variant == "shortcut"
        summary = workflow.run_ablation(
            cfg, cxr_flags.data_dir(), os.path.join(root, data_variant), variants=f.variants,
            overrides=overrides, segmenter_path=segmenter, n_resamples=f.bootstrap,
            max_overlays=f.overlays, manual_dir=f.manual_dir, verbose=0 if f.quiet else 1)
        segmenter = summary["segmenter"] or segmenter  # shared by the next data variant
        summaries[data_variant] = summary
        print(f"\n=== {data_variant}: {summary['dataset']} ===")
        print(workflow.ablation.ablation_markdown(summary))
    if len(summaries) == 2:
        comparison = workflow.ablation.compare_shortcut(summaries["clean"], summaries["shortcut"],
                                                        root)
        print(workflow.ablation.shortcut_markdown(comparison))
    print(f"ablation finished in {time.time() - t0:.0f} s")
    print(f"tables {root}")


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
