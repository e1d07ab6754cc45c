"""Localisation from class activation maps (CAMs): boxes by a stated, non-oracle rule, and IoU.

The CAM of class c is the classifier head applied to every cell of the (weighted) feature map,
i.e. sum_k w_ck F_l(k) + b_c per cell; the model's logit is its mean over cells
(`CXRClassifier.explain_model`). A box comes from the CAM alone (`cam_to_box`), never from the
ground truth:

  0. for models with feature weighting, cells outside the lung-and-heart mask carry no image
     evidence (their weighted features are zero, so their CAM is just the head's bias): they are
     set to the lowest CAM value inside the mask (`restrict_to_mask`), so the bias can never
     become the peak;
  1. upsample the (h, w) CAM of the class bilinearly to the model input (OpenCV `cv2.resize`);
  2. normalise it to [0, 1] per image (min-max);
  3. keep the pixels >= `threshold` (default 0.5, a fraction of the normalised maximum);
  4. take the 8-connected component (OpenCV `cv2.connectedComponentsWithStats`) holding the
     CAM's peak; its bounding rectangle is the predicted box.

This differs on purpose from the authors' code, which placed a box of the GROUND-TRUTH size at the
CAM peak (an oracle of the box size); their IoU (0.3014) is therefore not comparable with ours.

The box is predicted in the model-input frame (after resize and centre crop) and mapped back to
the frame of the stored image, where ground-truth boxes live ([x, y, w, h] in pixels of the
stored image, see cxr_tf.data.features.BOXES); IoU is computed there, so a part of a true box cut
off by the centre crop counts as missed. One box is predicted per (image, class) and scored
against every true box of that class on the image. The CAM of the true class is used whatever
the predicted probability (localisation given the label, as in the paper).
"""

import dataclasses
import logging
import os

import cv2
import numpy as np
import tensorflow as tf

from cxr_tf import labels as labels_lib
from cxr_tf.data import preprocessing
from cxr_tf.evaluation import metrics, plots
from cxr_tf.models import classifier as classifier_lib
from cxr_tf.models.layers import Resize

log = logging.getLogger("cxr_tf")

DEFAULT_CAM_THRESHOLD = 0.5
IOU_THRESHOLDS = (0.1, 0.25, 0.5)
BOX_RULE = ("CAM of the class (cells outside the feature mask of weighted models set to the "
            "lowest in-mask value) upsampled bilinearly to the model input, min-max normalised "
            "to [0, 1] per image, thresholded at {threshold:g}; the bounding box of the "
            "8-connected component containing the CAM peak (no ground-truth box size used)")


def restrict_to_mask(cam, mask):
    """Sets the CAM cells outside `mask` to the lowest CAM value inside it.

    Args:
      cam: (h, w) CAM on the feature grid.
      mask: (h, w) grid mask (1 = kept), or None.

    Returns:
      the CAM unchanged when `mask` is None or keeps no cell or every cell, else a copy with the
      cells outside set to the in-mask minimum.
    """
    if mask is None:
        return np.asarray(cam)
    cam = np.array(cam, dtype=np.float32)
    keep = np.asarray(mask) >= 0.5
    if keep.shape != cam.shape:
        raise ValueError(f"mask shape {keep.shape} differs from the CAM's {cam.shape}")
    if keep.any() and not keep.all():
        cam[~keep] = cam[keep].min()
    return cam


def grid_mask_from_cams(cams, coverage):
    """The feature mask of a weighted model, recovered from its CAMs and mask coverage.

    For SavedModels, which return CAMs and mask coverage but not the grid mask: a masked cell has
    all-zero weighted features, so its CAM vector over the C classes is exactly the head's bias,
    the same vector in every masked cell. The mask is recovered when exactly one group of
    identical CAM vectors has the size the coverage implies ((1 - coverage) * h * w cells).

    Args:
      cams: (h, w, C) CAMs of one image.
      coverage: the image's mask coverage (share of kept cells).

    Returns:
      (h, w) float mask, or None when it cannot be recovered (e.g. an image below the model's
      minimum coverage, which is not weighted at all).
    """
    cams = np.asarray(cams)
    h, w, c = cams.shape
    n_masked = h * w - int(round(float(coverage) * h * w))
    if n_masked <= 0:
        return np.ones((h, w), np.float32)
    _, inverse, counts = np.unique(cams.reshape(-1, c), axis=0, return_inverse=True,
                                   return_counts=True)
    groups = np.nonzero(counts == n_masked)[0]
    if len(groups) != 1 or n_masked < 2:
        return None
    return (inverse.reshape(h, w) != groups[0]).astype(np.float32)


