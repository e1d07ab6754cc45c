"""CXR-IRNet and its ablations/baselines as one configurable Keras functional model."""

import os
import zipfile

import keras
from keras import ops

from cxr_tf import configs, errors, files
from cxr_tf import labels as labels_lib
from cxr_tf.models import backbones
from cxr_tf.models.layers import (
    PACKAGE,
    FeatureWeighting,
    GreyToBackboneInput,
    MultiScaleAttention,
    Resize,
)
from cxr_tf.models.unet import UNetSegmenter

# The paper's model, its two ablations (Table 2) and its two baselines, by name (named records
# defined once, in cxr_tf.configs).
VARIANTS = configs.VARIANTS

# Names of the tensors `explain_model` exposes (and the export signature returns).
PROBABILITIES = "probabilities"
CAMS = "class_activation_maps"
MASK_COVERAGE = "mask_coverage"
GRID_MASK = "grid_mask"
STRUCTURE_PROBS = "structure_probs"


@keras.saving.register_keras_serializable(package=PACKAGE)
class CXRClassifier(keras.Model):
    """Multi-label chest X-ray classifier: [attention] -> backbone -> [feature weighting] -> head.

    Input `image`: (input_size, input_size, 1) float32 in [0, 1], a frontal radiograph with lungs
    dark. The model converts it to the backbone's three-channel normalised input itself, so every
    caller (training, evaluation, serving) feeds the same thing.

    Output: (B, num_classes) sigmoid probabilities in the order of `label_names`.

    The head is the paper's GAP -> Dense(14), written as a 1x1 convolution before the global
    average pool: the same function with the same parameters, whose per-cell logits are the class
    activation maps (CAMs) used for localisation.

    With `feature_weighting`, a frozen segmenter runs inline on the same input (resized to its
    own input size); its lung-and-heart union mask, pooled to the feature grid and binarised,
    multiplies the backbone features (see layers.FeatureWeighting, including the low-coverage
    fallback). No gradient reaches the segmenter and its batch-norm statistics stay fixed.

    Args:
      backbone: one of backbones.BACKBONES.
      input_size: square input side; a multiple of 32.
      attention: put the multi-scale attention module in front of the backbone.
      feature_weighting: weight backbone features by the segmenter's lung-and-heart mask.
      segmenter: a trained UNetSegmenter; required with feature_weighting.
      mask_threshold: binarisation threshold of the pooled mask.
      min_mask_coverage: below this share of kept cells, an image is not weighted at all.
      mask_dilation: grow the binarised grid mask by this many cells (0 in the paper; see
        layers.FeatureWeighting).
      feature_activation: None (paper) or "sigmoid" (the authors' code squashes features before
        masking).
      backbone_weights: None (random init), "imagenet" or a local weights file (see
        backbones.build_backbone).
      dropout: dropout rate before the head (0 in the paper).
      label_names: the classes, in output order; defaults to labels.FINDINGS.
    """

    def __init__(self, backbone: str = "densenet121", input_size: int = 224,
                 attention: bool = True, feature_weighting: bool = True,
                 segmenter: UNetSegmenter | None = None, mask_threshold: float = 0.5,
                 min_mask_coverage: float = 0.05, mask_dilation: int = 0,
                 feature_activation: str | None = None, backbone_weights: str | None = None,
                 dropout: float = 0.0, label_names: tuple[str, ...] = labels_lib.FINDINGS,
                 name: str = "cxr_classifier", **kwargs):
        input_size = int(input_size)
        label_names = tuple(label_names)
        if backbone not in backbones.BACKBONES:
            raise ValueError(f"Unknown backbone {backbone!r}; expected one of "
                             f"{', '.join(backbones.BACKBONES)}")
        if feature_activation not in (None, "sigmoid"):
            raise ValueError(f"feature_activation must be None or 'sigmoid', got "
                             f"{feature_activation!r}")
        if isinstance(segmenter, dict):
            segmenter = keras.saving.deserialize_keras_object(segmenter)
        if feature_weighting:
            if segmenter is None:
                raise ValueError("feature_weighting=True needs a trained segmenter "
                                 "(a UNetSegmenter); got segmenter=None")
            if tuple(getattr(segmenter, "structures", ())) != labels_lib.STRUCTURES:
                raise ValueError(f"The segmenter must output {labels_lib.STRUCTURES}, got "
                                 f"{getattr(segmenter, 'structures', None)}")
            segmenter.trainable = False
        else:
            segmenter = None  # an unused segmenter would only add weights to the saved model

        inputs = keras.Input((input_size, input_size, 1), name="image")
        x = GreyToBackboneInput(backbones.NORMALISATION[backbone], name="normalise")(inputs)
        if attention:
            x = MultiScaleAttention(name="attention")(x)
        features = backbones.build_backbone(backbone, input_size, backbone_weights)(x)
        if feature_activation == "sigmoid":
            features = keras.layers.Activation("sigmoid", name="feature_sigmoid")(features)
        if feature_weighting:
            seg_size = segmenter.input_size
            seg_in = inputs
            if seg_size != input_size:
                seg_in = Resize(seg_size, name="segmenter_resize")(inputs)
            structure_probs = segmenter(seg_in)
            features, _, _ = FeatureWeighting(mask_threshold, min_mask_coverage, mask_dilation,
                                              name="feature_weighting")([features, structure_probs])
        if dropout:
            features = keras.layers.Dropout(dropout, name="dropout")(features)
        logit_maps = keras.layers.Conv2D(len(label_names), 1, name="head")(features)
        logits = keras.layers.GlobalAveragePooling2D(name="pool")(logit_maps)
        probs = keras.layers.Activation("sigmoid", dtype="float32", name=PROBABILITIES)(logits)
        super().__init__(inputs=inputs, outputs=probs, name=name, **kwargs)

        self.backbone_name = backbone
        self.input_size = input_size
        self.attention = bool(attention)
        self.feature_weighting = bool(feature_weighting)
        self.segmenter = segmenter
        self.mask_threshold = float(mask_threshold)
        self.min_mask_coverage = float(min_mask_coverage)
        self.mask_dilation = int(mask_dilation)
        self.feature_activation = feature_activation
        self.dropout = float(dropout)
        self.label_names = label_names

    @property
    def feature_grid(self):
        """(h, w) of the backbone feature map."""
        return self.input_size // 32, self.input_size // 32

    def explain_model(self):
        """A model sharing this one's layers with all diagnostic outputs, as a dict:

        - probabilities (B, C);
        - class_activation_maps (B, h, w, C): per-cell head logits (the CAMs; their mean over
          cells is the logit);
        - mask_coverage (B,): share of feature cells inside the lung-and-heart mask (1 when the
          model has no feature weighting);
        - grid_mask (B, h, w, 1): the mask applied to the features (ones without weighting);
        - structure_probs (B, S, S, 3): the inline segmenter's probabilities at its own side
          (left lung, right lung, heart), only for models with feature weighting.
        """
        cams = self.get_layer("head").output
        outputs = {PROBABILITIES: self.get_layer(PROBABILITIES).output, CAMS: cams}
        if self.feature_weighting:
            weighting = self.get_layer("feature_weighting")
            _, grid_mask, coverage = weighting.output
            outputs[STRUCTURE_PROBS] = weighting.input[1]
        else:
            grid_mask = keras.layers.Lambda(lambda t: ops.ones_like(t[..., :1]),
                                            name="no_mask")(cams)
            coverage = keras.layers.Lambda(lambda t: ops.ones_like(t[:, 0, 0, 0]),
                                           name="no_coverage")(cams)
        outputs[MASK_COVERAGE] = coverage
        outputs[GRID_MASK] = grid_mask
        return keras.Model(self.input, outputs, name=f"{self.name}_explain")

    def get_config(self):
        config = {
            "name": self.name, "trainable": self.trainable, "backbone": self.backbone_name,
            "input_size": self.input_size, "attention": self.attention,
            "feature_weighting": self.feature_weighting, "mask_threshold": self.mask_threshold,
            "min_mask_coverage": self.min_mask_coverage, "mask_dilation": self.mask_dilation,
            "feature_activation": self.feature_activation, "dropout": self.dropout,
            "label_names": list(self.label_names),
            "segmenter": (keras.saving.serialize_keras_object(self.segmenter)
                          if self.segmenter is not None else None),
        }
        return config


