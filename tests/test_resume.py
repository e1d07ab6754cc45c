"""Interrupted training resumes exactly: SIGKILL mid-epoch, and preemption (SIGTERM).

Each run is the real `cxr-train-classifier` binary in a fresh process (tests/training_child.py
"binary" mode), on the tiny preset: 48 training images, global batch 8 = 6 steps per epoch,
2 epochs = 12 steps, a checkpoint every 2 steps, deterministic ops.

Tolerance: the final checkpoints (model weights, optimizer slots, loop position) of the
interrupted-and-resumed runs must equal the uninterrupted run's within atol 1e-6 (measured
difference on this machine: 0, bitwise identical, with TF_ENABLE_ONEDNN_OPTS=1 as the binaries
set it).
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "training_child.py")
ATOL = 1e-6
# Variables that legitimately differ between an interrupted and an uninterrupted run.
BOOKKEEPING = ("save_counter", "checkpointed_runs", "_CHECKPOINTABLE_OBJECT_GRAPH")


def data_root(builder):
    """The --data_dir a builder was built under (TFDS puts it in <root>/<name>/<config>/<ver>)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))


def run_binary(work_dir, builder, segmenter, kill_at=0, signame="KILL", timeout=600):
    flags = [f"--work_dir={work_dir}", "--config=tiny", f"--data_dir={data_root(builder)}",
             f"--segmenter={segmenter}", "--epochs=2", "--checkpoint_every_steps=2",
             "--deterministic", "--quiet"]
    return subprocess.run([sys.executable, CHILD, "binary", str(kill_at), signame, "--", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def checkpoint_dir(work_dir):
    return os.path.join(work_dir, "classifier", "checkpoints")


def latest_checkpoint(work_dir):
    import tensorflow as tf
    return tf.train.latest_checkpoint(checkpoint_dir(work_dir))


def read_checkpoint(path):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not any(b in name for b in BOOKKEEPING)}


def position(path):
    values = read_checkpoint(path)
    get = lambda key: int(values[f"{key}/.ATTRIBUTES/VARIABLE_VALUE"])  # noqa: E731
    return get("epoch"), get("step_in_epoch"), get("global_step")


def assert_same_final_state(reference_dir, resumed_dir):
    ref, res = latest_checkpoint(reference_dir), latest_checkpoint(resumed_dir)
    assert os.path.basename(ref) == os.path.basename(res) == "ckpt-12"
    a, b = read_checkpoint(ref), read_checkpoint(res)
    assert sorted(a) == sorted(b)
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
                if a[k].dtype.kind in "fiu" else 0.0 for k in a)
    print(f"max |difference| over {len(a)} checkpointed tensors: {worst:.3g}")
    assert worst <= ATOL


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_builder, tiny_segmenter_path):
    """The uninterrupted run every interrupted one must reproduce."""
    work = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = run_binary(work, tiny_builder, tiny_segmenter_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert position(latest_checkpoint(work)) == (2, 0, 12)
    return work


@pytest.mark.slow
def test_sigkill_mid_epoch_then_restart_ends_with_the_same_weights(
        reference_run, tiny_builder, tiny_segmenter_path, tmp_path):
    work = str(tmp_path)
    # Killed while writing checkpoint 10: steps 9-10 of epoch 2 are lost, checkpoint 8 is the
    # latest (epoch 1 done, 2 steps into epoch 2).
    killed = run_binary(work, tiny_builder, tiny_segmenter_path, kill_at=10, signame="KILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert position(latest_checkpoint(work)) == (1, 2, 8)
    # The same command again: resumes from checkpoint 8 without being told.
    resumed = run_binary(work, tiny_builder, tiny_segmenter_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at step 3" in resumed.stderr
    assert_same_final_state(reference_run, work)


@pytest.mark.slow
def test_preemption_signal_checkpoints_exits_and_resumes_to_the_same_weights(
        reference_run, tiny_builder, tiny_segmenter_path, tmp_path):
    work = str(tmp_path)
    # SIGTERM arrives during step 4's checkpoint: TensorFlow's PreemptionCheckpointHandler
    # saves at the next step (5, mid-epoch 1) and exits with its restart code 42.
    preempted = run_binary(work, tiny_builder, tiny_segmenter_path, kill_at=4, signame="TERM")
    assert preempted.returncode == 42, preempted.stderr[-3000:]
    assert position(latest_checkpoint(work)) == (0, 5, 5)
    resumed = run_binary(work, tiny_builder, tiny_segmenter_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at step 6" in resumed.stderr
    assert_same_final_state(reference_run, work)