def image_grid_mask(predictor, outputs, index):
    """The feature mask of image `index` in a predictor's outputs: the model's own grid mask
    when exposed (.keras), else recovered from the CAMs (SavedModels of weighted models), else
    None (models without feature weighting)."""
    if not getattr(predictor, "feature_weighting", False):
        return None
    grid = outputs.get(classifier_lib.GRID_MASK)
    if grid is not None:
        return np.asarray(grid[index, ..., 0])
    return grid_mask_from_cams(outputs[classifier_lib.CAMS][index],
                               outputs[classifier_lib.MASK_COVERAGE][index])


def upsample_cam(cam, size):
    """Bilinear upsampling (cv2.resize) of a (h, w) CAM to (size, size) float32.

    Cell (i, j) of an h x h grid covers pixels [i * size / h, (i + 1) * size / h) of the input, and
    cv2.resize's pixel-centre convention keeps that alignment.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"A CAM must be (h, w); got shape {cam.shape}")
    size = int(size)
    return cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)


def normalise_cam(cam):
    """Min-max normalisation to [0, 1]; a constant map becomes all zeros (no peak, no box)."""
    cam = np.asarray(cam, dtype=np.float32)
    lo, hi = float(cam.min()), float(cam.max())
    if not np.isfinite([lo, hi]).all():
        raise ValueError("The CAM holds NaN or infinite values")
    if hi - lo <= 1e-12:
        return np.zeros_like(cam)
    return (cam - lo) / (hi - lo)


def cam_heatmap(cam, size, mask=None):
    """The CAM as the box rule sees it: restricted to the mask, upsampled to (size, size) and
    normalised to [0, 1] (steps 0-2 of the module docstring). An already upsampled map is only
    restricted and normalised."""
    cam = restrict_to_mask(np.asarray(cam, dtype=np.float32), mask)
    return normalise_cam(cam if cam.shape == (size, size) else upsample_cam(cam, size))


def cam_to_box(cam, size, threshold=DEFAULT_CAM_THRESHOLD, mask=None):
    """The predicted box of one class from its CAM (the rule in the module docstring).

    Args:
      cam: (h, w) CAM on the feature grid, or an already upsampled (size, size) map.
      size: model input side; the box is in its pixels.
      threshold: fraction in (0, 1] of the normalised maximum that pixels must reach.
      mask: optional (h, w) feature mask of a weighted model (see `restrict_to_mask`).

    Returns:
      (box, heatmap): box as float [x, y, w, h] in model-input pixels (None for a constant CAM,
      which has no peak), and the normalised (size, size) heatmap.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    heat = cam_heatmap(cam, size, mask)
    if not heat.any():
        return None, heat
    binary = (heat >= threshold).astype(np.uint8)
    _, components, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    x, y, w, h = stats[components[peak], :4]
    return np.array([x, y, w, h], dtype=np.float64), heat


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """The mapping between a stored image and the model input (resize, then centre crop).

    Matches cxr_tf.data.preprocessing.resize_and_crop: the stored (height, width) image is
    resized to resize_size x resize_size, then the centre input_size x input_size is kept.
    """
    stored_height: int
    stored_width: int
    input_size: int
    resize_size: int

    @property
    def offset(self):
        return (self.resize_size - self.input_size) // 2

    def to_stored(self, box):
        """[x, y, w, h] in model-input pixels -> pixels of the stored image."""
        x, y, w, h = np.asarray(box, dtype=np.float64)
        sx = self.stored_width / self.resize_size
        sy = self.stored_height / self.resize_size
        return np.array([(x + self.offset) * sx, (y + self.offset) * sy, w * sx, h * sy])

    def to_input(self, box):
        """[x, y, w, h] in pixels of the stored image -> model-input pixels (not clipped)."""
        x, y, w, h = np.asarray(box, dtype=np.float64)
        sx = self.resize_size / self.stored_width
        sy = self.resize_size / self.stored_height
        return np.array([x * sx - self.offset, y * sy - self.offset, w * sx, h * sy])


