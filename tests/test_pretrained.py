"""The segmenter shipped in cxr_tf/pretrained/: loads, segments chest films, is the classifier's
default, and its record and model card agree with the recipe and the label contract."""

import glob
import logging
import os

import cv2
import numpy as np
import pytest

from conftest import shared_sample_dir


@pytest.fixture(scope="module")
def shipped():
    from cxr_tf.models import load_pretrained_segmenter
    return load_pretrained_segmenter()


def test_shipped_segmenter_is_the_paper_presets_inline_unet(shipped):
    from cxr_tf import configs, labels
    seg = configs.paper().segmenter
    assert tuple(shipped.structures) == labels.STRUCTURES == ("left_lung", "right_lung", "heart")
    assert (shipped.input_size, shipped.base_filters, shipped.depth) == (
        seg.input_size, seg.base_filters, seg.depth) == (112, 8, 4)


def test_record_matches_the_recipe_and_meets_its_targets():
    from cxr_tf import configs, pretrained
    info = pretrained.segmenter_info()
    assert info, "lung_heart_segmenter.json missing from cxr_tf/pretrained/"
    # The shipped weights were trained with exactly the preset users get (no silent drift).
    for key, value in configs.PAPER_SEGMENTER.items():
        assert info["recipe"][key] == value, key
    test = {name: e["structures"] for name, e in info["test_scores"].items()}
    assert set(test) == {"jsrt_scr", "montgomery", "shenzhen"}
    # Targets set before scoring (docs/segmenter.md): both lungs 0.975+ and heart 0.94+ on SCR
    # fold 2, 0.94+ on the other hospitals' test films.
    assert test["jsrt_scr"]["lungs"]["dice"] >= 0.975 and test["jsrt_scr"]["heart"]["dice"] >= 0.94
    assert test["montgomery"]["lungs"]["dice"] >= 0.94
    assert test["shenzhen"]["lungs"]["dice"] >= 0.94
    assert "heart" not in test["montgomery"]  # no heart outlines there: never scored as zero
    card = pretrained.model_card()
    for needle in ("JSRT", "SCR", "Montgomery", "Shenzhen", "not for commercial use",
                   "Licence of these weights", "research and education only",
                   "fold 2", "Known failure modes", f"{test['jsrt_scr']['heart']['dice']:.4f}"):
        assert needle in card, needle


def _chest_films():
    """Real ChestX-ray14 films when the shared sample is here, else phantoms (64 px up to 512)."""
    sample = shared_sample_dir()
    if sample:
        paths = sorted(glob.glob(os.path.join(sample, "**", "*.png"), recursive=True))[:6]
        return [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths], "chestxray14"
    from cxr_tf.data import phantom
    return [phantom.make_case(k, 256)[0] for k in range(6)], "phantom"


def test_shipped_segmenter_finds_both_lungs_on_the_right_sides(shipped):
    films, source = _chest_films()
    batch = np.stack([cv2.resize(f, (112, 112), interpolation=cv2.INTER_AREA)
                      for f in films])[..., None].astype("float32") / 255.0
    probs = np.asarray(shipped(batch, training=False))
    for k, p in enumerate(probs):
        left, right, heart = (p[..., c] > 0.5 for c in range(3))
        # Each lung a sizeable region; the patient's left lung on the image's right half.
        assert 0.05 < left.mean() < 0.4 and 0.05 < right.mean() < 0.4, (source, k)
        cols = np.arange(112)
        assert (left * cols).sum() / left.sum() > 56 > (right * cols).sum() / right.sum(), (
            source, k)
        assert heart.mean() > 0.01, (source, k)


def test_classifier_uses_the_shipped_segmenter_when_none_is_trained(tmp_path, caplog):
    from cxr_tf import pretrained, workflow
    with caplog.at_level(logging.INFO):
        path, source = workflow.segmenter_for_classifier(str(tmp_path))
    assert (path, source) == (pretrained.segmenter_path(), "pretrained")
    assert "shipped with cxr_tf" in caplog.text and "MODEL_CARD.md" in caplog.text
    given = tmp_path / "mine.keras"
    given.write_bytes(b"")
    assert workflow.segmenter_for_classifier(str(tmp_path), str(given)) == (str(given), "given")
    trained = tmp_path / "segmenter" / "best.keras"
    trained.parent.mkdir()
    trained.write_bytes(b"")
    assert workflow.segmenter_for_classifier(str(tmp_path)) == (str(trained), "work_dir")


def test_a_missing_shipped_file_says_how_to_train_one(tmp_path, monkeypatch):
    from cxr_tf import pretrained
    monkeypatch.setattr(pretrained, "DIRECTORY", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cxr-train-segmenter.*--segmenter=PATH"):
        pretrained.segmenter_path()
    assert pretrained.segmenter_info() == {}


def test_shipped_files_are_in_the_package_data():
    """setup.py's package_data patterns cover every shipped file (a wheel would lack it else)."""
    import ast
    import fnmatch

    from cxr_tf import pretrained
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "setup.py")) as f:
        tree = ast.parse(f.read())
    patterns = next(ast.literal_eval(k.value) for node in ast.walk(tree)
                    if isinstance(node, ast.Call) for k in node.keywords
                    if k.arg == "package_data")["cxr_tf.pretrained"]
    for name in (pretrained.SEGMENTER_FILE, pretrained.SEGMENTER_INFO, pretrained.MODEL_CARD):
        assert os.path.exists(os.path.join(pretrained.DIRECTORY, name)), name
        assert any(fnmatch.fnmatch(name, p) for p in patterns), (name, patterns)


def test_code_licence_and_weights_terms_reach_pip_users():
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "LICENSE")) as f:
        assert "Apache License" in f.read(2000)
    licence = subprocess.run([sys.executable, "setup.py", "--license"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    assert licence.startswith("Apache-2.0 (code)") and "not for commercial use" in licence
    from cxr_tf import pretrained
    assert "Apache License 2.0" in pretrained.model_card()
