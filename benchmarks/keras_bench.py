"""The cxr_tf side of the benchmarks: its Keras models and their training throughput, any backend.

Used by run_all.py and segmenter_size.py (TensorFlow, CPU) and gpu_train.py (JAX, GPU). Only
`keras` and `cxr_tf.models` are needed; on a host without TensorFlow (the GPU host has JAX and
PyTorch only) `cxr_models()` imports cxr_tf.models without cxr_tf's TensorFlow check, which is
safe because the models use keras.layers and keras.ops only.

Configurations (the same names as the PyTorch reference's, torch_reference.build):
  inline        CXR-IRNet with its frozen U-Net inline (cxr_tf's CXRClassifier); the U-Net's
                input side, base filters and depth are arguments (default: configs.paper()).
  mask_input    the same classifier with the union mask given as a second input (no U-Net):
                image -> attention -> DenseNet121 -> FeatureWeighting(mask) -> head.
  no_weighting  cxr_tf's `no_weighting` variant (attention, backbone, head; no mask at all).

Training: Adam 1e-3 with weight decay 1e-4 and binary cross-entropy (the paper), over one fixed
batch held in memory (on the device, for JAX), so that the figure is the model's step, not the
input pipeline's. On JAX the step is Keras' own `fit`; on TensorFlow a tf.function step as
cxr_tf.training.loop runs it (see Trainer).

Run on its own it times one configuration:
    .venv/bin/python benchmarks/keras_bench.py --config=inline --batch_size=8 --steps=3
"""

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CONFIGS = ("inline", "mask_input", "no_weighting")


def _import_cxr_tf():
    """Imports the cxr_tf package, even where TensorFlow is not installed (JAX-only hosts)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        importlib.import_module("cxr_tf")
    except ImportError:
        # cxr_tf/__init__.py refuses to import without TensorFlow (it needs it for data and
        # serving); the models and configs do not. Register the package without that check.
        package = types.ModuleType("cxr_tf")
        package.__path__ = [os.path.join(REPO, "cxr_tf")]
        package.__version__ = "unknown"
        sys.modules["cxr_tf"] = package


def cxr_models():
    """cxr_tf.models, imported even where TensorFlow is not installed (JAX-only hosts)."""
    _import_cxr_tf()
    return importlib.import_module("cxr_tf.models")


def default_segmenter():
    """(input_size, base_filters, depth) of the inline segmenter in the `paper` preset."""
    _import_cxr_tf()
    from cxr_tf import configs
    seg = configs.paper().segmenter
    return seg.input_size, seg.base_filters, seg.depth


def build_model(config, input_size=224, backbone="densenet121", seg_size=None, seg_filters=None,
                seg_depth=None, policy="float32", seg_policy="float32"):
    """A Keras model for a benchmark configuration (see the module docstring), random init.

    policy: Keras dtype policy of the classifier ("float32", "mixed_bfloat16").
    seg_policy: dtype policy of the inline U-Net (cxr_tf trains with a float32 segmenter).
    """
    import keras
    models = cxr_models()
    from cxr_tf.models import layers as layers_lib
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
    previous = keras.mixed_precision.global_policy()
    try:
        segmenter = None
        if config == "inline":
            d_size, d_filters, d_depth = default_segmenter()
            keras.mixed_precision.set_global_policy(seg_policy)
            segmenter = models.UNetSegmenter(seg_size or d_size, seg_filters or d_filters,
                                             seg_depth or d_depth)
        keras.mixed_precision.set_global_policy(policy)
        if config == "inline":
            return models.build_classifier("cxr_irnet", backbone=backbone, input_size=input_size,
                                           segmenter=segmenter)
        if config == "no_weighting":
            return models.build_classifier("no_weighting", backbone=backbone,
                                           input_size=input_size)
        image = keras.Input((input_size, input_size, 1), name="image")
        mask = keras.Input((input_size, input_size, 1), name="mask")
        x = layers_lib.GreyToBackboneInput("torch", name="normalise")(image)
        x = layers_lib.MultiScaleAttention(name="attention")(x)
        features = models.build_backbone(backbone, input_size)(x)
        features, _, _ = layers_lib.FeatureWeighting(name="feature_weighting")([features, mask])
        logits = keras.layers.Conv2D(14, 1, name="head")(features)
        logits = keras.layers.GlobalAveragePooling2D(name="pool")(logits)
        probs = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
        return keras.Model({"image": image, "mask": mask}, probs, name="cxr_irnet_mask_input")
    finally:
        keras.mixed_precision.set_global_policy(previous)


def make_batch(config, batch_size, input_size, seed=0):
    """(x, y) numpy arrays for one batch: random grey images (and masks), random labels."""
    import numpy as np
    rng = np.random.default_rng(seed)
    image = rng.random((batch_size, input_size, input_size, 1), dtype=np.float32)
    y = (rng.random((batch_size, 14)) < 0.2).astype(np.float32)
    if config == "mask_input":
        # A plausible union mask: the central two-thirds of the image.
        mask = np.zeros((batch_size, input_size, input_size, 1), np.float32)
        lo, hi = input_size // 6, input_size - input_size // 6
        mask[:, lo:hi, lo:hi] = 1.0
        return {"image": image, "mask": mask}, y
    return image, y


def _dataset(x, y):
    """An endless source of the same batch in the backend's cheapest form."""
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.data.Dataset.from_tensors((x, y)).repeat()
    if backend == "jax":
        import jax
        x, y = jax.device_put((x, y))  # on the accelerator once, not every step

        def forever():
            while True:
                yield x, y
        return forever()
    raise ValueError(f"keras_bench supports the tensorflow and jax backends, not {backend}")


