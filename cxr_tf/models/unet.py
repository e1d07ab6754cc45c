"""U-Net that segments left lung, right lung and heart on a frontal chest X-ray."""

import keras

from cxr_tf import labels as labels_lib
from cxr_tf.models.layers import PACKAGE


def _conv_block(x, filters, name):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class UNetSegmenter(keras.Model):
    """U-Net (Ronneberger et al. 2015) with one sigmoid output per structure.

    Input: `image`, (input_size, input_size, 1) float in [0, 1] (a grey radiograph, lungs dark).
    Output: (input_size, input_size, len(structures)) per-pixel probabilities in the order of
    `structures` (default labels.STRUCTURES: left lung, right lung, heart). Outputs are
    independent sigmoids because SCR's lung and heart masks overlap at their borders.

    Args:
      input_size: square input side in pixels; a multiple of 2**depth.
      base_filters: filters of the first level; each level down doubles them.
      depth: number of down-sampling steps.
      structures: names of the output channels (carried in the config and checked by callers).
    """

    def __init__(self, input_size: int = 256, base_filters: int = 16, depth: int = 4,
                 structures: tuple[str, ...] = labels_lib.STRUCTURES, name: str = "segmenter",
                 **kwargs):
        input_size, base_filters, depth = int(input_size), int(base_filters), int(depth)
        if depth < 1 or base_filters < 1:
            raise ValueError(f"UNetSegmenter needs depth >= 1 and base_filters >= 1, got "
                             f"depth={depth}, base_filters={base_filters}")
        if input_size < 2 ** depth or input_size % (2 ** depth):
            raise ValueError(f"UNetSegmenter input_size must be a positive multiple of "
                             f"2**depth = {2 ** depth}, got {input_size}")
        structures = tuple(structures)
        inputs = keras.Input((input_size, input_size, 1), name="image")
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)
        skips = []
        for level in range(depth):
            x = _conv_block(x, base_filters * 2 ** level, f"down{level}")
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
        x = _conv_block(x, base_filters * 2 ** depth, "bottom")
        for level in reversed(range(depth)):
            filters = base_filters * 2 ** level
            x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
            x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
            x = _conv_block(x, filters, f"dec{level}")
        outputs = keras.layers.Conv2D(len(structures), 1, activation="sigmoid", dtype="float32",
                                      name="structure_probs")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.input_size = input_size
        self.base_filters = base_filters
        self.depth = depth
        self.structures = structures

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "input_size": self.input_size,
                "base_filters": self.base_filters, "depth": self.depth,
                "structures": list(self.structures)}
