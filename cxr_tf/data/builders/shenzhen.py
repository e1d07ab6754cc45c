"""TFDS builder `shenzhen`: the NLM Shenzhen TB set, radiographs with LUNG masks only.

Reads from `manual_dir` the radiographs `CHNCXR_0001_0.png` ... (`_1`: tuberculosis) and one
both-lungs mask per film in a folder whose name contains "mask" (Shenzhen's mask release names
them `CHNCXR_0001_0_mask.png`; copies that keep the image's name work too), optionally with
`ClinicalReadings/<name>.txt` (`male 35yrs`). A folder that also holds Montgomery's `MCUCXR_*`
films is fine: they are counted as `other_data_set` and left to the `montgomery` builder.

The masks outline both lungs, not the heart: the records have `lungs`, and `lung_masks` (left,
right) where the two lungs are separate in the mask (`lung_sides`), and no `masks` feature. Splits
and the rest of the contract: cxr_tf.data.builders.lungs_only (20% test, 10% validation by
SHA-256 of the film name; one film per patient).
"""

import tensorflow_datasets as tfds

from cxr_tf.data.builders import lungs_only

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Shenzhen set (NLM, https://lhncbc.nlm.nih.gov/LHC-downloads/) and its lung masks, and
unpack both into one folder:
  MANUAL_DIR/CXR_png/CHNCXR_0001_0.png ...
  MANUAL_DIR/mask/CHNCXR_0001_0_mask.png ...   (any folder whose name contains "mask")
  MANUAL_DIR/ClinicalReadings/CHNCXR_0001_0.txt (optional)
then: cxr-build-dataset --work_dir=WORK --dataset=shenzhen --manual_dir=MANUAL_DIR
"""


class Shenzhen(lungs_only.LungsOnlyBuilder):
    """Shenzhen chest radiographs with both-lungs masks (no heart) and TB labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = lungs_only.LungsOnlyConfig.predefined("shenzhen")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    PREFIX = "CHNCXR"
    HOMEPAGE = "https://lhncbc.nlm.nih.gov/LHC-downloads/"
    CITATION = ("Jaeger et al., Two public chest X-ray datasets for computer-aided screening of "
                "pulmonary diseases, Quant Imaging Med Surg 2014; Stirenko et al., Chest X-ray "
                "analysis of tuberculosis by deep learning with segmentation and augmentation, "
                "2018 (lung masks).")


def make_builder(data_dir, image_size=256, validation_fraction=0.1, test_fraction=0.2,
                 split_seed=0):
    """Returns a Shenzhen builder writing under `data_dir` for `LungsOnlyConfig.make(...)`."""
    return lungs_only.make(Shenzhen, data_dir, image_size, validation_fraction, test_fraction,
                           split_seed)
