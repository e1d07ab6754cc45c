"""Side by side on this machine's CPU: cxr_tf (TensorFlow) against the PyTorch reference.

One command, three sections, every figure a ratio against its peer measured in the same run,
interleaved (each repeat measures every system in turn; medians reported):

  train  training images/s at 224 px, DenseNet121, same batch, fp32, `fit` vs a plain PyTorch
         loop: cxr_tf's CXR-IRNet with its default-sized inline U-Net (configs.paper()) and with
         the mask given as an input, against the PyTorch reference as the authors run it (their
         64-filter U-Net inline at 224) and with the mask as input. The inline segmenter's
         overhead is inline / mask-as-input - 1 within each framework. (--full adds cxr_tf with
         a 224 px, 64-filter U-Net: a U-Net of the authors' size on both sides; not the same
         network: ours up-samples with transposed convolutions, has 3 outputs and 73.7 GFLOPs,
         theirs up-samples bilinearly, has 1 output and 61.1 GFLOPs.)
  serve  serving_latency.py: cxr_tf's SavedModel (PNG bytes in, probabilities out, segmenter
         included) vs the eager PyTorch reference with its full U-Net: latency at batch 1,
         images/s at batch 32.
  data   benchmarks/data_throughput.py (reused): the classification input pipeline's images/s
         at 224 (target 1,500) and the chestxray14 build's images/s against bare decode+resize,
         on the shared ChestX-ray14 sample (skipped when it is absent).

GPU figures come from gpu_train.py on a GPU host; this script never needs one. Check `uptime`
first: a 1-minute load average above ~1.2 makes CPU timings (PyTorch's especially) unreliable;
each section reports the share of the CPU other processes took while it ran.

    .venv/bin/python benchmarks/run_all.py --quick        # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py                # fuller: more repeats, about 18 min
    .venv/bin/python benchmarks/run_all.py --smoke        # tiny models, one step (the tests)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SAMPLE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "chestxray14_sample"))
SECTIONS = ("train", "serve", "data")


def log(message):
    print(message, flush=True)


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "torch", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), **versions,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def _busy_cpu_seconds():
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds():
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Interference:
    """Share of the machine's cores that OTHER processes used while a section ran.

    The load average cannot tell: this benchmark's own two threads make it about 2. Machine
    busy time (/proc/stat) minus this process's (and its children's) CPU time can.
    """

    def __enter__(self):
        self.wall, self.busy, self.own = time.time(), _busy_cpu_seconds(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.time() - self.wall
        busy = _busy_cpu_seconds()
        self.share = None
        if busy is not None and self.busy is not None and wall > 0:
            others = (busy - self.busy) - (_own_cpu_seconds() - self.own)
            self.share = max(0.0, others) / (wall * (os.cpu_count() or 1))
        return False


def settings(args):
    """Sizes and counts of each mode."""
    if args.smoke:
        return dict(backbone="densenet_tiny", input_size=64, resize_size=80, seg=(32, 4, 2),
                    authors_unet=(64, 8, 2), batch=2, steps=1, repeats=1, calls=1, batches=1,
                    serve_batch=4, data=dict(copies=1, repeats=1, official_size=False,
                                             seconds=1.0))
    s = dict(backbone="densenet121", input_size=224, resize_size=256, seg=(None, None, None),
             authors_unet=(224, 64, 4), serve_batch=32)
    if args.quick:
        s.update(batch=4, steps=1, repeats=3, calls=5, batches=1,
                 data=dict(copies=1, repeats=1, official_size=False, seconds=5.0))
    else:
        s.update(batch=8, steps=2, repeats=5, calls=10, batches=1,
                 data=dict(copies=4, repeats=2, official_size=True, seconds=10.0))
    return s


def torch_available():
    """None when PyTorch imports, else the reason it does not (the peer is then skipped)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return (f"PyTorch is not installed ({e}); install the bench extra: "
                f"pip install -e '.[bench]' (or pip install torch==2.13.0)")
    return None


