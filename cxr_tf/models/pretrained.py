"""One-call loading of the weights shipped with cxr_tf (see cxr_tf.pretrained)."""

from cxr_tf import labels as labels_lib
from cxr_tf import pretrained
from cxr_tf.models.classifier import load_model


def load_pretrained_segmenter():
    """The lung-and-heart U-Net shipped with cxr_tf (112 px, 8 filters), ready to put inline.

    Outputs per-pixel probabilities of left lung, right lung and heart (labels.STRUCTURES) for a
    (112, 112, 1) image in [0, 1], lungs dark; build_classifier resizes its input to 112 px
    itself. Trained without SCR fold 2, which therefore stays a clean test set; its model card:
    `cxr_tf.pretrained.model_card()`.

    Example:
      from cxr_tf.models import build_classifier, load_pretrained_segmenter
      model = build_classifier("cxr_irnet", segmenter=load_pretrained_segmenter())
    """
    segmenter = load_model(pretrained.segmenter_path())
    if tuple(segmenter.structures) != labels_lib.STRUCTURES:  # load_model checks; belt and braces
        raise ValueError(f"The shipped segmenter outputs {segmenter.structures}")
    return segmenter
