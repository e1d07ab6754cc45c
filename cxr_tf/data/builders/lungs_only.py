"""Shared base of the lungs-only TFDS builders (`montgomery`, `shenzhen`): radiographs whose
lungs are outlined and whose heart is not.

Two layouts are read from `manual_dir`, as the NLM sets are found in the wild:

  - side masks: `<anything>/leftMask/<name>.png` and `<anything>/rightMask/<name>.png` (the
    official Montgomery download, `ManualMask/`);
  - one both-lungs mask per film, in any folder whose name contains "mask" (`masks/`, `mask/`,
    `ManualMask/`...), named like the image (`<name>.png`) or with a `_mask` suffix
    (`<name>_mask.png`, as in Shenzhen's mask release and most Kaggle copies).

Images are the PNGs outside such folders, named `<PREFIX>_<number>_<0|1>.png` (`_1`:
tuberculosis). Films of the other NLM set found in the same folder (a mixed copy holding
`MCUCXR_*` and `CHNCXR_*` side by side) are counted as `other_data_set` and left to that set's
builder.

A both-lungs mask is split into left and right lung where that is reliable: exactly two large
8-connected components (each at least 5% of the mask's area; any further specks together under
1%, each joined to the nearer of the two by centroid column), the one further right in the image
being the patient's LEFT lung. Otherwise (lungs touching, a third large piece) the film keeps
only the union: `lung_sides` is False and `lung_masks` is all zero, so nothing downstream can
mistake an unknown side for an empty lung.

Features: `image`, `lungs` (H, W, 1; the union, always exact), `lung_masks` (H, W, 2; left,
right, 0/255; zeros when the sides are unknown), `lung_sides`, `image_id`, `patient_id`,
`tuberculosis`, `sex` and `age` (from `ClinicalReadings/<name>.txt` when present). There is no
`masks` feature: that name always means left lung, right lung AND heart.

Splits (no official one): images sorted by SHA-256 of "<split_seed>:<name>"; the first
round(test_fraction * n) are `test`, the next round(validation_fraction * n) `validation`, the
rest `train`. Images and masks are resized together to `image_size` square (non-square films are
stretched, as NIH did for ChestX-ray14). Unreadable images and images without masks are skipped
and counted in `builder.info.metadata["build_summary"]`.
"""

import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from cxr_tf.data import features as fk
from cxr_tf.data.builders import _common, _imaging
from cxr_tf.data.builders._common import DataError

log = logging.getLogger("cxr_tf")

SPLITS = ("train", "validation", "test")
SIDE_FOLDERS = ("leftmask", "rightmask")
NAME = re.compile(r"^(?P<patient>.+)_(?P<tb>[01])$")
# The NLM sets by file-name prefix (a mixed folder is split between their builders).
PREFIXES = {"MCUCXR": "montgomery", "CHNCXR": "shenzhen"}
MASK_SUFFIX = "_mask"
_SEX = re.compile(r"(?:Patient'?s\s+)?Sex\s*:\s*([MFmf])|^\s*(male|female)\b",
                  re.IGNORECASE | re.MULTILINE)
_AGE = re.compile(r"(?:Patient'?s\s+)?Age\s*:\s*0*(\d+)\s*([YyMmDd]?)"
                  r"|\b0*(\d+)\s*(?:yrs?|years?)\b", re.IGNORECASE)


