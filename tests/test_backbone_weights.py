"""`--backbone_weights=imagenet` as keras.applications users expect it: the Keras cache's copy
(checksum checked), else one download into the cache, else (offline) an error naming the file to
place where. No test touches the network: the downloader is faked, and the "ImageNet" file is a
DenseNet121 of random weights saved in Keras' legacy HDF5 layout, its MD5 put in the table."""

import os

import h5py
import keras
import numpy as np
import pytest

from cxr_tf import files
from cxr_tf.models import backbones


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home"


@pytest.fixture(scope="module")
def fake_imagenet_file(tmp_path_factory):
    """(path, model) of DenseNet121 weights in keras.applications' file format."""
    from keras.src.legacy.saving import legacy_h5_format
    keras.utils.set_random_seed(7)
    model = keras.applications.DenseNet121(include_top=False, weights=None,
                                           input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("imagenet") / backbones.IMAGENET_WEIGHTS["densenet121"][0]
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return str(path), model


@pytest.fixture
def table_for(monkeypatch, fake_imagenet_file):
    """The weights table with the fake file's MD5 for densenet121."""
    path, _ = fake_imagenet_file
    fname, base, _ = backbones.IMAGENET_WEIGHTS["densenet121"]
    monkeypatch.setitem(backbones.IMAGENET_WEIGHTS, "densenet121",
                        (fname, base, files.file_digest(path, "md5")))


def offline(*args, **kwargs):
    raise OSError("URL fetch failure: [Errno -3] Temporary failure in name resolution")


def test_cached_weights_are_used_without_a_download(keras_home, fake_imagenet_file, table_for,
                                                    monkeypatch):
    path, model = fake_imagenet_file
    cached = keras_home / "models" / os.path.basename(path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(open(path, "rb").read())
    monkeypatch.setattr(keras.utils, "get_file", offline)
    assert backbones.imagenet_weights_path("densenet121") == str(cached)
    built = backbones.build_backbone("densenet121", 64, weights="imagenet")
    for a, b in zip(model.get_weights(), built.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_are_downloaded_once_into_the_cache(keras_home, fake_imagenet_file,
                                                            table_for):
    path, _ = fake_imagenet_file
    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash, cache_dir):
        calls.append((fname, origin, cache_subdir, file_hash, cache_dir))
        target = os.path.join(cache_dir, cache_subdir, fname)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(open(path, "rb").read())
        return target

    first = backbones.imagenet_weights_path("densenet121", download=fake_get_file)
    again = backbones.imagenet_weights_path("densenet121", download=offline)
    assert first == again == str(keras_home / "models" / os.path.basename(path))
    (fname, origin, subdir, md5, cache_dir), = calls
    assert origin.endswith("/keras-applications/densenet/" + fname) and subdir == "models"
    assert md5 == files.file_digest(path, "md5") and cache_dir == str(keras_home)


def test_offline_without_the_cached_file_names_the_file_and_where_to_put_it(keras_home,
                                                                            monkeypatch):
    fname, base, md5 = backbones.IMAGENET_WEIGHTS["densenet121"]
    monkeypatch.setattr(keras.utils, "get_file", offline)  # what Keras raises offline
    with pytest.raises(FileNotFoundError) as err:
        backbones.build_backbone("densenet121", 64, weights="imagenet")
    message = str(err.value)
    assert str(keras_home / "models" / fname) in message and base + fname in message
    assert md5 in message and "could not be downloaded (OSError: URL fetch failure" in message


def test_a_cached_file_with_the_wrong_checksum_is_refused(keras_home):
    fname, _, md5 = backbones.IMAGENET_WEIGHTS["resnet50"]
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / fname).write_bytes(b"half a download")
    with pytest.raises(ValueError, match=f"{fname} is not Keras' ImageNet weights file for "
                                         f"resnet50 .*expected {md5}"):
        backbones.imagenet_weights_path("resnet50")


def test_backbones_without_imagenet_weights_say_so(keras_home):
    with pytest.raises(ValueError, match="has no pretrained weights"):
        backbones.build_backbone("densenet_tiny", 64, weights="imagenet")
    with pytest.raises(ValueError, match="has no ImageNet weights"):
        backbones.imagenet_weights_path("densenet_small")
