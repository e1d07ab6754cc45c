"""The report from known arrays: scikit-learn agreement, JSON, Markdown layout, figures, CSV."""

import json

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_tf import labels
from cxr_tf.evaluation import report as report_lib

C = labels.NUM_FINDINGS


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    y = (rng.random((300, C)) < 0.2).astype(int)
    y[:, -1] = 0  # Hernia: no positive -> undefined
    p = np.clip(rng.random((300, C)) * 0.7 + 0.3 * y, 0, 1)
    return y, p


def test_classification_report_agrees_with_sklearn(arrays):
    y, p = arrays
    thresholds = np.full(C, 0.4)
    rep = report_lib.classification_report(y, p, thresholds, "fixed for the test",
                                           n_resamples=100, seed=1)
    json.dumps(rep)
    for c, entry in enumerate(rep["classes"][:-1]):
        assert entry["auroc"] == pytest.approx(skm.roc_auc_score(y[:, c], p[:, c]))
        assert entry["ci_low"] <= entry["auroc"] <= entry["ci_high"]
        assert entry["sensitivity"] == pytest.approx(skm.recall_score(y[:, c], p[:, c] >= 0.4))
        assert entry["brier"] == pytest.approx(skm.brier_score_loss(y[:, c], p[:, c]))
    assert rep["classes"][-1]["auroc"] is None and rep["undefined_classes"] == ["Hernia"]
    assert rep["classes_in_mean"] == C - 1
    assert rep["mean_auroc"] == pytest.approx(np.mean([c["auroc"] for c in rep["classes"][:-1]]))
    assert rep["threshold_rule"] == "fixed for the test"
    assert report_lib.classification_report(y, p, n_resamples=0)["threshold_rule"].startswith("0.5")
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        report_lib.classification_report(y[:, :3], p[:, :3])


def test_markdown_sections_and_figures(arrays, tmp_path):
    y, p = arrays
    clf = report_lib.classification_report(y, p, n_resamples=50)
    clf["figures"] = report_lib.write_figures(clf, y, p, str(tmp_path), title="test")
    for name in clf["figures"].values():
        assert cv2.imread(str(tmp_path / name)) is not None
    md = report_lib.markdown({"meta": {"model_name": "mine"}, "classification": clf})
    assert "**mine: AUROC (measured here)**" in md
    assert md.count("| — | — | — | — |") == C
    assert "Hernia" in md and "Undefined AUROC" in md
    assert "### Operating points" in md and "### Calibration" in md and "roc.png" in md


def test_predictions_csv_round_trip(arrays, tmp_path):
    y, p = arrays
    path = str(tmp_path / "predictions.csv")
    report_lib.write_predictions_csv({"ids": [f"i{k}" for k in range(len(y))], "labels": y,
                                      "probabilities": p}, path)
    back = report_lib.read_predictions_csv(path)
    assert back["ids"][:2] == ["i0", "i1"]
    np.testing.assert_array_equal(back["labels"], y)
    np.testing.assert_allclose(back["probabilities"], p, atol=1e-6)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a cxr_tf predictions.csv"):
        report_lib.read_predictions_csv(str(tmp_path / "bad.csv"))
