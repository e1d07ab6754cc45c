"""The ablation runner: variant configs, a tiny two-variant run, the shortcut comparison."""

import json
import os
import subprocess
import sys

import pytest

from cxr_tf import configs, environment, workflow
from cxr_tf.evaluation import ablation


def test_variant_config_keeps_data_and_training_and_sets_backbones():
    base = configs.demo()
    irnet = ablation.variant_config(base, "cxr_irnet")
    dcnn = ablation.variant_config(base, "dcnn", {"dcnn": {"input_size": 64, "resize_size": 64}})
    assert irnet.classifier.backbone == "densenet_tiny"  # the preset's small DenseNet
    assert dcnn.classifier.backbone == "" and dcnn.classifier.input_size == 64  # ResNet-50
    assert irnet.data == dcnn.data and irnet.seed == dcnn.seed
    assert irnet.classifier.epochs == dcnn.classifier.epochs
    assert base.classifier.variant == "cxr_irnet" and base.classifier.input_size == 128
    with pytest.raises(ValueError, match="no field"):
        ablation.variant_config(base, "dcnn", {"dcnn": {"depth": 3}})
    with pytest.raises(ValueError, match="Unknown variant"):
        ablation.variant_config(base, "vgg")


@pytest.mark.slow
def test_tiny_ablation_and_shortcut_table(tmp_path, tiny_config, tiny_builder,
                                          tiny_segmenter_path):
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(tiny_builder.data_dir)))
    summary = workflow.run_ablation(tiny_config, data_dir, str(tmp_path / "clean"),
                                    variants=("cxr_irnet", "chexnet"),
                                    segmenter_path=tiny_segmenter_path, n_resamples=20,
                                    max_overlays=1)
    assert [r["variant"] for r in summary["variants"]] == ["cxr_irnet", "chexnet"]
    irnet, chexnet = summary["variants"]
    assert irnet["feature_weighting"] and irnet["attention"] and not chexnet["attention"]
    assert irnet["epochs"] == tiny_config.classifier.epochs
    assert irnet["paper_mean_auroc"] == 0.8335 and chexnet["paper_mean_auroc"] == 0.8105
    assert summary["weighting_effect"] == []  # no pair differing only by weighting was run
    with open(tmp_path / "clean" / ablation.SUMMARY_JSON) as f:
        assert json.load(f)["dataset"] == summary["dataset"]
    md = (tmp_path / "clean" / ablation.SUMMARY_MD).read_text()
    assert "`cxr_irnet`" in md and "Not measured here" in md and "densenet_tiny" in md
    assert os.path.exists(irnet["report"])

    # The comparison table from two summaries (the same run stands in for the shortcut one).
    shortcut = dict(summary, dataset="synthetic_cxr/shortcut", weighting_effect=[
        {"with_weighting": "cxr_irnet", "without_weighting": "no_weighting", "split": "test",
         "difference": 0.1, "low": 0.02, "high": 0.2, "undefined": 0}])
    comparison = ablation.compare_shortcut(summary, shortcut, str(tmp_path))
    assert comparison["rows"][0]["excess_fall"] == pytest.approx(0.0)
    md = (tmp_path / ablation.COMPARISON_MD).read_text()
    assert "tags random" in md and "weighting helps" in md


def test_binary_help_and_bad_flags(tmp_path):
    env = environment.for_subprocess()
    run = lambda *a: subprocess.run([sys.executable, "-m", "pipelines.ablation", *a],  # noqa
                                    capture_output=True, text=True, env=env, timeout=300)
    out = run("--help").stdout
    for needle in ("--variants", "--data_variants", "--dcnn_input_size", "shortcut", "ResNet-50"):
        assert needle in out
    bad = run(f"--work_dir={tmp_path}", "--variants=vgg")
    assert bad.returncode != 0 and "Unknown --variants" in bad.stderr


class _Stop(Exception):
    pass


def _first_training(monkeypatch):
    """Makes the ablation's first classifier training record its segmenter and stop the run."""
    from cxr_tf.training import train
    seen = {}

    def fake_train_classifier(cfg, builder, run_dir, segmenter_path=None, **kwargs):
        seen["segmenter"] = segmenter_path
        raise _Stop

    monkeypatch.setattr(train, "train_classifier", fake_train_classifier)
    return seen


def test_paper_ablation_on_films_without_masks_uses_the_shipped_segmenter(
        tmp_path, tiny_segmenter_path, monkeypatch):
    from cxr_tf import pretrained

    import builder_fixtures as bf
    monkeypatch.setattr(pretrained, "segmenter_path", lambda: tiny_segmenter_path)  # stand-in
    seen = _first_training(monkeypatch)
    config = configs.paper()  # chestxray14: no masks to train a segmenter on
    with pytest.raises(_Stop):
        workflow.run_ablation(config, str(tmp_path / "tfds"), str(tmp_path / "abl"),
                              variants=("cxr_irnet", "chexnet"),
                              manual_dir=bf.make_chestxray14(tmp_path / "raw"))
    assert seen["segmenter"] == tiny_segmenter_path
    assert not os.path.exists(tmp_path / "abl" / "segmenter")


def test_phantom_ablation_trains_its_segmenter_on_the_phantoms_masks(tmp_path, tiny_config,
                                                                   tiny_builder, monkeypatch):
    from cxr_tf.training import train
    trained = []
    monkeypatch.setattr(train, "train_segmenter",
                        lambda cfg, builder, run_dir, **kw: trained.append(run_dir) or "seg.keras")
    seen = _first_training(monkeypatch)
    with pytest.raises(_Stop):
        workflow.run_ablation(tiny_config, os.path.dirname(os.path.dirname(os.path.dirname(
            tiny_builder.data_dir))), str(tmp_path), variants=("cxr_irnet",))
    assert trained == [os.path.join(str(tmp_path), "segmenter")]
    assert seen["segmenter"] == "seg.keras"
