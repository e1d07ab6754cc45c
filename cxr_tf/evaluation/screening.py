"""A segmenter on films that have no masks (ChestX-ray14): what it keeps, and where it fails.

Without ground-truth outlines, three things still say whether the inline segmenter serves the
classifier on a data set:
  - mask coverage per film, as the classifier computes it (the union of the structures on the
    segmenter's input, average-pooled to the feature grid, cells >= the threshold kept): films
    below the classifier's minimum coverage are not weighted at all (the classifier falls back
    to all features), so their share should be small;
  - the share of radiologists' boxes the mask keeps (localization.mask_keeps), where the data
    set has boxes;
  - a contact sheet of films with the outlines drawn, to look at: the lowest-coverage films and
    an even spread of the others.
"""

import cv2
import numpy as np
import tensorflow as tf

from cxr_tf import files
from cxr_tf.data import datasets, preprocessing
from cxr_tf.data import features as fk
from cxr_tf.evaluation import localization
from cxr_tf.models.layers import Resize

# Outline colours (BGR) of the contact sheet: left lung, right lung, heart; kept grid cells.
COLOURS = ((60, 60, 255), (60, 220, 60), (255, 120, 40))
GRID_COLOUR = (0, 215, 255)


def _batches(builder, split, input_size, resize_size, batch_size=32):
    """(model inputs, ids, views) batches of a split, preprocessed as the classifier sees them."""
    has_view = fk.VIEW_POSITION in builder.info.features

    def parse(ex):
        image = preprocessing.resize_and_crop(preprocessing.to_float(ex[fk.IMAGE]), input_size,
                                              resize_size)
        view = ex[fk.VIEW_POSITION] if has_view else tf.constant("")
        return image, ex[fk.IMAGE_ID], view

    ds = datasets.load_split(builder, split).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _grid_side(input_size):
    return int(input_size) // 32


def screen_segmenter(segmenter, builder, split, input_size=224, resize_size=256,
                     min_coverage=0.05, threshold=0.5, dilation=0):
    """Mask coverage of every film of a split, as the classifier would compute it.

    Args:
      segmenter: a UNetSegmenter.
      builder, split: the data set (e.g. chestxray14) and split.
      input_size, resize_size: the classifier's geometry (resize, then centre crop).
      min_coverage: the classifier's low-coverage cut (ClassifierConfig.min_mask_coverage).
      threshold, dilation: the grid rule (see layers.FeatureWeighting).

    Returns:
      (summary, records): summary with n_images, coverage statistics, the number and share of
      films below `min_coverage` (per view position where the data set records it) and the
      lowest films; records one dict per film (image_id, view, coverage, pixel_coverage).
    """
    grid = _grid_side(input_size)
    records = []
    for images, ids, views in _batches(builder, split, input_size, resize_size):
        unions = localization.union_maps_of(segmenter, images.numpy())
        for union, image_id, view in zip(unions, ids.numpy(), views.numpy()):
            cells = localization.grid_mask_by_rule(union, grid, threshold, dilation)
            records.append({"image_id": image_id.decode(), "view": view.decode(),
                            "coverage": float(cells.mean()),
                            "pixel_coverage": float((union >= 0.5).mean())})
    if not records:
        raise ValueError(f"{builder.info.full_name} {split} is empty: nothing to screen")
    coverage = np.array([r["coverage"] for r in records])
    low = sorted((r for r in records if r["coverage"] < min_coverage),
                 key=lambda r: r["coverage"])
    by_view = {}
    for view in sorted({r["view"] for r in records if r["view"]}):
        rows = [r for r in records if r["view"] == view]
        below = sum(r["coverage"] < min_coverage for r in rows)
        by_view[view] = {"n_images": len(rows), "below_min": below,
                         "share_below_min": below / len(rows)}
    summary = {
        "dataset": builder.info.full_name, "split": split, "n_images": len(records),
        "rule": {"threshold": threshold, "dilation": dilation, "grid": grid,
                 "input_size": int(input_size), "resize_size": int(resize_size)},
        "min_coverage": float(min_coverage),
        "coverage": {"mean": float(coverage.mean()), "min": float(coverage.min()),
                     "p01": float(np.quantile(coverage, 0.01)),
                     "p05": float(np.quantile(coverage, 0.05)),
                     "median": float(np.median(coverage))},
        "below_min": len(low), "share_below_min": len(low) / len(records),
        "by_view": by_view,
        "lowest": sorted(records, key=lambda r: r["coverage"])[:10],
    }
    return summary, records


