"""Evaluation of trained models and the reports they produce (JSON, Markdown, CSV).

Rules this module keeps, so that its numbers can be trusted:
  - operating thresholds are chosen on the validation split and applied unchanged to the
    evaluated split (never tuned on it);
  - classes with no positive (or no negative) in the evaluated split are reported as undefined,
    not dropped silently, and the mean is taken over defined classes (their count is stated);
  - every AUROC comes with a 95% percentile-bootstrap interval (fixed seed);
  - published numbers (Fang et al. 2021) are shown beside ours, cited and marked as not measured
    here; only the paper's MEAN AUROCs are known to this project, so per-class published cells
    show "—" rather than invented values; the paper's CAM IoU (an oracle of the box size) is
    quoted as not comparable.

A report (report.json / report.md) holds: "classification" (per-class AUROC with intervals,
thresholds and operating points, Brier score and expected calibration error, validation AUROC,
mask coverage, figure names), "localisation" (CAM boxes against ground-truth boxes, see
cxr_tf.evaluation.localization) or "cam_overlays" (data without boxes), "segmentation" (Dice and
IoU per structure) and "meta" (model, source, data set, split, time).
"""

import csv
import datetime
import io
import math
import os

import numpy as np

from cxr_tf import files, layout
from cxr_tf import labels as labels_lib
from cxr_tf.evaluation import inference, metrics, plots, screening

# Fang et al. (2021), Table 2, mean AUROC on the official ChestX-ray14 test split, as published.
# Quoted for comparison only: these were NOT measured by cxr_tf.
PAPER_MEAN_AUROC = {
    "CXR-IRNet": 0.8335,
    "CXR-IRNet without F_l": 0.8222,
    "CheXNet": 0.8105,
    "DCNN (ResNet-50)": 0.7934,
}
# Fang et al. (2021): CAM box IoU, computed by the authors with boxes of the GROUND-TRUTH size
# placed at CAM peaks (an oracle of the box size): not comparable with cxr_tf's non-oracle boxes.
PAPER_ORACLE_BOX_IOU = {"with multi-scale attention": 0.3014, "without": 0.2437}
# Column order of the published AUROC table (baselines first, as in Table 2).
PAPER_COLUMNS = ("DCNN (ResNet-50)", "CheXNet", "CXR-IRNet without F_l", "CXR-IRNet")
ROC_PNG = "roc.png"
RELIABILITY_PNG = "reliability.png"
OVERLAY_DIR = "cam_overlays"
PAPER_CITATION = ("Fang et al., Weighing Features of Lung and Heart Regions for Thoracic Disease "
                  "Classification, BMC Medical Imaging 2021, Table 2")


def _num(x):
    """float for JSON; None for NaN."""
    x = float(x)
    return None if math.isnan(x) else x


