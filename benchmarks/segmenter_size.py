"""Sizing the inline segmenter: union-mask Dice against the full-size U-Net, and its step-time cost.

Inside CXR-IRNet the segmenter's union mask is average-pooled to the backbone's 7 x 7 feature grid
and binarised, so a U-Net at a fraction of the 224 px input and of the usual width may give the
same grid. This script measures that trade-off on the phantom data set (`synthetic_cxr`, exact
lung and heart masks), TensorFlow backend, on this machine:

  train     trains one U-Net per `--sizes` entry (SIZE:FILTERS[:DEPTH]) with cxr_tf's own
            train_segmenter on the same phantom train split, same epochs, batch and seed,
            selecting on the validation split. Finished models are reused on a re-run.
  score     on the test split, every model sees the classifier's 224 px image resized inside the
            graph exactly as in CXRClassifier (layers.Resize), and is scored on
              - union-mask Dice at 224 px (probabilities resized to 224, >= 0.5) against the true
                union of left lung, right lung and heart, and the difference to the reference
                (`--reference`, the full-size U-Net);
              - grid-mask Dice: the union mask pooled to the 7 x 7 grid and binarised
                (layers.FeatureWeighting.grid_mask, what reaches the features) against the true
                mask's grid and against the reference model's grid, plus the share of grid cells
                that agree with the reference's.
  overhead  the classifier's training step (DenseNet121 at 224, `fit`, same batch) with each U-Net
            inline, against the same classifier with the mask given as an input (no U-Net);
            repeats interleaved, medians reported. Random-init U-Nets (cost does not depend on
            the weights), including the authors' width (224:64) which is too slow to train here.

Each phase writes its results into --work_dir/segmenter_size.json (merged on re-runs) and the
last prints a Markdown table. Check `uptime` before the overhead phase: it is a timing.

Usage (the figures in BENCHMARKS.md came from this command):
    .venv/bin/python benchmarks/segmenter_size.py --work_dir=work/segmenter_size
    .venv/bin/python benchmarks/segmenter_size.py --work_dir=... --phases=overhead --repeats=5
"""

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import keras_bench  # noqa: E402

RESULTS = "segmenter_size.json"
DEFAULT_SIZES = "56:8:3,112:8,56:4:3,112:4,112:16,224:8,224:16"
DEFAULT_OVERHEAD = "224:64,224:16,224:8,112:16,112:8,112:4,56:8:3,56:4:3"


def parse_spec(spec):
    """'SIZE:FILTERS[:DEPTH]' -> (size, filters, depth); depth defaults to 4 where SIZE allows."""
    parts = [int(p) for p in spec.split(":")]
    if len(parts) not in (2, 3):
        raise ValueError(f"segmenter spec must be SIZE:FILTERS[:DEPTH], got {spec!r}")
    size, filters = parts[:2]
    depth = parts[2] if len(parts) == 3 else max(d for d in (1, 2, 3, 4) if size % 2 ** d == 0)
    return size, filters, depth


def spec_name(size, filters, depth):
    return f"{size}px_{filters}f_d{depth}"


def _load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _save(path, results):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    import keras
    import tensorflow as tf
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def experiment_config(args, size, filters, depth):
    from cxr_tf import configs
    config = configs.ExperimentConfig(
        data=configs.DataConfig(dataset="synthetic_cxr", image_size=args.image_size,
                                num_train=args.num_train, num_validation=args.num_validation,
                                num_test=args.num_test, seed=0),
        segmenter=configs.SegmenterConfig(input_size=size, base_filters=filters, depth=depth,
                                          epochs=args.epochs, batch_size=args.batch_size,
                                          learning_rate=args.learning_rate),
        seed=0)
    return config


def builder_for(args):
    import tensorflow_datasets as tfds

    from cxr_tf import workflow
    tfds.disable_progress_bar()
    config = experiment_config(args, *parse_spec(args.reference))
    return workflow.build_data(config, os.path.join(args.work_dir, "tfds"))


def model_path(args, size, filters, depth):
    return os.path.join(args.work_dir, spec_name(size, filters, depth), "best.keras")