def localise(cams, boxes, box_labels, geometry, threshold=DEFAULT_CAM_THRESHOLD, image_id="",
             mask=None):
    """Scores the true boxes of one image against boxes predicted from its CAMs.

    Args:
      cams: (h, w, C) CAMs of the image.
      boxes: (N, 4) true boxes [x, y, w, h] in pixels of the stored image (rows with a negative
        label are padding and skipped).
      box_labels: (N,) finding indices into labels.FINDINGS.
      geometry: the image's CropGeometry.
      threshold: CAM threshold of `cam_to_box`.
      image_id: carried into the records.
      mask: optional (h, w) feature mask (see `cam_to_box`).

    Returns:
      a list of dicts, one per true box: image_id, class, class_index, true_box, pred_box (both in
      stored-image pixels; pred_box None when the CAM is constant), iou, and iou_whole_input
      (the IoU a box covering the whole model input would get: a trivial reference).
    """
    cams = np.asarray(cams)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box_labels = np.asarray(box_labels).reshape(-1)
    if len(boxes) != len(box_labels):
        raise ValueError(f"{len(boxes)} boxes but {len(box_labels)} box labels")
    records, predicted = [], {}
    for box, c in zip(boxes, box_labels):
        c = int(c)
        if c < 0:
            continue
        if c >= cams.shape[-1]:
            raise ValueError(f"Box label {c} is not a class index (the CAMs have "
                             f"{cams.shape[-1]} classes)")
        if c not in predicted:
            pred, _ = cam_to_box(cams[..., c], geometry.input_size, threshold, mask)
            predicted[c] = None if pred is None else geometry.to_stored(pred)
        pred = predicted[c]
        records.append({
            "image_id": image_id, "class": labels_lib.FINDINGS[c], "class_index": c,
            "true_box": [float(v) for v in box],
            "pred_box": None if pred is None else [float(v) for v in pred],
            "iou": 0.0 if pred is None else metrics.box_iou(box, pred),
            # Reference: the trivial box covering the whole model input.
            "iou_whole_input": metrics.box_iou(box, geometry.to_stored(
                [0, 0, geometry.input_size, geometry.input_size])),
        })
    return records


def summarise(records, iou_thresholds=IOU_THRESHOLDS, threshold=DEFAULT_CAM_THRESHOLD):
    """Per-class and overall localisation scores from `localise` records.

    Returns:
      dict with "classes" (one entry per finding: n_boxes, mean_iou, and hit_rate per IoU
      threshold, None where a class has no box), "overall" (the same over all boxes),
      "whole_input_box" (the same for the trivial box covering the whole model input: what a
      model with no localisation at all would score), "n_images", "iou_thresholds", "box_rule".
    """
    def scores(ious):
        if len(ious) == 0:
            return {"n_boxes": 0, "mean_iou": None,
                    "hit_rate": {f"{t:g}": None for t in iou_thresholds}}
        ious = np.asarray(ious, dtype=float)
        return {"n_boxes": int(len(ious)), "mean_iou": float(ious.mean()),
                "hit_rate": {f"{t:g}": float(np.mean(ious >= t)) for t in iou_thresholds}}

    classes = []
    for c, name in enumerate(labels_lib.FINDINGS):
        classes.append({"name": name, **scores([r["iou"] for r in records
                                                if r["class_index"] == c])})
    return {"classes": classes, "overall": scores([r["iou"] for r in records]),
            "whole_input_box": scores([r.get("iou_whole_input", 0.0) for r in records]),
            "n_images": len({r["image_id"] for r in records}),
            "iou_thresholds": list(iou_thresholds), "cam_threshold": float(threshold),
            "box_rule": BOX_RULE.format(threshold=threshold)}


