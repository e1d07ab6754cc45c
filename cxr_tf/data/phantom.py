"""Synthetic chest X-ray phantoms with exact lung and heart masks and known findings.

The phantom is a drawing, not a simulation: a body outline, two lung fields with rib and vessel
texture, a heart, mediastinum, clavicles and diaphragm, plus a visual signature for each of the 14
findings placed where that finding occurs clinically. It exists so that every part of the project
(segmenter, classifier, evaluation, export) can be trained and checked on a fresh machine with no
download, on data where the truth is known exactly.

All geometry is in normalised coordinates (x to the image right, y down, both in [0, 1]); images are
rendered at any size from the same parameters, so a case looks the same at 64 and at 512 pixels.

Everything is deterministic for a given `numpy.random.Generator` state: `make_case(seed_sequence)`
always returns the same image, masks and labels.
"""

import dataclasses

import cv2
import numpy as np

from cxr_tf import labels as labels_lib

# Prevalence of each finding (order of labels.FINDINGS). The ranking follows ChestX-ray14
# (Infiltration most common, Hernia rarest) but the range is compressed so that a test split of a
# few hundred phantoms still holds positives of every class; real prevalences run from 17.7% to
# 0.2%.
DEFAULT_PREVALENCE = (
    0.12,  # Atelectasis
    0.07,  # Cardiomegaly
    0.14,  # Effusion
    0.18,  # Infiltration
    0.08,  # Mass
    0.09,  # Nodule
    0.05,  # Pneumonia
    0.08,  # Pneumothorax
    0.07,  # Consolidation
    0.06,  # Edema
    0.06,  # Emphysema
    0.05,  # Fibrosis
    0.06,  # Pleural_Thickening
    0.04,  # Hernia
)

# Co-occurrences seen clinically: (given, implied, probability the implied finding is added).
CO_OCCURRENCE = (
    ("Cardiomegaly", "Effusion", 0.35),
    ("Edema", "Effusion", 0.4),
    ("Edema", "Cardiomegaly", 0.3),
    ("Pneumonia", "Infiltration", 0.35),
    ("Effusion", "Atelectasis", 0.2),
)