def build_classifier(variant: str = "cxr_irnet", *, backbone: str | None = None,
                     input_size: int = 224, segmenter: UNetSegmenter | None = None,
                     **kwargs) -> CXRClassifier:
    """Builds a named variant: cxr_irnet, no_weighting, no_attention, chexnet or dcnn.

    Args:
      variant: a key of VARIANTS.
      backbone: overrides the variant's backbone (e.g. "densenet_tiny" for tests and the demo).
      input_size: square input side; a multiple of 32.
      segmenter: trained UNetSegmenter, needed by variants with feature weighting.
      **kwargs: passed on to CXRClassifier.
    """
    spec = configs.variant(variant)
    return CXRClassifier(backbone=backbone or spec.backbone, input_size=input_size,
                         attention=spec.attention, feature_weighting=spec.feature_weighting,
                         segmenter=segmenter, name=variant, **kwargs)


def load_model(path: str | os.PathLike) -> CXRClassifier | UNetSegmenter:
    """Loads a .keras classifier or segmenter saved by cxr_tf and checks its label contract.

    Raises:
      FileNotFoundError: no file at `path`.
      cxr_tf.errors.NotAModelFile (a ValueError): naming the file, when it is not a Keras model
        file (empty, text, truncated, a directory) or holds something other than a cxr_tf
        classifier or segmenter.
    """
    path = os.fspath(path)
    if not files.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected a .keras model saved by cxr_tf)")
    not_a_model = errors.NotAModelFile
    if files.isdir(path):
        raise not_a_model(f"{path} is a directory, not a .keras model file (an exported "
                          f"SavedModel? give the .keras file written by training)")
    size = files.getsize(path)
    with files.open_file(path, "rb") as f:
        is_zip = zipfile.is_zipfile(f)
        f.seek(0)
        head = f.read(16)
    if not is_zip:
        what = "an empty file" if not size else f"{size:,} bytes starting with {head!r}"
        raise not_a_model(f"{path} is not a Keras model file (a .keras file is a zip archive; "
                          f"this is {what}): truncated, corrupt or not a model; retrain, or "
                          f"copy the file again")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for damaged archives
        raise not_a_model(f"{path}: cannot load the Keras model ({type(e).__name__}: "
                          f"{str(e)[:300]})") from e
    if isinstance(model, CXRClassifier):
        labels_lib.check_label_names(model.label_names, what=f"model {path}")
    elif isinstance(model, UNetSegmenter):
        if tuple(model.structures) != labels_lib.STRUCTURES:
            raise ValueError(f"Segmenter {path} outputs {model.structures}, expected "
                             f"{labels_lib.STRUCTURES}")
    else:
        raise not_a_model(f"{path} holds a {type(model).__name__}, not a cxr_tf CXRClassifier "
                          f"or UNetSegmenter")
    return model
