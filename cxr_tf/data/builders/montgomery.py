"""TFDS builder `montgomery`: the NLM Montgomery County TB set, radiographs with LUNG masks only.

Reads from `manual_dir` the folders as unpacked from the NLM download:
  - `CXR_png/MCUCXR_0001_0.png` ...: radiographs (names end in `_1` for tuberculosis, `_0` for
    normal);
  - `ManualMask/leftMask/<name>.png`, `ManualMask/rightMask/<name>.png`: lung outlines;
  - `ClinicalReadings/<name>.txt` (optional): `Patient's Sex: M`, `Patient's Age: 044Y`.

The heart is NOT annotated in this data set, and the records say so by construction: they have no
`masks` feature (which always means left lung, right lung AND heart, as in `jsrt_scr` and
`synthetic_cxr`) but a `lung_masks` feature with two channels (left lung, right lung; 0 or 255).
`cxr_tf.data.pipeline.parse_segmentation` therefore refuses these records with a message instead of
treating "no heart outline" as "no heart"; use `pipeline.parse_lung_segmentation` (lungs from any
of the three data sets) to train or score lungs. `builder.info.metadata` records
`structure_names = ["left_lung", "right_lung"]` and `heart_annotated = False`.

"Left" is the patient's left (the image's right). Which mask folder holds which lung is decided
by the masks' positions, whatever the folders are called; the build summary counts the images
whose folder names followed the image side instead (and were swapped).

Montgomery has no official split. Images (one per patient) are split by SHA-256 of
"<split_seed>:<name>" (split_seed = 0): the first round(0.2 * n) are `test`, the next
round(0.1 * n) `validation`, the rest `train`. Images and masks are resized together to
`image_size` x `image_size` (no padding: the non-square films are stretched, as NIH did for
ChestX-ray14). Unreadable images and images without both masks are skipped and counted; the
summary is logged and stored in `builder.info.metadata["build_summary"]`.
"""

import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from cxr_tf.data import features as fk
from cxr_tf.data.builders import _common
from cxr_tf.data.builders import _imaging
from cxr_tf.data.builders._common import DataError

log = logging.getLogger("cxr_tf")

