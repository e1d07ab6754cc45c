"""A tiny end-to-end run of every binary, as a user runs them (separate processes)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cxr_tf import environment

BINARIES = ["build_dataset", "train_segmenter", "train_classifier", "evaluate", "export",
            "predict", "rest", "ablation", "demo"]


def run(binary, *args, check=True):
    env = environment.for_subprocess()
    proc = subprocess.run([sys.executable, "-m", f"pipelines.{binary}", *args],
                          capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{binary} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.parametrize("binary", BINARIES)
def test_help_explains_the_binary(binary):
    out = run(binary, "--help", check=False).stdout  # absl exits 1 after --help
    assert "USAGE" in out or "flags:" in out
    assert len(out) > 300


@pytest.mark.slow
def test_every_binary_on_the_tiny_config(tmp_path):
    work = str(tmp_path / "work")
    common = [f"--work_dir={work}", "--config=tiny", "--quiet"]
    run("build_dataset", *common)
    assert os.path.isdir(os.path.join(work, "tfds", "synthetic_cxr"))
    out = run("train_segmenter", *common).stdout
    assert "segmenter" in out and os.path.exists(os.path.join(work, "segmenter", "best.keras"))
    run("train_classifier", *common, "--epochs=1")
    assert os.path.exists(os.path.join(work, "classifier", "best.keras"))
    out = run("evaluate", *common[:1], "--bootstrap=50").stdout
    assert "mean AUROC" in out
    with open(os.path.join(work, "eval", "report.json")) as f:
        report = json.load(f)
    assert report["meta"]["split"] == "test" and len(report["classification"]["classes"]) == 14
    assert "lungs" in report["segmentation"]["structures"]
    out = run("export", f"--work_dir={work}").stdout
    export_path = out.split("saved_model ")[-1].strip()
    assert export_path.endswith(os.path.join("export", "1"))

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (80, 70), dtype=np.uint8))
    cv2.imwrite(str(images / "b.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("ignored")
    proc = run("predict", f"--model={os.path.join(work, 'export')}", str(images), check=False)
    assert proc.returncode == 3, proc.stderr  # one file failed (data, docs/errors.md)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(os.path.basename(r["file"]) for r in lines) == ["a.png", "b.jpg"]
    assert all(len(r["probabilities"]) == 14 for r in lines)
    assert "broken.png" in proc.stderr and "notes.txt" in proc.stderr
    assert "2 predicted, 1 failed, 1 skipped" in proc.stderr


def test_demo_prints_machine_readable_figures(tmp_path):
    work = str(tmp_path / "demo")
    proc = run("demo", f"--work_dir={work}", "--config=tiny", "--quiet")
    lines = proc.stdout.strip().splitlines()
    assert lines[-7].startswith("demo finished in ")
    assert lines[-6].startswith("mean AUROC ") and 0 <= float(lines[-6].split()[-1]) <= 1
    assert lines[-5].startswith("lung Dice ") and 0 <= float(lines[-5].split()[-1]) <= 1
    assert lines[-4].startswith("heart Dice ")
    assert lines[-3] == f"work_dir {os.path.abspath(work)}"
    assert os.path.exists(lines[-2].split(" ", 1)[1])  # report
    assert os.path.exists(os.path.join(lines[-1].split(" ", 1)[1], "saved_model.pb"))
    assert "serving_default" in proc.stdout and "Hernia" in proc.stdout
    both = proc.stdout + proc.stderr
    assert both.count("95% CI") == 1  # the AUROC table, logged once by the evaluation step
    assert "Segmentation on" in proc.stderr and "right_lung" in proc.stderr
    with open(os.path.join(work, "classifier", "experiment.json")) as f:
        # No preemption handler: the demo attempts no network access (no metadata probe).
        assert json.load(f)["config"]["classifier"]["handle_preemption"] is False
