"""One shared harness for serialisation tests of every cxr_tf model and layer (keras-hub style)."""

import os

import keras
import numpy as np


def assert_config_round_trip(obj):
    """from_config(get_config()) rebuilds an object with an identical config."""
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    return clone


def assert_saved_model_round_trip(model, inputs, tmp_dir, atol=1e-6):
    """A .keras save/load gives the same class, config and outputs."""
    path = os.path.join(str(tmp_dir), f"{model.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(np.asarray(loaded(inputs, training=False)),
                               np.asarray(model(inputs, training=False)), atol=atol)
    return loaded