@dataclasses.dataclass(eq=False)
class LungsOnlyConfig(tfds.core.BuilderConfig):
    """How a lungs-only set is stored. Build with `LungsOnlyConfig.make(...)`.

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
    def predefined(cls, dataset):
        """The predefined configs of a lungs-only builder: 256, 224 and 512 px, default split."""
        return [cls.make(size, dataset=dataset) for size in (256, 224, 512)]

    @classmethod
    def make(cls, image_size=256, validation_fraction=0.1, test_fraction=0.2, split_seed=0,
             dataset="lungs-only"):
        """A config named after its parameters: `256px`, or e.g. `512px_val10_test30_seed1`."""
        if int(image_size) < 32:
            raise ValueError(f"{dataset} image_size must be >= 32, got {image_size}")
        _common.check_fraction(f"{dataset} validation_fraction", validation_fraction)
        _common.check_fraction(f"{dataset} test_fraction", test_fraction)
        if validation_fraction + test_fraction >= 1:
            raise ValueError(f"{dataset} validation_fraction + test_fraction must be < 1, got "
                             f"{validation_fraction} + {test_fraction}")
        name = f"{int(image_size)}px"
        if (float(validation_fraction), float(test_fraction), int(split_seed)) != (0.1, 0.2, 0):
            name += (f"_val{round(100 * float(validation_fraction)):g}"
                     f"_test{round(100 * float(test_fraction)):g}_seed{int(split_seed)}")
        return cls(name=name, image_size=int(image_size),
                   validation_fraction=float(validation_fraction),
                   test_fraction=float(test_fraction), split_seed=int(split_seed),
                   description=f"{dataset} stored at {int(image_size)} px")


def read_clinical(path):
    """(sex, age in years) from a clinical readings file; ("", -1) for what it does not state.

    Reads Montgomery's `Patient's Sex: M` / `Patient's Age: 044Y` and Shenzhen's
    `male 35yrs` first line.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "", -1
    sex = _SEX.search(text)
    age = _AGE.search(text)
    sex = (sex.group(1) or sex.group(2)[0]).upper() if sex else ""
    years = -1
    if age:
        if age.group(1) is not None:
            years = int(age.group(1)) // {"": 1, "Y": 1, "M": 12, "D": 365}[age.group(2).upper()]
        else:
            years = int(age.group(3))
    return sex, years


def _in_mask_folder(path, manual_dir):
    folders = os.path.relpath(os.path.dirname(path), manual_dir).lower().split(os.sep)
    return any("mask" in f for f in folders)


def find_cases(manual_dir):
    """Finds images, masks and clinical readings under manual_dir, for every NLM prefix.

    Returns:
      (images, side_masks, union_masks, readings): {stem: path},
      {stem: {"leftmask"|"rightmask": path}}, {stem: path}, {stem: path}.
    Raises:
      DataError: the same image or mask name found twice, naming both paths.
    """
    manual_dir = os.fspath(manual_dir)
    images, sides, unions, readings = {}, {}, {}, {}
    for paths in _common.scan(manual_dir).values():
        for path in paths:
            stem, ext = os.path.splitext(os.path.basename(path))
            parent = os.path.basename(os.path.dirname(path)).lower()
            ext = ext.lower()
            if ext == ".txt" and parent == "clinicalreadings":
                readings[stem] = path
            elif ext != ".png":
                continue
            elif parent in SIDE_FOLDERS:
                _common.add_once(sides.setdefault(stem, {}), parent, path,
                                 f"{parent} file of {stem}")
            elif _in_mask_folder(path, manual_dir):
                key = stem[:-len(MASK_SUFFIX)] if stem.lower().endswith(MASK_SUFFIX) else stem
                _common.add_once(unions, key, path, f"Both-lungs mask of {key}")
            else:
                _common.add_once(images, stem, path, f"Image {stem}")
    return images, sides, unions, readings


class LungsOnlyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the lungs-only builders: subclasses set PREFIX and the descriptive attributes."""

    PREFIX = ""
    HOMEPAGE = ""
    CITATION = ""
    MANUAL_DOWNLOAD_INSTRUCTIONS = ""

    def _info(self):
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                fk.IMAGE: tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                fk.LUNGS: tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                fk.LUNG_MASKS: tfds.features.Tensor(shape=(size, size, len(fk.LUNG_STRUCTURES)),
                                                    dtype=np.uint8,
                                                    encoding=tfds.features.Encoding.ZLIB),
                fk.LUNG_SIDES: tfds.features.Tensor(shape=(), dtype=np.bool_),
                fk.IMAGE_ID: tfds.features.Text(),
                fk.PATIENT_ID: tfds.features.Text(),
                fk.TUBERCULOSIS: tfds.features.Tensor(shape=(), dtype=np.bool_),
                fk.SEX: tfds.features.Text(),
                fk.AGE: tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            supervised_keys=(fk.IMAGE, fk.LUNGS),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(
                structure_names=list(fk.LUNG_STRUCTURES), heart_annotated=False,
                validation_fraction=self.builder_config.validation_fraction,
                test_fraction=self.builder_config.test_fraction,
                split_seed=self.builder_config.split_seed),
        )

    def _plan(self, manual_dir, summary):
        """{stem: (image path, ("sides", (left, right)) | ("union", path))} of buildable films."""
        images, sides, unions, _ = find_cases(manual_dir)
        summary.note("images_found", len(images))
        cases = {}
        for stem in sorted(set(images) | set(sides) | set(unions)):
            prefix = stem.split("_")[0].upper()
            if prefix != self.PREFIX and prefix in PREFIXES:
                summary.skip("other_data_set", example=f"{stem}: a {PREFIXES[prefix]} film")
                continue
            have = sides.get(stem, {})
            if stem not in images:
                where = next(iter(have.values()), None) or unions[stem]
                summary.skip("masks_without_image", example=where)
            elif not NAME.match(stem):
                summary.skip("unexpected_file_name", warn=True,
                             example=f"{images[stem]}: expected <name>_0.png (normal) or "
                                     f"<name>_1.png (tuberculosis)")
            elif all(k in have for k in SIDE_FOLDERS):
                cases[stem] = (images[stem], ("sides", tuple(have[k] for k in SIDE_FOLDERS)))
                if stem in unions:
                    summary.count_note("both_lungs_mask_ignored_for_side_masks")
            elif stem in unions:
                cases[stem] = (images[stem], ("union", unions[stem]))
                if have:
                    summary.count_note("incomplete_side_masks_replaced_by_both_lungs_mask")
            else:
                missing = [k for k in SIDE_FOLDERS if k not in have]
                summary.skip("image_without_both_masks", warn=bool(have),
                             example=f"{images[stem]}: no {' or '.join(missing)} mask and no "
                                     f"both-lungs mask")
        return cases

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        manual_dir = os.fspath(dl_manager.manual_dir)
        summary = _common.Summary(self.name)
        cases = self._plan(manual_dir, summary)
        if not cases:
            raise DataError(f"No {self.name} image with lung masks found under {manual_dir}"
                            f"\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        order = _common.hash_order(sorted(cases), cfg.split_seed)
        at_least = 1 if len(order) >= 3 else 0  # a non-empty test and validation split if possible
        n_test = max(at_least, _common.round_half_up(cfg.test_fraction * len(order)))
        n_val = max(at_least, _common.round_half_up(cfg.validation_fraction * len(order)))
        split_of = {s: ("test" if i < n_test else "validation" if i < n_test + n_val
                        else "train") for i, s in enumerate(order)}
        summary.note("split_rule", f"sha256('{cfg.split_seed}:<name>') order: first "
                                   f"round({cfg.test_fraction} n) test, next "
                                   f"round({cfg.validation_fraction} n) validation")
        self._summary, self._cases = summary, cases
        self._readings = find_cases(manual_dir)[3]
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
                fk.LUNGS: result["union"],
                fk.LUNG_MASKS: result["lungs"],
                fk.LUNG_SIDES: result["sides_known"],
                fk.IMAGE_ID: stem,
                fk.PATIENT_ID: m.group("patient"),
                fk.TUBERCULOSIS: m.group("tb") == "1",
                fk.SEX: sex,
                fk.AGE: np.int32(age),
            }


def make(builder_class, data_dir, image_size=256, validation_fraction=0.1, test_fraction=0.2,
         split_seed=0):
    """A `builder_class` (a LungsOnlyBuilder) writing under `data_dir` for
    `LungsOnlyConfig.make(...)`; predefined configs are selected by name."""
    config = LungsOnlyConfig.make(image_size, validation_fraction, test_fraction, split_seed,
                                  dataset=builder_class.name)
    return _common.builder_for(builder_class, config, data_dir)
