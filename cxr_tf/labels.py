"""The label contract: one definition of every class name the project uses.

Every model, data set, report and export carries these lists (and checks them on load), so a
probability vector always means the same thing wherever it travels.
"""

# The 14 ChestX-ray14 findings in the order of Wang et al. (2017) and Fang et al. (2021, Table 2).
# The order is part of every trained model: never reorder, only append in a new model version.
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_FINDINGS = len(FINDINGS)

# Spellings found in the official tables that mean one of FINDINGS.
FINDING_ALIASES = {
    "Infiltrate": "Infiltration",  # BBox_List_2017.csv
    "Pleural Thickening": "Pleural_Thickening",
}
NO_FINDING = "No Finding"

# Segmentation structures, in the channel order of every segmenter output and stored mask.
# "Left" is the patient's left, which is the image's right on a PA film.
STRUCTURES = ("left_lung", "right_lung", "heart")
NUM_STRUCTURES = len(STRUCTURES)
# Segmentation targets: the structures plus both lungs together, which lungs-only data sets can
# label when they cannot tell left from right. A segmenter's "lungs" is max(left, right).
LUNGS = "lungs"
SEGMENTATION_TARGETS = STRUCTURES + (LUNGS,)


def finding_index(name):
    """Returns the position of a finding name (official spelling or alias) in FINDINGS.

    Raises:
      ValueError: naming the unknown finding and listing the accepted names.
    """
    canonical = FINDING_ALIASES.get(name, name)
    try:
        return FINDINGS.index(canonical)
    except ValueError:
        raise ValueError(
            f"Unknown finding {name!r}; expected one of {', '.join(FINDINGS)} "
            f"(or an alias: {', '.join(FINDING_ALIASES)})") from None


def check_label_names(names, what="model"):
    """Raises ValueError if `names` differs from FINDINGS, saying where the two disagree."""
    names = tuple(str(n) for n in names)
    if names != FINDINGS:
        raise ValueError(
            f"The {what} carries labels {list(names)}, but this version of cxr_tf expects "
            f"{list(FINDINGS)}. Retrain or re-export with the current label contract.")
