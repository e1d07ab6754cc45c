"""Faults a team meets in its first week, planted on a tiny phantom work directory: a second
writer, shards cut short, overwritten or deleted, divergence, a file-size limit during a
checkpoint and an export, SIGKILL during an export. Each must end in one line naming the file or
stage and what to do, with the documented exit code (cxr_tf.errors, docs/errors.md), and must
lose nothing written before."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import configs, environment, errors, files, workflow
from cxr_tf.data import datasets
from cxr_tf.training import loop, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary(name, *args, file_size_limit=None, wait=True):
    """Runs `python -m pipelines.<name>` as a user would; returns the finished process (or the
    running one with wait=False)."""
    env = environment.for_subprocess()

    def limit():
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    cmd = [sys.executable, "-m", f"pipelines.{name}", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)


def error_line(proc):
    """The last stderr line, which must be the binary's one-line error; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert ": error: " in line, proc.stderr[-3000:]
    return line


@pytest.fixture(scope="module")
def base_work(tmp_path_factory, tiny_config, tiny_builder, tiny_segmenter_path):
    """WORK_DIR with the tiny phantoms, a segmenter and a classifier trained for one epoch."""
    work = tmp_path_factory.mktemp("faults") / "work"
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.dirname(tiny_builder.data_dir))),
                    work / "tfds")
    # The segmenter is named by a path outside the work directory, so copies resume alike.
    workflow.train_classifier(tiny_config, str(work), segmenter=tiny_segmenter_path, verbose=0)
    workflow.export(str(work / "classifier" / "best.keras"), str(work / "export"))
    return work


@pytest.fixture
def work(base_work, tmp_path):
    """A fresh copy of base_work to damage."""
    shutil.copytree(base_work, tmp_path / "work")
    return tmp_path / "work"


def shard(work, split):
    (path,) = [os.path.join(r, n) for r, _, names in os.walk(work / "tfds") for n in names
               if f"-{split}.tfrecord-" in n]
    return path


def tiny_builder_in(work, tiny_config):
    return datasets.get_builder(tiny_config.data, str(work / "tfds"))


def checkpoints_of(run_dir):
    return sorted(os.listdir(os.path.join(run_dir, "checkpoints")))


# ---- one writer per stage --------------------------------------------------------------------

