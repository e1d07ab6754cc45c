"""Feature keys of every cxr_tf data set (TFDS feature names), defined once.

Builders write these keys and the input pipelines read them; nothing else spells them out.
"""

IMAGE = "image"            # uint8 (H, W, 1), PNG-encoded in the records
MASKS = "masks"            # uint8 (H, W, len(labels.STRUCTURES)), 0 or 255
LABELS = "labels"          # uint8 (len(labels.FINDINGS),), multi-hot in label-contract order
IMAGE_ID = "image_id"      # source file name, e.g. "00000013_005.png"
PATIENT_ID = "patient_id"  # patient identifier (string); splits never share one

# Real data sets (cxr_tf.data.builders.chestxray14, jsrt_scr, montgomery, shenzhen).
VIEW_POSITION = "view_position"  # ChestX-ray14: "PA" or "AP" (text, as in the label table)
AGE = "age"                # int32 patient age in years; -1 when unknown
SEX = "sex"                # text, "M" or "F" as in the source table; "" when unknown
FOLLOW_UP = "follow_up"    # ChestX-ray14 `Follow-up #` (int32): the patient's n-th study
# Boxes, in pixels of the STORED image: float32 (N, 4) as [x, y, w, h] (the order of
# BBox_List_2017.csv), N = 0 for images without boxes; BOX_LABELS: int32 (N,) finding indices
# into labels.FINDINGS.
BOXES = "boxes"
BOX_LABELS = "box_labels"
# JSRT/SCR clavicles: uint8 (H, W, 2) 0 or 255, channels (left_clavicle, right_clavicle), patient's
# left and right; HAS_CLAVICLES is False (and the masks zero) where SCR holds no clavicle outline.
CLAVICLES = "clavicles"
HAS_CLAVICLES = "has_clavicles"
CLAVICLE_STRUCTURES = ("left_clavicle", "right_clavicle")
# Lungs-only data sets (Montgomery, Shenzhen): uint8 (H, W, 2) 0 or 255, channels (left_lung,
# right_lung), all zero where LUNG_SIDES is False; LUNGS: uint8 (H, W, 1) 0 or 255, both lungs
# (always exact). They have NO `masks` feature: a missing heart outline is not "no heart".
LUNG_MASKS = "lung_masks"
LUNG_STRUCTURES = ("left_lung", "right_lung")
LUNGS = "lungs"
LUNG_SIDES = "lung_sides"  # bool: the film's mask says which lung is which
NODULE = "nodule"          # JSRT: bool, the film shows a lung nodule (JPCLN*) or not (JPCNN*)
TUBERCULOSIS = "tuberculosis"  # Montgomery: bool, file name ends in _1 (TB) or _0 (normal)
FOLD = "fold"              # JSRT/SCR: int32 SCR fold (1 or 2)
