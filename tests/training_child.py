"""Child processes of the distributed-training and resume tests (not a test module).

Device layout and TF_CONFIG must be fixed before TensorFlow initialises, so these runs happen in
fresh interpreters:

  python tests/training_child.py trajectory OUT DATA_ROOT SEGMENTER EPOCHS SEEDS RUN...
      With two logical CPU devices, trains the tiny classifier for EPOCHS once per RUN
      ("default", "mirrored", "mirrored_nosync") and seed (SEEDS: comma-separated) into
      OUT/<RUN>_seed<SEED> and writes trajectory.json there (per-step training losses read
      back from its TensorBoard logs).
  python tests/training_child.py worker OUT DATA_ROOT SEGMENTER
      One worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by the parent): trains
      the tiny classifier (synchronised batch norm) into OUT/work, saves its final weights to
      OUT/weights_<index>.npz and the pixel sums of its epoch-0 inputs to OUT/inputs_<index>.json.
      (The trajectory mode records the same for one device when CXR_TEST_RECORD_INPUTS is set.)
  python tests/training_child.py validation OUT
      With two logical CPU devices, runs one model over one dataset (a last batch of 1, a share
      of 0 for one replica) with an InferenceRunner under the default and the mirrored
      strategy, three times each, and writes OUT/validation.json (max |difference| of the
      outputs, whether targets match, the trace counts).
  python tests/training_child.py binary KILL_AT_CHECKPOINT SIGNAL -- BINARY_FLAGS...
      Runs the cxr-train-classifier binary; when it is about to write checkpoint number
      KILL_AT_CHECKPOINT, sends itself SIGNAL ("KILL": dies there, that checkpoint unwritten;
      "TERM": a preemption notice, handled by TensorFlow's PreemptionCheckpointHandler).
      KILL_AT_CHECKPOINT 0 never signals.
"""

import json
import os
import signal
import sys

import pipelines  # noqa: E402,F401  (TensorFlow environment defaults, before TensorFlow loads)


def _tiny_config(epochs=2):
    from cxr_tf import configs
    config = configs.tiny()
    config.classifier.epochs = epochs
    return config


def _builder(config, data_root):
    from cxr_tf import workflow
    return workflow.build_data(config, data_root)


