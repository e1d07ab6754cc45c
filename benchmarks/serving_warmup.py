"""First call against warm calls of an exported SavedModel, and batch sizes, on this machine.

Exports the paper-size CXR-IRNet (DenseNet121 at 224 after a resize to 256, the 112 px inline
segmenter; random weights: timing does not depend on them) with cxr_tf's exporter, then in a
fresh process per measurement:

  cold     load the SavedModel with tf.saved_model.load, send one 1024 px PNG through
           serving_default: the first call's latency, then the median of --calls warm calls;
  warmup   the same, after replaying the export's assets.extra/tf_serving_warmup_requests as TF
           Serving does on load: the first user request's latency;
  batch    warm latency at batch 1, 2, 4, 8 and 16 (images per second), which sets the
           batching parameters (docs/serving.md).

Prints one JSON line per measurement. Usage:
    .venv/bin/python benchmarks/serving_warmup.py --work_dir=work/serving_warmup
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads


def export(work_dir, size, resize):
    from cxr_tf.models import UNetSegmenter, build_classifier
    from cxr_tf.serving import export as export_lib
    model = build_classifier("cxr_irnet", input_size=size,
                             segmenter=UNetSegmenter(input_size=112, base_filters=8, depth=4))
    return export_lib.export_classifier(model, os.path.join(work_dir, "export"),
                                        resize_size=resize)


def _png(side=1024):
    import cv2

    from cxr_tf.data import phantom
    image, _, _ = phantom.make_case(7, 512)
    return cv2.imencode(".png", cv2.resize(image, (side, side)))[1].tobytes()


def measure(path, mode, calls):
    """Runs in a fresh process: one JSON line."""
    import tensorflow as tf

    from cxr_tf.serving import tf_serving
    t0 = time.perf_counter()
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    load_s = time.perf_counter() - t0
    warmup_s = 0.0
    if mode == "warmup":
        t0 = time.perf_counter()
        for log in tf_serving.read_warmup(path):
            req = log.predict_log.request
            fn(image_bytes=tf.constant(tf.make_ndarray(req.inputs["image_bytes"])))
        warmup_s = time.perf_counter() - t0
    png = _png()
    out = {"mode": mode, "load_s": round(load_s, 2), "warmup_replay_s": round(warmup_s, 2)}
    if mode == "batch":
        for batch in (1, 2, 4, 8, 16):
            data = tf.constant([png] * batch)
            fn(image_bytes=data)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn(image_bytes=data)
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            out[f"batch_{batch}_ms"] = round(1000 * median, 1)
            out[f"batch_{batch}_images_per_s"] = round(batch / median, 2)
    else:
        data = tf.constant([png])
        t0 = time.perf_counter()
        fn(image_bytes=data)
        out["first_call_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn(image_bytes=data)
            times.append(time.perf_counter() - t0)
        out["warm_call_ms_median"] = round(1000 * statistics.median(times), 1)
    print(json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--resize_size", type=int, default=256)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return measure(args.child[0], args.child[1], args.calls)
    os.makedirs(args.work_dir, exist_ok=True)
    path = export(args.work_dir, args.input_size, args.resize_size)
    for mode in ("cold", "warmup", "batch"):
        subprocess.run([sys.executable, __file__, f"--work_dir={args.work_dir}",
                        f"--calls={args.calls}", "--child", path, mode], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