def classification_report(y, p, thresholds=None, threshold_rule=None, n_resamples=1000, seed=0,
                          n_bins=10):
    """Scores (N, 14) probabilities `p` against labels `y` (no model involved).

    Args:
      y, p: (N, 14) labels and probabilities of the evaluated split.
      thresholds: (14,) operating thresholds, chosen on another split (default 0.5 each).
      threshold_rule: how the thresholds were chosen (stated in the report).
      n_resamples: bootstrap resamples for the confidence intervals (0 disables them).
      seed: bootstrap seed.
      n_bins: calibration bins.

    Returns:
      the "classification" section of a report (JSON-ready dict).
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    names = labels_lib.FINDINGS
    if y.shape != p.shape or y.shape[1:] != (len(names),):
        raise ValueError(f"labels and probabilities must both be (N, {len(names)}); got "
                         f"{y.shape} and {p.shape}")
    if thresholds is None:
        thresholds = np.full(len(names), 0.5)
        threshold_rule = threshold_rule or "0.5 for every class (no validation split given)"
    thresholds = np.asarray(thresholds, dtype=float)
    per_class = metrics.auroc_per_class(y, p)
    mean = metrics.mean_auroc(per_class)
    if n_resamples:
        ci = metrics.bootstrap_auroc(y, p, n_resamples=n_resamples, seed=seed)
    else:
        ci = {"low": np.full(len(names) + 1, np.nan), "high": np.full(len(names) + 1, np.nan),
              "undefined": np.zeros(len(names) + 1, int)}
    ops = metrics.operating_points(y, p, thresholds)
    calibration = metrics.calibration_summary(y, p, n_bins=n_bins)
    classes = []
    for c, name in enumerate(names):
        classes.append({
            "name": name, "positives": int(y[:, c].sum()), "auroc": _num(per_class[c]),
            "ci_low": _num(ci["low"][c]), "ci_high": _num(ci["high"][c]),
            "bootstrap_undefined": int(ci["undefined"][c]),
            "threshold": float(thresholds[c]),
            **{k: _num(v[c]) for k, v in ops.items()},
            "brier": _num(calibration["brier"][c]), "ece": _num(calibration["ece"][c]),
        })
    undefined = [c["name"] for c in classes if c["auroc"] is None]
    rel = calibration["reliability"]
    return {
        "n_images": int(len(y)),
        "classes": classes,
        "mean_auroc": _num(mean),
        "mean_auroc_ci": [_num(ci["low"][-1]), _num(ci["high"][-1])],
        "classes_in_mean": len(names) - len(undefined),
        "undefined_classes": undefined,
        "threshold_rule": threshold_rule or "given",
        "bootstrap": {"resamples": int(n_resamples), "confidence": 0.95, "seed": int(seed),
                      "method": "percentile, images resampled (scipy.stats.bootstrap)"},
        "calibration": {
            "mean_brier": calibration["mean_brier"], "mean_ece": calibration["mean_ece"],
            "pooled_ece": calibration["pooled_ece"], "n_bins": calibration["n_bins"],
            "method": ("Brier score (sklearn.metrics.brier_score_loss) and expected calibration "
                       "error over equal-width bins (sklearn.calibration.calibration_curve), "
                       "per class; reliability curve pooled over all (image, class) pairs"),
            "reliability": {k: [float(v) for v in rel[k]] for k in rel},
        },
    }


def evaluate_classifier(predictor, eval_ds, val_ds=None, n_resamples=1000, seed=0,
                        figures_dir=None):
    """Scores a classifier on `eval_ds`, with thresholds chosen on `val_ds`.

    Args:
      predictor: an inference.Predictor (a .keras classifier or an exported SavedModel), see
        inference.load_predictor.
      eval_ds: `cxr_tf.data.pipeline.examples_dataset` batches of the evaluated split.
      val_ds: the same for the validation split: Youden's J thresholds per class and the
        validation AUROC (None: thresholds 0.5).
      n_resamples: bootstrap resamples for the confidence intervals (0 disables them).
      seed: bootstrap seed.
      figures_dir: when given, roc.png and reliability.png are written there.

    Returns:
      (report section dict, predictions dict with "ids", "labels", "probabilities",
      "mask_coverage").
    """
    res = inference.predict(predictor, eval_ds)
    thresholds = rule = None
    val_auroc = None
    if val_ds is not None:
        val = inference.predict(predictor, val_ds)
        thresholds = metrics.youden_thresholds(val["labels"], val["probabilities"])
        rule = ("Youden's J (sensitivity + specificity - 1) maximised per class on the "
                "validation split")
        val_auroc = {"mean_auroc": _num(metrics.mean_auroc(
            metrics.auroc_per_class(val["labels"], val["probabilities"]))),
            "n_images": int(len(val["labels"]))}
    report = classification_report(res["labels"], res["probabilities"], thresholds, rule,
                                   n_resamples=n_resamples, seed=seed)
    report["validation"] = val_auroc
    report["mask_coverage"] = {"mean": float(np.mean(res["mask_coverage"])),
                               "min": float(np.min(res["mask_coverage"]))}
    if figures_dir:
        report["figures"] = write_figures(report, res["labels"], res["probabilities"],
                                          figures_dir, title=predictor.name)
    return report, res


def write_figures(clf_report, y, p, out_dir, title=None):
    """roc.png (all classes) and reliability.png into out_dir; returns their file names."""
    names = labels_lib.FINDINGS
    auroc = [np.nan if c["auroc"] is None else c["auroc"] for c in clf_report["classes"]]
    ci = [(c["ci_low"], c["ci_high"]) for c in clf_report["classes"]]
    plots.roc_figure(y, p, names, os.path.join(out_dir, ROC_PNG), auroc=auroc, ci=ci,
                     title=f"ROC curves{f' - {title}' if title else ''} "
                           f"({clf_report['n_images']} images)")
    cal = metrics.calibration_summary(y, p, n_bins=clf_report["calibration"]["n_bins"])
    plots.reliability_figure(cal, os.path.join(out_dir, RELIABILITY_PNG), title=title)
    return {"roc": ROC_PNG, "reliability": RELIABILITY_PNG}


def _as_partial_targets(targets, structures):
    """(masks in `structures` channel order) -> (masks, known) over labels.SEGMENTATION_TARGETS;
    (masks, known) pairs pass through."""
    if isinstance(targets, (tuple, list)):
        return targets
    names = labels_lib.SEGMENTATION_TARGETS
    n = len(targets)
    masks = np.zeros(targets.shape[:3] + (len(names),), np.float32)
    known = np.zeros((n, len(names)), np.float32)
    for i, name in enumerate(structures):
        masks[..., names.index(name)] = targets[..., i]
        known[:, names.index(name)] = 1
    if "left_lung" in structures and "right_lung" in structures and "lungs" not in structures:
        masks[..., names.index("lungs")] = np.maximum(masks[..., 0], masks[..., 1])
        known[:, names.index("lungs")] = 1
    return masks, known


def evaluate_segmenter(segmenter, seg_ds, structures=labels_lib.STRUCTURES, n_resamples=1000,
                       worst_fraction=0.1, seed=0, groups=None, min_worst=1):
    """Dice and IoU per structure, both lungs together and the union, at the segmenter's input
    resolution, each over the images that label it, with bootstrap intervals and the worst films.

    Args:
      segmenter: a UNetSegmenter (outputs labels.STRUCTURES channels).
      seg_ds: batches of (image, (masks, known)[, image_id]) as made by
        cxr_tf.data.pipeline.segmentation_dataset, or (image, masks) with one mask channel per
        name of
        `structures`.
      structures: the targets to score, from labels.SEGMENTATION_TARGETS ("lungs" = both lungs
        together; the segmenter's is the union of its two lungs). With "lungs" and "heart",
        "union" (lungs and heart) is scored too; without the heart it is left out.
      n_resamples: bootstrap resamples of each mean Dice's 95% interval (0: none).
      worst_fraction: the share of films with the lowest Dice listed per target (at least
        `min_worst` films, or all there are).
      seed: bootstrap seed.
      groups: optional {grouping: (image ids, group of each film, reference group)}, e.g.
        {"view": (ids, ["PA", "AP", ...], "PA")}: Dice per group of every target, and each
        group's difference from the reference with its interval ("by_group"). The ids must be
        the films of `seg_ds` in its order (pipeline.split_metadata gives them).
    """
    unknown = [s for s in structures if s not in labels_lib.SEGMENTATION_TARGETS]
    if unknown:
        raise ValueError(f"Unknown structures {unknown}; expected a subset of "
                         f"{labels_lib.SEGMENTATION_TARGETS}")
    res = inference.collect(segmenter, seg_ds)
    masks, known = _as_partial_targets(res["targets"], structures)
    probs = np.asarray(res["outputs"], np.float32)
    probs = np.concatenate([probs, np.maximum(probs[..., 0:1], probs[..., 1:2])], axis=-1)
    scored = set(structures)
    if {"left_lung", "right_lung"} <= scored:
        scored.add(labels_lib.LUNGS)  # both lungs together, from the two
    wanted = np.array([name in scored for name in labels_lib.SEGMENTATION_TARGETS], float)
    scores, per_image = metrics.partial_segmentation_scores(
        masks, probs, known * wanted, labels_lib.SEGMENTATION_TARGETS)
    ids = res.get("ids") or [str(i) for i in range(len(probs))]
    worst = {}
    for name, score in scores.items():
        lo, hi = metrics.bootstrap_mean_interval(per_image[name], n_resamples, seed=seed)
        score.update(ci_low=_num(lo), ci_high=_num(hi))
        dice = per_image[name]
        rows = np.nonzero(~np.isnan(dice))[0]
        k = max(1, int(min_worst), int(math.ceil(worst_fraction * len(rows))))
        worst[name] = [{"image_id": ids[i], "dice": float(dice[i])}
                       for i in rows[np.argsort(dice[rows], kind="stable")[:k]]]
    by_group = {}
    for grouping, (group_ids, values, reference) in (groups or {}).items():
        if list(group_ids) != list(ids):
            raise ValueError(f"groups[{grouping!r}] names other films than the segmentation "
                             f"data set, or in another order ({len(group_ids)} ids vs "
                             f"{len(ids)}); build both from the same split")
        by_group[grouping] = {"reference": reference, "targets": {
            name: metrics.mean_by_group(per_image[name], values, n_resamples, seed=seed,
                                        reference=reference)
            for name in scores}}
    return {"n_images": int(len(probs)), "resolution": int(probs.shape[1]),
            "structures": scores, "threshold": 0.5, "worst": worst, "by_group": by_group,
            "worst_fraction": float(worst_fraction),
            "bootstrap": {"resamples": int(n_resamples), "confidence": 0.95, "seed": int(seed)}}


def write_predictions_csv(predictions, path):
    """One row per image: id, the 14 probabilities, the 14 labels."""
    names = labels_lib.FINDINGS
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(["image_id"] + [f"p_{n}" for n in names] + [f"y_{n}" for n in names])
    ids = predictions["ids"] or [str(i) for i in range(len(predictions["labels"]))]
    for i, image_id in enumerate(ids):
        w.writerow([image_id] + [f"{v:.6f}" for v in predictions["probabilities"][i]]
                   + [int(v) for v in predictions["labels"][i]])
    files.write_text_atomic(path, out.getvalue())


def read_predictions_csv(path):
    """Inverse of write_predictions_csv: dict with "ids", "probabilities" (N, 14), "labels"."""
    names = labels_lib.FINDINGS
    rows = list(csv.reader(io.StringIO(files.read_text(path), newline="")))
    if not rows or rows[0][:1] != ["image_id"]:
        raise ValueError(f"{path} is not a cxr_tf predictions.csv")
    expected = ["image_id"] + [f"p_{n}" for n in names] + [f"y_{n}" for n in names]
    if rows[0] != expected:
        raise ValueError(f"{path}: unexpected columns {rows[0]} (expected {expected})")
    body = rows[1:]
    k = len(names)
    return {"ids": [r[0] for r in body],
            "probabilities": np.array([[float(v) for v in r[1:1 + k]] for r in body]),
            "labels": np.array([[int(v) for v in r[1 + k:]] for r in body])}


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


def segmentation_table(seg):
    """Plain-text Dice / IoU table per structure (what the binaries print)."""
    lines = [f"{'structure':<20}{'Dice':>8}{'IoU':>8}{'n':>6}  Dice, 95% interval"]
    for name, sc in seg["structures"].items():
        ci = (f"[{_fmt(sc.get('ci_low'), 3)}, {_fmt(sc.get('ci_high'), 3)}]"
              if sc.get("ci_low") is not None else "")
        lines.append(f"{name:<20}{sc['dice']:>8.4f}{sc['iou']:>8.4f}"
                     f"{sc.get('n_images', seg['n_images']):>6}  {ci}")
    return "\n".join(lines)


def _ci(lo, hi, digits=3):
    return "n/a" if lo is None or hi is None else f"{lo:.{digits}f}-{hi:.{digits}f}"


def published_table_markdown(clf, model_label="this model"):
    """The AUROC table laid out like Fang et al. (2021), Table 2, with our column beside theirs.

    Rows: the 14 findings and the mean. Columns: the paper's published models (NOT measured
    here: only their MEANS are known to this project, per-class cells show "—"), then ours with
    its 95% bootstrap interval and the number of positive images.
    """
    head = ("| Finding | " + " | ".join(f"{c} (published)" for c in PAPER_COLUMNS)
            + f" | **{model_label}: AUROC (measured here)** | 95% CI | n+ |")
    lines = [head, "|---|" + "---:|" * len(PAPER_COLUMNS) + "---:|---|---:|"]
    for c in clf["classes"]:
        lines.append(f"| {c['name']} | " + " | ".join("—" for _ in PAPER_COLUMNS)
                     + f" | {_fmt(c['auroc'])} | {_ci(c['ci_low'], c['ci_high'])} | "
                     f"{c['positives']} |")
    lo, hi = clf["mean_auroc_ci"]
    lines.append("| **Mean** | " + " | ".join(f"{PAPER_MEAN_AUROC[k]:.4f}" for k in PAPER_COLUMNS)
                 + f" | **{_fmt(clf['mean_auroc'])}** ({clf['classes_in_mean']} classes) | "
                 f"{_ci(lo, hi)} | |")
    notes = [
        "",
        f"Published columns: {PAPER_CITATION}, mean AUROC on the official ChestX-ray14 test "
        "split. They were **not measured here** and come from a different data set, split and "
        "training budget than this run. Only the published MEANS are known to this project; "
        "per-class published values are not available here and are shown as \u2014 (not as zero "
        "or missing results of the paper).",
        f"Our intervals: 95% {clf['bootstrap']['method']}, {clf['bootstrap']['resamples']} "
        f"resamples, seed {clf['bootstrap']['seed']}.",
    ]
    if clf["undefined_classes"]:
        notes.append("Undefined AUROC (no positive or no negative in this split), left out of "
                     f"the mean: {', '.join(clf['undefined_classes'])}.")
    return "\n".join(lines + notes)


def operating_points_markdown(clf):
    """Thresholds (with the rule that chose them) and sensitivity, specificity, PPV, F1."""
    out = [f"Thresholds: {clf['threshold_rule']}; applied unchanged to the evaluated split.", "",
           "| Finding | threshold | sensitivity | specificity | PPV | F1 |",
           "|---|---:|---:|---:|---:|---:|"]
    for c in clf["classes"]:
        out.append(f"| {c['name']} | {c['threshold']:.3f} | {_fmt(c['sensitivity'], 3)} | "
                   f"{_fmt(c['specificity'], 3)} | {_fmt(c['ppv'], 3)} | {_fmt(c['f1'], 3)} |")
    return "\n".join(out)


def calibration_markdown(clf):
    """Brier score and expected calibration error per class, with the means."""
    cal = clf["calibration"]
    out = [f"{cal['method']}; {cal['n_bins']} bins. Mean Brier {cal['mean_brier']:.4f}, mean "
           f"ECE {cal['mean_ece']:.4f}, pooled ECE {cal['pooled_ece']:.4f} (lower is better).",
           "", "| Finding | Brier | ECE |", "|---|---:|---:|"]
    for c in clf["classes"]:
        out.append(f"| {c['name']} | {_fmt(c['brier'])} | {_fmt(c['ece'])} |")
    return "\n".join(out)


def localisation_markdown(loc):
    """IoU per class and the share of boxes found at each IoU threshold, with the box rule."""
    ts = loc["iou_thresholds"]
    out = [f"Box rule: {loc['box_rule']}. IoU is computed in the stored-image frame against the "
           f"ground-truth boxes ({loc['overall']['n_boxes']} boxes on {loc['n_images']} images).",
           "", "| Finding | boxes | mean IoU | " + " | ".join(f"IoU >= {t:g}" for t in ts) + " |",
           "|---|---:|---:|" + "---:|" * len(ts)]
    for c in loc["classes"] + [{"name": "**All**", **loc["overall"]}]:
        if not c["n_boxes"] and c["name"] != "**All**":
            continue
        out.append(f"| {c['name']} | {c['n_boxes']} | {_fmt(c['mean_iou'], 3)} | "
                   + " | ".join(_fmt(c["hit_rate"][f"{t:g}"], 3) for t in ts) + " |")
    base = loc.get("whole_input_box")
    if base and base["n_boxes"]:
        out += ["", "Reference: a box covering the whole model input would score mean IoU "
                f"{_fmt(base['mean_iou'], 3)}; "
                + ", ".join(f"IoU >= {t:g}: {_fmt(base['hit_rate'][f'{t:g}'], 3)}" for t in ts)
                + "."]
    out += ["", "Published CAM box IoU ("
            + ", ".join(f"{k}: {v:.4f}" for k, v in PAPER_ORACLE_BOX_IOU.items())
            + f"; {PAPER_CITATION}) used boxes of the ground-truth SIZE placed at CAM peaks, an "
            "oracle: **not measured here and not comparable** with the rule above."]
    return "\n".join(out)


def mask_keeps_table(keeps):
    """Plain-text table: per finding with boxes, the mean share of box area each mask keeps."""
    rules = list(keeps["rules"])
    lines = [f"{'finding':<20}{'boxes':>6}{'pixel':>8}" + "".join(f"{r:>10}" for r in rules)]
    for c in keeps["classes"] + [{"name": "all", **keeps["overall"]}]:
        if not c["n_boxes"]:
            continue
        lines.append(f"{c['name']:<20}{c['n_boxes']:>6}{_fmt(c['pixel'], 3):>8}"
                     + "".join(f"{_fmt(c[r], 3):>10}" for r in rules))
    return "\n".join(lines)


def mask_keeps_markdown(keeps):
    """What the lung-and-heart mask keeps of the ground-truth boxes, per grid rule."""
    rules = keeps["rules"]
    head = ("| Finding | boxes | pixel mask | "
            + " | ".join(f"grid `{r}` (>= {t:g}, dilation {d})" for r, (t, d) in rules.items())
            + " |")
    out = [head, "|---|---:|---:|" + "---:|" * len(rules)]
    for c in keeps["classes"] + [{"name": "**All**", **keeps["overall"]}]:
        if not c["n_boxes"]:
            continue
        out.append(f"| {c['name']} | {c['n_boxes']} | {_fmt(c['pixel'], 3)} | "
                   + " | ".join(_fmt(c[r], 3) for r in rules) + " |")
    out += ["", "Mean share of each box's area (in the model-input frame; parts cut off by the "
                "centre crop count as lost) inside the segmenter's union mask at 0.5 (`pixel "
                "mask`) and inside the binarised grid mask that multiplies the features under "
                "each rule (`paper`: Fang et al.'s average-pool, keep cells >= 0.5)."]
    return "\n".join(out)


def segmentation_markdown(seg):
    """Dice and IoU per structure."""
    out = ["| Structure | Dice | 95% CI | IoU | images |", "|---|---:|---|---:|---:|"]
    for name, s in seg["structures"].items():
        out.append(f"| {name} | {s['dice']:.4f} | {_ci(s.get('ci_low'), s.get('ci_high'))} | "
                   f"{s['iou']:.4f} | {s.get('n_images', seg['n_images'])} |")
    out += ["", "Masks binarised at 0.5; per-image scores averaged over the images that label "
                "each structure; `lungs` = both lungs together, `union` = lungs and heart; "
                "intervals: percentile bootstrap over images."]
    worst = seg.get("worst") or {}
    if worst:
        share = round(100 * seg.get("worst_fraction", 0.1))
        out += ["", f"Worst {share}% of films by Dice:", ""]
        for name, films in worst.items():
            out.append(f"- {name}: " + ", ".join(f"{w['image_id']} {w['dice']:.3f}"
                                                 for w in films))
    sheet = seg.get("worst_films_sheet")
    if sheet:
        out += ["", f"The worst films by {sheet['target']} Dice (white: the reference outlines; "
                    f"red, green, blue: the segmenter's left lung, right lung, heart):", "",
                f"![worst films]({sheet['path']})"]
    for grouping, found in (seg.get("by_group") or {}).items():
        out += ["", by_group_markdown(grouping, found)]
    return "\n".join(out)


def by_group_markdown(grouping, found):
    """Dice per group of films (e.g. by view, or TB-positive vs negative) for every target,
    with each group's difference from the reference group."""
    ref = found["reference"]
    out = [f"Dice by {grouping} (difference: group minus {ref}, 95% bootstrap interval):", "",
           f"| Structure | {grouping} | films | Dice | 95% CI | minus {ref} | 95% CI |",
           "|---|---|---:|---:|---|---:|---|"]
    for name, groups in found["targets"].items():
        # The reference group's row first, then the others in order of appearance.
        for group, g in sorted(groups.items(), key=lambda kv: kv[0] != ref):
            dice = "—" if g["mean"] is None else f"{g['mean']:.4f}"
            diff = g.get("minus_reference")
            lo, hi = g.get("minus_reference_ci") or (None, None)
            diff_ci = "n/a" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"
            out.append(f"| {name} | {group} | {g['n']} | {dice} | "
                       f"{_ci(g['ci_low'], g['ci_high'])} | "
                       f"{'' if diff is None else f'{diff:+.4f}'} | "
                       f"{'' if diff is None else diff_ci} |")
    return "\n".join(out)


