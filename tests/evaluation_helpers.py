"""Tiny evaluation artefacts: untrained classifiers saved like training runs (quality irrelevant).

Evaluation code only needs a model with the right interface, so these skip training entirely.
"""

import json
import os

import keras

from cxr_tf import configs
from cxr_tf.models import build_classifier, load_model


def save_tiny_classifier(run_dir, config, segmenter_path=None, variant="cxr_irnet", seed=0):
    """Builds an untrained `variant` for `config` and saves run_dir/best.keras and
    experiment.json as a training run would; returns the .keras path."""
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    segmenter = load_model(segmenter_path) if segmenter_path else None
    clf = config.classifier
    model = build_classifier(variant, backbone=clf.backbone or None, input_size=clf.input_size,
                             segmenter=segmenter)
    path = os.path.join(run_dir, "best.keras")
    model.save(path)
    with open(os.path.join(run_dir, "experiment.json"), "w") as f:
        json.dump({"config": configs.to_dict(config), "role": "classifier",
                   "segmenter": segmenter_path}, f)
    return path
