"""Errors users meet say what is wrong, with the file or field, and the binaries print them
without a traceback (unless --traceback is given)."""

import os
import subprocess
import sys

import pytest

from cxr_tf import configs, environment
from cxr_tf.models import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("content, expected", [
    (b"", "is not a Keras model file .*this is an empty file"),
    (b"hello, I am text\n", "is not a Keras model file .*starting with b'hello"),
    (b"PK\x03\x04" + b"\x00" * 40, "not a Keras model file|cannot load the Keras model"),
])
def test_a_damaged_model_file_is_not_called_missing(tmp_path, content, expected):
    path = tmp_path / "segmenter.keras"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as err:
        load_model(str(path))
    assert "File not found" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(str(tmp_path / "missing.keras"))


def test_a_negative_learning_rate_is_blamed_on_the_learning_rate():
    config = configs.tiny()
    config.classifier.learning_rate = -0.1
    with pytest.raises(ValueError, match=r"classifier.learning_rate = -0.1: expected a positive"):
        configs.check_training_options(config.classifier, "classifier")


def run(binary, *args):
    env = environment.for_subprocess()
    return subprocess.run([sys.executable, "-m", f"pipelines.{binary}", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)


def test_binaries_print_clear_errors_without_a_traceback(tmp_path):
    proc = run("build_dataset", f"--work_dir={tmp_path}", "--config=paper",
               "--dataset=chestxray14", f"--manual_dir={tmp_path / 'nowhere'}")
    assert proc.returncode == 3  # data (docs/errors.md)
    assert "Traceback" not in proc.stderr
    assert "cxr-build-dataset" in proc.stderr or "build_dataset" in proc.stderr
    assert f"manual_dir {tmp_path / 'nowhere'} does not exist" in proc.stderr
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    proc = run("train_classifier", f"--work_dir={tmp_path}", "--config=tiny",
               f"--segmenter={bad}", "--learning_rate=-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # usage
    assert "classifier.learning_rate = -1.0: expected a positive number" in proc.stderr
    proc = run("build_dataset", f"--work_dir={tmp_path}", "--config=paper",
               "--dataset=chestxray14", f"--manual_dir={tmp_path / 'nowhere'}", "--traceback")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
