"""Classification and segmentation metrics (scikit-learn does the ranking statistics)."""

import warnings

import numpy as np
from scipy import stats  # installed with scikit-learn
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve


def auroc_per_class(y_true, y_score):
    """Per-class area under the ROC curve.

    Args:
      y_true: (N, C) binary labels.
      y_score: (N, C) scores.

    Returns:
      (C,) float array; NaN for a class whose labels are all 0 or all 1 in `y_true` (AUROC is
      undefined there; such classes are reported, never silently scored).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true and y_score must both be (N, C); got {y_true.shape} and "
                         f"{y_score.shape}")
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        positives = y_true[:, c].sum()
        if 0 < positives < len(y_true):
            out[c] = skm.roc_auc_score(y_true[:, c], y_score[:, c])
    return out


def mean_auroc(per_class):
    """Mean over the classes where AUROC is defined (NaN if none is)."""
    per_class = np.asarray(per_class, dtype=float)
    defined = ~np.isnan(per_class)
    return float(per_class[defined].mean()) if defined.any() else float("nan")


def dice_iou_per_image(masks_true, masks_pred, threshold=0.5):
    """Dice and IoU per image and channel of binarised predictions.

    Args:
      masks_true: (N, H, W, S) binary masks.
      masks_pred: (N, H, W, S) probabilities (binarised at `threshold`) or binary masks.

    Returns:
      (dice, iou), each (N, S); 1.0 where a structure is absent and not predicted.
    """
    t = np.asarray(masks_true) >= 0.5
    p = np.asarray(masks_pred) >= threshold
    if t.shape != p.shape or t.ndim != 4:
        raise ValueError(f"masks must both be (N, H, W, S); got {t.shape} and {p.shape}")
    inter = np.logical_and(t, p).sum(axis=(1, 2)).astype(float)
    union = np.logical_or(t, p).sum(axis=(1, 2)).astype(float)
    total = t.sum(axis=(1, 2)) + p.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2 * inter / total, 1.0)
        iou = np.where(union > 0, inter / union, 1.0)
    return dice, iou


def segmentation_scores(masks_true, masks_pred, structure_names, threshold=0.5):
    """Mean Dice and IoU per structure, for the lungs together, and for the union of all.

    Returns:
      dict name -> {"dice": float, "iou": float}, with names from `structure_names` plus "lungs"
      (left and right lung together, when both are present) and "union".
    """
    t = np.asarray(masks_true) >= 0.5
    p = np.asarray(masks_pred) >= threshold
    names = list(structure_names)
    channels = [t, p]
    extra = {}
    if "left_lung" in names and "right_lung" in names:
        li, ri = names.index("left_lung"), names.index("right_lung")
        extra["lungs"] = [a[..., li:li + 1] | a[..., ri:ri + 1] for a in channels]
    extra["union"] = [a.any(axis=-1, keepdims=True) for a in channels]
    dice, iou = dice_iou_per_image(t, p)
    scores = {n: {"dice": float(dice[:, i].mean()), "iou": float(iou[:, i].mean())}
              for i, n in enumerate(names)}
    for name, (tt, pp) in extra.items():
        d, j = dice_iou_per_image(tt, pp)
        scores[name] = {"dice": float(d.mean()), "iou": float(j.mean())}
    return scores


def partial_segmentation_scores(masks_true, probs, known, names, threshold=0.5):
    """Dice and IoU of every target over the images that label it (partial labels).

    Args:
      masks_true: (N, H, W, T) binary targets in the order of `names` (e.g.
        labels.SEGMENTATION_TARGETS: left lung, right lung, heart, lungs).
      probs: (N, H, W, T) predicted probabilities or masks, same order (binarised at
        `threshold`).
      known: (N, T) 1 where the image labels that target.
      names: the T target names; "lungs" and "heart", when both are there, also give "union"
        (both lungs and the heart) on the images that label the heart.

    Returns:
      (scores, per_image): scores {name: {"dice", "iou", "n_images"}} for every target some
      image labels (means over those images); per_image {name: (N,) Dice, NaN where unknown}.
    """
    t = np.asarray(masks_true) >= 0.5
    p = np.asarray(probs) >= threshold
    known = np.asarray(known) > 0.5
    names = list(names)
    if t.shape != p.shape or t.ndim != 4 or known.shape != (t.shape[0], t.shape[-1]) \
            or len(names) != t.shape[-1]:
        raise ValueError(f"masks (N, H, W, T), predictions (N, H, W, T), known (N, T) and T "
                         f"names expected; got {t.shape}, {p.shape}, {known.shape}, {names}")
    dice, iou = dice_iou_per_image(t, p)
    if "lungs" in names and "heart" in names:
        li, hi = names.index("lungs"), names.index("heart")
        d, j = dice_iou_per_image(t[..., [li]] | t[..., [hi]], p[..., [li]] | p[..., [hi]])
        dice = np.concatenate([dice, d], axis=1)
        iou = np.concatenate([iou, j], axis=1)
        known = np.concatenate([known, known[:, [hi]] & known[:, [li]]], axis=1)
        names = names + ["union"]
    scores, per_image = {}, {}
    for i, name in enumerate(names):
        rows = known[:, i]
        per_image[name] = np.where(rows, dice[:, i], np.nan)
        if rows.any():
            scores[name] = {"dice": float(dice[rows, i].mean()),
                            "iou": float(iou[rows, i].mean()), "n_images": int(rows.sum())}
    return scores, per_image


def bootstrap_mean_interval(values, n_resamples=1000, confidence=0.95, seed=0):
    """Percentile-bootstrap interval of the mean of `values` (NaNs dropped), with
    scipy.stats.bootstrap; (nan, nan) for fewer than two values."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2 or not n_resamples:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="percentile",
                              confidence_level=confidence, random_state=seed, vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_difference_interval(a, b, n_resamples=1000, confidence=0.95, seed=0):
    """Percentile-bootstrap interval of mean(a) - mean(b) for two independent samples (NaNs
    dropped; each resampled within itself), with scipy.stats.bootstrap; (nan, nan) when either
    has fewer than two values."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2 or not n_resamples:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
                              n_resamples=n_resamples, method="percentile", paired=False,
                              confidence_level=confidence, random_state=seed, vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_by_group(values, groups, n_resamples=1000, seed=0, reference=None):
    """Per-film scores (e.g. Dice; NaN where a film does not label the target) summarised by
    group (e.g. view "PA"/"AP", or TB-positive/negative).

    Args:
      values: (N,) per-film scores.
      groups: (N,) group of each film (strings or bools; order of first appearance kept).
      n_resamples, seed: bootstrap of each group's mean and of the differences.
      reference: the group the others are compared with (mean(group) - mean(reference), with a
        bootstrap interval); None: no differences.

    Returns:
      {group (as str): {"n", "mean", "ci_low", "ci_high"[, "minus_reference",
      "minus_reference_ci"]}}; groups without a scored film have n 0 and mean None.
    """
    values = np.asarray(values, dtype=float)
    groups = np.asarray([str(g) for g in groups])
    if values.shape != groups.shape:
        raise ValueError(f"values {values.shape} and groups {groups.shape} must be the same "
                         f"length")
    out = {}
    for g in dict.fromkeys(groups.tolist()):
        v = values[groups == g]
        v = v[~np.isnan(v)]
        lo, hi = bootstrap_mean_interval(v, n_resamples, seed=seed)
        out[g] = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None,
                  "ci_low": None if np.isnan(lo) else lo, "ci_high": None if np.isnan(hi) else hi}
    if reference is not None and str(reference) in out:
        ref = values[groups == str(reference)]
        for g, row in out.items():
            if g == str(reference) or not row["n"] or not out[str(reference)]["n"]:
                continue
            v = values[groups == g]
            lo, hi = bootstrap_difference_interval(v, ref, n_resamples, seed=seed)
            row["minus_reference"] = float(np.nanmean(v) - np.nanmean(ref))
            row["minus_reference_ci"] = [None if np.isnan(lo) else lo,
                                         None if np.isnan(hi) else hi]
    return out


def auroc_rows(y_true, y_score):
    """AUROC along the last axis for many score vectors at once (the bootstrap's statistic).

    Uses the Mann-Whitney identity AUROC = (R+ - n+(n+ + 1)/2) / (n+ n-), R+ the sum of the
    positives' mid-ranks from scipy.stats.rankdata (ties count one half, as in
    sklearn.metrics.roc_auc_score, which this equals: see tests/test_metrics.py). It exists for
    speed only: one vectorised call scores thousands of resamples, where roc_auc_score costs
    milliseconds per call. Point estimates use roc_auc_score (`auroc_per_class`).

    Args:
      y_true: (..., N) binary labels.
      y_score: (..., N) scores.

    Returns:
      (...) AUROCs; NaN where a row has no positive or no negative.
    """
    y_true = np.asarray(y_true).astype(bool)
    ranks = stats.rankdata(np.asarray(y_score, dtype=float), axis=-1)
    n_pos = y_true.sum(axis=-1).astype(float)
    n_neg = y_true.shape[-1] - n_pos
    rank_sum = np.where(y_true, ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _resampled_auroc(y_true, y_score, idx):
    """(C + 1, B) per-class AUROC and their mean over defined classes, for (B, N) row indices."""
    per_class = np.stack([auroc_rows(y_true[:, c][idx], y_score[:, c][idx])
                          for c in range(y_true.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all classes undefined -> NaN mean
        mean = np.nanmean(per_class, axis=0)
    return np.concatenate([per_class, mean[None]], axis=0)


def _bootstrap(n_rows, n_columns, statistic, n_resamples, confidence, seed):
    """scipy.stats.bootstrap over row indices, vectorised, in memory-bounded batches."""
    batch = int(max(1, min(n_resamples, 2e7 // max(1, n_rows * n_columns))))
    with warnings.catch_warnings():
        # scipy warns when some resamples are undefined (NaN); callers count them instead.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap((np.arange(n_rows),), statistic, vectorized=True, batch=batch,
                              n_resamples=n_resamples, method="percentile", random_state=seed,
                              confidence_level=confidence)
    return np.asarray(res.bootstrap_distribution, dtype=float)


def bootstrap_auroc(y_true, y_score, n_resamples=1000, confidence=0.95, seed=0):
    """Percentile bootstrap confidence intervals of per-class AUROC and of the mean AUROC.

    Images (rows) are resampled with replacement by scipy.stats.bootstrap with a fixed seed;
    each resample scores every class on the same rows, so the mean's interval respects the
    correlation between classes. A resample in which a class has no positive (or no negative)
    leaves that class undefined; the interval is taken over the resamples where it is defined,
    and the count of undefined resamples is returned.

    Returns:
      dict with "low" and "high" arrays of shape (C + 1,) (the last entry is the mean AUROC) and
      "undefined" (C + 1,) counts of resamples where the value was undefined.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true and y_score must both be (N, C); got {y_true.shape} and "
                         f"{y_score.shape}")

    def statistic(idx, axis=-1):
        return _resampled_auroc(y_true, y_score, np.asarray(idx))

    dist = _bootstrap(len(y_true), y_true.shape[1], statistic, n_resamples, confidence, seed)
    dist = dist.reshape(y_true.shape[1] + 1, -1)  # (C + 1, n_resamples)
    alpha = (1 - confidence) / 2
    undefined = np.isnan(dist).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as intended
        low = np.nanquantile(dist, alpha, axis=1)
        high = np.nanquantile(dist, 1 - alpha, axis=1)
    return {"low": low, "high": high, "undefined": undefined}


