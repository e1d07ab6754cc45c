"""What re-tracing the model costs every validation pass, against one InferenceRunner reused.

Builds the paper-size CXR-IRNet (DenseNet121 at 224, the 112 px, 8-filter inline segmenter;
random weights) and runs --passes validation passes over --images random images at batch
--batch_size, twice:

  fresh    a new InferenceRunner (a new tf.function, traced again) for every pass, as
           validation did before cxr_tf kept one runner per training run;
  reused   one runner for all passes (what the training loop does now).

Prints one JSON line per mode with the seconds of every pass and the number of traces. The
difference between the two, per pass, is the trace cost a training run pays each epoch.
Usage:
    .venv/bin/python benchmarks/validation_trace.py
"""

import argparse
import json
import os
import sys
import time

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--backbone", default=None, help="default: the variant's (densenet121)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np
    import tensorflow as tf

    from cxr_tf.evaluation.inference import InferenceRunner
    from cxr_tf.models import UNetSegmenter, build_classifier

    model = build_classifier("cxr_irnet", backbone=args.backbone, input_size=args.input_size,
                             segmenter=UNetSegmenter(input_size=112, base_filters=8, depth=4))
    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.input_size, args.input_size, 1), dtype=np.float32)
    targets = (rng.random((args.images, 14)) < 0.1).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(args.batch_size)
    for mode in ("fresh", "reused"):
        runner = InferenceRunner(model)
        seconds, traces = [], 0
        for _ in range(args.passes):
            if mode == "fresh":
                runner = InferenceRunner(model)
            t0 = time.perf_counter()
            runner(dataset)
            seconds.append(round(time.perf_counter() - t0, 3))
            traces += runner.traces if mode == "fresh" else 0
        traces = traces if mode == "fresh" else runner.traces
        print(json.dumps({"mode": mode, "pass_seconds": seconds, "traces": traces,
                          "images": args.images, "input_size": args.input_size}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
