"""Ablation tables: CXR-IRNet, its two ablations and two baselines on the same data and seeds.

`cxr_tf.workflow.run_ablation` trains every variant on one data set with one ExperimentConfig
(same images, same seed, same epochs, optimiser and preprocessing) and evaluates each on the test
split with the evaluation report's rules (thresholds from validation, 95% bootstrap intervals);
this module turns the results into one comparison table (`summarise`: ablation.md,
ablation.json). Variants:

  cxr_irnet      multi-scale attention + backbone + lung-and-heart feature weighting (the paper)
  no_weighting   without feature weighting (the paper's "without F_l")
  no_attention   without the multi-scale attention module
  chexnet        neither (CheXNet: a plain DenseNet)
  dcnn           ResNet-50 (the paper's DCNN baseline)

The DenseNet variants use the config's backbone (e.g. the demo's small `densenet_tiny`, stated in
every table); dcnn always uses ResNet-50 unless `overrides` say otherwise. Two pairs differ ONLY
by feature weighting (cxr_irnet vs no_weighting, no_attention vs chexnet); for each the paired
bootstrap interval of the test mean-AUROC difference is reported.

`compare_shortcut` puts a clean and a shortcut run side by side. On the phantom `shortcut`
variant, tags outside the lungs and heart agree with the labels in train and validation and are
random in test, so the fall from validation to test AUROC measures reliance on the shortcut.
"""

import copy
import logging
import math
import os

from cxr_tf import configs as configs_lib
from cxr_tf import files, layout
from cxr_tf import labels as labels_lib
from cxr_tf.evaluation import metrics
from cxr_tf.evaluation import report as report_lib

log = logging.getLogger("cxr_tf")

# The variants in table order (named records in cxr_tf.configs: description, paper row).
VARIANTS = tuple(configs_lib.VARIANTS)
# (with, without): the two models of each pair differ only by feature weighting.
WEIGHTING_PAIRS = (("cxr_irnet", "no_weighting"), ("no_attention", "chexnet"))
SUMMARY_JSON = "ablation.json"
SUMMARY_MD = "ablation.md"
COMPARISON_JSON = "shortcut_comparison.json"
COMPARISON_MD = "shortcut_comparison.md"


def variant_config(config, variant, overrides=None):
    """The ExperimentConfig of one variant: `config` with the variant set.

    DenseNet variants keep `config.classifier.backbone` (e.g. a small DenseNet); variants whose
    own backbone is not a DenseNet (dcnn: ResNet-50) get it back. `overrides` maps a variant to
    ClassifierConfig fields, e.g. {"dcnn": {"input_size": 64, "resize_size": 64}}.
    """
    if variant not in configs_lib.VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    spec = configs_lib.VARIANTS[variant]
    cfg = copy.deepcopy(config)
    cfg.classifier.variant = variant
    if not spec.backbone.startswith("densenet"):
        cfg.classifier.backbone = ""
    for key, value in (overrides or {}).get(variant, {}).items():
        if not hasattr(cfg.classifier, key):
            raise ValueError(f"Override {variant}.{key}: ClassifierConfig has no field {key!r}")
        setattr(cfg.classifier, key, value)
    return cfg


def _history_summary(run_dir):
    path = os.path.join(run_dir, layout.HISTORY)
    if not files.exists(path):
        return {"epochs": None, "train_seconds": None}
    history = [h for h in files.read_json(path) if not h.get("diverged")]
    return {"epochs": len(history),
            "train_seconds": float(sum(h.get("train_seconds", 0.0) for h in history))}


def variant_row(variant, cfg, model, report, run_dir, eval_dir, wall_train, wall_eval):
    """One row of the ablation table: the variant, its model and its test report.

    Args:
      variant: the variant's name; cfg: its ExperimentConfig; model: its trained CXRClassifier.
      report: the evaluation report dict of its test split; run_dir, eval_dir: its folders.
      wall_train, wall_eval: wall seconds of its training and evaluation here.
    """
    clf = report["classification"]
    spec = configs_lib.VARIANTS[variant]
    return {
        "variant": variant, "description": spec.description,
        "backbone": model.backbone_name, "input_size": cfg.classifier.input_size,
        "attention": model.attention, "feature_weighting": model.feature_weighting,
        "parameters": int(model.count_params()),
        **_history_summary(run_dir), "wall_train_seconds": wall_train,
        "wall_eval_seconds": wall_eval,
        "val_mean_auroc": (clf.get("validation") or {}).get("mean_auroc"),
        "test_mean_auroc": clf["mean_auroc"], "test_mean_auroc_ci": clf["mean_auroc_ci"],
        "test_auroc": {c["name"]: c["auroc"] for c in clf["classes"]},
        "mean_brier": clf["calibration"]["mean_brier"],
        "mean_mask_coverage": clf["mask_coverage"]["mean"],
        "paper_name": spec.paper_name,
        "paper_mean_auroc": report_lib.PAPER_MEAN_AUROC.get(spec.paper_name or ""),
        "model": layout.best_model(run_dir),
        "report": os.path.join(eval_dir, layout.REPORT_MD),
    }


