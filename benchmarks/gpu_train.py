"""GPU training throughput at batch 256, 224 px: cxr_tf's Keras models (JAX backend) vs PyTorch.

The GPU host has PyTorch and JAX with CUDA but no TensorFlow GPU build, so cxr_tf's models run
with KERAS_BACKEND=jax (they use keras.layers and keras.ops only: the same graph as on
TensorFlow); every Keras figure this prints says so. Each configuration runs in a fresh child
process (one framework, one model on the GPU at a time, JAX's memory preallocation contained),
is warmed up (compiled), then timed over `--repeats` windows of `--steps` steps; the median is
reported, with ratios against the authors' configuration and the 2,600 images/s target.

Configurations (training, Adam with weight decay, BCE, one fixed batch on the device):
  torch:authors_fp32            fp32, the authors' U-Net (64 filters, 224 px) inline and frozen
  torch:mask_input_fp32         fp32, mask given as an input (no U-Net)
  torch:mask_input_bf16_compiled  bf16 autocast + channels_last + fused Adam + torch.compile,
                                mask given as an input
  torch:inline_bf16_compiled    as above, with cxr_tf's default-sized U-Net (configs.paper()) inline
  keras:mask_input_bf16_xla     Keras on JAX, mixed_bfloat16, XLA (jit), `fit`, mask as input
  keras:inline_bf16_xla         the same, CXR-IRNet with its default-sized U-Net inline (float32
                                U-Net, as cxr_tf trains it)
  keras:inline_authors_unet_bf16_xla  the same with a 224 px, 64-filter U-Net inline (bf16)

On the H100 (the device tool; see BENCHMARKS.md for the exact call that carries the keras,
namex and optree wheels the GPU image lacks):
    KERAS_BACKEND=jax python3 benchmarks/gpu_train.py --framework=torch
    KERAS_BACKEND=jax python3 benchmarks/gpu_train.py --framework=keras
CPU check with tiny models (what tests/test_benchmarks.py runs):
    .venv/bin/python benchmarks/gpu_train.py --device=cpu --tiny --steps=1 --repeats=1
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_IMAGES_PER_S = 2600

TORCH_CONFIGS = {
    "authors_fp32": dict(model="authors", bf16=False, channels_last=False, fused_adam=False,
                         compile=False),
    "mask_input_fp32": dict(model="mask_input", bf16=False, channels_last=False,
                            fused_adam=False, compile=False),
    "mask_input_bf16_compiled": dict(model="mask_input", bf16=True, channels_last=True,
                                     fused_adam=True, compile=True),
    "inline_bf16_compiled": dict(model="inline", bf16=True, channels_last=True, fused_adam=True,
                                 compile=True),
}
KERAS_CONFIGS = {
    "mask_input_bf16_xla": dict(model="mask_input", policy="mixed_bfloat16", jit=True),
    "inline_bf16_xla": dict(model="inline", policy="mixed_bfloat16", jit=True,
                            seg_policy="float32"),
    "inline_authors_unet_bf16_xla": dict(model="inline", policy="mixed_bfloat16", jit=True,
                                         seg_policy="mixed_bfloat16", seg=(224, 64, 4)),
}
# Tiny stand-ins for checks on a CPU: backbone, input side, U-Nets (authors', default).
TINY = dict(backbone="densenet_tiny", input_size=64, authors_unet=(64, 8, 2),
            default_unet=(32, 4, 2))


def _default_unet():
    sys.path.insert(0, HERE)
    import keras_bench
    return keras_bench.default_segmenter()


def run_torch(name, args):
    import torch

    import torch_bench
    import torch_reference
    cfg = dict(TORCH_CONFIGS[name])
    if args.compile is not None:
        cfg["compile"] = cfg["compile"] and args.compile
    backbone = TINY["backbone"] if args.tiny else "densenet121"
    size = TINY["input_size"] if args.tiny else args.input_size
    if cfg["model"] == "authors":
        unet = TINY["authors_unet"] if args.tiny else (size, 64, 4)
    else:
        unet = TINY["default_unet"] if args.tiny else _default_unet()
    if args.device == "cpu":
        torch_bench.set_threads()
    model = torch_reference.build(cfg["model"], size, backbone, unet_filters=unet[1],
                                  unet_size=unet[0], unet_depth=unet[2])
    trainer = torch_bench.Trainer(model, args.batch_size, args.device, cfg["bf16"],
                                  cfg["channels_last"], cfg["fused_adam"], cfg["compile"])
    warm = trainer.warm_up(args.warmup)
    rates = [trainer.images_per_second(args.steps) for _ in range(args.repeats)]
    device = (torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu")
    return {"framework": f"PyTorch {torch.__version__}", "device": device, **cfg,
            "unet": list(unet) if cfg["model"] != "mask_input" else None,
            "warm_up_s": round(warm, 1), "rates": rates}


def run_keras(name, args):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    import keras_bench
    cfg = dict(KERAS_CONFIGS[name])
    backbone = TINY["backbone"] if args.tiny else "densenet121"
    size = TINY["input_size"] if args.tiny else args.input_size
    unet = (None, None, None)
    if cfg["model"] == "inline":
        unet = cfg.get("seg") or _default_unet()
        if args.tiny:
            unet = TINY["authors_unet"] if cfg.get("seg") else TINY["default_unet"]
    model = keras_bench.build_model(cfg["model"], size, backbone, *unet, policy=cfg["policy"],
                                    seg_policy=cfg.get("seg_policy", "float32"))
    x, y = keras_bench.make_batch(cfg["model"], args.batch_size, size)
    trainer = keras_bench.Trainer(model, x, y, jit_compile=cfg["jit"],
                                  steps_per_execution=args.steps_per_execution)
    warm = trainer.warm_up(args.warmup)
    rates = [trainer.images_per_second(args.steps) for _ in range(args.repeats)]
    backend = keras.backend.backend()
    device = "cpu"
    if backend == "jax":
        import jax
        device = str(jax.devices()[0].device_kind)
        framework = f"Keras {keras.__version__} on JAX {jax.__version__}"
    else:
        framework = f"Keras {keras.__version__} on {backend}"
    cfg.pop("seg", None)
    return {"framework": framework, "device": device, **cfg,
            "unet": list(unet) if cfg["model"] == "inline" else None,
            "warm_up_s": round(warm, 1), "rates": rates}


def child(args):
    """Runs one configuration in this process; prints one JSON line."""
    framework, name = args.child.split(":", 1)
    if args.device == "cuda" and framework == "keras":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    sys.path.insert(0, HERE)
    start = time.time()
    out = run_torch(name, args) if framework == "torch" else run_keras(name, args)
    out.update(config=f"{framework}:{name}", batch_size=args.batch_size,
               steps=args.steps, repeats=args.repeats,
               steps_per_execution=args.steps_per_execution if framework == "keras" else None,
               images_per_s=round(statistics.median(out.pop("rates")), 1),
               seconds=round(time.time() - start, 1))
    print("RESULT " + json.dumps(out), flush=True)


def _child_command(args, config):
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={config}",
           f"--device={args.device}", f"--batch_size={args.batch_size}",
           f"--steps={args.steps}", f"--repeats={args.repeats}", f"--warmup={args.warmup}",
           f"--input_size={args.input_size}",
           f"--steps_per_execution={args.steps_per_execution}"]
    if args.tiny:
        cmd.append("--tiny")
    if args.compile is not None:
        cmd.append("--compile" if args.compile else "--no-compile")
    return cmd


def report(results):
    """Side-by-side table with ratios; returns its text."""
    authors = next((r["images_per_s"] for r in results
                    if r["config"] == "torch:authors_fp32"), None)
    best_torch = max((r["images_per_s"] for r in results
                      if r["config"].startswith("torch:") and r["model"] != "authors"),
                     default=None)
    lines = ["| configuration | framework | device | images/s | x authors' | vs best PyTorch "
             "| vs 2,600 target |", "|---|---|---|---|---|---|---|"]
    for r in results:
        v = r["images_per_s"]
        lines.append(
            f"| {r['config']} | {r['framework']} | {r['device']} | {v:,.1f} | "
            f"{'-' if not authors else f'{v / authors:.2f}'} | "
            f"{'-' if not best_torch else f'{v / best_torch:.2f}'} | "
            f"{v / TARGET_IMAGES_PER_S:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--framework", default="all", choices=("all", "torch", "keras"),
                        help="which configurations to run (each in its own process)")
    parser.add_argument("--configs", default="",
                        help="comma-separated FRAMEWORK:NAME list (default: all of --framework)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (the benchmark) or cpu (checking the script)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models (densenet_tiny at 64 px) to check the script on a CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="--no-compile turns torch.compile off in every configuration")
    parser.add_argument("--steps_per_execution", type=int, default=1,
                        help="Keras compile(steps_per_execution=N): N steps per device call")
    parser.add_argument("--json_out", default="", help="also write the results as JSON here")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.configs:
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    else:
        configs = ([f"torch:{n}" for n in TORCH_CONFIGS] if args.framework in ("all", "torch")
                   else []) + ([f"keras:{n}" for n in KERAS_CONFIGS]
                               if args.framework in ("all", "keras") else [])
    for c in configs:
        fw, _, name = c.partition(":")
        if name not in {"torch": TORCH_CONFIGS, "keras": KERAS_CONFIGS}.get(fw, {}):
            parser.error(f"unknown configuration {c!r}")
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = []
    for config in configs:
        print(f"== {config}", flush=True)
        proc = subprocess.run(_child_command(args, config), env=env, capture_output=True,
                              text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-3000:] + proc.stderr[-6000:], flush=True)
            print(f"!! {config} failed (exit {proc.returncode})", flush=True)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    print(report(results))
    print("Keras figures: cxr_tf's models on Keras' JAX backend (the GPU host has no TensorFlow "
          "GPU build); same keras.ops graph as on TensorFlow.")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"results": results, "command": " ".join(sys.argv),
                       "date": time.strftime("%Y-%m-%d %H:%M %Z")}, f, indent=2)
    failed = len(configs) - len(results)
    if failed:
        sys.exit(f"{failed} configuration(s) failed")


if __name__ == "__main__":
    main()
