"""Trained weights shipped inside the package (no download, ever).

`lung_heart_segmenter.keras`: the inline lung-and-heart U-Net of the `paper` preset (112 px,
8 base filters, depth 4; about 2 MB), trained by cxr_tf's own documented recipe on public films
(JSRT with the SCR masks, fold 1 only, and the NLM Montgomery and Shenzhen sets), so that a user
with ChestX-ray14 alone can train CXR-IRNet. `MODEL_CARD.md` beside it says what it was trained
on (and under which terms), how, how well it segments each structure on each data set, and
where it fails; `lung_heart_segmenter.json` holds the same in machine-readable form.

Load it with `cxr_tf.models.load_pretrained_segmenter()`.
"""

import json
import os

SEGMENTER_FILE = "lung_heart_segmenter.keras"
SEGMENTER_INFO = "lung_heart_segmenter.json"
MODEL_CARD = "MODEL_CARD.md"
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def segmenter_path():
    """Path of the shipped segmenter (.keras).

    Raises:
      FileNotFoundError: when this installation lacks the file (e.g. a source tree where it was
        deleted), saying how to train one instead.
    """
    path = os.path.join(DIRECTORY, SEGMENTER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"The pretrained segmenter {path} is missing from this installation of cxr_tf. "
            f"Train one with cxr-train-segmenter (docs/segmenter.md) and pass it with "
            f"--segmenter=PATH.")
    return path


def segmenter_info():
    """The shipped segmenter's metadata: recipe, data, scores (dict), or {} if absent."""
    path = os.path.join(DIRECTORY, SEGMENTER_INFO)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def model_card():
    """The shipped segmenter's model card (Markdown text)."""
    with open(os.path.join(DIRECTORY, MODEL_CARD)) as f:
        return f.read()
