"""workflow.evaluate and the cxr-evaluate binary on tiny artefacts: .keras and SavedModel models,
figures, thresholds from validation, localisation on ChestX-ray14-format boxes, segmentation."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import configs, environment, labels, saved_models, workflow
from cxr_tf.data import datasets, pipeline
from cxr_tf.data.builders import chestxray14
from cxr_tf.evaluation import inference
from cxr_tf.evaluation import report as report_lib
from cxr_tf.models import UNetSegmenter

import builder_fixtures as bf
from evaluation_helpers import save_tiny_classifier


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config, tiny_builder, tiny_segmenter_path):
    """An untrained tiny CXR-IRNet saved as a run, and its SavedModel export."""
    root = tmp_path_factory.mktemp("eval_run")
    model = save_tiny_classifier(str(root / "classifier"), tiny_config, tiny_segmenter_path)
    export = workflow.export(model, str(root / "export"), resize_size=64)
    return model, export


def _png(path):
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def test_keras_and_saved_model_give_the_same_report(tiny_run, tiny_config, tiny_builder,
                                                   tiny_segmenter_path, tmp_path):
    model, export = tiny_run
    keras_report = workflow.evaluate(model, tiny_builder, tiny_config, str(tmp_path / "k"),
                                     segmenter_path=tiny_segmenter_path, n_resamples=50,
                                     max_overlays=2)
    clf = keras_report["classification"]
    for name in ("report.json", "report.md", "predictions.csv", "roc.png", "reliability.png"):
        assert os.path.exists(tmp_path / "k" / name), name
    assert _png(tmp_path / "k" / "roc.png").shape[0] > 500
    assert "Youden" in clf["threshold_rule"] and "validation" in clf["threshold_rule"]
    assert clf["validation"]["n_images"] == tiny_config.data.num_validation
    assert set(clf["calibration"]) >= {"mean_brier", "mean_ece", "pooled_ece", "reliability"}
    assert len(keras_report["cam_overlays"]["overlays"]) == 2
    assert set(keras_report["segmentation"]["structures"]) == {
        "left_lung", "right_lung", "heart", "lungs", "union"}
    json.dumps(keras_report)  # JSON-ready throughout

    # Thresholds are Youden's J on validation, recomputed here from the model's own outputs.
    predictor = inference.load_predictor(model, resize_size=64)
    val = inference.predict(predictor, pipeline.examples_dataset(tiny_builder, "validation"))
    from cxr_tf.evaluation import metrics
    np.testing.assert_allclose([c["threshold"] for c in clf["classes"]],
                               metrics.youden_thresholds(val["labels"], val["probabilities"]))

    for signature in ("predict_pixels", "serving_default"):
        out = tmp_path / signature
        saved = workflow.evaluate(export, tiny_builder, tiny_config, str(out), n_resamples=50,
                                  signature=signature, max_overlays=0)
        assert saved["meta"]["model_source"] == "saved_model"
        np.testing.assert_allclose(
            [c["auroc"] or 0 for c in saved["classification"]["classes"]],
            [c["auroc"] or 0 for c in clf["classes"]], atol=1e-4)
        a = report_lib.read_predictions_csv(str(out / "predictions.csv"))
        b = report_lib.read_predictions_csv(str(tmp_path / "k" / "predictions.csv"))
        assert a["ids"] == b["ids"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    # The export base directory resolves to its newest version.
    assert saved_models.resolve_version(os.path.dirname(export)) == export


def test_markdown_shows_published_means_beside_ours_and_never_invents_per_class_values(
        tiny_run, tiny_config, tiny_builder, tmp_path):
    model, _ = tiny_run
    workflow.evaluate(model, tiny_builder, tiny_config, str(tmp_path), n_resamples=20,
                      max_overlays=0)
    md = (tmp_path / "report.md").read_text()
    table = md[md.index("| Finding | DCNN"):].split("\n\n")[0]  # up to the first blank line
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ")}
    assert len(rows) == labels.NUM_FINDINGS + 2  # header, 14 findings, mean
    for name in labels.FINDINGS:
        cells = [c.strip() for c in rows[name].split("|")[2:6]]
        assert cells == ["—"] * 4, rows[name]  # no published per-class value is known
    mean = rows["**Mean**"]
    for value in ("0.7934", "0.8105", "0.8222", "0.8335"):
        assert value in mean
    assert "not measured here" in md and "Fang et al." in md
    assert "per-class published values are not available" in md


def test_localisation_on_chestxray14_boxes(tmp_path, tiny_config):
    """The chestxray14 builder's bbox split (boxes in stored pixels, finding indices) feeds the
    CAM box rule end to end; the 1024-frame boxes of the fixture are scaled to 64 px."""
    manual = bf.make_chestxray14(tmp_path / "raw")
    builder = datasets.prepare(chestxray14.make_builder(str(tmp_path / "tfds"), image_size=64),
                               manual_dir=manual)
    config = configs.tiny()
    config.data.dataset = "chestxray14"
    model = save_tiny_classifier(str(tmp_path / "clf"), config, variant="chexnet")
    report = workflow.evaluate(model, builder, config, str(tmp_path / "eval"), n_resamples=20,
                               max_overlays=3)
    loc = report["localisation"]
    assert loc["split"] == "bbox" and loc["n_images"] == 2
    assert loc["overall"]["n_boxes"] == 3  # the fixture's boxes whose image exists
    by_class = {c["name"]: c["n_boxes"] for c in loc["classes"]}
    assert by_class["Atelectasis"] == 1 and by_class["Effusion"] == 1
    assert by_class["Infiltration"] == 1  # spelled "Infiltrate" in BBox_List_2017.csv
    assert len(loc["overlays"]) == 3
    for rel in loc["overlays"]:
        _png(tmp_path / "eval" / rel)
    with open(tmp_path / "eval" / "localisation_boxes.json") as f:
        records = json.load(f)
    infiltrate = next(r for r in records if r["class"] == "Infiltration")
    np.testing.assert_allclose(infiltrate["true_box"], [0, 0, 64, 64])  # whole 1024 frame
    assert 0 <= infiltrate["iou"] <= 1
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## Localisation" in md and "oracle" in md and "IoU >= 0.25" in md


def test_lungs_only_segmentation_has_no_union(tmp_path):
    segmenter = UNetSegmenter(input_size=32, base_filters=4, depth=2)
    masks = np.zeros((4, 32, 32, 2), np.float32)
    masks[:, 8:24, 2:14, 1] = 1   # right lung (image left)
    masks[:, 8:24, 18:30, 0] = 1  # left lung
    ds = tf.data.Dataset.from_tensor_slices((np.random.rand(4, 32, 32, 1).astype(np.float32),
                                             masks)).batch(2)
    seg = report_lib.evaluate_segmenter(segmenter, ds, ("left_lung", "right_lung"))
    assert set(seg["structures"]) == {"left_lung", "right_lung", "lungs"}
    with pytest.raises(ValueError, match="Unknown structures"):
        report_lib.evaluate_segmenter(segmenter, ds, ("liver",))


def test_bad_inputs_get_clear_errors(tiny_run, tiny_config, tiny_builder, tiny_segmenter_path,
                                     tmp_path):
    with pytest.raises(FileNotFoundError, match="Model not found"):
        inference.load_predictor(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="not a classifier"):
        inference.load_predictor(tiny_segmenter_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        inference.load_predictor(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no box features"):
        pipeline.examples_dataset(tiny_builder, "test", with_boxes=True)
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        workflow.evaluate(None, tiny_builder, tiny_config, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="signature"):
        inference.load_predictor(tiny_run[1], signature="nope")


def _binary(*args):
    env = environment.for_subprocess()
    return subprocess.run([sys.executable, "-m", "pipelines.evaluate", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_binary_help_tells_a_new_user_what_to_do():
    out = _binary("--help").stdout
    for needle in ("SavedModel", "Youden", "bootstrap", "--cam_threshold", "--segmenter_model",
                   "--signature", "not measured here", "non-oracle"):
        assert needle in out, needle


def test_binary_on_a_saved_model(tiny_run, tiny_builder, tmp_path):
    _, export = tiny_run
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(tiny_builder.data_dir)))
    proc = _binary(f"--work_dir={tmp_path}", f"--model={export}", "--config=tiny",
                   f"--data_dir={data_dir}", "--segmenter_model=none", "--bootstrap=20",
                   "--overlays=1", f"--out_dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean AUROC" in proc.stdout and "95% CI" in proc.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["meta"]["model_source"] == "saved_model"
    bad = _binary(f"--work_dir={tmp_path}", f"--model={tmp_path / 'nope.keras'}")
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def test_feature_mask_is_recovered_from_the_real_head():
    """SavedModels return CAMs and coverage but no grid mask. Masked cells hold all-zero
    weighted features, so the real head (a 1x1 convolution) gives them exactly its bias, and
    the mask is recovered exactly from the CAMs."""
    from cxr_tf.evaluation import localization
    from cxr_tf.models import build_classifier
    model = build_classifier("chexnet", backbone="densenet_tiny", input_size=128)
    head = model.get_layer("head")
    channels = head.input.shape[-1]
    mask = np.zeros((4, 4), np.float32)
    mask[0:3, 1:4] = 1  # 9 of 16 cells kept
    features = np.random.default_rng(0).normal(size=(1, 4, 4, channels)).astype(np.float32)
    features *= mask[None, :, :, None]
    cams = np.asarray(head(features))[0]
    np.testing.assert_array_equal(cams[0, 0], np.asarray(head.bias))
    np.testing.assert_array_equal(localization.grid_mask_from_cams(cams, 9 / 16), mask)