def phase_train(args, results):
    from cxr_tf.training import train
    builder = builder_for(args)
    specs = [parse_spec(s) for s in args.sizes.split(",")]
    if parse_spec(args.reference) not in specs:
        specs.insert(0, parse_spec(args.reference))
    trained = results.setdefault("train", {})
    for size, filters, depth in specs:
        name = spec_name(size, filters, depth)
        path = model_path(args, size, filters, depth)
        before = trained.get(name, {})
        if os.path.exists(path) and before.get("epochs") == args.epochs:
            print(f"[train] {name}: reusing {path}", flush=True)
            continue
        # A larger --epochs than before resumes that run from its last checkpoint (cxr_tf's
        # trainer resumes a work directory); the times below then add up both runs.
        config = experiment_config(args, size, filters, depth)
        cpu0, start = time.process_time(), time.perf_counter()
        best = train.train_segmenter(config, builder, os.path.dirname(path), verbose=0)
        with open(os.path.join(os.path.dirname(path), "history.json")) as f:
            history = json.load(f)
        trained[name] = {"size": size, "filters": filters, "depth": depth,
                         "epochs": args.epochs, "num_train": args.num_train,
                         "wall_s": round(time.perf_counter() - start
                                         + before.get("wall_s", 0.0), 1),
                         "cpu_s": round(time.process_time() - cpu0
                                        + before.get("cpu_s", 0.0), 1),
                         "load_average_1min": round(os.getloadavg()[0], 2),
                         "validation_mean_dice_per_epoch": [
                             round(e.get("val_mean_dice", float("nan")), 4) for e in history],
                         "train_images_per_s_last_epoch": round(
                             history[-1].get("images_per_second", 0.0), 1),
                         "path": best}
        print(f"[train] {name}: {json.dumps(trained[name])}", flush=True)
        _save(os.path.join(args.work_dir, RESULTS), results)


def _dice(a, b):
    """Mean per-image Dice of boolean arrays (N, ...); 1 where both are empty."""
    import numpy as np
    axes = tuple(range(1, a.ndim))
    inter = np.sum(a & b, axis=axes)
    total = np.sum(a, axis=axes) + np.sum(b, axis=axes)
    return float(np.mean(np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)))