def summarise(config, dataset, rows, predictions, work_dir, overrides=None, segmenter_path=None,
              segmenter_seconds=0.0, n_resamples=1000, wall_seconds=None):
    """The ablation's summary: the rows, and for each pair that differs only by feature
    weighting the paired bootstrap interval of the test mean-AUROC difference; written to
    work_dir/ablation.json and ablation.md and returned.

    Args:
      config: the shared ExperimentConfig; dataset: the data set's full name.
      rows: variant_row() of each variant, in table order.
      predictions: {variant: read_predictions_csv() of its test predictions}.
    """
    comparisons = []
    for with_w, without_w in WEIGHTING_PAIRS:
        if with_w in predictions and without_w in predictions:
            a, b = predictions[with_w], predictions[without_w]
            if a["ids"] != b["ids"]:
                raise RuntimeError("Variants were evaluated on different images")
            d = metrics.bootstrap_auroc_difference(a["labels"], a["probabilities"],
                                                   b["probabilities"],
                                                   n_resamples=n_resamples, seed=config.seed)
            comparisons.append({"with_weighting": with_w, "without_weighting": without_w,
                                "split": "test", **d})
    summary = {
        "dataset": dataset,
        "n_test_images": len(next(iter(predictions.values()))["ids"]),
        "config": configs_lib.to_dict(config),
        "overrides": overrides or {},
        "segmenter": segmenter_path, "segmenter_train_seconds": segmenter_seconds,
        "variants": rows, "weighting_effect": comparisons,
        "bootstrap": {"resamples": int(n_resamples), "seed": int(config.seed)},
        "wall_seconds": wall_seconds,
    }
    files.write_json_atomic(os.path.join(work_dir, SUMMARY_JSON), summary)
    files.write_text_atomic(os.path.join(work_dir, SUMMARY_MD), ablation_markdown(summary))
    return summary


def _f(x, digits=4):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(pair, digits=3):
    lo, hi = pair
    return "n/a" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _setting_line(summary):
    c = summary["config"]
    clf = c["classifier"]
    line = (f"Data: `{summary['dataset']}` ({summary['n_test_images']} test images). Shared: "
            f"seed {c['seed']}, {clf['epochs']} epochs, batch {clf['batch_size']}, Adam lr "
            f"{clf['learning_rate']:g}, weight decay {clf['weight_decay']:g}, input "
            f"{clf['input_size']} px (resize {clf['resize_size']}), DenseNet variants on the "
            f"`{clf['backbone'] or 'densenet121'}` backbone, dcnn on ResNet-50; model chosen on "
            f"validation mean AUROC; thresholds and intervals as in the evaluation report.")
    if summary.get("overrides"):
        line += " Per-variant overrides: " + "; ".join(
            f"{v}: " + ", ".join(f"{k}={val}" for k, val in o.items())
            for v, o in summary["overrides"].items()) + "."
    return line


def _weighting_lines(comparisons, split_label="test"):
    out = []
    for c in comparisons:
        verdict = ("interval excludes 0: weighting helps" if c["low"] > 0 else
                   "interval excludes 0: weighting hurts" if c["high"] < 0 else
                   "interval includes 0: no difference detected")
        out.append(f"- {c['with_weighting']} - {c['without_weighting']} (only feature weighting "
                   f"differs), {split_label} mean AUROC: {c['difference']:+.4f}, 95% paired "
                   f"bootstrap interval [{c['low']:+.4f}, {c['high']:+.4f}] ({verdict}).")
    return out