def section_train(args, s):
    import keras_bench
    size, batch = s["input_size"], s["batch"]
    runs = {}
    x, y = keras_bench.make_batch("inline", batch, size)
    runs["cxr_tf inline"] = keras_bench.Trainer(
        keras_bench.build_model("inline", size, s["backbone"], *s["seg"]), x, y)
    mx, my = keras_bench.make_batch("mask_input", batch, size)
    runs["cxr_tf mask_input"] = keras_bench.Trainer(
        keras_bench.build_model("mask_input", size, s["backbone"]), mx, my)
    if args.full:
        runs["cxr_tf inline authors-size U-Net"] = keras_bench.Trainer(
            keras_bench.build_model("inline", size, s["backbone"], *s["authors_unet"]), x, y)
    au = s["authors_unet"]
    if not args.no_torch:
        import torch_bench
        import torch_reference
        torch_bench.set_threads()
        runs["PyTorch authors"] = torch_bench.Trainer(
            torch_reference.build("authors", size, s["backbone"], au[1], au[0], au[2]), batch)
        runs["PyTorch mask_input"] = torch_bench.Trainer(
            torch_reference.build("mask_input", size, s["backbone"]), batch)
    for name, trainer in runs.items():
        log(f"[train] warm-up {name}: {trainer.warm_up(1):.1f} s")
    rates = {n: [] for n in runs}
    for r in range(s["repeats"]):
        for name, trainer in runs.items():
            rates[name].append(trainer.images_per_second(s["steps"]))
        log(f"[train] repeat {r}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in rates.items()))
    med = {n: statistics.median(v) for n, v in rates.items()}
    peer = med.get
    rows = [
        ("training img/s, CPU fp32, inline U-Net (cxr_tf default vs authors')",
         med["cxr_tf inline"], peer("PyTorch authors"), None),
        ("training img/s, CPU fp32, mask given as input (same network)",
         med["cxr_tf mask_input"], peer("PyTorch mask_input"), None),
        ("inline segmenter overhead on the training step (cxr_tf default vs authors')",
         med["cxr_tf mask_input"] / med["cxr_tf inline"] - 1,
         None if args.no_torch else med["PyTorch mask_input"] / med["PyTorch authors"] - 1,
         ("<=", 0.10)),
    ]
    if args.full:
        rows.insert(1, ("training img/s, CPU fp32, 224 px 64-filter U-Net inline (same size)",
                        med["cxr_tf inline authors-size U-Net"], peer("PyTorch authors"), None))
    return rows, {"batch_size": batch, "steps_per_repeat": s["steps"],
                  "images_per_s": {n: round(v, 3) for n, v in med.items()},
                  "all_images_per_s": {n: [round(x, 3) for x in v] for n, v in rates.items()}}


def section_serve(args, s):
    import serving_latency
    work = tempfile.mkdtemp(prefix="cxr_serving_")
    side = 1024 if not args.smoke else 128
    pngs, source = serving_latency.test_pngs(n=s["serve_batch"], side=side)
    common = dict(input_size=s["input_size"], resize_size=s["resize_size"],
                  backbone=s["backbone"])
    systems = {"cxr_tf": serving_latency.export_tf(os.path.join(work, "default"), **common,
                                                   seg_size=s["seg"][0], seg_filters=s["seg"][1],
                                                   seg_depth=s["seg"][2])[0]}
    au = s["authors_unet"]
    if args.full:
        systems["cxr_tf authors-size U-Net"] = serving_latency.export_tf(
            os.path.join(work, "authors"), **common, seg_size=au[0], seg_filters=au[1],
            seg_depth=au[2])[0]
    if not args.no_torch:
        systems["PyTorch"] = serving_latency.torch_server(
            s["input_size"], s["resize_size"], s["backbone"], au[1], au[0], au[2])
    res = serving_latency.measure(systems, pngs, s["repeats"], s["calls"], s["batches"],
                                  batch_size=s["serve_batch"], log=log)
    b = s["serve_batch"]
    torch_res = res.get("PyTorch", {})
    rows = [
        ("serving latency ms, batch 1, PNG in (cxr_tf SavedModel vs PyTorch eager)",
         res["cxr_tf"]["latency_ms_b1"], torch_res.get("latency_ms_b1"), ("<=", 0.5)),
        (f"serving img/s, batch {b}, PNG in (cxr_tf SavedModel vs PyTorch eager)",
         res["cxr_tf"]["images_per_s_b32"], torch_res.get("images_per_s_b32"), None),
    ]
    if args.full:
        rows += [
            ("serving latency ms, batch 1, same 224 px 64-filter U-Net",
             res["cxr_tf authors-size U-Net"]["latency_ms_b1"], torch_res.get("latency_ms_b1"),
             None),
            (f"serving img/s, batch {b}, same 224 px 64-filter U-Net",
             res["cxr_tf authors-size U-Net"]["images_per_s_b32"],
             torch_res.get("images_per_s_b32"), None)]
    return rows, {"inputs": f"{source}, {side} px PNG", **res}


def section_data(args, s):
    import data_throughput
    if not os.path.isdir(args.manual_dir):
        log(f"[data] skipped: no ChestX-ray14 folder at {args.manual_dir}")
        return [], {"skipped": f"no ChestX-ray14 folder at {args.manual_dir}"}
    import logging
    logging.getLogger("absl").setLevel(logging.ERROR)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    d = s["data"]
    results = data_throughput.run(data_throughput._parse_args([
        f"--manual_dir={args.manual_dir}", "--image_size=256", f"--seconds={d['seconds']}",
        f"--copies={d['copies']}", f"--repeats={d['repeats']}",
        "--official_size" if d["official_size"] else "--no-official_size"]))
    builds = [r for r in results if r["measure"] == "build"]
    read = {r["storage"]: r["images_per_s"] for r in results if r["measure"] == "read"}
    rows = [("input pipeline img/s at 224, raw records (vs the 1,500 target)",
             read["raw"], 1500.0, (">=", 1.0))]
    for label in sorted({b["input"] for b in builds}):
        bs = [b for b in builds if b["input"] == label]
        rows.append((f"dataset build img/s, chestxray14 256 px, {label} PNGs (vs bare "
                     f"decode+resize, {bs[0]['workers']} workers)",
                     statistics.median(b["build_images_per_s"] for b in bs),
                     statistics.median(b["bare_images_per_s"] for b in bs), None))
    return rows, {"results": results, "png_storage_read_images_per_s": read.get("png")}


def table(rows, no_peer="n/a"):
    """Markdown table of (measurement, cxr_tf, peer, target) rows with ratios."""
    lines = ["| measurement | cxr_tf | peer | ratio | target | met |", "|---|---|---|---|---|---|"]
    for name, ours, peer, target in rows:
        overhead = "overhead" in name
        ratio = ours / peer if peer else None
        if overhead:
            o = f"{100 * ours:+.1f}%"
            p = no_peer if peer is None else f"{100 * peer:+.1f}%"
            ratio_s = "-"
        else:
            o, p = f"{ours:,.2f}", no_peer if peer is None else f"{peer:,.2f}"
            ratio_s = "-" if ratio is None else f"{ratio:.3f}"
        met, target_s = "-", "-"
        if target:
            op, bound = target
            value = ours if overhead else ratio
            target_s = f"{op} {100 * bound:.0f}%" if overhead else f"ratio {op} {bound}"
            if value is not None:
                met = "yes" if (value <= bound if op == "<=" else value >= bound) else "NO"
        lines.append(f"| {name} | {o} | {p} | {ratio_s} | {target_s} | {met} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny models (densenet_tiny, 64 px), one step: checks the script")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--manual_dir", default=SAMPLE,
                        help="ChestX-ray14 folder for the data section (default: shared sample)")
    parser.add_argument("--json_out", default="", help="also write every figure as JSON here")
    parser.add_argument("--no_torch", action="store_true",
                        help="cxr_tf only (automatic when PyTorch is not installed)")
    args = parser.parse_args()
    args.full = not (args.quick or args.smoke)
    reason = torch_available()
    if reason and not args.no_torch:
        log(f"# PyTorch peer skipped: {reason}")
        args.no_torch = True
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    for x in sections:
        if x not in SECTIONS:
            parser.error(f"unknown section {x!r}; expected some of {','.join(SECTIONS)}")
    import logging
    logging.getLogger("cxr_tf").setLevel(logging.WARNING)
    info = machine()
    s = settings(args)
    log(f"# {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}, Keras "
        f"{info['keras']}, PyTorch {info['torch']}; {info['date']}; mode "
        f"{'smoke' if args.smoke else 'quick' if args.quick else 'full'}")
    all_rows, details = [], {}
    functions = {"train": section_train, "serve": section_serve, "data": section_data}
    for name in sections:
        load0 = os.getloadavg()[0]
        start = time.time()
        with Interference() as other:
            rows, detail = functions[name](args, s)
        detail.update(load_average_1min_before=round(load0, 2),
                      seconds=round(time.time() - start, 1),
                      other_processes_cpu_share=None if other.share is None
                      else round(other.share, 3))
        if other.share is not None:
            log(f"[{name}] other processes used {100 * other.share:.1f}% of the CPU during "
                f"this section ({detail['seconds']:.0f} s; load average before: {load0:.2f})")
            if other.share > 0.1 and not args.smoke:
                log(f"[{name}] WARNING: other work shared the CPU; these timings are not "
                    f"reliable")
        details[name] = detail
        all_rows += rows
    text = table(all_rows, no_peer="skipped (no PyTorch)" if args.no_torch else "n/a")
    log("")
    log(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": info, "command": " ".join(sys.argv), "settings": {
                k: v for k, v in s.items()}, "rows": all_rows, "details": details}, f, indent=1)
    return all_rows


if __name__ == "__main__":  # needed: data_throughput's worker processes are spawned
    main()