def phase_score(args, results):
    import functools

    import numpy as np
    from keras import ops

    from cxr_tf.data import datasets, pipeline
    from cxr_tf.models import layers, load_model
    builder = builder_for(args)
    size = args.input_size
    grid = size // 32
    parse = functools.partial(pipeline.parse_segmentation, size=size)
    ds = pipeline.make_dataset(datasets.load_split(builder, "test"), parse, 32, training=False)
    images, truth = [], []
    for x, y in ds:
        images.append(x.numpy())
        truth.append(y.numpy())
    images, truth = np.concatenate(images), np.concatenate(truth)
    true_union = truth.max(axis=-1) >= 0.5  # (N, 224, 224)
    pooled_truth = ops.convert_to_numpy(ops.average_pool(
        true_union[..., None].astype("float32"), size // grid, strides=size // grid))
    true_grid = pooled_truth[..., 0] >= 0.5

    def predict(model):
        """(union probabilities at 224, grid mask) of a segmenter, fed as in CXRClassifier."""
        seg_size = model.input_size
        resize = layers.Resize(seg_size) if seg_size != size else None
        fw = layers.FeatureWeighting()
        fw.build([(None, grid, grid, 1024), (None, seg_size, seg_size, 3)])

        unions, grids = [], []
        for i in range(0, len(images), 32):
            x = images[i:i + 32]
            probs = model(resize(x) if resize else x, training=False)
            union = ops.max(probs, axis=-1, keepdims=True)
            unions.append(ops.convert_to_numpy(
                ops.image.resize(union, (size, size), interpolation="bilinear"))[..., 0])
            grids.append(ops.convert_to_numpy(fw.grid_mask(probs))[..., 0])
        return np.concatenate(unions) >= 0.5, np.concatenate(grids) >= 0.5

    scored = results.setdefault("score", {})
    reference = spec_name(*parse_spec(args.reference))
    predictions = {}
    for name, info in sorted(results.get("train", {}).items(),
                             key=lambda kv: (kv[0] != reference, kv[0])):
        model = load_model(info["path"])
        predictions[name] = predict(model)
    ref_union, ref_grid = predictions[reference]
    for name, (union, grid_mask) in predictions.items():
        scored[name] = {
            "union_dice": round(_dice(union, true_union), 4),
            "union_dice_vs_reference": round(_dice(union, ref_union), 4),
            "grid_dice": round(_dice(grid_mask, true_grid), 4),
            "grid_dice_vs_reference": round(_dice(grid_mask, ref_grid), 4),
            "grid_cell_agreement_with_reference": round(float(np.mean(grid_mask == ref_grid)), 4),
            "test_images": int(len(images)),
        }
    for name in scored:
        scored[name]["union_dice_minus_reference"] = round(
            scored[name]["union_dice"] - scored[reference]["union_dice"], 4)
        scored[name]["grid_dice_minus_reference"] = round(
            scored[name]["grid_dice"] - scored[reference]["grid_dice"], 4)
        print(f"[score] {name}: {json.dumps(scored[name])}", flush=True)
    results["reference"] = reference
    _save(os.path.join(args.work_dir, RESULTS), results)


def phase_overhead(args, results):
    """Classifier train step with each U-Net inline vs mask given as input, interleaved."""
    specs = [parse_spec(s) for s in args.overhead_sizes.split(",")]
    runs = {}
    load = os.getloadavg()[0]
    base_x, base_y = keras_bench.make_batch("mask_input", args.overhead_batch, args.input_size)
    runs["mask_input"] = keras_bench.Trainer(
        keras_bench.build_model("mask_input", args.input_size, args.backbone), base_x, base_y)
    x, y = keras_bench.make_batch("inline", args.overhead_batch, args.input_size)
    for size, filters, depth in specs:
        model = keras_bench.build_model("inline", args.input_size, args.backbone, size, filters,
                                        depth)
        runs[spec_name(size, filters, depth)] = keras_bench.Trainer(model, x, y)
    for name, trainer in runs.items():
        print(f"[overhead] warm-up {name}: {trainer.warm_up(1):.1f} s", flush=True)
    times = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, trainer in runs.items():
            rate = trainer.images_per_second(args.overhead_steps)
            times[name].append(args.overhead_batch / rate)
        print(f"[overhead] repeat {repeat}: " + ", ".join(
            f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    base = statistics.median(times["mask_input"])
    out = {"batch_size": args.overhead_batch, "steps_per_repeat": args.overhead_steps,
           "repeats": args.repeats, "backbone": args.backbone, "input_size": args.input_size,
           "load_average_1min_start": round(load, 2),
           "load_average_1min_end": round(os.getloadavg()[0], 2),
           "step_s": {n: round(statistics.median(t), 3) for n, t in times.items()},
           "all_step_s": {n: [round(v, 3) for v in t] for n, t in times.items()},
           "overhead": {n: round(statistics.median(t) / base - 1.0, 4)
                        for n, t in times.items() if n != "mask_input"}}
    results["overhead"] = out
    print(f"[overhead] {json.dumps(out)}", flush=True)
    _save(os.path.join(args.work_dir, RESULTS), results)


def keras_gflops(model):
    """Forward GFLOPs per image (2 per multiply-add) of the convolutions and dense layers of a
    Keras model, counted layer by layer, nested models and custom layers included.

    A convolution costs out_h * out_w * kh * kw * c_in * c_out multiply-adds (a transposed one is
    counted on its input grid, which each kernel position visits once); a dense layer c_in *
    c_out. Sublayers of a custom layer (the attention module's convolutions, which are all
    'same' and stride 1) are counted on the custom layer's output grid. Batch norm, activations,
    pooling and additions are left out (a few % of a DenseNet's total).
    """
    import keras

    def conv(layer, grid):
        kh, kw, cin, cout = layer.kernel.shape
        return 2 * grid[0] * grid[1] * kh * kw * cin * cout

    def walk(layer, grid=None):
        if isinstance(layer, keras.Model):
            return sum(walk(sub) for sub in layer.layers)
        if isinstance(layer, keras.layers.Conv2DTranspose):
            return conv(layer, layer.input.shape[1:3])
        if isinstance(layer, keras.layers.Conv2D):
            try:
                out = layer.output.shape[1:3]
            except (AttributeError, ValueError):  # a sublayer with no graph node of its own
                out = grid
            return conv(layer, out)
        if isinstance(layer, keras.layers.Dense):
            return 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        subs = [s for s in layer._flatten_layers(include_self=False, recursive=False)]
        if subs:
            out = layer.output.shape[1:3]
            return sum(walk(sub, out) for sub in subs)
        return 0

    return walk(model) / 1e9


def classifier_gflops(input_size=224):
    """Forward GFLOPs per image of CXR-IRNet without its segmenter (multi-scale attention,
    DenseNet121, head) as cxr_tf builds it; a training step costs about 3x this."""
    from cxr_tf.models import build_classifier
    return keras_gflops(build_classifier("no_weighting", input_size=input_size))


def unet_gflops(size, filters, depth):
    """Forward GFLOPs (2 per multiply-add) of cxr_tf's UNetSegmenter, counted layer by layer."""
    from cxr_tf.models import UNetSegmenter
    return keras_gflops(UNetSegmenter(size, filters, depth))


def table(results, dice_tolerance=0.01, overhead_limit=0.10):
    """Markdown table of every U-Net with its scores and overhead; returns (text, choice)."""
    score, overhead = results.get("score", {}), results.get("overhead", {}).get("overhead", {})
    train = results.get("train", {})
    names = sorted(set(score) | set(overhead),
                   key=lambda n: (-int(n.split("px")[0]), -int(n.split("_")[1][:-1])))
    lines = ["| U-Net (input, base filters, depth) | train s (CPU) | union Dice | vs reference "
             "| grid Dice | vs reference | grid Dice to reference's grid | grid cells agreeing "
             "| U-Net GFLOPs / image (share of a training step) | step overhead |",
             "|" + "---|" * 10]
    choice = None
    step_gflops = 3 * classifier_gflops()
    for name in names:
        s, t = score.get(name, {}), train.get(name, {})
        o = overhead.get(name)
        size, filters, depth = (int(v.strip("pxfd")) for v in name.split("_"))
        g = unet_gflops(size, filters, depth)

        def f(key, fmt="{:.4f}"):
            return fmt.format(s[key]) if key in s else "-"
        lines.append(
            f"| {name} | {t.get('cpu_s', '-')} | {f('union_dice')} | "
            f"{f('union_dice_minus_reference', '{:+.4f}')} | {f('grid_dice')} | "
            f"{f('grid_dice_minus_reference', '{:+.4f}')} | {f('grid_dice_vs_reference')} | "
            f"{f('grid_cell_agreement_with_reference')} | "
            f"{g:.2f} ({100 * g / step_gflops:.1f}%) | "
            f"{'-' if o is None else f'{100 * o:+.1f}%'} |")
        ok = (s and o is not None and s["union_dice_minus_reference"] >= -dice_tolerance
              and s["grid_dice_minus_reference"] >= -dice_tolerance and o <= overhead_limit)
        # Measured overheads of the small U-Nets differ by less than the timing noise here, so
        # the tie-break is their cost in FLOPs, which holds on any machine.
        if ok and (choice is None or g < choice[1]):
            choice = (name, g)
    choice = choice[0] if choice else None
    return "\n".join(lines), choice


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--work_dir", default="work/segmenter_size",
                        help="phantom data, trained U-Nets and segmenter_size.json")
    parser.add_argument("--phases", default="train,score,overhead",
                        help="comma-separated subset of train,score,overhead (table always)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="U-Nets to train and score, SIZE:FILTERS[:DEPTH]")
    parser.add_argument("--reference", default="224:16",
                        help="the full-size U-Net every other one is compared with")
    parser.add_argument("--overhead_sizes", default=DEFAULT_OVERHEAD,
                        help="U-Nets whose training-step overhead is measured")
    parser.add_argument("--image_size", type=int, default=224, help="phantom image side")
    parser.add_argument("--num_train", type=int, default=1000)
    parser.add_argument("--num_validation", type=int, default=100)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every U-Net")
    parser.add_argument("--batch_size", type=int, default=8, help="U-Net training batch")
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--input_size", type=int, default=224, help="classifier input side")
    parser.add_argument("--backbone", default="densenet121", help="classifier backbone")
    parser.add_argument("--overhead_batch", type=int, default=8,
                        help="classifier training batch of the overhead phase")
    parser.add_argument("--overhead_steps", type=int, default=2, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    args = parser.parse_args()
    logging.getLogger("cxr_tf").setLevel(logging.WARNING)
    os.makedirs(args.work_dir, exist_ok=True)
    path = os.path.join(args.work_dir, RESULTS)
    results = _load(path)
    results["machine"] = machine()
    results["command"] = " ".join(sys.argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for phase in phases:
        if phase not in ("train", "score", "overhead"):
            parser.error(f"unknown phase {phase!r}")
    if "train" in phases:
        phase_train(args, results)
    if "score" in phases:
        phase_score(args, results)
    if "overhead" in phases:
        phase_overhead(args, results)
    text, choice = table(results)
    results["choice"] = choice
    _save(path, results)
    print(text)
    print(f"Cheapest U-Net (GFLOPs) with union and grid Dice within 0.01 of the reference "
          f"({results.get('reference')}) and a measured overhead <= 10%: {choice}")


if __name__ == "__main__":
    main()
