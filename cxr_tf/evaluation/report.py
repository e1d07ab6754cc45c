"""Evaluation of trained models and the reports they produce (JSON, Markdown, CSV).

Rules this module keeps, so that its numbers can be trusted:
  - operating thresholds are chosen on the validation split and applied unchanged to the
    evaluated split (never tuned on it);
  - classes with no positive (or no negative) in the evaluated split are reported as undefined,
    not dropped silently, and the mean is taken over defined classes (their count is stated);
  - every AUROC comes with a 95% percentile-bootstrap interval (fixed seed).
"""

import csv
import datetime
import math
import os

import numpy as np

from cxr_tf import labels as labels_lib
from cxr_tf.evaluation import inference, metrics
from cxr_tf.training.loop import write_json_atomic

# Fang et al. (2021), Table 2, mean AUROC on the official ChestX-ray14 test split, as published.
# Quoted for comparison only: these were NOT measured by cxr_tf.
PAPER_MEAN_AUROC = {
    "CXR-IRNet": 0.8335,
    "CXR-IRNet without F_l": 0.8222,
    "CheXNet": 0.8105,
    "DCNN (ResNet-50)": 0.7934,
}
PAPER_CITATION = ("Fang et al., Weighing Features of Lung and Heart Regions for Thoracic Disease "
                  "Classification, BMC Medical Imaging 2021, Table 2")


def _num(x):
    """float for JSON; None for NaN."""
    x = float(x)
    return None if math.isnan(x) else x


def evaluate_classifier(model, eval_ds, val_ds=None, n_resamples=1000, seed=0):
    """Scores a classifier on `eval_ds`, with thresholds chosen on `val_ds`.

    Args:
      model: a Keras classifier returning (B, 14) probabilities, or any callable doing so.
      eval_ds: (image, labels, image_id) batches of the evaluated split.
      val_ds: (image, labels[, id]) batches of the validation split for thresholds (None: 0.5).
      n_resamples: bootstrap resamples for the confidence intervals (0 disables them).
      seed: bootstrap seed.

    Returns:
      (report dict, predictions dict with "ids", "labels", "probabilities").
    """
    res = inference.collect(model, eval_ds)
    y, p = res["targets"], res["outputs"]
    names = labels_lib.FINDINGS
    if val_ds is not None:
        val = inference.collect(model, val_ds)
        thresholds = metrics.youden_thresholds(val["targets"], val["outputs"])
        threshold_rule = "Youden's J maximised per class on the validation split"
    else:
        thresholds = np.full(len(names), 0.5)
        threshold_rule = "0.5 for every class (no validation split given)"
    per_class = metrics.auroc_per_class(y, p)
    mean = metrics.mean_auroc(per_class)
    if n_resamples:
        ci = metrics.bootstrap_auroc(y, p, n_resamples=n_resamples, seed=seed)
    else:
        ci = {"low": np.full(len(names) + 1, np.nan), "high": np.full(len(names) + 1, np.nan),
              "undefined": np.zeros(len(names) + 1, int)}
    ops = metrics.operating_points(y, p, thresholds)
    classes = []
    for c, name in enumerate(names):
        classes.append({
            "name": name, "positives": int(y[:, c].sum()), "auroc": _num(per_class[c]),
            "ci_low": _num(ci["low"][c]), "ci_high": _num(ci["high"][c]),
            "bootstrap_undefined": int(ci["undefined"][c]),
            "threshold": float(thresholds[c]),
            **{k: _num(v[c]) for k, v in ops.items()},
        })
    undefined = [c["name"] for c in classes if c["auroc"] is None]
    report = {
        "n_images": int(len(y)),
        "classes": classes,
        "mean_auroc": _num(mean),
        "mean_auroc_ci": [_num(ci["low"][-1]), _num(ci["high"][-1])],
        "classes_in_mean": len(names) - len(undefined),
        "undefined_classes": undefined,
        "threshold_rule": threshold_rule,
        "bootstrap": {"resamples": int(n_resamples), "confidence": 0.95, "seed": int(seed),
                      "method": "percentile, images resampled (scipy.stats.bootstrap)"},
    }
    return report, {"ids": res.get("ids", []), "labels": y, "probabilities": p}


def evaluate_segmenter(segmenter, seg_ds):
    """Dice and IoU per structure, lungs and union, at the segmenter's input resolution."""
    res = inference.collect(segmenter, seg_ds)
    scores = metrics.segmentation_scores(res["targets"], res["outputs"], labels_lib.STRUCTURES)
    return {"n_images": int(len(res["targets"])), "resolution": int(res["targets"].shape[1]),
            "structures": scores}


