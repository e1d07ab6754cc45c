"""Feature keys of every cxr_tf data set (TFDS feature names), defined once.

Builders write these keys and the input pipelines read them; nothing else spells them out.
"""

IMAGE = "image"            # uint8 (H, W, 1), PNG-encoded in the records
MASKS = "masks"            # uint8 (H, W, len(labels.STRUCTURES)), 0 or 255
LABELS = "labels"          # uint8 (len(labels.FINDINGS),), multi-hot in label-contract order
IMAGE_ID = "image_id"      # source file name, e.g. "00000013_005.png"
PATIENT_ID = "patient_id"  # patient identifier (string); splits never share one