def read_scalars(event_dir, tag):
    """{step: value} of one scalar tag in a TensorBoard log directory."""
    import tensorflow as tf
    values = {}
    for name in sorted(os.listdir(event_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return values


def record_inputs(path):
    """Makes pipeline.epoch_input write, the first time an epoch-0 input pipeline is built, the
    pixel sums of the examples that pipeline yields (one JSON list) to `path`."""
    import tensorflow as tf

    from cxr_tf.data import pipeline
    real = pipeline.epoch_input

    def recording(*args, **kwargs):
        epoch_input = real(*args, **kwargs)
        make = epoch_input.dataset_fn

        def dataset_fn(epoch, start_step, ctx):
            ds = make(epoch, start_step, ctx)
            if epoch == 0 and start_step == 0 and not os.path.exists(path):
                sums = [round(float(v), 3) for batch in ds
                        for v in tf.reduce_sum(batch[0], axis=[1, 2, 3]).numpy()]
                with open(path, "w") as f:
                    json.dump({"pipeline": ctx.input_pipeline_id,
                               "pipelines": ctx.num_input_pipelines, "sums": sums}, f)
            return ds

        epoch_input.dataset_fn = dataset_fn
        return epoch_input

    pipeline.epoch_input = recording


def trajectory(out, data_root, segmenter, runs, seeds=(0,), epochs=2):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from cxr_tf.training import strategies, train
    for seed in seeds:
        for run in runs:
            config = _tiny_config(epochs)
            config.seed = seed
            config.classifier.sync_batch_norm = run == "mirrored"
            config.classifier.jit_compile = run.startswith("mirrored")  # must warn and go on
            strategy = strategies.make_strategy("default" if run == "default" else "mirrored")
            work = os.path.join(out, f"{run}_seed{seed}")
            if os.environ.get("CXR_TEST_RECORD_INPUTS"):
                record_inputs(os.path.join(out, f"inputs_{run}_seed{seed}.json"))
            train.train_classifier(config, _builder(config, data_root), work,
                                   segmenter_path=segmenter, strategy=strategy, verbose=0)
            losses = read_scalars(os.path.join(work, "tensorboard"), "train/loss")
            with open(os.path.join(work, "experiment.json")) as f:
                experiment = json.load(f)
            with open(os.path.join(work, "trajectory.json"), "w") as f:
                json.dump({"replicas": strategy.num_replicas_in_sync, "losses": losses,
                           "jit_compile": experiment["jit_compile"]}, f)


def validation(out):
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from cxr_tf.evaluation import inference
    from cxr_tf.training import strategies
    rng = np.random.default_rng(0)
    x = rng.random((11, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 2, (11, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)  # batches 5, 5, 1
    results = {}
    for name in ("default", "mirrored"):
        strategy = strategies.make_strategy(name)
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3),
                                      keras.layers.BatchNormalization(),
                                      keras.layers.GlobalAveragePooling2D(),
                                      keras.layers.Dense(3, activation="sigmoid")])
        runner = inference.InferenceRunner(model, strategy)
        for _ in range(3):
            res = runner(dataset)
        results[name] = (res, runner.traces, strategy.num_replicas_in_sync)
    (a, ta, ra), (b, tb, rb) = results["default"], results["mirrored"]
    with open(os.path.join(out, "validation.json"), "w") as f:
        json.dump({"max_abs_difference": float(np.abs(a["outputs"] - b["outputs"]).max()),
                   "rows": [len(a["outputs"]), len(b["outputs"])],
                   "targets_equal": bool(np.array_equal(a["targets"], b["targets"])),
                   "targets_match_input": bool(np.array_equal(b["targets"], y)),
                   "traces": [ta, tb], "replicas": [ra, rb]}, f)


def worker(out, data_root, segmenter):
    import numpy as np

    from cxr_tf.training import loop, strategies, train
    strategy = strategies.make_strategy("multi_worker")
    fit = loop.Trainer.fit

    def fit_and_dump(self, *args, **kwargs):
        history = fit(self, *args, **kwargs)
        np.savez(os.path.join(out, f"weights_{strategies.task_id(self.strategy)}.npz"),
                 *[np.asarray(w) for w in self.model.get_weights()])
        return history

    loop.Trainer.fit = fit_and_dump
    record_inputs(os.path.join(out, f"inputs_{strategies.task_id(strategy)}.json"))
    config = _tiny_config()
    config.classifier.checkpoint_every_steps = 2
    config.classifier.sync_batch_norm = True  # comparable with one device (see the test)
    train.train_classifier(config, _builder(config, data_root), os.path.join(out, "work"),
                           segmenter_path=segmenter, strategy=strategy, verbose=0)


def binary(kill_at, signame, argv):
    import tensorflow as tf
    save = tf.train.CheckpointManager.save

    def save_or_die(self, checkpoint_number=None, **kwargs):
        if kill_at and checkpoint_number == kill_at:
            os.kill(os.getpid(), getattr(signal, f"SIG{signame}"))
            if signame == "TERM":  # handled: training goes on to the next step, then exits
                return save(self, checkpoint_number=checkpoint_number, **kwargs)
        return save(self, checkpoint_number=checkpoint_number, **kwargs)

    tf.train.CheckpointManager.save = save_or_die
    from pipelines import train_classifier
    sys.argv = ["cxr-train-classifier", *argv]
    train_classifier.run()


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("cxr_tf").setLevel(logging.INFO)
    mode = sys.argv[1]
    if mode == "trajectory":
        # trajectory OUT DATA_ROOT SEGMENTER EPOCHS SEEDS RUN...
        trajectory(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[7:],
                   [int(s) for s in sys.argv[6].split(",")], int(sys.argv[5]))
    elif mode == "validation":
        validation(sys.argv[2])
    elif mode == "worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "binary":
        sep = sys.argv.index("--")
        binary(int(sys.argv[2]), sys.argv[3], sys.argv[sep + 1:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
