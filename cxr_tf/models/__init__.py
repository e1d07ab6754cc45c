"""Keras models of cxr_tf; importing this registers every custom object for `.keras` loading."""

from cxr_tf.models.backbones import BACKBONES, build_backbone
from cxr_tf.models.classifier import VARIANTS, CXRClassifier, build_classifier, load_model
from cxr_tf.models.layers import FeatureWeighting, GreyToBackboneInput, MultiScaleAttention
from cxr_tf.models.losses import SoftDiceLoss, partial_dice_loss
from cxr_tf.models.pretrained import load_pretrained_segmenter
from cxr_tf.models.unet import UNetSegmenter

__all__ = ["BACKBONES", "VARIANTS", "CXRClassifier", "FeatureWeighting", "GreyToBackboneInput",
           "MultiScaleAttention", "SoftDiceLoss", "UNetSegmenter", "build_backbone",
           "build_classifier", "load_model", "load_pretrained_segmenter", "partial_dice_loss"]
