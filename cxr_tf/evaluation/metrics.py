"""Classification and segmentation metrics (scikit-learn does the ranking statistics)."""

import warnings

import numpy as np
from scipy import stats  # installed with scikit-learn
from sklearn import metrics as skm


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

    def statistic(idx):
        per_class = auroc_per_class(y_true[idx], y_score[idx])
        return np.append(per_class, mean_auroc(per_class))

    res = stats.bootstrap((np.arange(len(y_true)),), statistic, vectorized=False,
                          n_resamples=n_resamples, method="percentile", random_state=seed,
                          confidence_level=confidence)
    dist = res.bootstrap_distribution  # (C + 1, n_resamples)
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
