"""Export round trip: the SavedModel answers like the in-memory model, through both signatures."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.models import build_classifier, load_model
from cxr_tf.serving import export as export_lib

import functools


@pytest.fixture(scope="module")
def exported(tiny_segmenter_path, tmp_path_factory):
    model = build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=64,
                             segmenter=load_model(tiny_segmenter_path))
    thresholds = np.linspace(0.1, 0.9, labels.NUM_FINDINGS)
    base = str(tmp_path_factory.mktemp("export"))
    path = export_lib.export_classifier(model, base, resize_size=64, thresholds=thresholds)
    return model, path, thresholds


def test_layout_metadata_and_versions(exported):
    model, path, thresholds = exported
    assert os.path.basename(path) == "1"
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]
    loaded, meta = export_lib.load_exported(path)
    assert meta["label_names"] == list(labels.FINDINGS)
    np.testing.assert_allclose(meta["thresholds"], thresholds, rtol=1e-6)
    raw = loaded.signatures[export_lib.METADATA]()
    assert [s.decode() for s in raw["label_names"].numpy()] == list(labels.FINDINGS)
    assert int(raw["input_size"]) == 64 and int(raw["version"]) == 1
    assert export_lib.next_version(os.path.dirname(path)) == 2


def test_saved_model_matches_in_memory_model(exported, tiny_builder):
    model, path, thresholds = exported
    loaded, _ = export_lib.load_exported(path)
    examples = list(datasets.load_split(tiny_builder, "test").take(4).as_numpy_iterator())
    pngs = [cv2.imencode(".png", e[fk.IMAGE])[1].tobytes() for e in examples]
    out = loaded.signatures[export_lib.SERVING_DEFAULT](image_bytes=tf.constant(pngs))
    # Same images through the evaluation pipeline and the in-memory model.
    parse = functools.partial(pipeline.parse_classification, size=64, resize_size=64)
    x = np.stack([parse({fk.IMAGE: e[fk.IMAGE], fk.LABELS: e[fk.LABELS]})[0] for e in examples])
    expected = model.explain_model()(x, training=False)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_allclose(out["class_activation_maps"], expected["class_activation_maps"],
                               atol=1e-4)
    np.testing.assert_allclose(out["mask_coverage"], expected["mask_coverage"], atol=1e-6)
    np.testing.assert_array_equal(out["decisions"],
                                  (out["probabilities"].numpy() >= thresholds).astype(int))
    pixels = loaded.signatures[export_lib.PREDICT_PIXELS](images=tf.constant(x))
    np.testing.assert_allclose(pixels["probabilities"], out["probabilities"], atol=1e-6)


def test_bad_bytes_are_an_invalid_argument(exported):
    _, path, _ = exported
    loaded, _ = export_lib.load_exported(path)
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures[export_lib.SERVING_DEFAULT](image_bytes=tf.constant([b"not an image"]))


def test_export_refuses_bad_arguments(exported, tmp_path):
    model, path, _ = exported
    with pytest.raises(ValueError, match="thresholds must be 14 values"):
        export_lib.export_classifier(model, str(tmp_path), thresholds=[0.5] * 3)
    with pytest.raises(FileExistsError, match="already exists"):
        export_lib.export_classifier(model, os.path.dirname(path), version=1)
    with pytest.raises(TypeError, match="CXRClassifier"):
        export_lib.export_classifier(model.segmenter, str(tmp_path))
