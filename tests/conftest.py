"""Shared fixtures: a tiny phantom data set and a tiny trained segmenter, built once per session."""

import os

# Same TensorFlow environment as the binaries (see pipelines/__init__.py), before TF loads.
from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads

import pytest  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def tiny_config():
    from cxr_tf import configs
    return configs.tiny()


@pytest.fixture(scope="session")
def tiny_builder(tmp_path_factory, tiny_config):
    """The `tiny` preset's phantom data set (64 px, 48/16/24 images), built once."""
    from cxr_tf import workflow
    return workflow.build_data(tiny_config, str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="session")
def tiny_segmenter_path(tmp_path_factory, tiny_config, tiny_builder):
    """A segmenter trained for one epoch on the tiny data set (quality irrelevant)."""
    from cxr_tf.training import train
    return train.train_segmenter(tiny_config, tiny_builder,
                                 str(tmp_path_factory.mktemp("segmenter")), verbose=0)


def shared_sample_dir():
    """../shared/data/chestxray14_sample when present (CI), else None (a user's machine)."""
    path = os.path.join(SHARED_DATA, "chestxray14_sample")
    return path if os.path.isdir(path) else None