SPLITS = ("train", "validation", "test")
MASK_FOLDERS = ("leftmask", "rightmask")
NAME = re.compile(r"^(?P<patient>.+)_(?P<tb>[01])$")
_SEX = re.compile(r"Patient'?s\s+Sex\s*:\s*([MFmf])")
_AGE = re.compile(r"Patient'?s\s+Age\s*:\s*0*(\d+)\s*([YyMmDd]?)")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Montgomery County set (NLM, https://lhncbc.nlm.nih.gov/LHC-downloads/) and unpack it:
  MANUAL_DIR/CXR_png/MCUCXR_0001_0.png ...
  MANUAL_DIR/ManualMask/leftMask/MCUCXR_0001_0.png, .../rightMask/MCUCXR_0001_0.png
  MANUAL_DIR/ClinicalReadings/MCUCXR_0001_0.txt (optional)
then: cxr-build-dataset --work_dir=WORK --dataset=montgomery --manual_dir=MANUAL_DIR
"""


@dataclasses.dataclass(eq=False)
class MontgomeryConfig(tfds.core.BuilderConfig):
    """How Montgomery is stored. Build with `MontgomeryConfig.make(...)`.

    Attributes:
      image_size: stored side in pixels (image and masks resized together).
      validation_fraction, test_fraction: shares of the images in `validation` and `test`.
      split_seed: seed of the split.
    """
    image_size: int = 256
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0

    @classmethod
    def make(cls, image_size=256, validation_fraction=0.1, test_fraction=0.2, split_seed=0):
        """A config named after its parameters: `256px`, or e.g. `512px_val10_test30_seed1`."""
        if int(image_size) < 32:
            raise ValueError(f"montgomery image_size must be >= 32, got {image_size}")
        _common.check_fraction("montgomery validation_fraction", validation_fraction)
        _common.check_fraction("montgomery test_fraction", test_fraction)
        if validation_fraction + test_fraction >= 1:
            raise ValueError(f"montgomery validation_fraction + test_fraction must be < 1, got "
                             f"{validation_fraction} + {test_fraction}")
        name = f"{int(image_size)}px"
        if (float(validation_fraction), float(test_fraction), int(split_seed)) != (0.1, 0.2, 0):
            name += (f"_val{round(100 * float(validation_fraction)):g}"
                     f"_test{round(100 * float(test_fraction)):g}_seed{int(split_seed)}")
        return cls(name=name, image_size=int(image_size),
                   validation_fraction=float(validation_fraction),
                   test_fraction=float(test_fraction), split_seed=int(split_seed),
                   description=f"Montgomery stored at {int(image_size)} px")


def read_clinical(path):
    """(sex, age in years) from a ClinicalReadings file; ("", -1) for what it does not state."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "", -1
    sex = _SEX.search(text)
    age = _AGE.search(text)
    years = -1
    if age:
        years = int(age.group(1)) // {"": 1, "Y": 1, "M": 12, "D": 365}[age.group(2).upper()]
    return (sex.group(1).upper() if sex else ""), years


def find_cases(manual_dir):
    """Finds images, masks and clinical readings under manual_dir.

    Returns:
      (images, masks, readings): {stem: path}, {stem: {"leftmask"|"rightmask": path}},
      {stem: path}.
    Raises:
      DataError: the same image or mask name in two places.
    """
    manual_dir = os.fspath(manual_dir)
    images, masks, readings = {}, {}, {}
    for paths in _common.scan(manual_dir).values():
        for path in paths:
            stem, ext = os.path.splitext(os.path.basename(path))
            parent = os.path.basename(os.path.dirname(path)).lower()
            ext = ext.lower()
            if ext == ".txt" and parent == "clinicalreadings":
                readings[stem] = path
            elif ext != ".png":
                continue
            elif parent in MASK_FOLDERS:
                _common.add_once(masks.setdefault(stem, {}), parent, path,
                                 f"{parent} file of {stem}")
            elif "mask" not in os.path.relpath(path, manual_dir).lower():
                _common.add_once(images, stem, path, f"Image {stem}")
    return images, masks, readings


class Montgomery(tfds.core.GeneratorBasedBuilder):
    """Montgomery County chest radiographs with lung masks (no heart) and TB labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [MontgomeryConfig.make(256), MontgomeryConfig.make(224),
                       MontgomeryConfig.make(512)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self):
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                fk.IMAGE: tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                fk.LUNG_MASKS: tfds.features.Tensor(shape=(size, size, len(fk.LUNG_STRUCTURES)),
                                                    dtype=np.uint8,
                                                    encoding=tfds.features.Encoding.ZLIB),
                fk.IMAGE_ID: tfds.features.Text(),
                fk.PATIENT_ID: tfds.features.Text(),
                fk.TUBERCULOSIS: tfds.features.Tensor(shape=(), dtype=np.bool_),
                fk.SEX: tfds.features.Text(),
                fk.AGE: tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            supervised_keys=(fk.IMAGE, fk.LUNG_MASKS),
            homepage="https://lhncbc.nlm.nih.gov/LHC-downloads/",
            citation="Jaeger et al., Two public chest X-ray datasets for computer-aided screening "
                     "of pulmonary diseases, Quant Imaging Med Surg 2014.",
            metadata=tfds.core.MetadataDict(
                structure_names=list(fk.LUNG_STRUCTURES), heart_annotated=False,
                validation_fraction=self.builder_config.validation_fraction,
                test_fraction=self.builder_config.test_fraction,
                split_seed=self.builder_config.split_seed),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        manual_dir = os.fspath(dl_manager.manual_dir)
        images, masks, readings = find_cases(manual_dir)
        summary = _common.Summary("montgomery")
        summary.note("images_found", len(images))
        cases = {}
        for stem in sorted(set(images) | set(masks)):
            have = masks.get(stem, {})
            if stem not in images:
                summary.skip("masks_without_image", example=next(iter(have.values())))
            elif not NAME.match(stem):
                summary.skip("unexpected_file_name", warn=True,
                             example=f"{images[stem]}: expected <name>_0.png (normal) or "
                                     f"<name>_1.png (tuberculosis)")
            elif any(k not in have for k in MASK_FOLDERS):
                missing = [k for k in MASK_FOLDERS if k not in have]
                summary.skip("image_without_both_masks", warn=bool(have),
                             example=f"{images[stem]}: no {' or '.join(missing)} mask")
            else:
                cases[stem] = (images[stem], tuple(have[k] for k in MASK_FOLDERS))
        if not cases:
            raise DataError(f"No Montgomery image with both lung masks found under {manual_dir}"
                            f"\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
        order = _common.hash_order(sorted(cases), cfg.split_seed)
        at_least = 1 if len(order) >= 3 else 0  # a non-empty test and validation split if possible
        n_test = max(at_least, _common.round_half_up(cfg.test_fraction * len(order)))
        n_val = max(at_least, _common.round_half_up(cfg.validation_fraction * len(order)))
        split_of = {s: ("test" if i < n_test else "validation" if i < n_test + n_val
                        else "train") for i, s in enumerate(order)}
        summary.note("split_rule", f"sha256('{cfg.split_seed}:<name>') order: first "
                                   f"round({cfg.test_fraction} n) test, next "
                                   f"round({cfg.validation_fraction} n) validation")
        self._summary, self._cases, self._readings = summary, cases, readings
        splits = {split: [s for s in sorted(cases) if split_of[s] == split] for split in SPLITS}
        splits = _common.drop_empty_splits(self, splits)
        self._pool = _imaging.Pool()
        self._pending = set(splits)
        return {split: self._generate_examples(split, names) for split, names in splits.items()}

    def _generate_examples(self, split, stems):
        size = self.builder_config.image_size
        jobs = [(s, *self._cases[s], size) for s in stems]
        for stem, result in _common.decoded_cases(self, split, _imaging.lungs_job, jobs, 2):
            sex, age = ("", -1)
            if stem in self._readings:
                sex, age = read_clinical(self._readings[stem])
            m = NAME.match(stem)
            yield stem, {
                fk.IMAGE: result["image"],
                fk.LUNG_MASKS: result["lungs"],
                fk.IMAGE_ID: stem,
                fk.PATIENT_ID: m.group("patient"),
                fk.TUBERCULOSIS: m.group("tb") == "1",
                fk.SEX: sex,
                fk.AGE: np.int32(age),
            }


def make_builder(data_dir, image_size=256, validation_fraction=0.1, test_fraction=0.2,
                 split_seed=0):
    """Returns a Montgomery builder writing under `data_dir` for `MontgomeryConfig.make(...)`."""
    config = MontgomeryConfig.make(image_size, validation_fraction, test_fraction, split_seed)
    predefined = {c.name for c in Montgomery.BUILDER_CONFIGS}
    return Montgomery(config=config.name if config.name in predefined else config,
                      data_dir=str(data_dir))
