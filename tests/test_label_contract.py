"""The label contract pinned by literals: a permutation anywhere between the official names,
the builders, the parsers and the reports must fail here, not be reproduced by the test itself.
"""

import numpy as np
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.data import features as fk
from cxr_tf.data import pipeline

# Wang et al. (2017) and Fang et al. (2021, Table 2), spelled out by hand: never computed.
PAPER_ORDER = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
               "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
               "Pleural_Thickening", "Hernia"]


def test_findings_are_the_papers_fourteen_in_order():
    assert list(labels.FINDINGS) == PAPER_ORDER
    assert labels.NUM_FINDINGS == 14
    assert labels.finding_index("Cardiomegaly") == 1
    assert labels.finding_index("Infiltrate") == 3  # BBox_List_2017.csv spelling
    assert labels.finding_index("Hernia") == 13
    assert list(labels.STRUCTURES) == ["left_lung", "right_lung", "heart"]
    assert list(labels.SEGMENTATION_TARGETS) == ["left_lung", "right_lung", "heart", "lungs"]


def _example(label_vector, size=32):
    image = np.full((size, size, 1), 128, np.uint8)
    return {fk.IMAGE: tf.constant(image), fk.LABELS: tf.constant(label_vector, tf.uint8),
            fk.IMAGE_ID: tf.constant("x.png")}


def test_classification_parser_decodes_a_hand_built_record_to_its_literal_vector():
    # Cardiomegaly (1), Emphysema (10) and Hernia (13), serialised and read back through the
    # synthetic_cxr feature connector, then parsed as training reads it.
    from cxr_tf.data.builders import synthetic_cxr
    builder = synthetic_cxr.make_builder("/nonexistent", image_size=32, num_train=1,
                                         num_validation=1, num_test=1)
    vector = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1]
    features = builder.info.features
    raw = {fk.IMAGE: np.full((32, 32, 1), 128, np.uint8),
           fk.MASKS: np.zeros((32, 32, 3), np.uint8), fk.LABELS: np.array(vector, np.uint8),
           fk.IMAGE_ID: "x.png", fk.PATIENT_ID: "p"}
    decoded = features.deserialize_example(features.serialize_example(raw))
    np.testing.assert_array_equal(decoded[fk.LABELS].numpy(), vector)
    _, y = pipeline.parse_classification(decoded, size=32)
    np.testing.assert_array_equal(y.numpy(), vector)


def test_evaluation_reads_labels_in_the_same_literal_order(monkeypatch):
    from cxr_tf.data import datasets
    vector = [1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]  # Atelectasis, Effusion, Pneumothorax
    monkeypatch.setattr(datasets, "load_split",
                        lambda builder, split: tf.data.Dataset.from_tensors(_example(vector)))
    batch = next(iter(pipeline.examples_dataset(None, "test")))
    np.testing.assert_array_equal(batch["labels"].numpy()[0], vector)