def evaluate_localisation(predictor, box_batches, threshold=DEFAULT_CAM_THRESHOLD,
                          overlay_dir=None, max_overlays=24):
    """Boxes from CAMs against ground-truth boxes over a data set.

    Args:
      predictor: an inference.Predictor (a .keras classifier or an exported SavedModel).
      box_batches: batches as made by
        `cxr_tf.data.pipeline.examples_dataset(..., with_boxes=True)`, or any
        iterable of dicts with "image" (B, H, W, 1) float in [0, 1], "boxes" (B, N, 4) [x, y, w,
        h] in stored-image pixels, "box_labels" (B, N) (-1 = padding) and "image_id" (B,).
      threshold: CAM threshold of the box rule.
      overlay_dir: when given, overlay PNGs (image, CAM, mask, true and predicted box) of the
        first `max_overlays` boxes are written there.

    Returns:
      (summary dict as from `summarise` plus "overlays" (paths), list of per-box records).
    """

    records, overlays = [], []
    for batch in box_batches:
        images = np.asarray(batch["image"], dtype=np.float32)
        out = predictor(images)
        ids = [s.decode() if isinstance(s, bytes) else str(s)
               for s in np.asarray(batch["image_id"]).tolist()]
        inputs = (predictor.model_inputs(images)
                  if overlay_dir and len(overlays) < max_overlays else None)
        for b in range(len(images)):
            geometry = CropGeometry(images.shape[1], images.shape[2], predictor.input_size,
                                    predictor.resize_size)
            mask = image_grid_mask(predictor, out, b)
            recs = localise(out[classifier_lib.CAMS][b], np.asarray(batch["boxes"])[b],
                            np.asarray(batch["box_labels"])[b], geometry, threshold, ids[b],
                            mask)
            for r in recs:
                r["probability"] = float(out[classifier_lib.PROBABILITIES][b, r["class_index"]])
                if overlay_dir and len(overlays) < max_overlays:
                    path = plots.cam_overlay(
                        inputs[b, ..., 0], cam_heatmap(
                            out[classifier_lib.CAMS][b, ..., r["class_index"]],
                            predictor.input_size, mask),
                        true_boxes=[geometry.to_input(r["true_box"])],
                        pred_box=(None if r["pred_box"] is None
                                  else geometry.to_input(r["pred_box"])),
                        mask=mask,
                        title=(f"{r['image_id']}  {r['class']}  p={r['probability']:.2f}  "
                               f"IoU={r['iou']:.2f}"),
                        path=overlay_path(overlay_dir, len(overlays), r))
                    overlays.append(path)
            records.extend(recs)
    if not records:
        log.warning("No ground-truth box in the localisation data: nothing to score")
    summary = summarise(records, threshold=threshold)
    summary["overlays"] = overlays
    return summary, records


def overlay_path(directory, index, record):
    """File name of an overlay PNG: <index>_<image id without extension>_<class>.png."""
    stem = os.path.splitext(os.path.basename(record["image_id"]))[0] or "image"
    return os.path.join(directory, f"{index:03d}_{stem}_{record['class']}.png")


