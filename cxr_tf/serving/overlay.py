"""Heat-map overlays: the class activation maps of the top findings drawn on the input image.

The CAMs live on the model's feature grid, which covers the centre crop of the image resized to
`resize_size` (the export's geometry). `cam_on_image` maps a CAM back onto the original image
frame (outside the crop there is no CAM: it stays uncoloured), so the overlay lines up with the
file the user gave, whatever its size and aspect ratio.
"""

import io

import cv2
import numpy as np

MAX_SIDE = 768  # overlays are drawn at most this many pixels high or wide


def cam_on_image(cam, image_shape, input_size, resize_size):
    """Maps one (h, w) CAM onto an (H, W) image.

    Returns (heat, valid): heat (H, W) float32 in [0, 1] (the CAM min-max scaled over the
    crop), valid (H, W) bool, False outside the centre crop the model saw.
    """
    height, width = image_shape
    cam = np.asarray(cam, np.float32)
    lo, hi = float(cam.min()), float(cam.max())
    cam = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    square = np.zeros((resize_size, resize_size), np.float32)
    valid = np.zeros((resize_size, resize_size), np.float32)
    offset = (resize_size - input_size) // 2
    crop = slice(offset, offset + input_size)
    square[crop, crop] = cv2.resize(cam, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
    valid[crop, crop] = 1.0
    heat = cv2.resize(square, (width, height), interpolation=cv2.INTER_LINEAR)
    valid = cv2.resize(valid, (width, height), interpolation=cv2.INTER_NEAREST) > 0.5
    return np.clip(heat, 0.0, 1.0), valid


def mask_on_image(mask, image_shape, input_size, resize_size):
    """Maps the (h, w) grid mask the features were weighted with onto an (H, W) image frame:
    (H, W) float32, 1 inside the kept cells, 0 elsewhere and outside the centre crop."""
    height, width = image_shape
    mask = np.asarray(mask, np.float32).reshape(np.shape(mask)[:2])
    square = np.zeros((resize_size, resize_size), np.float32)
    offset = (resize_size - input_size) // 2
    crop = slice(offset, offset + input_size)
    square[crop, crop] = cv2.resize(mask, (input_size, input_size),
                                    interpolation=cv2.INTER_NEAREST)
    return cv2.resize(square, (width, height), interpolation=cv2.INTER_NEAREST)


def render_overlay(image, cams, probabilities, label_names, positive, input_size, resize_size,
                   top_k=3, colormap="jet", alpha=0.45, title=None, mask=None):
    """PNG bytes of a figure: the image, then one panel per top finding with its CAM on top.

    Args:
      image: (H, W) or (H, W, 1) float in [0, 1].
      cams: (h, w, C) class activation maps; probabilities: (C,); label_names: C names;
      positive: names of the positive findings (marked in the panel titles).
      input_size, resize_size: the export's geometry (metadata).
      top_k: number of findings shown, by probability.
      colormap: a matplotlib colour map name.
      mask: optional (h, w[, 1]) grid mask the features were weighted with (the export's
        `grid_mask` output); its outline is drawn in cyan on every panel.
    """
    from matplotlib import colormaps  # here, not at the top: matplotlib is slow to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if colormap not in colormaps:
        raise ValueError(f"Unknown colour map {colormap!r}; expected a matplotlib colour map "
                         f"such as jet, inferno, viridis")
    image = np.asarray(image, np.float32).reshape(np.shape(image)[:2])
    scale = min(1.0, MAX_SIDE / max(image.shape))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                   max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    order = np.argsort(-np.asarray(probabilities))[:max(1, int(top_k))]
    cmap = colormaps[colormap]
    panels = len(order) + 1
    aspect = image.shape[1] / image.shape[0]
    fig = Figure(figsize=(3.2 * aspect * panels, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(title or "input", fontsize=9)
    outline = None
    if mask is not None:
        outline = mask_on_image(mask, image.shape, input_size, resize_size)
        if not 0 < outline.sum() < outline.size:
            outline = None  # the whole frame or nothing: no outline to draw
    for ax, k in zip(axes[1:], order):
        heat, valid = cam_on_image(cams[..., k], image.shape, input_size, resize_size)
        rgba = cmap(heat)
        rgba[..., 3] = alpha * valid
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.imshow(rgba)
        if outline is not None:
            ax.contour(outline, levels=[0.5], colors="cyan", linewidths=1.0)
        mark = " (positive)" if label_names[k] in positive else ""
        ax.set_title(f"{label_names[k]} {float(probabilities[k]):.2f}{mark}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