def youden_thresholds(y_true, y_score):
    """Per-class threshold maximising Youden's J = sensitivity + specificity - 1 on the ROC curve.

    Meant to be computed on the validation split and applied unchanged to test or in serving.
    Classes without both positives and negatives get 0.5. Thresholds are clipped to [0, 1].
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    out = np.full(y_true.shape[1], 0.5)
    for c in range(y_true.shape[1]):
        t = y_true[:, c]
        if 0 < t.sum() < len(t):
            fpr, tpr, thr = skm.roc_curve(t, y_score[:, c])
            out[c] = np.clip(thr[np.argmax(tpr - fpr)], 0.0, 1.0)
    return out


def operating_points(y_true, y_score, thresholds):
    """Sensitivity, specificity, PPV and F1 per class at the given thresholds (score >= t).

    Returns a dict of (C,) arrays; a ratio with an empty denominator is NaN.
    """
    y_true = np.asarray(y_true).astype(bool)
    pred = np.asarray(y_score) >= np.asarray(thresholds)[None, :]
    out = {k: np.full(y_true.shape[1], np.nan) for k in ("sensitivity", "specificity", "ppv",
                                                          "f1")}
    for c in range(y_true.shape[1]):
        tn, fp, fn, tp = skm.confusion_matrix(y_true[:, c], pred[:, c], labels=[0, 1]).ravel()
        if tp + fn:
            out["sensitivity"][c] = tp / (tp + fn)
        if tn + fp:
            out["specificity"][c] = tn / (tn + fp)
        if tp + fp:
            out["ppv"][c] = tp / (tp + fp)
        if tp + fp + fn:
            out["f1"][c] = skm.f1_score(y_true[:, c], pred[:, c], zero_division=np.nan)
    return out


def bootstrap_auroc_difference(y_true, score_a, score_b, n_resamples=1000, confidence=0.95,
                               seed=0):
    """Paired percentile-bootstrap interval of mean AUROC(a) - mean AUROC(b) on the same images.

    Both models are scored on the same resampled rows in every resample (scipy.stats.bootstrap
    with a fixed seed), so the interval reflects the pairing. Classes undefined in a resample are
    left out of both means for that resample (they are undefined for both).

    Returns:
      dict with "difference" (on all rows, from roc_auc_score), "low", "high" and "undefined"
      (resamples where no class was defined).
    """
    y_true = np.asarray(y_true)
    score_a, score_b = np.asarray(score_a), np.asarray(score_b)
    if not (y_true.shape == score_a.shape == score_b.shape) or y_true.ndim != 2:
        raise ValueError(f"y_true, score_a and score_b must all be (N, C); got {y_true.shape}, "
                         f"{score_a.shape} and {score_b.shape}")
    point = (mean_auroc(auroc_per_class(y_true, score_a))
             - mean_auroc(auroc_per_class(y_true, score_b)))

    def statistic(idx, axis=-1):
        idx = np.asarray(idx)
        return (_resampled_auroc(y_true, score_a, idx)[-1]
                - _resampled_auroc(y_true, score_b, idx)[-1])

    dist = _bootstrap(len(y_true), 2 * y_true.shape[1], statistic, n_resamples, confidence,
                      seed).ravel()
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(dist, [alpha, 1 - alpha])
    return {"difference": float(point), "low": float(low), "high": float(high),
            "undefined": int(np.isnan(dist).sum())}


def expected_calibration_error(y_true, y_prob, n_bins=10):
    """Expected calibration error of one class: sum over bins of (n_bin / N) |frac_pos - mean_p|.

    Bins are the `n_bins` equal-width bins of [0, 1] of sklearn.calibration.calibration_curve
    (strategy "uniform"), which supplies the per-bin fraction of positives and mean probability;
    empty bins carry no weight.

    Returns:
      float; NaN for an empty input.
    """
    y_true = np.asarray(y_true).ravel()
    y_prob = np.asarray(y_prob, dtype=float).ravel()
    if y_true.shape != y_prob.shape:
        raise ValueError(f"y_true and y_prob must have the same length; got {y_true.shape} and "
                         f"{y_prob.shape}")
    if len(y_true) == 0:
        return float("nan")
    frac_pos, mean_prob = calibration_curve(y_true, y_prob, n_bins=n_bins, strategy="uniform")
    # The same bin assignment as calibration_curve's uniform strategy, for the bin weights.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], y_prob), minlength=n_bins)
    counts = counts[counts > 0]
    if len(counts) != len(frac_pos):
        raise RuntimeError("calibration bins disagree with sklearn.calibration.calibration_curve")
    return float(np.sum(counts / len(y_true) * np.abs(frac_pos - mean_prob)))


def calibration_summary(y_true, y_prob, n_bins=10):
    """How well probabilities match observed frequencies, per class and pooled over classes.

    Args:
      y_true: (N, C) binary labels.
      y_prob: (N, C) probabilities in [0, 1].
      n_bins: equal-width bins for the expected calibration error and reliability curve.

    Returns:
      dict with "brier" and "ece" (C,) arrays (sklearn.metrics.brier_score_loss; ECE as in
      `expected_calibration_error`), "mean_brier", "mean_ece" (means over classes),
      "pooled_ece" and "reliability" (the pooled reliability curve over all N * C
      probabilities from sklearn.calibration.calibration_curve: "mean_predicted",
      "fraction_positive", "count" per non-empty bin), and "n_bins".
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_true.shape != y_prob.shape or y_true.ndim != 2:
        raise ValueError(f"y_true and y_prob must both be (N, C); got {y_true.shape} and "
                         f"{y_prob.shape}")
    if np.any(y_prob < 0) or np.any(y_prob > 1):
        raise ValueError("calibration needs probabilities in [0, 1]")
    n_classes = y_true.shape[1]
    brier = np.array([skm.brier_score_loss(y_true[:, c], y_prob[:, c], labels=[0, 1])
                      for c in range(n_classes)])
    ece = np.array([expected_calibration_error(y_true[:, c], y_prob[:, c], n_bins)
                    for c in range(n_classes)])
    flat_t, flat_p = y_true.ravel(), y_prob.ravel()
    frac_pos, mean_prob = calibration_curve(flat_t, flat_p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], flat_p), minlength=n_bins)
    return {"brier": brier, "ece": ece, "mean_brier": float(brier.mean()),
            "mean_ece": float(ece.mean()),
            "pooled_ece": expected_calibration_error(flat_t, flat_p, n_bins),
            "reliability": {"mean_predicted": mean_prob, "fraction_positive": frac_pos,
                            "count": counts[counts > 0]},
            "n_bins": int(n_bins)}


def box_iou(box_a, box_b):
    """Intersection over union of axis-aligned boxes given as [x, y, w, h] (any float units).

    Args:
      box_a, box_b: (4,) or (N, 4) arrays (broadcast against each other).

    Returns:
      IoU as a float (or (N,) array); 0 where the union is empty.
    """
    a = np.asarray(box_a, dtype=float)
    b = np.asarray(box_b, dtype=float)
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError(f"boxes must be [x, y, w, h]; got shapes {a.shape} and {b.shape}")
    if np.any(a[..., 2:] < 0) or np.any(b[..., 2:] < 0):
        raise ValueError("box widths and heights must be >= 0")
    ix = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
                 - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
                 - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return float(iou) if iou.ndim == 0 else iou