def overlay_positive_findings(predictor, batches, overlay_dir, threshold=DEFAULT_CAM_THRESHOLD,
                              max_overlays=12, classes=None):
    """CAM overlays for data without boxes: one PNG per (image, true finding), with the CAM box.

    Args:
      predictor: an inference.Predictor.
      batches: `cxr_tf.data.pipeline.examples_dataset` batches (dicts with "image", "labels",
        "image_id").
      overlay_dir: output folder.
      threshold: CAM threshold of the box rule.
      max_overlays: stop after this many PNGs.
      classes: finding names to draw (default: all).

    Returns:
      list of dicts: path, image_id, class, probability, pred_box (model-input pixels).
    """

    wanted = {labels_lib.finding_index(n) for n in classes} if classes else None
    written = []
    for batch in batches:
        images = np.asarray(batch["image"], dtype=np.float32)
        labels = np.asarray(batch["labels"])
        out = predictor(images)
        inputs = predictor.model_inputs(images)
        ids = [s.decode() if isinstance(s, bytes) else str(s)
               for s in np.asarray(batch["image_id"]).tolist()]
        for b in range(len(images)):
            mask = image_grid_mask(predictor, out, b)
            for c in np.nonzero(labels[b] > 0.5)[0]:
                if wanted is not None and c not in wanted:
                    continue
                if len(written) >= max_overlays:
                    return written
                cam = out[classifier_lib.CAMS][b, ..., c]
                pred, heat = cam_to_box(cam, predictor.input_size, threshold, mask)
                record = {"image_id": ids[b], "class": labels_lib.FINDINGS[c],
                          "probability": float(out[classifier_lib.PROBABILITIES][b, c]),
                          "pred_box": None if pred is None else [float(v) for v in pred]}
                record["path"] = plots.cam_overlay(
                    inputs[b, ..., 0], heat, pred_box=pred, mask=mask,
                    title=f"{ids[b]}  {record['class']}  p={record['probability']:.2f}",
                    path=overlay_path(overlay_dir, len(written), record))
                written.append(record)
    return written


# ---- What the lung-and-heart mask keeps of the radiologists' boxes ---------------------------

# Grid-mask rules reported side by side: name -> (threshold, dilation in cells). "paper" is the
# rule of Fang et al. (average-pool to the grid, keep cells >= 0.5); the others keep more of
# the border (see layers.FeatureWeighting).
MASK_RULES = {"paper": (0.5, 0), "cut_0.25": (0.25, 0), "dilate_1": (0.5, 1)}


def grid_mask_by_rule(union, grid, threshold=0.5, dilation=0):
    """The classifier's grid mask from a union probability map, in NumPy.

    Mirrors layers.FeatureWeighting.grid_mask: `union` (S, S) pooled by averaging to
    (grid, grid) (S a multiple of grid), kept where >= threshold, then grown `dilation` times by
    a 3 x 3 neighbourhood.

    Returns:
      (grid, grid) bool.
    """
    union = np.asarray(union, np.float32)
    side = union.shape[0]
    if union.shape != (side, side) or side % grid:
        raise ValueError(f"union must be square with a side that is a multiple of the grid "
                         f"({grid}); got {union.shape}")
    f = side // grid
    pooled = union.reshape(grid, f, grid, f).mean(axis=(1, 3))
    mask = (pooled >= threshold).astype(np.uint8)
    if dilation:
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=int(dilation))
    return mask.astype(bool)


def box_share_inside(box, mask):
    """Share of a box's area inside a mask, in the mask's pixel frame.

    Args:
      box: [x, y, w, h] in pixels of `mask` (may reach outside it: the part outside counts as
        not kept, like a part of a true box cut off by the centre crop).
      mask: (S, S) bool.

    Returns:
      float in [0, 1]; NaN for an empty box.
    """
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        return float("nan")
    side_y, side_x = mask.shape
    # Pixel-area weights of the box over the pixel grid (fractional borders included).
    wx = np.clip(np.minimum(np.arange(1, side_x + 1), x + w) - np.maximum(np.arange(side_x), x),
                 0, 1)
    wy = np.clip(np.minimum(np.arange(1, side_y + 1), y + h) - np.maximum(np.arange(side_y), y),
                 0, 1)
    return float((wy[:, None] * wx[None, :] * mask).sum() / (w * h))


