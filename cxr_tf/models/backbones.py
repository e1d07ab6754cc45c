"""Convolutional backbones: DenseNet121 and ResNet-50 from keras.applications, small DenseNets.

Every backbone maps a (S, S, 3) normalised image to a (S/32, S/32, C) feature map and is returned
as a nested functional model named "backbone".
"""

import logging
import os

import keras

from cxr_tf import configs, files

log = logging.getLogger("cxr_tf")

# Small DenseNets for tests and the demo. keras.applications does not expose its generic DenseNet
# builder, so these are built here with the same block structure as DenseNet121
# (blocks (6, 12, 24, 16), growth rate 32, 64 stem filters).
SMALL_DENSENETS = {
    # name: (blocks, growth_rate, stem_filters)
    "densenet_tiny": ((2, 2, 2, 2), 12, 24),
    "densenet_small": ((3, 6, 12, 8), 16, 32),
}
BACKBONES = configs.BACKBONES
assert set(BACKBONES) == {"densenet121", "resnet50", *SMALL_DENSENETS}, "configs.BACKBONES"
# How each backbone expects its input normalised (see layers.GreyToBackboneInput).
NORMALISATION = {"densenet121": "torch", "resnet50": "caffe",
                 **{name: "torch" for name in SMALL_DENSENETS}}

IMAGENET = "imagenet"
# keras.applications' ImageNet weights without the classification top, as Keras 3 names, hosts
# and checks them (its densenet.py and resnet.py): the file in the Keras cache's models/ folder,
# where Keras downloads it from, and its MD5.
_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET_WEIGHTS = {
    "densenet121": ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    _KERAS_WEIGHTS + "densenet/", "30ee3e1110167f948a6b9946edeeb738"),
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 _KERAS_WEIGHTS + "resnet/", "4d473c1dd8becc155b73f8504c6f6626"),
}


def keras_cache_dir():
    """The Keras cache, where keras.utils.get_file keeps downloads: $KERAS_HOME, else ~/.keras."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def imagenet_weights_path(name, download=None):
    """The local file of a backbone's ImageNet weights, as keras.applications users expect:
    the Keras cache's copy when it is there (its MD5 checked), else downloaded once into the
    cache with keras.utils.get_file (which checks the MD5 too).

    Args:
      name: "densenet121" or "resnet50".
      download: the downloader, `fn(fname, origin, cache_subdir, file_hash, cache_dir) -> path`
        (default keras.utils.get_file; tests pass a fake one).

    Raises:
      ValueError: `name` has no ImageNet weights, or the cached file is not the expected one.
      FileNotFoundError: not cached and the download failed (offline); the message names the
        file to fetch and where to place it.
    """
    if name not in IMAGENET_WEIGHTS:
        raise ValueError(f"Backbone {name!r} has no ImageNet weights (those of "
                         f"{', '.join(IMAGENET_WEIGHTS)} have); pass no backbone weights")
    fname, base, md5 = IMAGENET_WEIGHTS[name]
    origin = base + fname
    cached = os.path.join(keras_cache_dir(), "models", fname)
    if os.path.exists(cached):
        found = files.file_digest(cached, "md5")
        if found != md5:
            raise ValueError(f"{cached} is not Keras' ImageNet weights file for {name} (MD5 "
                             f"{found}, expected {md5}): delete it and run again where the "
                             f"network is reachable, or place the right file there")
        return cached
    download = download or keras.utils.get_file
    log.info("ImageNet weights for %s are not in the Keras cache: downloading %s", name, origin)
    try:
        return download(fname, origin, cache_subdir="models", file_hash=md5,
                        cache_dir=keras_cache_dir())
    except Exception as e:  # no network, a proxy, a refused host, a wrong checksum...
        raise FileNotFoundError(
            f"ImageNet weights for {name} are not in the Keras cache ({cached}) and could not "
            f"be downloaded ({type(e).__name__}: {str(e)[:200]}): on a machine with network "
            f"access fetch {origin} (MD5 {md5}) and place it at {cached}, or pass the path of "
            f"a local copy as the backbone weights") from e


def _dense_block(x, blocks, growth_rate, name):
    for i in range(blocks):
        y = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_block{i}_bn1")(x)
        y = keras.layers.ReLU(name=f"{name}_block{i}_relu1")(y)
        y = keras.layers.Conv2D(4 * growth_rate, 1, use_bias=False,
                                name=f"{name}_block{i}_conv1")(y)
        y = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_block{i}_bn2")(y)
        y = keras.layers.ReLU(name=f"{name}_block{i}_relu2")(y)
        y = keras.layers.Conv2D(growth_rate, 3, padding="same", use_bias=False,
                                name=f"{name}_block{i}_conv2")(y)
        x = keras.layers.Concatenate(name=f"{name}_block{i}_concat")([x, y])
    return x


def _transition(x, name):
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=f"{name}_conv")(x)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def small_densenet(input_shape, blocks, growth_rate, stem_filters, name="backbone"):
    """A DenseNet with DenseNet121's layout but fewer layers and filters (random init)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(stem_filters, 7, strides=2, padding="same", use_bias=False,
                            name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for i, n in enumerate(blocks):
        x = _dense_block(x, n, growth_rate, name=f"conv{i + 2}")
        if i < len(blocks) - 1:
            x = _transition(x, name=f"pool{i + 2}")
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    return keras.Model(inputs, x, name=name)


def build_backbone(name, input_size, weights=None):
    """Builds a backbone for (input_size, input_size, 3) inputs.

    Args:
      name: one of BACKBONES.
      input_size: square input side; a multiple of 32.
      weights: None for random initialisation; "imagenet" for keras.applications' ImageNet
        weights (from the Keras cache, downloaded once where the network is reachable: see
        imagenet_weights_path); or the path of a local Keras weights file.

    Returns:
      A functional keras.Model named "backbone".
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    input_size = int(input_size)
    if input_size < 32 or input_size % 32:
        raise ValueError(f"Backbone input_size must be a positive multiple of 32 (the feature "
                         f"stride), got {input_size}")
    if weights is not None:
        if name in SMALL_DENSENETS:
            raise ValueError(f"Backbone {name!r} has no pretrained weights; pass weights=None")
        if weights == IMAGENET:
            weights = imagenet_weights_path(name)
        elif not os.path.isfile(weights):
            raise FileNotFoundError(f"Backbone weights file not found: {weights!r} (give the "
                                    f"path of a local weights file, or '{IMAGENET}' for "
                                    f"keras.applications' ImageNet weights)")
    shape = (input_size, input_size, 3)
    if name == "densenet121":
        model = keras.applications.DenseNet121(include_top=False, weights=weights,
                                               input_shape=shape)
    elif name == "resnet50":
        model = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=shape)
    else:
        blocks, growth, stem = SMALL_DENSENETS[name]
        return small_densenet(shape, blocks, growth, stem)
    # Rename so the classifier's layer names do not depend on the keras.applications version.
    return keras.Model(model.inputs[0], model.outputs[0], name="backbone")