def write_predictions_csv(predictions, path):
    """One row per image: id, the 14 probabilities, the 14 labels."""
    names = labels_lib.FINDINGS
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id"] + [f"p_{n}" for n in names] + [f"y_{n}" for n in names])
        ids = predictions["ids"] or [str(i) for i in range(len(predictions["labels"]))]
        for i, image_id in enumerate(ids):
            w.writerow([image_id] + [f"{v:.6f}" for v in predictions["probabilities"][i]]
                       + [int(v) for v in predictions["labels"][i]])
    os.replace(tmp, path)


def _fmt(x, digits=4):
    return "n/a" if x is None else f"{x:.{digits}f}"


def classification_table(report):
    """Plain-text per-class table (what the binaries print)."""
    lines = [f"{'finding':<20}{'n+':>6}{'AUROC':>9}  95% CI"]
    for c in report["classes"]:
        ci = (f"[{_fmt(c['ci_low'], 3)}, {_fmt(c['ci_high'], 3)}]"
              if c["ci_low"] is not None else "")
        lines.append(f"{c['name']:<20}{c['positives']:>6}{_fmt(c['auroc']):>9}  {ci}")
    lo, hi = report["mean_auroc_ci"]
    ci = f"[{_fmt(lo, 3)}, {_fmt(hi, 3)}]" if lo is not None else ""
    lines.append(f"{'mean':<20}{'':>6}{_fmt(report['mean_auroc']):>9}  {ci}")
    return "\n".join(lines)


def markdown(report):
    """The report as Markdown: classification table, thresholds, segmentation, provenance."""
    out = [f"# cxr_tf evaluation report", ""]
    meta = report.get("meta", {})
    for key in ("model", "dataset", "split", "created"):
        if key in meta:
            out.append(f"- {key}: `{meta[key]}`")
    clf = report.get("classification")
    if clf:
        out += ["", f"## Classification ({clf['n_images']} images)", "",
                "| Finding | n+ | AUROC | 95% CI | threshold | sensitivity | specificity | PPV | F1 |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for c in clf["classes"]:
            ci = (f"{_fmt(c['ci_low'], 3)}-{_fmt(c['ci_high'], 3)}" if c["ci_low"] is not None
                  else "n/a")
            out.append(f"| {c['name']} | {c['positives']} | {_fmt(c['auroc'])} | {ci} | "
                       f"{c['threshold']:.3f} | {_fmt(c['sensitivity'], 3)} | "
                       f"{_fmt(c['specificity'], 3)} | {_fmt(c['ppv'], 3)} | {_fmt(c['f1'], 3)} |")
        lo, hi = clf["mean_auroc_ci"]
        out.append(f"| **Mean** ({clf['classes_in_mean']} classes) | | "
                   f"**{_fmt(clf['mean_auroc'])}** | {_fmt(lo, 3)}-{_fmt(hi, 3)} | | | | | |")
        out += ["", f"Thresholds: {clf['threshold_rule']}. Intervals: 95% "
                f"{clf['bootstrap']['method']}, {clf['bootstrap']['resamples']} resamples, seed "
                f"{clf['bootstrap']['seed']}."]
        if clf["undefined_classes"]:
            out.append(f"Undefined AUROC (no positive or no negative in this split): "
                       f"{', '.join(clf['undefined_classes'])}.")
        out += ["", "Published mean AUROC on the official ChestX-ray14 test split, **not measured "
                f"here** ({PAPER_CITATION}): "
                + "; ".join(f"{k} {v:.4f}" for k, v in PAPER_MEAN_AUROC.items()) + "."]
    seg = report.get("segmentation")
    if seg:
        out += ["", f"## Segmentation ({seg['n_images']} images, {seg['resolution']} px)", "",
                "| Structure | Dice | IoU |", "|---|---:|---:|"]
        for name, s in seg["structures"].items():
            out.append(f"| {name} | {s['dice']:.4f} | {s['iou']:.4f} |")
    return "\n".join(out) + "\n"


def write_report(report, out_dir):
    """Writes report.json and report.md into out_dir; returns the JSON path."""
    os.makedirs(out_dir, exist_ok=True)
    report.setdefault("meta", {}).setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    json_path = os.path.join(out_dir, "report.json")
    write_json_atomic(json_path, report)
    md_path = os.path.join(out_dir, "report.md")
    with open(f"{md_path}.tmp", "w") as f:
        f.write(markdown(report))
    os.replace(f"{md_path}.tmp", md_path)
    return json_path
