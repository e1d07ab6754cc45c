"""TFDS builder `jsrt_scr`: JSRT chest films with the SCR lung, heart and clavicle masks.

The segmenter's training data (Fang et al. 2021 train their U-Net on it). Reads from `manual_dir`:

  - JSRT images, found by name (`JPCLN001` ... `JPCLN154`, `JPCNN001` ... `JPCNN093`) anywhere
    under manual_dir (usually `All247images/`): the official raw `.IMG` files (headerless 2048 x
    2048 big-endian 16-bit words holding 12-bit values, inverted polarity: display = 4095 - value)
    or PNG redistributions (already in display polarity; 8- or 16-bit; named `JPCLN001.png` or
    `JPCLN001.IMG.png`).
  - SCR masks in the official layout `.../fold1|fold2/masks/<structure>/<name>.gif` (usually
    under `scratch/`), structure folders `left lung`, `right lung`, `heart`, `left clavicle`,
    `right clavicle` (spaces, or `_` / `-`, any case); PNG masks in the same layout are accepted,
    and so are copies that nest the folders (`JSRT/masks/masks/left_lung/JPCLN001.gif`; other
    folders beside them, such as `left_lung_png/`, are ignored).
    Masks outside a `fold1`/`fold2` folder are assigned by SCR's rule: odd-numbered images are
    fold 1, even-numbered fold 2.

Splits (SCR's two folds):
  - `test`: fold 2 (the even-numbered images, 123 films);
  - `train` / `validation`: fold 1 (124 films), with round(0.1 * n) of its images (one image per
    patient in JSRT) held out as `validation`: the first by SHA-256 of "<split_seed>:<name>"
    (split_seed = 0).

Every example: the image (one 8-bit grey channel, lungs dark) and its masks resized together to
`image_size` (area filter; a mask pixel is set when >= half of it is covered), `masks` in
`cxr_tf.labels.STRUCTURES` order (left lung, right lung, heart; 0 or 255, PNG-encoded exactly like
synthetic_cxr's, so `cxr_tf.data.pipeline.parse_segmentation` reads both), `clavicles` (left,
right; zeros and `has_clavicles` False where SCR holds none), the nodule flag and the fold.
"Left" is the patient's left (the image's right): the builder checks this by the masks' position
and counts in the build summary any files named the other way round (it then swaps them).

Images without masks, with an incomplete set (left lung, right lung and heart are required) or
that cannot be read are skipped and counted; the summary is logged and stored in
`builder.info.metadata["build_summary"]`.
"""

import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from cxr_tf import labels as labels_lib
from cxr_tf.data import features as fk
from cxr_tf.data.builders import _common, _imaging
from cxr_tf.data.builders._common import DataError

log = logging.getLogger("cxr_tf")

SPLITS = ("train", "validation", "test")
# SCR folder name (normalised: lower case, "_"/"-" -> " ") -> role.
MASK_FOLDERS = {"left lung": "left_lung", "right lung": "right_lung", "heart": "heart",
                "left clavicle": "left_clavicle", "right clavicle": "right_clavicle"}
CLAVICLES = fk.CLAVICLE_STRUCTURES
NAME = re.compile(r"^JPC(LN|NN)(\d{3})$", re.IGNORECASE)
FOLD = re.compile(r"^fold([12])$", re.IGNORECASE)
IMAGE_EXTENSIONS = (".img", ".png")
MASK_EXTENSIONS = (".gif", ".png")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
JSRT: request the 247 images from http://db.jsrt.or.jp/eng.php (All247images/*.IMG), or use a PNG
redistribution. SCR: download the masks from https://www.isi.uu.nl/Research/Databases/SCR/ and
unpack them beside the images, e.g.:
  MANUAL_DIR/All247images/JPCLN001.IMG ...
  MANUAL_DIR/scratch/fold1/masks/left lung/JPCLN001.gif ... (and right lung, heart, clavicles)
  MANUAL_DIR/scratch/fold2/masks/...