# Shortcut tags: one small square per finding in a strip below the diaphragm, well outside the
# lungs and heart, like a marker a hospital burns into images of sick patients.
# P(tag drawn | finding present) and P(no tag | finding absent), train and validation.
SHORTCUT_AGREEMENT = 0.95


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Per-case anatomical parameters, all in normalised coordinates."""
    body_ax: float
    lung_dx: float     # distance of each lung centre from the midline
    lung_cy: float
    lung_ax: float
    lung_ay: float
    dome_base: float   # y of the costophrenic angles
    dome_height: float
    heart_cx: float
    heart_cy: float
    heart_ax: float
    heart_ay: float
    heart_angle: float
    lung_intensity: float
    tilt: float        # small rotation of the whole thorax, radians


def sample_labels(rng, prevalence=DEFAULT_PREVALENCE):
    """Draws a multi-hot label vector (uint8, length 14) with the given prevalences."""
    prevalence = np.asarray(prevalence, dtype=np.float64)
    if prevalence.shape != (labels_lib.NUM_FINDINGS,):
        raise ValueError(f"prevalence must have {labels_lib.NUM_FINDINGS} entries, "
                         f"got shape {prevalence.shape}")
    if np.any(prevalence < 0) or np.any(prevalence > 1):
        raise ValueError(f"prevalence values must lie in [0, 1], got {prevalence.tolist()}")
    y = (rng.random(labels_lib.NUM_FINDINGS) < prevalence).astype(np.uint8)
    for given, implied, p in CO_OCCURRENCE:
        if y[labels_lib.finding_index(given)] and rng.random() < p:
            y[labels_lib.finding_index(implied)] = 1
    return y


def sample_anatomy(rng, y):
    """Draws anatomy for a case; findings that change anatomy (heart size, lung volume) apply
    here."""
    u = rng.uniform
    a = dict(
        body_ax=u(0.40, 0.46),
        lung_dx=u(0.155, 0.185),
        lung_cy=u(0.42, 0.47),
        lung_ax=u(0.125, 0.15),
        lung_ay=u(0.26, 0.30),
        dome_base=u(0.70, 0.75),
        dome_height=u(0.06, 0.09),
        heart_cx=u(0.53, 0.56),
        heart_cy=u(0.6, 0.63),
        heart_ax=u(0.135, 0.155),
        heart_ay=u(0.1, 0.115),
        heart_angle=u(-0.4, -0.2),
        lung_intensity=u(0.16, 0.22),
        tilt=u(-0.04, 0.04),
    )
    if y[labels_lib.finding_index("Cardiomegaly")]:
        a["heart_ax"] *= u(1.3, 1.45)
        a["heart_ay"] *= u(1.1, 1.25)
        a["heart_cx"] += 0.015
    if y[labels_lib.finding_index("Emphysema")]:
        a["lung_ay"] *= u(1.08, 1.14)
        a["lung_ax"] *= u(1.04, 1.08)
        a["dome_height"] *= 0.35  # flattened diaphragm
        a["dome_base"] += 0.03
        a["lung_intensity"] -= 0.07  # hyperlucent
    return Anatomy(**a)


class _Canvas:
    """Normalised coordinate grids and drawing helpers for one image size."""

    def __init__(self, size, tilt):
        self.size = size
        t = (np.arange(size, dtype=np.float32) + 0.5) / size
        x, y = np.meshgrid(t, t)
        # Rotate the sampling grid about the image centre so the whole thorax tilts slightly.
        self._cos, self._sin = np.cos(tilt), np.sin(tilt)
        self.x = 0.5 + self._cos * (x - 0.5) - self._sin * (y - 0.5)
        self.y = 0.5 + self._sin * (x - 0.5) + self._cos * (y - 0.5)

    def to_image(self, x, y):
        """Canvas (tilted) coordinates -> normalised image coordinates."""
        dx, dy = x - 0.5, y - 0.5
        return 0.5 + self._cos * dx + self._sin * dy, 0.5 - self._sin * dx + self._cos * dy

    def ellipse(self, cx, cy, ax, ay, angle=0.0, power=2.0):
        """Implicit (super)ellipse value: < 1 inside."""
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        u = (c * dx + s * dy) / ax
        v = (-s * dx + c * dy) / ay
        return np.abs(u) ** power + np.abs(v) ** power

    def blob(self, cx, cy, r, sharpness=4.0):
        """Soft disc in [0, 1] of radius r."""
        d = np.sqrt((self.x - cx) ** 2 + (self.y - cy) ** 2) / r
        return 1.0 / (1.0 + np.exp(np.minimum(sharpness * 4.0 * (d - 1.0), 30.0)))

    def px(self, v):
        """Normalised length -> pixels (at least 1)."""
        return max(1, int(round(v * self.size)))

    def blur(self, img, sigma_norm):
        sigma = sigma_norm * self.size
        if sigma < 0.3:
            return img
        return cv2.GaussianBlur(img, (0, 0), sigma)


def _draw_lines(canvas, segments, thickness_norm):
    """Rasterises line segments given in normalised coordinates onto a float layer."""
    layer = np.zeros((canvas.size, canvas.size), np.float32)
    scale = canvas.size * 16  # 4 fractional bits for sub-pixel placement
    for p0, p1, value in segments:
        (x0, y0), (x1, y1) = canvas.to_image(*p0), canvas.to_image(*p1)
        cv2.line(layer, (int(x0 * scale), int(y0 * scale)), (int(x1 * scale), int(y1 * scale)),
                 float(value), canvas.px(thickness_norm), cv2.LINE_AA, shift=4)
    return layer


class _Case:
    """Renders one phantom: anatomy first, then findings, then shortcut tags and noise."""

    def __init__(self, rng, size, y, tags):
        self.rng = rng
        self.size = size
        self.y = y
        self.tags = tags
        self.a = sample_anatomy(rng, y)
        self.c = _Canvas(size, self.a.tilt)

    def has(self, name):
        return bool(self.y[labels_lib.finding_index(name)])

    # ---- anatomy ---------------------------------------------------------------------------
    def _anatomy(self):
        a, c = self.a, self.c
        body = c.ellipse(0.5, 0.6, a.body_ax, 0.62, power=2.6) < 1.0
        heart = c.ellipse(a.heart_cx, a.heart_cy, a.heart_ax, a.heart_ay, a.heart_angle) < 1.0
        lungs = []
        for side in (+1, -1):  # +1: image right = patient's left lung
            cx = 0.5 + side * a.lung_dx
            # The lateral lung edge bulges; power 2.4 squares the shape off towards a lung field.
            shape = c.ellipse(cx, a.lung_cy, a.lung_ax, a.lung_ay, power=2.4) < 1.0
            dome = a.dome_base - a.dome_height * (1.0 - ((c.x - cx) / (a.lung_ax * 1.1)) ** 2)
            if side == -1:
                dome = dome - 0.02  # the right hemidiaphragm sits higher (liver below it)
            lungs.append(shape & (c.y < dome) & ~heart)
        self.dome_y = a.dome_base
        return body, lungs[0], lungs[1], heart

    def _ribs(self, thorax):
        c, rng = self.c, self.rng
        layer = np.zeros((c.size, c.size), np.float32)
        thickness = 0.012 + rng.uniform(0, 0.004)
        for side in (+1, -1):
            x0 = 0.5 + side * 0.03
            for k in range(9):
                y0 = 0.17 + k * 0.062 + rng.uniform(-0.006, 0.006)
                # Posterior ribs arc down and outward from the spine.
                curve = y0 + 0.9 * (c.x - x0) ** 2 * 4.0 * (1 + 0.1 * k) - 0.02
                band = np.abs(c.y - curve) < thickness
                lateral = (((c.x - x0) * side > 0) & (c.y < self.a.dome_base)
                           & (np.abs(c.x - 0.5) < self.a.lung_dx + 1.2 * self.a.lung_ax))
                layer += (band & lateral).astype(np.float32)
        return c.blur(np.clip(layer, 0, 1), 0.003) * thorax

    def _vessels(self, lung, side, density=1.0):
        """Branching lung markings radiating from the hilum, fading towards the periphery."""
        c, rng, a = self.c, self.rng, self.a
        hx = 0.5 + side * 0.07
        hy = a.lung_cy + 0.03
        segments = []
        for _ in range(int(12 * density)):
            angle = rng.uniform(-1.2, 1.2) + (0 if side > 0 else np.pi)
            length = rng.uniform(0.08, 0.2)
            x1, y1 = hx + np.cos(angle) * length, hy + np.sin(angle) * length * 1.2
            segments.append(((hx, hy), (x1, y1), 1.0))
            for _ in range(2):
                b = angle + rng.uniform(-0.6, 0.6)
                l2 = rng.uniform(0.03, 0.07)
                segments.append(((x1, y1), (x1 + np.cos(b) * l2, y1 + np.sin(b) * l2), 0.7))
        layer = _draw_lines(c, segments, 0.005)
        return c.blur(layer, 0.002) * lung

    # ---- findings --------------------------------------------------------------------------
    def _random_point(self, region, y_range=(0.0, 1.0), x_pref=None):
        """A point inside `region` (boolean mask) within a vertical band of the region's extent."""
        ys, xs = np.nonzero(region)
        if len(ys) == 0:
            return 0.5, 0.5
        y0, y1 = ys.min(), ys.max()
        lo, hi = y0 + y_range[0] * (y1 - y0), y0 + y_range[1] * (y1 - y0)
        keep = (ys >= lo) & (ys <= hi)
        if x_pref is not None:
            keep &= x_pref(xs)
        if not keep.any():
            keep = np.ones_like(ys, bool)
        i = self.rng.choice(np.nonzero(keep)[0])
        return float(self.c.x[ys[i], xs[i]]), float(self.c.y[ys[i], xs[i]])

    def render(self):
        c, rng, a = self.c, self.rng, self.a
        body, left, right, heart = self._anatomy()
        lungs = left | right
        thorax = body & (c.y < a.dome_base + 0.02) & (c.y > 0.1)
        side_lungs = {+1: left, -1: right}

        img = np.full((c.size, c.size), 0.04, np.float32)
        img[body] = 0.46
        abdomen = body & (c.y > a.dome_base - 0.05) & ~lungs & ~heart
        img[abdomen] = 0.52
        spine = body & (np.abs(c.x - 0.5) < 0.045)
        img[spine] = 0.62
        lung_f = c.blur(lungs.astype(np.float32), 0.004)
        img = img * (1 - lung_f) + a.lung_intensity * lung_f
        heart_f = c.blur(heart.astype(np.float32), 0.003)
        img = img * (1 - heart_f) + 0.6 * heart_f
        img += 0.09 * self._ribs(thorax)
        # Clavicles: two bright bars across the apices.
        for side in (+1, -1):
            clav = (np.abs(c.y - (0.16 + 0.12 * np.abs(c.x - 0.5))) < 0.012) & \
                   ((c.x - 0.5) * side > 0.03) & ((c.x - 0.5) * side < 0.32)
            img += 0.14 * c.blur(clav.astype(np.float32), 0.003)

        vessel_density = 0.35 if self.has("Emphysema") else 1.0
        vessels = {s: self._vessels(side_lungs[s], s, vessel_density) for s in (+1, -1)}
        add = np.zeros_like(img)

        if self.has("Pneumothorax"):
            s = rng.choice([+1, -1])
            lung = side_lungs[s]
            # Apical-lateral crescent: between the chest wall and a collapsed-lung edge, no
            # markings (air only), darker, with a thin bright visceral pleural line.
            cx = 0.5 + s * a.lung_dx
            inner = c.ellipse(cx - s * 0.03, a.lung_cy + 0.03, a.lung_ax * 0.8, a.lung_ay * 0.82,
                              power=2.4)
            crescent = lung & (inner > 1.0)
            vessels[s] = vessels[s] * ~crescent
            add -= 0.1 * c.blur(crescent.astype(np.float32), 0.002)
            line = lung & (np.abs(inner - 1.0) < 0.06)
            add += 0.22 * line

        img += 0.11 * (vessels[+1] + vessels[-1])

        if self.has("Atelectasis"):
            s = rng.choice([+1, -1])
            x, y = self._random_point(side_lungs[s], (0.65, 0.85))
            ang = rng.uniform(-0.35, 0.35)
            dx, dy = 0.09 * np.cos(ang), 0.09 * np.sin(ang)
            band = _draw_lines(c, [((x - dx, y - dy), (x + dx, y + dy), 1.0)], 0.018)
            add += 0.26 * c.blur(band, 0.004) * side_lungs[s]

        if self.has("Effusion"):
            s = rng.choice([+1, -1]) if rng.random() < 0.7 else 0
            for side in ((+1, -1) if s == 0 else (s,)):
                lung = side_lungs[side]
                cx = 0.5 + side * a.lung_dx
                level = a.dome_base - a.dome_height - rng.uniform(0.03, 0.1)
                # Meniscus: the fluid climbs laterally along the chest wall.
                menis = level - 0.1 * np.clip((c.x - cx) * side / a.lung_ax + 0.3, 0, None) ** 2
                fluid = lung & (c.y > menis)
                add += 0.34 * c.blur(fluid.astype(np.float32), 0.006)

        if self.has("Infiltration"):
            sides = (+1, -1) if rng.random() < 0.5 else (rng.choice([+1, -1]),)
            for s in sides:
                patch = np.zeros_like(img)
                for _ in range(14):
                    x, y = self._random_point(side_lungs[s], (0.2, 0.95))
                    patch += c.blob(x, y, rng.uniform(0.012, 0.025), sharpness=1.5)
                add += 0.16 * c.blur(np.clip(patch, 0, 1), 0.004) * side_lungs[s]

        if self.has("Mass"):
            x, y = self._random_point(lungs, (0.1, 0.85))
            r = rng.uniform(0.045, 0.065)
            mass = c.blob(x, y, r, sharpness=3.0)
            for _ in range(3):  # lobulated outline
                ang = rng.uniform(0, 2 * np.pi)
                mass = np.maximum(mass, c.blob(x + 0.5 * r * np.cos(ang), y + 0.5 * r * np.sin(ang),
                                               0.6 * r, sharpness=3.0))
            add += 0.38 * mass

        if self.has("Nodule"):
            for _ in range(1 if rng.random() < 0.8 else 2):
                x, y = self._random_point(lungs, (0.1, 0.9))
                add += 0.42 * c.blob(x, y, rng.uniform(0.014, 0.02), sharpness=3.0)

        if self.has("Pneumonia"):
            s = rng.choice([+1, -1])
            x, y = self._random_point(side_lungs[s], (0.45, 0.85))
            cloud = np.clip(c.blob(x, y, rng.uniform(0.07, 0.09), sharpness=0.7) * 1.3, 0, 1)
            # Air bronchograms: dark branching tubes inside the opacity.
            br = _draw_lines(c, [((x, y - 0.05), (x + rng.uniform(-0.04, 0.04), y + 0.05), 1.0),
                                 ((x, y), (x + 0.05 * s, y + 0.03), 1.0)], 0.006)
            add += (0.3 * cloud - 0.12 * c.blur(br, 0.002) * cloud) * side_lungs[s]

        if self.has("Consolidation"):
            s = rng.choice([+1, -1])
            x, y = self._random_point(side_lungs[s], (0.3, 0.7))
            w, h = rng.uniform(0.05, 0.07), rng.uniform(0.04, 0.06)
            block = (np.abs(c.x - x) < w) & (np.abs(c.y - y) < h) & side_lungs[s]
            add += 0.36 * c.blur(block.astype(np.float32), 0.0015)

        if self.has("Edema"):
            for s in (+1, -1):
                hx = 0.5 + s * 0.09
                haze = c.blob(hx, a.lung_cy + 0.05, 0.12, sharpness=0.5)
                add += 0.2 * haze * side_lungs[s]
                # Kerley B lines: short horizontal lines at the lateral lung bases.
                segs = []
                for k in range(4):
                    yy = a.dome_base - a.dome_height * 0.3 - 0.05 - 0.018 * k
                    xe = 0.5 + s * (a.lung_dx + a.lung_ax * 0.85)
                    segs.append(((xe, yy), (xe - s * 0.04, yy), 1.0))
                add += 0.22 * _draw_lines(c, segs, 0.004) * side_lungs[s]

        if self.has("Fibrosis"):
            net = np.zeros_like(img)
            segs = []
            for _ in range(40):
                x, y = self._random_point(lungs, (0.55, 1.0))
                ang = rng.uniform(0, np.pi)
                segs.append(((x, y), (x + 0.03 * np.cos(ang), y + 0.03 * np.sin(ang)), 1.0))
            net += _draw_lines(c, segs, 0.004)
            add += 0.24 * np.clip(net, 0, 1) * lungs

        if self.has("Pleural_Thickening"):
            s = rng.choice([+1, -1])
            lung = side_lungs[s]
            cx = 0.5 + s * a.lung_dx
            val = c.ellipse(cx, a.lung_cy, a.lung_ax, a.lung_ay, power=2.4)
            rim = lung & (val > 0.6) & (c.y < a.lung_cy + 0.12) & ((c.x - cx) * s > 0)
            add += 0.34 * c.blur(rim.astype(np.float32), 0.002)

        if self.has("Hernia"):
            x = a.heart_cx - 0.02 + rng.uniform(-0.02, 0.02)
            y = a.heart_cy + a.heart_ay * 0.35
            r = rng.uniform(0.04, 0.05)
            bubble = c.blob(x, y, r, sharpness=4.0)
            rim = np.clip(c.blob(x, y, r * 1.25, sharpness=4.0) - bubble, 0, 1)
            level = bubble * (c.y > y + 0.15 * r)  # air-fluid level: fluid fills the bottom
            add += -0.32 * bubble + 0.28 * level + 0.15 * rim

        img += add

        if self.tags is not None:
            self._draw_tags(img, body, lungs | heart)

        img = c.blur(img, 0.0025)
        # Exposure and contrast differ from film to film; findings must be learned despite this.
        img = rng.uniform(0.85, 1.1) * (img - 0.4) + 0.4 + rng.uniform(-0.04, 0.04)
        img += rng.normal(0.0, 0.018, img.shape).astype(np.float32)
        image = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
        masks = np.stack([left, right, heart], axis=-1).astype(np.uint8)
        return image, masks

    def _draw_tags(self, img, body, lung_heart):
        """Draws the shortcut strip: tag k is a bright square in the lower abdomen."""
        c = self.c
        for k, on in enumerate(self.tags):
            if not on:
                continue
            row, col = divmod(k, 7)
            x = 0.2 + col * 0.1
            y = 0.89 + row * 0.06
            sq = (np.abs(c.x - x) < 0.018) & (np.abs(c.y - y) < 0.018) & ~lung_heart
            img[sq] = 0.95