def choose_for_sheet(records, n=32, lowest=8):
    """Image ids for a contact sheet: the `lowest` lowest-coverage films, then an even spread of
    the others in id order (up to `n` in all)."""
    by_coverage = sorted(records, key=lambda r: (r["coverage"], r["image_id"]))
    chosen = [r["image_id"] for r in by_coverage[:lowest]]
    rest = sorted(r["image_id"] for r in records if r["image_id"] not in chosen)
    k = max(0, min(n - len(chosen), len(rest)))
    if k:
        chosen += [rest[int(i)] for i in np.linspace(0, len(rest) - 1, k)]
    return chosen


def contact_sheet(segmenter, builder, split, image_ids, path, input_size=224, resize_size=256,
                  threshold=0.5, dilation=0, columns=8):
    """Writes a PNG contact sheet: each film as the classifier sees it, with the segmenter's
    outlines (left lung red, right lung green, heart blue, at 0.5) and the kept grid cells
    (yellow), captioned with its id, view and coverage. Returns the path."""
    wanted = list(image_ids)
    grid = _grid_side(input_size)
    cell = input_size // grid
    tiles = {}
    for images, ids, views in _batches(builder, split, input_size, resize_size):
        names = [i.decode() for i in ids.numpy()]
        keep = [k for k, name in enumerate(names) if name in wanted]
        if not keep:
            continue
        x = images.numpy()[keep]
        probs = np.asarray(segmenter(_to_segmenter(segmenter, x), training=False))
        for row, k in enumerate(keep):
            tile = cv2.cvtColor((x[row, ..., 0] * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            for s, colour in enumerate(COLOURS):
                _outline(tile, probs[row, ..., s], colour)
            cells = localization.grid_mask_by_rule(probs[row].max(axis=-1), grid, threshold,
                                                   dilation)
            kept = np.kron(cells, np.ones((cell, cell), np.uint8)).astype(np.uint8)
            contours, _ = cv2.findContours(kept, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(tile, contours, -1, GRID_COLOUR, 1)
            caption = f"{names[k][:12]} {views.numpy()[k].decode()} {cells.mean():.2f}"
            cv2.putText(tile, caption, (3, input_size - 5), cv2.FONT_HERSHEY_SIMPLEX,
                        0.38, (255, 255, 255), 1, cv2.LINE_AA)
            tiles[names[k]] = tile
    ordered = [tiles[i] for i in wanted if i in tiles]
    if not ordered:
        raise ValueError(f"None of the {len(wanted)} films chosen for the contact sheet is in "
                         f"{builder.info.full_name} {split}")
    return _write_sheet(ordered, columns, path)


def _outline(canvas, probs, colour):
    """Draws the outline of `probs` >= 0.5, resized to the canvas, onto it."""
    side = canvas.shape[0]
    up = cv2.resize(np.asarray(probs, np.float32), (side, side),
                    interpolation=cv2.INTER_LINEAR) >= 0.5
    contours, _ = cv2.findContours(up.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, 1)


def _write_sheet(tiles, columns, path):
    """Lays equal tiles out `columns` to a row (the last padded black), writes the PNG."""
    blank = np.zeros_like(tiles[0])
    rows = [np.hstack(tiles[r:r + columns] + [blank] * (columns - len(tiles[r:r + columns])))
            for r in range(0, len(tiles), columns)]
    ok, buf = cv2.imencode(".png", np.vstack(rows))
    if not ok:
        raise RuntimeError("PNG encoding of the contact sheet failed")
    files.write_bytes_atomic(path, buf.tobytes())
    return path


TRUTH_COLOUR = (255, 255, 255)


def worst_films_sheet(segmenter, seg_ds, films, path, columns=8, tile=224):
    """Writes a PNG contact sheet of films with masks (the worst by Dice, say): each film at the
    segmenter's input, upscaled to `tile` px, with the reference outlines (white: both lungs,
    and the heart where the data set draws it) and the segmenter's (left lung red, right lung
    green, heart blue, at 0.5), captioned with its id and Dice. Returns the path.

    Args:
      segmenter: a UNetSegmenter.
      seg_ds: batches of (image, (masks, known), image_id) from
        cxr_tf.data.pipeline.segmentation_dataset (targets in labels.SEGMENTATION_TARGETS
        order: left lung, right lung, heart, both lungs).
      films: [{"image_id", "dice"}] in sheet order (evaluate_segmenter's "worst" lists).
      path: the PNG to write.
    """
    wanted = {f["image_id"]: f["dice"] for f in films}
    tiles = {}
    for images, (masks, known), ids in seg_ds:
        names = [i.decode() for i in ids.numpy()]
        keep = [k for k, name in enumerate(names) if name in wanted]
        if not keep:
            continue
        x = images.numpy()[keep]
        probs = np.asarray(segmenter(x, training=False))
        truth, labelled = masks.numpy()[keep], known.numpy()[keep]
        for row, k in enumerate(keep):
            grey = cv2.resize(x[row, ..., 0], (tile, tile), interpolation=cv2.INTER_LINEAR)
            canvas = cv2.cvtColor((np.clip(grey, 0, 1) * 255).astype(np.uint8),
                                  cv2.COLOR_GRAY2BGR)
            for target in (3, 2):  # both lungs, heart: the reference where the film labels it
                if labelled[row, target] > 0.5:
                    _outline(canvas, truth[row, ..., target] >= 0.5, TRUTH_COLOUR)
            for s, colour in enumerate(COLOURS):
                _outline(canvas, probs[row, ..., s] >= 0.5, colour)
            cv2.rectangle(canvas, (0, tile - 16), (tile - 1, tile - 1), (0, 0, 0), -1)
            cv2.putText(canvas, f"{names[k][:16]} {wanted[names[k]]:.3f}", (3, tile - 5),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
            tiles[names[k]] = canvas
    ordered = [tiles[f["image_id"]] for f in films if f["image_id"] in tiles]
    if not ordered:
        raise ValueError(f"None of the {len(films)} films asked for is in the data set given")
    return _write_sheet(ordered, columns, path)


def _to_segmenter(segmenter, model_inputs):
    if model_inputs.shape[1] == segmenter.input_size:
        return model_inputs
    return np.asarray(Resize(segmenter.input_size)(model_inputs))


def coverage_markdown(summary):
    """The screening summary as Markdown."""
    c = summary["coverage"]
    out = [f"{summary['n_images']} films of {summary['dataset']} `{summary['split']}`; grid "
           f"rule >= {summary['rule']['threshold']:g} (dilation {summary['rule']['dilation']}) "
           f"on the {summary['rule']['grid']} x {summary['rule']['grid']} grid of a "
           f"{summary['rule']['input_size']} px input.", "",
           f"- mask coverage: mean {c['mean']:.3f}, median {c['median']:.3f}, 1st percentile "
           f"{c['p01']:.3f}, 5th {c['p05']:.3f}, min {c['min']:.3f}",
           f"- below the low-coverage cut ({summary['min_coverage']:g}): {summary['below_min']} "
           f"films ({100 * summary['share_below_min']:.2f}%)"]
    for view, v in summary["by_view"].items():
        out.append(f"  - {view}: {v['below_min']} of {v['n_images']} "
                   f"({100 * v['share_below_min']:.2f}%)")
    out.append("- lowest: " + ", ".join(f"{r['image_id']} ({r['view'] or '?'}) "
                                        f"{r['coverage']:.3f}" for r in summary["lowest"][:5]))
    return "\n".join(out)
