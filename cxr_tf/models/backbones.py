"""Convolutional backbones: DenseNet121 and ResNet-50 from keras.applications, small DenseNets.

Every backbone maps a (S, S, 3) normalised image to a (S/32, S/32, C) feature map and is returned
as a nested functional model named "backbone".
"""

import os

import keras

from cxr_tf import configs

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
      weights: None for random initialisation, or the path of a local Keras weights file for
        the keras.applications backbones (e.g. ImageNet weights downloaded beforehand; nothing is
        ever downloaded at run time).

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
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"Backbone weights file not found: {weights!r} (cxr_tf never "
                                    f"downloads weights; give the path of a local file)")
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