def ablation_markdown(summary):
    """The comparison table of one `run_ablation` summary as Markdown."""
    out = ["# Ablation", "", _setting_line(summary), "",
           "| Model | variant | backbone | input px | parameters | epochs | train s | "
           "val mean AUROC | test mean AUROC [95% CI] | mean Brier | published mean AUROC* |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in summary["variants"]:
        pub = "—" if r["paper_mean_auroc"] is None else f"{r['paper_mean_auroc']:.4f}"
        out.append(f"| {r['description']} | `{r['variant']}` | {r['backbone']} | "
                   f"{r['input_size']} | {r['parameters']:,} | {r['epochs']} | "
                   f"{_f(r['train_seconds'], 0)} | {_f(r['val_mean_auroc'])} | "
                   f"{_f(r['test_mean_auroc'])} {_ci(r['test_mean_auroc_ci'])} | "
                   f"{_f(r['mean_brier'])} | {pub} |")
    out += ["", f"\\* {report_lib.PAPER_CITATION}: ChestX-ray14 official test split, full-size "
            "DenseNet121/ResNet-50 at 224 px, 50 epochs. **Not measured here** and not comparable "
            "with phantom results; — where the paper publishes no such row.", ""]
    if summary["weighting_effect"]:
        out += ["Effect of feature weighting (paired over the same test images):", ""]
        out += _weighting_lines(summary["weighting_effect"])
        out.append("")
    out += ["Per-class test AUROC:", "",
            "| Finding | " + " | ".join(f"`{r['variant']}`" for r in summary["variants"]) + " |",
            "|---|" + "---:|" * len(summary["variants"])]
    for name in labels_lib.FINDINGS:
        out.append(f"| {name} | " + " | ".join(_f(r["test_auroc"][name], 3)
                                               for r in summary["variants"]) + " |")
    out += ["", f"Wall time {summary['wall_seconds']:.0f} s (segmenter "
                f"{summary['segmenter_train_seconds']:.0f} s)."]
    return "\n".join(out) + "\n"


def compare_shortcut(clean, shortcut, out_dir, n_resamples=1000):
    """Side-by-side table of a clean and a shortcut ablation run; writes shortcut_comparison.*.

    Columns per variant: test mean AUROC on clean phantoms; on the shortcut variant the
    validation mean AUROC (tags agree with the labels) and the test mean AUROC (tags random);
    the fall from validation to test on the shortcut data (reliance on the shortcut), the same
    fall on clean data (ordinary generalisation gap) and the difference of the two falls.

    Args:
      clean, shortcut: summaries returned by `run_ablation` (or read from ablation.json).
      out_dir: where shortcut_comparison.json / .md go.

    Returns:
      the comparison dict.
    """
    del n_resamples  # the paired intervals come from the two summaries
    by_clean = {r["variant"]: r for r in clean["variants"]}
    rows = []
    for r in shortcut["variants"]:
        c = by_clean.get(r["variant"])
        row = {"variant": r["variant"], "description": r["description"],
               "clean_val": c["val_mean_auroc"] if c else None,
               "clean_test": c["test_mean_auroc"] if c else None,
               "clean_test_ci": c["test_mean_auroc_ci"] if c else [None, None],
               "shortcut_val": r["val_mean_auroc"], "shortcut_test": r["test_mean_auroc"],
               "shortcut_test_ci": r["test_mean_auroc_ci"]}
        sub = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
        row["shortcut_fall"] = sub(row["shortcut_val"], row["shortcut_test"])
        row["clean_fall"] = sub(row["clean_val"], row["clean_test"])
        row["excess_fall"] = sub(row["shortcut_fall"], row["clean_fall"])
        rows.append(row)
    comparison = {"clean_dataset": clean["dataset"], "shortcut_dataset": shortcut["dataset"],
                  "rows": rows, "weighting_effect_clean": clean["weighting_effect"],
                  "weighting_effect_shortcut": shortcut["weighting_effect"]}
    files.makedirs(out_dir)
    files.write_json_atomic(os.path.join(out_dir, COMPARISON_JSON), comparison)
    files.write_text_atomic(os.path.join(out_dir, COMPARISON_MD), shortcut_markdown(comparison))
    return comparison


def shortcut_markdown(comparison):
    """Markdown of `compare_shortcut`."""
    out = ["# Shortcut resistance", "",
           f"Clean: `{comparison['clean_dataset']}`. Shortcut: `{comparison['shortcut_dataset']}` "
           "(tags outside the lungs and heart agree with the labels 95% of the time in train and "
           "validation, random in test).", "",
           "| Model | clean test [95% CI] | shortcut val (tags informative) | shortcut test (tags "
           "random) [95% CI] | fall val->test, shortcut | fall val->test, clean | excess fall |",
           "|---|---|---:|---|---:|---:|---:|"]
    for r in comparison["rows"]:
        out.append(f"| {r['description']} (`{r['variant']}`) | {_f(r['clean_test'])} "
                   f"{_ci(r['clean_test_ci'])} | {_f(r['shortcut_val'])} | "
                   f"{_f(r['shortcut_test'])} {_ci(r['shortcut_test_ci'])} | "
                   f"{_f(r['shortcut_fall'])} | {_f(r['clean_fall'])} | "
                   f"{_f(r['excess_fall'])} |")
    out += ["", "Excess fall = (shortcut val - shortcut test) - (clean val - clean test): the part "
                "of the fall due to the shortcut. Lower is more resistant.", ""]
    if comparison["weighting_effect_shortcut"]:
        out += ["Feature weighting on the shortcut test split (tags random):", ""]
        out += _weighting_lines(comparison["weighting_effect_shortcut"], "shortcut test")
    if comparison["weighting_effect_clean"]:
        out += ["", "Feature weighting on the clean test split:", ""]
        out += _weighting_lines(comparison["weighting_effect_clean"], "clean test")
    return "\n".join(out) + "\n"
