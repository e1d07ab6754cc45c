"""CPU serving: cxr_tf's exported SavedModel vs the PyTorch reference in eager mode.

Both take encoded PNG bytes and return the 14 probabilities, segmenter included:
  cxr_tf   CXR-IRNet at 224 (random init; timing does not depend on the weights) with its inline
           segmenter, exported by cxr_tf.serving.export (resize 256, centre crop 224), loaded with
           tf.saved_model.load (TF Serving's loader) and called through `serving_default`.
  PyTorch  torch_reference.CXRIRNet with the authors' U-Net (64 filters, 224 px) inline, eval
           mode, torch.inference_mode, same preprocessing with OpenCV (torch_bench.Server).
Inputs are 1024 x 1024 8-bit PNGs (the ChestX-ray14 format): the shared ChestX-ray14 sample's
images scaled to 1024 when it is present, else phantoms.

Latency at batch 1 (median over calls) and throughput at batch 32 (images/s, median over
batches), each system measured in turn inside every repeat. Torch uses as many threads as
TensorFlow's default (all cores).

    .venv/bin/python benchmarks/serving_latency.py [--repeats=5] [--calls=10]
"""

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SAMPLE_IMAGES = os.path.join(HERE, "..", "..", "shared", "data", "chestxray14_sample", "images")


def test_pngs(n=32, side=1024):
    """n encoded 8-bit grey PNGs of side x side: the real sample's images, else phantoms."""
    import cv2
    import numpy as np
    paths = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*.png")))[:n]
    images = []
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
        if img is not None:
            images.append(img)
    source = "chestxray14_sample"
    if len(images) < n:
        from cxr_tf.data import phantom
        source = "phantom"
        images = [phantom.make_case([7, 0, i], 256)[0] for i in range(n)]
    out = []
    for img in images:
        if img.shape != (side, side):
            img = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
        ok, data = cv2.imencode(".png", img.astype(np.uint8))
        assert ok
        out.append(data.tobytes())
    return out, source


def export_tf(work_dir, input_size=224, resize_size=256, backbone="densenet121",
              seg_size=None, seg_filters=None, seg_depth=None):
    """Exports a random-init CXR-IRNet; returns (serving function, export path)."""
    import tensorflow as tf

    from cxr_tf.serving import export as export_lib

    import keras_bench
    model = keras_bench.build_model("inline", input_size, backbone, seg_size, seg_filters,
                                    seg_depth)
    path = export_lib.export_classifier(model, work_dir, resize_size=resize_size)
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures[export_lib.SERVING_DEFAULT]

    def serve(pngs):
        return fn(image_bytes=tf.constant(pngs))["probabilities"].numpy()
    serve.loaded = loaded  # keep the SavedModel alive with the function
    return serve, path


def torch_server(input_size=224, resize_size=256, backbone="densenet121", unet_filters=64,
                 unet_size=None, unet_depth=4, config="authors"):
    import torch_bench
    import torch_reference
    torch_bench.set_threads()
    model = torch_reference.build(config, input_size, backbone, unet_filters, unet_size,
                                  unet_depth)
    return torch_bench.Server(model, resize_size)


def measure(systems, pngs, repeats, calls, batches, batch_size=32, log=print):
    """Interleaved timing. systems: {name: fn(list of bytes) -> (B, 14)}.

    Returns {name: {"latency_ms_b1": median, "images_per_s_b32": median, "all_...": [...]}}.
    """
    for name, fn in systems.items():  # warm-up: tracing, primitive caches
        for b in (1, batch_size):
            out = fn(pngs[:b])
            assert out.shape == (b, 14), (name, out.shape)
    lat = {n: [] for n in systems}
    thr = {n: [] for n in systems}
    for r in range(repeats):
        for name, fn in systems.items():
            for i in range(calls):
                t = time.perf_counter()
                fn([pngs[(r * calls + i) % len(pngs)]])
                lat[name].append(1000 * (time.perf_counter() - t))
            for _ in range(batches):
                batch = [pngs[i % len(pngs)] for i in range(batch_size)]
                t = time.perf_counter()
                fn(batch)
                thr[name].append(batch_size / (time.perf_counter() - t))
        log(f"[serve] repeat {r}: " + ", ".join(
            f"{n} {statistics.median(lat[n][-calls:]):.0f} ms b1, "
            f"{statistics.median(thr[n][-batches:]):.1f} img/s b{batch_size}" for n in systems))
    return {n: {"latency_ms_b1": round(statistics.median(lat[n]), 1),
                "images_per_s_b32": round(statistics.median(thr[n]), 2),
                "all_latency_ms_b1": [round(v, 1) for v in lat[n]],
                "all_images_per_s_b32": [round(v, 2) for v in thr[n]]} for n in systems}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="batch-1 calls per repeat")
    parser.add_argument("--batches", type=int, default=1, help="batch-32 calls per repeat")
    parser.add_argument("--same_architecture", action="store_true",
                        help="also export cxr_tf with a 224 px, 64-filter U-Net (the authors' "
                             "size; transposed-convolution up-sampling and 3 outputs where "
                             "theirs is bilinear with 1 output: 73.7 vs 61.1 GFLOPs)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models (densenet_tiny, 64 px), one call: checks the script")
    args = parser.parse_args()
    import keras_bench
    size, resize, side, backbone = 224, 256, 1024, "densenet121"
    seg, unet = (None, None, None), dict(unet_filters=64, unet_size=None, unet_depth=4)
    if args.smoke:
        size, resize, side, backbone = 64, 80, 128, "densenet_tiny"
        seg, unet = (32, 4, 2), dict(unet_filters=8, unet_size=64, unet_depth=2)
        args.repeats, args.calls, args.batches = 1, 1, 1
    pngs, source = test_pngs(side=side)
    work = tempfile.mkdtemp(prefix="cxr_serving_")
    common = dict(input_size=size, resize_size=resize, backbone=backbone)
    systems = {"cxr_tf SavedModel (default U-Net)": export_tf(
        os.path.join(work, "default"), **common, seg_size=seg[0], seg_filters=seg[1],
        seg_depth=seg[2])[0]}
    if args.same_architecture:
        systems["cxr_tf SavedModel (authors-size U-Net)"] = export_tf(
            os.path.join(work, "authors"), **common, seg_size=unet["unet_size"] or size,
            seg_filters=unet["unet_filters"], seg_depth=unet["unet_depth"])[0]
    try:
        systems["PyTorch eager (authors' U-Net)"] = torch_server(size, resize, backbone, **unet)
    except ImportError as e:
        print(f"PyTorch peer skipped: {e} (pip install -e '.[bench]')", flush=True)
    results = measure(systems, pngs, args.repeats, args.calls, args.batches)
    print(json.dumps({"inputs": f"{source}, {side} px PNG",
                      "default_unet": keras_bench.default_segmenter(),
                      **{k: {m: v for m, v in r.items() if not m.startswith("all_")}
                         for k, r in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