HOLDER = """
import sys, time
from cxr_tf import files
with files.stage_lock(sys.argv[1], "classifier"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(directory, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(seconds)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_trainer_is_refused_at_once_naming_stage_directory_and_holder(work):
    run_dir = work / "classifier"
    before = checkpoints_of(run_dir)
    holder = hold(run_dir, 60)
    try:
        with pytest.raises(errors.StageBusy, match=f"process {holder.pid}"):
            with files.stage_lock(str(run_dir), "classifier"):
                pass
        t0 = time.time()
        proc = binary("train_classifier", f"--work_dir={work}", "--config=tiny", "--epochs=2",
                      "--quiet")
        line = error_line(proc)
        assert proc.returncode == errors.EXIT_CODES["busy"] == 8
        assert f"the classifier stage {run_dir} is being written by process {holder.pid}" in line
        assert "--wait_for_lock" in line
        assert time.time() - t0 < 60 and holder.poll() is None  # refused, not waited
    finally:
        holder.kill()
        holder.wait()
    assert checkpoints_of(run_dir) == before
    # The lock died with its holder; asking to wait for a busy stage waits, then writes.
    holder = hold(run_dir, 1.5)
    t0 = time.time()
    with files.waiting_for_stages(), files.stage_lock(str(run_dir), "classifier"):
        assert time.time() - t0 > 0.5
    holder.wait()


def test_reading_a_stage_another_process_writes_stays_allowed(work, tiny_config):
    holder = hold(work / "classifier", 60)
    try:
        report = workflow.evaluate(str(work / "classifier" / "best.keras"),
                                   tiny_builder_in(work, tiny_config), tiny_config,
                                   str(work / "eval"), n_resamples=0, max_overlays=0)
        assert report["classification"]["n_images"] == 24
    finally:
        holder.kill()
        holder.wait()


def test_the_same_process_may_enter_its_own_stage_again(tmp_path):
    with files.stage_lock(str(tmp_path), "eval"), files.stage_lock(str(tmp_path), "eval"):
        pass


# ---- damaged data found early and named ------------------------------------------------------

def test_shards_cut_short_grown_or_missing_are_named_before_reading(work, tiny_config):
    builder = tiny_builder_in(work, tiny_config)
    train_shard = shard(work, "train")
    size = os.path.getsize(train_shard)
    os.truncate(train_shard, size // 2)
    with pytest.raises(errors.DamagedData, match=(
            rf"split 'train': shard file {train_shard} is {size // 2:,} bytes, the build wrote "
            rf"{size:,} \(cut short\); remove {builder.data_dir} and run")):
        datasets.load_split(builder, "train")
    with open(train_shard, "ab") as f:
        f.write(b"\0" * (size - size // 2 + 3))
    with pytest.raises(errors.DamagedData, match=r"\(grown\)"):
        datasets.load_split(builder, "train")
    os.remove(shard(work, "validation"))
    with pytest.raises(errors.DamagedData, match="split 'validation': shard file .* is missing"):
        datasets.load_split(builder, "validation")
    datasets.load_split(builder, "test")  # untouched splits still read


def test_records_built_without_the_manifest_are_checked_against_tfds_counts(work, tiny_config):
    builder = tiny_builder_in(work, tiny_config)
    os.remove(os.path.join(builder.data_dir, datasets.SHARDS_MANIFEST))
    datasets.load_split(builder, "test")  # agrees with TFDS's byte count: manifest written
    assert os.path.exists(os.path.join(builder.data_dir, datasets.SHARDS_MANIFEST))
    os.remove(os.path.join(builder.data_dir, datasets.SHARDS_MANIFEST))
    test_shard = shard(work, "test")
    os.truncate(test_shard, os.path.getsize(test_shard) - 100)
    with pytest.raises(errors.DamagedData,
                       match=f"split 'test': shard file {test_shard} is damaged after record"):
        datasets.load_split(builder, "test")


def overwrite_middle(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 8)


def test_an_overwritten_record_ends_the_run_naming_the_shard_and_keeps_the_checkpoint(
        work, tiny_config, tiny_segmenter_path):
    builder = tiny_builder_in(work, tiny_config)
    overwrite_middle(shard(work, "test"))
    datasets.verify_split(builder, "test")  # same size: only reading finds it
    with pytest.raises(errors.DamagedData, match=(
            rf"split 'test': shard file {shard(work, 'test')} is damaged after record \d+ of "
            rf"24 \(corrupted record at \d+\)")):
        with datasets.naming_damage():
            for _ in datasets.load_split(builder, "test"):
                pass
    run_dir = work / "classifier"
    before = checkpoints_of(run_dir)
    overwrite_middle(shard(work, "train"))
    config = configs.tiny()
    config.classifier.epochs = 2
    with pytest.raises(errors.DamagedData, match="split 'train': shard file .*-train.tfrecord"):
        workflow.train_classifier(config, str(work), segmenter=tiny_segmenter_path, verbose=0)
    assert checkpoints_of(run_dir) == before
    assert len(json.load(open(run_dir / "history.json"))) == 1


def test_a_damaged_shard_is_one_line_with_exit_code_3_from_the_binaries(work):
    overwrite_middle(shard(work, "test"))
    proc = binary("evaluate", f"--work_dir={work}", "--config=tiny", "--bootstrap=0",
                  "--overlays=0")
    line = error_line(proc)
    assert proc.returncode == errors.EXIT_CODES["data"] == 3
    assert f"split 'test': shard file {shard(work, 'test')} is damaged after record" in line
    assert "run the same command again to rebuild it" in line
    assert not os.path.exists(work / "eval" / "report.json") or os.path.getmtime(
        work / "eval" / "report.json") < os.path.getmtime(shard(work, "test"))


# ---- divergence leaves a record --------------------------------------------------------------

def test_divergence_keeps_finished_epochs_best_model_and_the_last_finite_checkpoint(tmp_path):
    poison = tf.Variable(0.0)

    def loss(y, p):  # NaN from the moment validation poisons it
        mse = keras.losses.mean_squared_error(y, p)
        return tf.where(poison > 0, tf.fill(tf.shape(mse), np.nan), mse)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    trainer = loop.Trainer(model, loss, keras.optimizers.SGD(0.1), tf.distribute.get_strategy(),
                           str(tmp_path), "auc", handle_preemption=False)
    ds = tf.data.Dataset.from_tensor_slices((np.ones((4, 2), "float32"),
                                             np.ones((4, 1), "float32"))).batch(2)

    def validate(m):
        poison.assign(1.0)
        return {"auc": 0.5}

    with pytest.raises(errors.Diverged, match=(
            r"Training loss became nan at epoch 2, step 1 \(global step 3\) .*the last finite "
            r"checkpoint .*ckpt-2 and best.keras are kept; rerun with a lower learning rate")):
        trainer.fit(ds, 3, 2, validate=validate, verbose=0)
    history = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2] and "diverged" not in history[0]
    assert history[1]["diverged"] and history[1]["step_in_epoch"] == 1
    assert history[1]["last_checkpoint"] == "ckpt-2"
    assert os.path.exists(tmp_path / "best.keras")
    assert checkpoints_of(tmp_path) == ["checkpoint", "ckpt-2.data-00000-of-00001",
                                        "ckpt-2.index"]


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    trainer = loop.Trainer(model, keras.losses.mean_squared_error, keras.optimizers.SGD(0.1),
                           tf.distribute.get_strategy(), str(tmp_path), "auc",
                           handle_preemption=False)
    model.layers[0].kernel.assign(np.full((2, 1), np.inf, "float32"))
    with pytest.raises(errors.Diverged, match="weights became NaN or infinite"):
        trainer.save_checkpoint()
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) is None


def test_a_rerun_after_divergence_resumes_at_a_lower_learning_rate(
        tiny_builder, tiny_segmenter_path, tmp_path, monkeypatch):
    steps = tf.Variable(0)
    honest = train.classifier_loss

    def diverging_loss(*args, **kwargs):  # NaN from the first step of epoch 2 (6 steps each)
        loss_fn, weights = honest(*args, **kwargs)

        def loss(y, p):
            value = loss_fn(y, p)
            steps.assign_add(1)
            return tf.where(steps > 6, tf.fill(tf.shape(value), np.nan), value)
        return loss, weights

    monkeypatch.setattr(train, "classifier_loss", diverging_loss)
    config = configs.tiny()
    config.classifier.epochs = 2
    config.classifier.learning_rate = 1e-2
    with pytest.raises(errors.Diverged, match="epoch 2, step 1.*the last finite checkpoint"):
        train.train_classifier(config, tiny_builder, str(tmp_path),
                               segmenter_path=tiny_segmenter_path, verbose=0)
    monkeypatch.setattr(train, "classifier_loss", honest)
    best = (tmp_path / "best.keras").read_bytes()
    history = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["diverged"]
    assert history[1]["last_checkpoint"] == "ckpt-6"
    config.classifier.learning_rate = 2e-2  # only a lower rate may go on
    with pytest.raises(train.ResumeMismatch, match="learning_rate"):
        train.train_classifier(config, tiny_builder, str(tmp_path),
                               segmenter_path=tiny_segmenter_path, verbose=0)
    assert (tmp_path / "best.keras").read_bytes() == best
    config.classifier.learning_rate = 1e-4
    train.train_classifier(config, tiny_builder, str(tmp_path),
                           segmenter_path=tiny_segmenter_path, verbose=0)
    history2 = json.load(open(tmp_path / "history.json"))
    assert history2[:2] == history and history2[2]["epoch"] == 2
    assert history2[2]["learning_rate"] == pytest.approx(1e-4)
    assert history2[0]["learning_rate"] == pytest.approx(1e-2)
    segments = json.load(open(tmp_path / "experiment.json"))["segments"]
    assert segments[-1]["after_divergence"] and segments[-1]["from_epoch"] == 1
    assert segments[-1]["changed"]["classifier.learning_rate"] == [1e-2, 1e-4]


def test_divergence_is_one_line_with_exit_code_4(tmp_path, base_work):
    work = tmp_path / "work"
    shutil.copytree(base_work / "tfds", work / "tfds")
    proc = binary("train_classifier", f"--work_dir={work}", "--config=tiny",
                  "--learning_rate=1e6", "--variant=chexnet", "--quiet")
    line = error_line(proc)
    assert proc.returncode == errors.EXIT_CODES["divergence"] == 4
    assert "Training loss became nan at epoch 1" in line and "lower learning rate" in line
    assert json.load(open(work / "classifier_chexnet" / "history.json"))[-1]["diverged"]


# ---- disk limits and kills -------------------------------------------------------------------

def test_a_file_size_limit_during_a_checkpoint_keeps_the_earlier_one(work, tiny_segmenter_path):
    run_dir = work / "classifier"
    before = checkpoints_of(run_dir)
    best = (run_dir / "best.keras").read_bytes()
    size = os.path.getsize(run_dir / "checkpoints" / [n for n in before if ".data-" in n][0])
    assert size > len(best) + 1024  # so the limit below falls on the epoch's checkpoint
    proc = binary("train_classifier", f"--work_dir={work}", "--config=tiny", "--epochs=2",
                  f"--segmenter={tiny_segmenter_path}", "--quiet",
                  file_size_limit=max(len(best), 4096) + 1024)
    line = error_line(proc)
    assert proc.returncode == errors.EXIT_CODES["disk"] == 5
    assert "File too large" in line and str(run_dir) in line and "rerun" in line
    assert checkpoints_of(run_dir) == before  # no ckpt-N_temp left, the old one intact
    assert not [n for n in os.listdir(run_dir) if n.startswith(files.TMP_PREFIX)]
    restored = tf.train.load_checkpoint(str(run_dir / "checkpoints" / before[1].split(".")[0]))
    assert restored.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1


def versions(export):
    return sorted(n for n in os.listdir(export) if n.isdigit())


def test_a_file_size_limit_during_export_keeps_earlier_versions(work):
    export = work / "export"
    first = (export / "1" / "saved_model.pb").read_bytes()
    proc = binary("export", f"--work_dir={work}", file_size_limit=200 * 1024)
    line = error_line(proc)
    assert proc.returncode == errors.EXIT_CODES["disk"]
    assert "File too large" in line and str(export) in line
    assert versions(export) == ["1"] and (export / "1" / "saved_model.pb").read_bytes() == first
    assert not [n for n in os.listdir(export) if n.startswith(files.TMP_PREFIX)]


def test_sigkill_during_export_leaves_no_partial_version(work):
    export = work / "export"
    proc = binary("export", f"--work_dir={work}", wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(n.startswith(files.TMP_PREFIX) for n in os.listdir(export)):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Version 2 is there whole or not at all; what the kill left is a temporary the next
    # export removes (tests/test_export.py::test_interrupted_exports_are_cleaned_...).
    assert versions(export) in (["1"], ["1", "2"])
    for v in versions(export):
        assert os.path.exists(export / v / "saved_model.pb")
        assert os.path.exists(export / v / "variables" / "variables.index")


def test_a_file_that_is_not_a_model_is_one_line_with_exit_code_7(work):
    best = work / "classifier" / "best.keras"
    best.write_bytes(best.read_bytes()[:1000])  # a copy cut short
    proc = binary("export", f"--work_dir={work}")
    line = error_line(proc)
    assert proc.returncode == errors.EXIT_CODES["model_file"] == 7
    assert f"{best} is not a Keras model file" in line and "retrain, or copy the file again" in line
    assert [n for n in os.listdir(work / "export") if n.isdigit()] == ["1"]


# ---- the classes -----------------------------------------------------------------------------

@pytest.mark.parametrize("exc, kind", [
    (errors.StageBusy("x"), "busy"),
    (errors.DamagedData("x"), "data"),
    (errors.NotAModelFile("x"), "model_file"),
    (errors.Diverged("x"), "divergence"),
    (FileNotFoundError(2, "No such file or directory", "a.png"), "data"),
    (OSError(28, "No space left on device"), "disk"),
    (OSError(27, "File too large"), "disk"),
    (PermissionError(13, "Permission denied", "/root/x"), "permission"),
    (tf.errors.PermissionDeniedError(None, None, "/w: Permission denied"), "permission"),
    (tf.errors.OutOfRangeError(None, None, "/w/x.tempstate1; File too large"), "disk"),
    (tf.errors.ResourceExhaustedError(None, None, "/w/x; No space left on device"), "disk"),
    (tf.errors.DataLossError(None, None, "corrupted record at 12"), "data"),
    (KeyError("a bug"), None),
    (RuntimeError("a bug"), None),
])
def test_failure_classes(exc, kind):
    assert errors.classify(exc) == kind


def test_a_value_error_from_inside_a_library_is_a_bug_not_a_usage_error():
    try:
        np.zeros(3).reshape(2)
    except ValueError as e:
        assert errors.classify(e) is None
    with pytest.raises(ValueError) as raised:
        configs.check_training_options(dataclasses_replace_lr(configs.tiny().classifier, -1.0))
    assert errors.classify(raised.value) == "usage"


def dataclasses_replace_lr(options, lr):
    import dataclasses
    return dataclasses.replace(options, learning_rate=lr)


def test_bad_flags_are_one_line_with_exit_code_2(tmp_path):
    proc = binary("evaluate", f"--work_dir={tmp_path}", "--bootstrap=-3")
    line = error_line(proc)
    assert proc.returncode == errors.EXIT_CODES["usage"] == 2 and "--bootstrap" in line
    proc = binary("evaluate", "--no_such_flag=1")
    assert proc.returncode == 2 and "no_such_flag" in error_line(proc)
