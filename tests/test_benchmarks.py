"""Smoke tests of benchmarks/: every script runs for a step or two, so none of them can rot.

No figure is asserted (machines are noisy; BENCHMARKS.md holds the measured ones). The TensorFlow
parts always run. The PyTorch and JAX parts skip, saying why, when those are not installed: CI
installs only `.[cpu,test]`; `pip install -e '.[bench]'` adds PyTorch (the local CPU wheel) and
`pip install jax` the CPU JAX used to check gpu_train.py's Keras-on-JAX path.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from cxr_tf import environment

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
BENCH = os.path.join(REPO, "benchmarks")
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch is not installed: the PyTorch reference runs only with the "
                          "`bench` extra (pip install -e '.[bench]'); CI installs .[cpu,test]")
needs_jax = pytest.mark.skipif(
    not HAS_JAX, reason="JAX is not installed (pip install jax): only needed to check "
                        "gpu_train.py's Keras-on-JAX path on a CPU")
TORCH_SCRIPTS = ("torch_reference.py", "torch_bench.py")
SCRIPTS = ("run_all.py", "segmenter_size.py", "serving_latency.py", "gpu_train.py",
           "keras_bench.py", "data_throughput.py", "serving_warmup.py", "validation_trace.py",
           "segmenter_recipe.py") + TORCH_SCRIPTS

# Makes `import tensorflow` fail, as on the GPU host (PyTorch and JAX, no TensorFlow).
HIDE_TENSORFLOW = """
import importlib.abc, runpy, sys
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None
sys.meta_path.insert(0, _NoTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(args, env=None, timeout=900):
    """Runs `python ARGS` in the repository root; returns stdout; fails with the output."""
    e = environment.for_subprocess(**(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    if script in TORCH_SCRIPTS and not HAS_TORCH:
        pytest.skip("PyTorch is not installed (the `bench` extra)")
    out = run([os.path.join("benchmarks", script), "--help"], timeout=120)
    assert "usage:" in out


@pytest.mark.slow
def test_run_all_smoke(tmp_path):
    """All three sections with tiny models; the PyTorch peer when installed."""
    out_json = tmp_path / "run_all.json"
    out = run(["benchmarks/run_all.py", "--smoke", f"--json_out={out_json}"])
    assert "| measurement | cxr_tf | peer | ratio | target | met |" in out
    result = json.loads(out_json.read_text())
    rows = {r[0]: r for r in result["rows"]}
    serving = next(r for name, r in rows.items() if name.startswith("serving latency"))
    assert serving[1] > 0
    overhead = next(r for name, r in rows.items() if "overhead" in name)
    assert overhead[1] > -1.0
    for row in rows.values():
        assert (row[2] is not None) == HAS_TORCH or row[0].startswith(("input", "dataset"))
    if os.path.isdir(os.path.join(REPO, "..", "shared", "data", "chestxray14_sample")):
        assert any(name.startswith("input pipeline") for name in rows)
    else:
        assert "skipped" in result["details"]["data"]


@pytest.mark.slow
def test_segmenter_size_smoke(tmp_path):
    """Train two tiny U-Nets, score them against the reference, time one inline."""
    out = run(["benchmarks/segmenter_size.py", f"--work_dir={tmp_path}", "--sizes=32:4,16:4:2",
               "--reference=32:4", "--overhead_sizes=16:4:2", "--image_size=64",
               "--num_train=16", "--num_validation=8", "--num_test=8", "--epochs=1",
               "--batch_size=8", "--input_size=64", "--backbone=densenet_tiny",
               "--overhead_batch=2", "--overhead_steps=1", "--repeats=1"])
    assert "| U-Net (input, base filters, depth)" in out
    with open(tmp_path / "segmenter_size.json") as f:
        result = json.load(f)
    assert set(result["score"]) == {"32px_4f_d4", "16px_4f_d2"}
    assert result["score"]["32px_4f_d4"]["union_dice_vs_reference"] == 1.0
    assert set(result["overhead"]["overhead"]) == {"16px_4f_d2"}


def test_serving_latency_smoke():
    out = run(["benchmarks/serving_latency.py", "--smoke"])
    assert "cxr_tf SavedModel (default U-Net)" in out and "latency_ms_b1" in out


def test_serving_warmup_smoke(tmp_path):
    pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api protos not "
                        "installed (make install does it)")
    out = run(["benchmarks/serving_warmup.py", f"--work_dir={tmp_path}", "--input_size=64",
               "--resize_size=64", "--calls=1"])
    rows = {r["mode"]: r for r in map(json.loads, [x for x in out.splitlines()
                                                   if x.startswith("{")])}
    assert rows["cold"]["first_call_ms"] > 0 and rows["warmup"]["warmup_replay_s"] > 0
    assert rows["batch"]["batch_16_images_per_s"] > 0


def test_validation_trace_smoke():
    out = run(["benchmarks/validation_trace.py", "--backbone=densenet_tiny", "--input_size=64",
               "--images=10", "--batch_size=4", "--passes=2"])
    rows = {r["mode"]: r for r in map(json.loads, [x for x in out.splitlines()
                                                   if x.startswith("{")])}
    # One trace per pass with a fresh runner, one in all with a reused one (the last, smaller
    # batch of 2 shares the trace: the batch dimension is open).
    assert rows["fresh"]["traces"] == 2 and rows["reused"]["traces"] == 1
    assert len(rows["reused"]["pass_seconds"]) == 2


def test_keras_bench_tensorflow_smoke():
    out = run(["benchmarks/keras_bench.py", "--config=mask_input", "--backbone=densenet_tiny",
               "--input_size=64", "--batch_size=2", "--steps=1", "--repeats=1"])
    assert json.loads(out.strip().splitlines()[-1])["backend"] == "tensorflow"


def test_paper_segmenter_fits_the_classifier():
    """The `paper` preset's inline U-Net size divides by 2**depth and by the 7 x 7 grid."""
    from cxr_tf import configs
    seg, clf = configs.paper().segmenter, configs.paper().classifier
    grid = clf.input_size // 32
    assert seg.input_size % 2 ** seg.depth == 0 and seg.input_size % grid == 0
    sys.path.insert(0, BENCH)
    try:
        import keras_bench
        assert keras_bench.default_segmenter() == (seg.input_size, seg.base_filters, seg.depth)
    finally:
        sys.path.remove(BENCH)


@needs_torch
def test_torch_reference_matches_the_published_cost():
    """The authors' U-Net: 61 GFLOPs per 224 px image forward; the classifier 5.8 (issue 7)."""
    import torch
    sys.path.insert(0, BENCH)
    try:
        import torch_reference as tr
    finally:
        sys.path.remove(BENCH)
    unet = tr.UNet(1, 1, 64, 4).eval()
    assert tr.flops(unet, torch.rand(1, 1, 224, 224)) / 1e9 == pytest.approx(61.1, rel=0.01)
    model = tr.build("mask_input").eval()
    image, mask = torch.rand(1, 1, 224, 224), torch.ones(1, 1, 224, 224)
    assert tr.flops(model, image, mask) / 1e9 == pytest.approx(5.77, rel=0.02)
    assert tr.count_parameters(model.backbone) == pytest.approx(6.95e6, rel=0.01)


@needs_torch
def test_torch_reference_segmenter_is_frozen_and_masks_features():
    import torch
    sys.path.insert(0, BENCH)
    try:
        import torch_reference as tr
    finally:
        sys.path.remove(BENCH)
    model = tr.build("authors", 64, "densenet_tiny", unet_filters=4, unet_size=32).train()
    assert not model.segmenter.training
    assert not any(p.requires_grad for p in model.segmenter.parameters())
    logits = model(torch.rand(2, 1, 64, 64))
    logits.sum().backward()
    assert logits.shape == (2, 14)
    assert all(p.grad is None for p in model.segmenter.parameters())
    # A mask given as input: an all-zero mask leaves only the head's bias.
    masked = tr.build("mask_input", 64, "densenet_tiny").eval()
    with torch.no_grad():
        out = masked(torch.rand(2, 1, 64, 64), torch.zeros(2, 1, 64, 64))
    torch.testing.assert_close(out, masked.head.bias.expand(2, -1))


@needs_torch
def test_torch_bench_smoke():
    out = run(["benchmarks/torch_bench.py", "--config=authors", "--backbone=densenet_tiny",
               "--input_size=64", "--unet_filters=4", "--unet_size=32", "--unet_depth=2",
               "--batch_size=2", "--steps=1", "--repeats=1", "--bf16", "--channels_last",
               "--fused_adam"])
    assert json.loads(out.strip().splitlines()[-1])["images_per_s"] > 0


@needs_torch
def test_gpu_train_torch_configurations_on_cpu():
    """The GPU script's PyTorch configurations, tiny, on the CPU (torch.compile off: minutes)."""
    out = run(["benchmarks/gpu_train.py", "--device=cpu", "--tiny", "--batch_size=2",
               "--steps=1", "--repeats=1", "--warmup=1", "--no-compile",
               "--configs=torch:authors_fp32,torch:mask_input_bf16_compiled"])
    assert "| torch:authors_fp32 |" in out and "| torch:mask_input_bf16_compiled |" in out


@needs_jax
@pytest.mark.slow
def test_gpu_train_keras_on_jax_without_tensorflow():
    """cxr_tf's Keras model trains on the JAX backend where TensorFlow cannot be imported."""
    out = run(["-c", HIDE_TENSORFLOW, "benchmarks/gpu_train.py", "--child=keras:inline_bf16_xla",
               "--device=cpu", "--tiny", "--batch_size=2", "--steps=1", "--repeats=1",
               "--warmup=1"], env={"KERAS_BACKEND": "jax"})
    result = json.loads(next(ln for ln in out.splitlines()
                             if ln.startswith("RESULT "))[len("RESULT "):])
    assert result["framework"].startswith("Keras") and "JAX" in result["framework"]
    assert result["images_per_s"] > 0