def make_case(seed_sequence, size, prevalence=DEFAULT_PREVALENCE, shortcut=None):
    """Renders one phantom case.

    Args:
      seed_sequence: anything `numpy.random.default_rng` accepts (an int, a list of ints, a
        SeedSequence). The same value always gives the same case.
      size: output height and width in pixels (>= 32).
      prevalence: 14 per-finding probabilities in label-contract order.
      shortcut: None for clean data; "train" to draw tags that agree with the labels with
        probability SHORTCUT_AGREEMENT; "test" to draw tags independently of the labels (at the
        same per-class rates), so that a model that learned the tags is exposed.

    Returns:
      (image, masks, labels): image uint8 [size, size]; masks uint8 [size, size, 3] in
      labels.STRUCTURES order with values 0/1; labels uint8 [14] multi-hot.
    """
    if int(size) < 32:
        raise ValueError(f"Phantom size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng(seed_sequence)
    y = sample_labels(rng, prevalence)
    tags = None
    if shortcut == "train":
        flip = rng.random(labels_lib.NUM_FINDINGS) > SHORTCUT_AGREEMENT
        tags = np.where(flip, 1 - y, y).astype(bool)
    elif shortcut == "test":
        tags = sample_labels(rng, prevalence).astype(bool)
    elif shortcut is not None:
        raise ValueError(f"shortcut must be None, 'train' or 'test', got {shortcut!r}")
    image, masks = _Case(rng, int(size), y, tags).render()
    return image, masks, y