class Trainer:
    """One compiled model and its batch; `images_per_second(steps)` times N training steps.

    On JAX: Keras' own `fit` (XLA-compiled with jit_compile), the batch on the device.
    On TensorFlow: a tf.function step with GradientTape and the same optimizer and loss, as
    cxr_tf.training.loop trains (Keras' `fit` on TensorFlow stalled its input iterator here, in
    quanta of about 2.5 s per call on the 2-core CPU, which timed the iterator, not the model).
    """

    def __init__(self, model, x, y, jit_compile=False, steps_per_execution=1):
        import keras
        self.model = model
        self.batch_size = int(y.shape[0])
        self.backend = keras.backend.backend()
        optimizer = keras.optimizers.Adam(1e-3, weight_decay=1e-4)
        if self.backend == "tensorflow":
            self.step = _tf_train_step(model, optimizer, jit_compile)
            import tensorflow as tf
            self.x = tf.nest.map_structure(tf.constant, x)
            self.y = tf.constant(y)
        else:
            model.compile(optimizer=optimizer, loss="binary_crossentropy",
                          jit_compile=jit_compile, steps_per_execution=int(steps_per_execution))
            self.data = _dataset(x, y)
        self.compiled = False

    def fit(self, steps):
        if self.backend == "tensorflow":
            for _ in range(int(steps)):
                loss = self.step(self.x, self.y)
            loss = float(loss)  # waits for the last step
            if loss != loss:
                raise FloatingPointError("training loss became NaN")
            return
        self.model.fit(self.data, steps_per_epoch=int(steps), epochs=1, verbose=0, shuffle=False)

    def warm_up(self, steps=2):
        """Traces / compiles the train step and runs it; returns the seconds it took."""
        start = time.perf_counter()
        self.fit(steps)
        self.compiled = True
        return time.perf_counter() - start

    def images_per_second(self, steps):
        if not self.compiled:
            self.warm_up()
        start = time.perf_counter()
        self.fit(steps)
        return steps * self.batch_size / (time.perf_counter() - start)


def _tf_train_step(model, optimizer, jit_compile):
    """The training step of cxr_tf.training.loop (single device): BCE, Adam, no strategy."""
    import keras
    import tensorflow as tf
    optimizer.build(model.trainable_variables)

    def step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, pred))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf.function(step, jit_compile=bool(jit_compile))


def trainable_count(model):
    import numpy as np
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="inline", choices=CONFIGS)
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--seg_size", type=int, default=None, help="U-Net input side")
    parser.add_argument("--seg_filters", type=int, default=None, help="U-Net base filters")
    parser.add_argument("--seg_depth", type=int, default=None, help="U-Net depth")
    parser.add_argument("--policy", default="float32", help="float32 or mixed_bfloat16")
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile the train step")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from cxr_tf import environment
    environment.apply()
    import keras
    model = build_model(args.config, args.input_size, args.backbone, args.seg_size,
                        args.seg_filters, args.seg_depth, args.policy)
    x, y = make_batch(args.config, args.batch_size, args.input_size)
    trainer = Trainer(model, x, y, args.jit_compile)
    warm = trainer.warm_up()
    rates = [trainer.images_per_second(args.steps) for _ in range(args.repeats)]
    print(json.dumps({"backend": keras.backend.backend(), "config": args.config,
                      "policy": args.policy, "jit_compile": args.jit_compile,
                      "batch_size": args.batch_size, "warm_up_s": round(warm, 1),
                      "images_per_s": round(statistics.median(rates), 2),
                      "all_images_per_s": [round(r, 2) for r in rates]}))


if __name__ == "__main__":
    main()
