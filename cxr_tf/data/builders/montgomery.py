"""TFDS builder `montgomery`: the NLM Montgomery County TB set, radiographs with LUNG masks only.

Reads from `manual_dir` either layout of cxr_tf.data.builders.lungs_only:
  - the NLM download: `CXR_png/MCUCXR_0001_0.png` ..., `ManualMask/leftMask/<name>.png`,
    `ManualMask/rightMask/<name>.png`, and optionally `ClinicalReadings/<name>.txt`
    (`Patient's Sex: M`, `Patient's Age: 044Y`);
  - a redistribution with one both-lungs mask per film (e.g. `data/cxr/MCUCXR_0001_0.png` and
    `data/masks/MCUCXR_0001_0.png`, or `..._mask.png`), possibly mixed with Shenzhen's
    `CHNCXR_*` films (left to the `shenzhen` builder, counted as `other_data_set`).

The heart is NOT annotated in this data set, and the records say so by construction: they have no
`masks` feature (which always means left lung, right lung AND heart, as in `jsrt_scr` and
`synthetic_cxr`) but `lungs` (both lungs, one channel) and `lung_masks` (left lung, right lung;
zeros where `lung_sides` is False). `cxr_tf.data.pipeline.parse_segmentation` therefore refuses
these records with a message instead of treating "no heart outline" as "no heart"; use
`pipeline.parse_lung_segmentation` to score lungs, or `pipeline.parse_partial_segmentation` to
train on what is labelled. `builder.info.metadata` records `structure_names = ["left_lung",
"right_lung"]` and `heart_annotated = False`.

"Left" is the patient's left (the image's right). Which mask folder holds which lung is decided
by the masks' positions, whatever the folders are called; the build summary counts the images
whose folder names followed the image side instead (and were swapped).

Montgomery has no official split. Images (one per patient) are split by SHA-256 of
"<split_seed>:<name>" (split_seed = 0): the first round(0.2 * n) are `test`, the next
round(0.1 * n) `validation`, the rest `train` (see lungs_only for the rest of the contract).
"""

import tensorflow_datasets as tfds

from cxr_tf.data.builders import lungs_only
from cxr_tf.data.builders._common import DataError  # noqa: F401  (re-exported for callers)
from cxr_tf.data.builders.lungs_only import LungsOnlyConfig as MontgomeryConfig  # noqa: F401
from cxr_tf.data.builders.lungs_only import read_clinical  # noqa: F401

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Montgomery County set (NLM, https://lhncbc.nlm.nih.gov/LHC-downloads/) and unpack it:
  MANUAL_DIR/CXR_png/MCUCXR_0001_0.png ...
  MANUAL_DIR/ManualMask/leftMask/MCUCXR_0001_0.png, .../rightMask/MCUCXR_0001_0.png
  MANUAL_DIR/ClinicalReadings/MCUCXR_0001_0.txt (optional)
or point MANUAL_DIR at a copy with one both-lungs mask per film (an image folder and a folder
whose name contains "mask", same file names or with a _mask suffix).
then: cxr-build-dataset --work_dir=WORK --dataset=montgomery --manual_dir=MANUAL_DIR
"""


def find_cases(manual_dir):
    """Images, side masks, both-lungs masks and clinical readings under manual_dir (see
    lungs_only.find_cases)."""
    return lungs_only.find_cases(manual_dir)


class Montgomery(lungs_only.LungsOnlyBuilder):
    """Montgomery County chest radiographs with lung masks (no heart) and TB labels."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Both-lungs union (`lungs`), `lung_sides`; one-mask-per-film "
                              "layouts."}
    BUILDER_CONFIGS = lungs_only.LungsOnlyConfig.predefined("montgomery")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    PREFIX = "MCUCXR"
    HOMEPAGE = "https://lhncbc.nlm.nih.gov/LHC-downloads/"
    CITATION = ("Jaeger et al., Two public chest X-ray datasets for computer-aided screening of "
                "pulmonary diseases, Quant Imaging Med Surg 2014.")


def make_builder(data_dir, image_size=256, validation_fraction=0.1, test_fraction=0.2,
                 split_seed=0):
    """Returns a Montgomery builder writing under `data_dir` for `MontgomeryConfig.make(...)`."""
    return lungs_only.make(Montgomery, data_dir, image_size, validation_fraction, test_fraction,
                           split_seed)