def markdown(report):
    """The report as Markdown: Table 2 layout, operating points, calibration, figures,
    localisation, segmentation, provenance."""
    out = ["# cxr_tf evaluation report", ""]
    meta = report.get("meta", {})
    for key in ("model", "model_source", "dataset", "split", "created"):
        if key in meta:
            out.append(f"- {key}: `{meta[key]}`")
    clf = report.get("classification")
    if clf:
        out += ["", f"## Classification ({clf['n_images']} images)", "",
                published_table_markdown(clf, meta.get("model_name", "this model"))]
        if clf.get("validation"):
            v = clf["validation"]
            out += ["", f"Validation split ({v['n_images']} images, used for thresholds only): "
                        f"mean AUROC {_fmt(v['mean_auroc'])}."]
        out += ["", "### Operating points", "", operating_points_markdown(clf)]
        if clf.get("calibration"):
            out += ["", "### Calibration", "", calibration_markdown(clf)]
        figs = clf.get("figures")
        if figs:
            out += ["", "### Figures", "", f"![ROC curves]({figs['roc']})", "",
                    f"![Reliability diagram]({figs['reliability']})"]
    loc = report.get("localisation")
    if loc:
        out += ["", "## Localisation", "", localisation_markdown(loc)]
        if loc.get("overlays"):
            out += ["", "Overlays (image, CAM, feature mask, true box green, CAM box red):", ""]
            out += [f"![overlay]({p})" for p in loc["overlays"][:6]]
    keeps = report.get("mask_keeps")
    if keeps:
        out += ["", "## What the lung-and-heart mask keeps of the boxes", "",
                mask_keeps_markdown(keeps)]
    cams = report.get("cam_overlays")
    if cams and cams.get("overlays"):
        out += ["", "## CAM overlays", "", f"{cams['note']}. Box rule: {cams['box_rule']}.", ""]
        out += [f"![{o['class']}]({o['path']})" for o in cams["overlays"][:6]]
    screen = report.get("segmenter_screening")
    if screen:
        out += ["", "## Segmenter mask coverage", "", screening.coverage_markdown(screen)]
        if screen.get("contact_sheet"):
            out += ["", f"![contact sheet]({screen['contact_sheet']})"]
    seg = report.get("segmentation")
    if seg:
        out += ["", f"## Segmentation ({seg['n_images']} images, {seg['resolution']} px)", "",
                segmentation_markdown(seg)]
    return "\n".join(out) + "\n"


def write_report(report, out_dir):
    """Writes report.json and report.md into out_dir; returns the JSON path."""
    files.makedirs(out_dir)
    report.setdefault("meta", {}).setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    json_path = os.path.join(out_dir, layout.REPORT_JSON)
    files.write_json_atomic(json_path, report)
    files.write_text_atomic(os.path.join(out_dir, layout.REPORT_MD), markdown(report))
    return json_path