def mask_keeps(union_maps, boxes, box_labels, geometries, grid, rules=None, image_ids=None):
    """Share of every ground-truth box kept by the segmenter's pixel mask and by each grid rule.

    Args:
      union_maps: per image, the segmenter's union probability map (S, S) over the model input
        (S the segmenter's side, a multiple of `grid`).
      boxes, box_labels: per image, (N, 4) boxes [x, y, w, h] in stored-image pixels and (N,)
        finding indices (negative = padding).
      geometries: per image, its CropGeometry (stored image -> model input).
      grid: the classifier's feature grid side (input_size / 32).
      rules: {name: (threshold, dilation)} (default MASK_RULES).
      image_ids: optional names for the records.

    Returns:
      (summary, records): summary {"rules": {name: [threshold, dilation]}, "classes": [{"name",
      "n_boxes", "pixel", <rule>: mean share...}], "overall": {...}}, records one dict per box.
    """
    rules = dict(MASK_RULES if rules is None else rules)
    records = []
    for i, (union, bxs, lbls, geo) in enumerate(zip(union_maps, boxes, box_labels, geometries)):
        union = np.asarray(union, np.float32)
        size = geo.input_size
        pixel = cv2.resize(union, (size, size), interpolation=cv2.INTER_LINEAR) >= 0.5
        cell = size // grid
        grids = {name: np.kron(grid_mask_by_rule(union, grid, t, d),
                               np.ones((cell, cell), bool))
                 for name, (t, d) in rules.items()}
        for box, label in zip(np.asarray(bxs).reshape(-1, 4), np.asarray(lbls).reshape(-1)):
            if int(label) < 0:
                continue
            in_input = geo.to_input(box)
            record = {"image_id": image_ids[i] if image_ids is not None else str(i),
                      "class": labels_lib.FINDINGS[int(label)], "class_index": int(label),
                      "pixel": box_share_inside(in_input, pixel)}
            record.update({name: box_share_inside(in_input, g) for name, g in grids.items()})
            records.append(record)

    def means(rows):
        out = {"n_boxes": len(rows)}
        for key in ["pixel", *rules]:
            values = [r[key] for r in rows if not np.isnan(r[key])]
            out[key] = float(np.mean(values)) if values else None
        return out

    classes = [{"name": name, **means([r for r in records if r["class_index"] == c])}
               for c, name in enumerate(labels_lib.FINDINGS)]
    return ({"rules": {k: list(v) for k, v in rules.items()}, "classes": classes,
             "overall": means(records)}, records)


def union_maps_of(segmenter, model_inputs):
    """The segmenter's union probability map (max over structures) of model-input images, at the
    segmenter's own side, resized exactly as inside the classifier (layers.Resize)."""
    x = np.asarray(model_inputs, np.float32)
    if x.shape[1] != segmenter.input_size:
        x = np.asarray(Resize(segmenter.input_size)(x))
    return np.asarray(segmenter(x, training=False)).max(axis=-1)


def model_inputs(images, input_size, resize_size):
    """Stored images (B, H, W, 1) in [0, 1] -> the classifier's inputs, resized and centre-cropped
    as everywhere else (cxr_tf.data.preprocessing.resize_and_crop)."""
    return preprocessing.resize_and_crop(tf.convert_to_tensor(images, tf.float32), input_size,
                                         resize_size).numpy()


def evaluate_mask_keeps(input_size, resize_size, segmenter, box_batches, rules=None):
    """mask_keeps over a data set with boxes: the classifier's inputs (`input_size` after a
    resize to `resize_size`), the segmenter's union map at its own side, the classifier's grid
    (input_size / 32).

    Args:
      input_size, resize_size: the classifier's geometry (e.g. a Predictor's).
      segmenter: the UNetSegmenter whose mask the classifier applies.
      box_batches: `cxr_tf.data.pipeline.examples_dataset(..., with_boxes=True)` batches.
      rules: grid rules (default MASK_RULES).
    """
    unions, boxes, labels, geometries, ids = [], [], [], [], []
    for batch in box_batches:
        images = np.asarray(batch["image"], np.float32)
        unions.extend(union_maps_of(segmenter, model_inputs(images, input_size, resize_size)))
        boxes.extend(np.asarray(batch["boxes"]))
        labels.extend(np.asarray(batch["box_labels"]))
        geometries.extend([CropGeometry(images.shape[1], images.shape[2], input_size,
                                        resize_size)] * len(images))
        ids.extend(s.decode() if isinstance(s, bytes) else str(s)
                   for s in np.asarray(batch["image_id"]).tolist())
    summary, records = mask_keeps(unions, boxes, labels, geometries, input_size // 32, rules,
                                  ids)
    summary["segmenter_input_size"] = int(segmenter.input_size)
    return summary, records