then: cxr-build-dataset --work_dir=WORK --dataset=jsrt_scr --manual_dir=MANUAL_DIR
"""


@dataclasses.dataclass(eq=False)
class JsrtScrConfig(tfds.core.BuilderConfig):
    """How JSRT+SCR is stored. Build with `JsrtScrConfig.make(...)`.

    Attributes:
      image_size: stored side in pixels (image and masks resized together).
      validation_fraction: share of fold-1 images held out as `validation`.
      split_seed: seed of that choice.
    """
    image_size: int = 256
    validation_fraction: float = 0.1
    split_seed: int = 0

    @classmethod
    def make(cls, image_size=256, validation_fraction=0.1, split_seed=0):
        """A config named after its parameters: `256px`, or e.g. `512px_val15_seed3`."""
        if int(image_size) < 32:
            raise ValueError(f"jsrt_scr image_size must be >= 32, got {image_size}")
        _common.check_fraction("jsrt_scr validation_fraction", validation_fraction)
        name = f"{int(image_size)}px"
        if float(validation_fraction) != 0.1 or int(split_seed) != 0:
            name += f"_val{round(100 * float(validation_fraction)):g}_seed{int(split_seed)}"
        return cls(name=name, image_size=int(image_size),
                   validation_fraction=float(validation_fraction), split_seed=int(split_seed),
                   description=f"JSRT + SCR masks stored at {int(image_size)} px")


def _parts(path, manual_dir):
    return os.path.relpath(path, manual_dir).split(os.sep)


def find_cases(manual_dir):
    """Finds the images and masks under manual_dir.

    Returns:
      (images, masks, folds): images {name: path}; masks {name: {role: path}}; folds
      {name: (fold, how)} with how "folder" or "parity".
    Raises:
      DataError: an image name or a (name, structure) mask found twice, or one name in both
        folds, naming the paths.
    """
    manual_dir = os.fspath(manual_dir)
    images, masks, folds = {}, {}, {}
    for paths in _common.scan(manual_dir).values():
        for path in paths:
            stem, ext = os.path.splitext(os.path.basename(path))
            if ext.lower() == ".png" and stem.lower().endswith(".img"):
                stem = stem[:-4]  # PNG redistributions named JPCLN001.IMG.png
            m = NAME.match(stem)
            if not m:
                continue
            name = stem.upper()
            parts = [p.lower() for p in _parts(path, manual_dir)]
            if "masks" in parts[:-1]:
                # The innermost `masks` folder (copies nest them: JSRT/masks/masks/heart/...).
                i = len(parts) - 2 - parts[-2::-1].index("masks")
                if ext.lower() not in MASK_EXTENSIONS or i + 2 != len(parts) - 1:
                    continue
                role = MASK_FOLDERS.get(re.sub(r"[_\-]+", " ", parts[i + 1]).strip())
                if role is None:
                    continue
                fold_match = FOLD.match(parts[i - 1]) if i > 0 else None
                fold = ((int(fold_match.group(1)), "folder") if fold_match
                        else (2 - int(m.group(2)) % 2, "parity"))
                if name in folds and folds[name][0] != fold[0]:
                    raise DataError(f"{path}: {name} has masks in fold {fold[0]} and fold "
                                    f"{folds[name][0]}; each SCR image belongs to one fold")
                folds[name] = fold
                _common.add_once(masks.setdefault(name, {}), role, path,
                                 f"{role.replace('_', ' ').capitalize()} mask of {name}")
            elif "landmarks" not in parts[:-1] and ext.lower() in IMAGE_EXTENSIONS:
                _common.add_once(images, name, path, f"Image {name}",
                                 hint="keep one (either the .IMG or a PNG redistribution)")
    return images, masks, folds


class JsrtScr(tfds.core.GeneratorBasedBuilder):
    """JSRT chest films with SCR masks (left lung, right lung, heart; clavicles)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [JsrtScrConfig.make(256), JsrtScrConfig.make(224),
                       JsrtScrConfig.make(512), JsrtScrConfig.make(1024)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self):
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                fk.IMAGE: tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                fk.MASKS: tfds.features.Image(shape=(size, size, labels_lib.NUM_STRUCTURES),
                                              encoding_format="png"),
                fk.CLAVICLES: tfds.features.Tensor(shape=(size, size, len(CLAVICLES)),
                                                   dtype=np.uint8,
                                                   encoding=tfds.features.Encoding.ZLIB),
                fk.HAS_CLAVICLES: tfds.features.Tensor(shape=(), dtype=np.bool_),
                fk.IMAGE_ID: tfds.features.Text(),
                fk.PATIENT_ID: tfds.features.Text(),
                fk.NODULE: tfds.features.Tensor(shape=(), dtype=np.bool_),
                fk.FOLD: tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            supervised_keys=(fk.IMAGE, fk.MASKS),
            homepage="https://www.isi.uu.nl/Research/Databases/SCR/",
            citation="Shiraishi et al., AJR 2000 (JSRT); van Ginneken et al., Medical Image "
                     "Analysis 2006 (SCR).",
            metadata=tfds.core.MetadataDict(
                structure_names=list(labels_lib.STRUCTURES),
                clavicle_names=list(CLAVICLES),
                validation_fraction=self.builder_config.validation_fraction,
                split_seed=self.builder_config.split_seed),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        manual_dir = os.fspath(dl_manager.manual_dir)
        images, masks, folds = find_cases(manual_dir)
        summary = _common.Summary("jsrt_scr")
        summary.note("images_found", len(images))
        summary.note("masked_images_found", len(masks))
        parity = sum(1 for f in folds.values() if f[1] == "parity")
        if parity:
            summary.note("folds_from_numbering", parity)
        required = labels_lib.STRUCTURES
        cases = {}
        for name in sorted(set(images) | set(masks)):
            have = masks.get(name, {})
            if name not in images:
                summary.skip("masks_without_image", example=f"{name}: masks in "
                             f"{os.path.dirname(os.path.dirname(next(iter(have.values()))))}")
            elif not have:
                summary.skip("image_without_masks", example=images[name])
            elif any(r not in have for r in required):
                missing = [r for r in required if r not in have]
                summary.skip("incomplete_masks", warn=True,
                             example=f"{images[name]}: no SCR mask for {', '.join(missing)}")
            else:
                clav = None
                if all(c in have for c in CLAVICLES):
                    clav = tuple(have[c] for c in CLAVICLES)
                elif any(c in have for c in CLAVICLES):
                    summary.count_note("clavicles_incomplete")
                cases[name] = (images[name], tuple(have[r] for r in required), clav)
        fold1 = [n for n in sorted(cases) if folds[n][0] == 1]
        val = _common.hash_pick(fold1, cfg.validation_fraction, cfg.split_seed)
        splits = {s: [] for s in SPLITS}
        for name in sorted(cases):
            split = "test" if folds[name][0] == 2 else ("validation" if name in val else "train")
            splits[split].append(name)
        if not cases:
            raise DataError(f"No JSRT image with SCR masks found under {manual_dir}; expected "
                            f"images named like JPCLN001.IMG and masks in "
                            f"fold1/masks/left lung/JPCLN001.gif (see the instructions)\n"
                            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
        summary.note("validation_rule", f"round({cfg.validation_fraction} * fold-1 images) first "
                                        f"by sha256('{cfg.split_seed}:<name>')")
        self._summary, self._cases, self._folds = summary, cases, folds
        splits = _common.drop_empty_splits(self, splits)
        self._pool = _imaging.Pool()
        self._pending = set(splits)
        return {split: self._generate_examples(split, names) for split, names in splits.items()}

    def _generate_examples(self, split, names):
        size = self.builder_config.image_size
        jobs = [(n, *self._cases[n], size) for n in names]
        for name, result in _common.decoded_cases(self, split, _imaging.jsrt_job, jobs, 4):
            clavicles = result["clavicles"]
            yield name, {
                fk.IMAGE: result["image"],
                fk.MASKS: result["masks"],
                fk.CLAVICLES: (clavicles if clavicles is not None
                               else np.zeros((size, size, len(CLAVICLES)), np.uint8)),
                fk.HAS_CLAVICLES: clavicles is not None,
                fk.IMAGE_ID: name,
                fk.PATIENT_ID: name,
                fk.NODULE: name.startswith("JPCLN"),
                fk.FOLD: np.int32(self._folds[name][0]),
            }


def make_builder(data_dir, image_size=256, validation_fraction=0.1, split_seed=0):
    """Returns a JsrtScr builder writing under `data_dir` for `JsrtScrConfig.make(...)`.

    Predefined configs (256, 224, 512, 1024 px with the default split) are selected by name.
    """
    config = JsrtScrConfig.make(image_size, validation_fraction, split_seed)
    return _common.builder_for(JsrtScr, config, data_dir)
