"""Figures of the evaluation report: ROC curves, reliability diagram, CAM overlays (PNG).

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no GUI,
no global backend switch), so this module is safe in servers, tests and notebooks alike.
"""


import io

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from sklearn import metrics as skm

from cxr_tf import files

DPI = 110


def _new_figure(width, height):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    buf = io.BytesIO()  # rendered in memory: matplotlib writes local files only
    fig.savefig(buf, format="png", bbox_inches="tight")
    files.write_bytes_atomic(path, buf.getvalue())
    return path


def roc_figure(y_true, y_score, names, path, auroc=None, ci=None, title=None):
    """One PNG with the ROC curve of every class (sklearn.metrics.RocCurveDisplay), 4 per row.

    Args:
      y_true, y_score: (N, C) labels and scores.
      names: the C class names.
      path: output PNG.
      auroc, ci: optional (C,) AUROCs and (C, 2) intervals for the panel titles.
      title: figure title.

    Classes without both positives and negatives get an empty panel saying so.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    n = len(names)
    cols = 4
    rows = -(-n // cols)
    fig = _new_figure(3.2 * cols, 3.1 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for c, ax in enumerate(axes.ravel()):
        if c >= n:
            ax.set_axis_off()
            continue
        positives = int(y_true[:, c].sum())
        if 0 < positives < len(y_true):
            skm.RocCurveDisplay.from_predictions(y_true[:, c], y_score[:, c], ax=ax,
                                                 plot_chance_level=True, name=None)
            leg = ax.get_legend()
            if leg is not None:
                leg.remove()
            label = f"{names[c]}\nAUROC {auroc[c]:.3f}" if auroc is not None else names[c]
            if ci is not None and ci[c][0] is not None:
                label += f" [{ci[c][0]:.3f}, {ci[c][1]:.3f}]"
            ax.set_title(label, fontsize=9)
        else:
            ax.text(0.5, 0.5, f"{names[c]}\nundefined\n({positives} positives of {len(y_true)})",
                    ha="center", va="center", fontsize=9, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def reliability_figure(calibration, path, title=None):
    """Reliability diagram (pooled over classes) and histogram of predicted probabilities.

    Args:
      calibration: the dict from metrics.calibration_summary.
      path: output PNG.
    """
    rel = calibration["reliability"]
    fig = _new_figure(8.5, 3.8)
    ax, hist = fig.subplots(1, 2)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot(rel["mean_predicted"], rel["fraction_positive"], marker="o", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed fraction of positives")
    ax.set_title(f"Reliability, all classes pooled (ECE {calibration['pooled_ece']:.3f})",
                 fontsize=9)
    ax.legend(fontsize=8)
    hist.bar(rel["mean_predicted"], rel["count"], width=0.8 / calibration["n_bins"])
    hist.set_yscale("log")
    hist.set_xlim(0, 1)
    hist.set_xlabel("mean predicted probability (bin)")
    hist.set_ylabel("(image, class) pairs")
    hist.set_title("Predictions per bin", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def cam_overlay(image, heat, path, true_boxes=(), pred_box=None, mask=None, title=None):
    """One overlay PNG: the model-input image, its class CAM, the mask, true and predicted boxes.

    Args:
      image: (S, S) model-input image in [0, 1].
      heat: (S, S) the class CAM as the box rule sees it, in [0, 1] (restricted to the mask,
        upsampled and normalised: localization.cam_heatmap).
      path: output PNG.
      true_boxes: [x, y, w, h] boxes in model-input pixels (green).
      pred_box: predicted [x, y, w, h] in model-input pixels (red, dashed), or None.
      mask: optional (h, w) grid mask applied to the features (outlined in cyan).
      title: panel title.
    """
    image = np.asarray(image, dtype=np.float32)
    size = image.shape[0]
    fig = _new_figure(4.2, 4.4)
    ax = fig.subplots()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    handles = []
    if mask is not None:
        up = cv2.resize(np.asarray(mask, np.float32), (size, size),
                        interpolation=cv2.INTER_NEAREST)
        if 0 < up.sum() < up.size:
            ax.contour(up, levels=[0.5], colors="cyan", linewidths=1.2)
            label = "feature mask"
        else:  # nothing to outline: say what the mask was
            label = "feature mask: whole grid" if up.sum() else "feature mask: empty"
        handles.append(Patch(edgecolor="cyan", facecolor="none", label=label))
    for box in true_boxes:
        x, y, w, h = box
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="lime", lw=2))
    if len(true_boxes):
        handles.append(Patch(edgecolor="lime", facecolor="none", label="true box"))
    if pred_box is not None:
        x, y, w, h = pred_box
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="red", lw=2,
                               ls="--"))
        handles.append(Patch(edgecolor="red", facecolor="none", ls="--", label="CAM box"))
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=3,
                  fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=8)
    return _save(fig, path)
