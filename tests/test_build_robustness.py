"""Builds survive kills and company: decode workers die with a killed build, the next build
removes what the killed one left, and two builds of one data set take turns."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from cxr_tf import environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_command(work, num_train):
    return [sys.executable, "-m", "pipelines.build_dataset", f"--work_dir={work}",
            "--config=tiny", f"--num_train={num_train}", "--image_size=64"]


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to follow processes")
def test_killed_build_takes_its_workers_along_and_the_next_build_cleans_up(tmp_path):
    env = environment.for_subprocess(CXR_TF_BUILD_WORKERS="2")
    proc = subprocess.Popen(build_command(tmp_path, 3000), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, deadline = [], time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [c for c in children(proc.pid) if "spawn" in open(
            f"/proc/{c}/cmdline", "rb").read().decode(errors="replace")]
    assert len(workers) >= 2, "the build never started its decode workers"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)], "decode workers outlived the killed build"
    stale = glob.glob(str(tmp_path / "tfds" / "synthetic_cxr" / "*" / "incomplete.*"))
    assert stale  # what the kill left
    done = subprocess.run(build_command(tmp_path, 3000), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left by an interrupted build" in done.stderr
    assert not glob.glob(str(tmp_path / "tfds" / "synthetic_cxr" / "*" / "incomplete.*"))


def test_two_builds_of_one_data_set_take_turns(tmp_path):
    env = environment.for_subprocess()
    procs = [subprocess.Popen(build_command(tmp_path, 300), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    versions = glob.glob(str(tmp_path / "tfds" / "synthetic_cxr" / "*" / "1.0.0"))
    assert len(versions) == 1
    assert not glob.glob(str(tmp_path / "tfds" / "synthetic_cxr" / "*" / "incomplete.*"))
