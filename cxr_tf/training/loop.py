"""A custom training loop that runs under any tf.distribute strategy.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so training
uses one explicit loop everywhere: `strategy.run` on distributed batches, the loss averaged over
the *global* batch (`tf.nn.compute_average_loss`), gradients summed across replicas by the
optimizer. The same loop serves the segmenter and the classifier.

It checkpoints into `work_dir/checkpoints` at every epoch end and restores the latest checkpoint
on start, so re-running an interrupted command resumes it. After each epoch it calls `validate`,
and saves `work_dir/best.keras` when the selection metric improves: models are chosen on
validation data only, never on test.
"""

import json
import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger("cxr_tf")

BEST_MODEL = "best.keras"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"


def is_chief(strategy):
    """True on the worker that writes files (the only worker outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if not spec:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)


def write_json_atomic(path, obj):
    """Writes JSON through a temporary file so a crash never leaves a partial file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_model_atomic(model, path):
    """Saves a .keras file through a temporary name in the same directory."""
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{base}")
    model.save(tmp)
    os.replace(tmp, path)


class Trainer:
    """Trains `model` with `loss_fn` and `optimizer` under `strategy`.

    Build the model and optimizer inside `strategy.scope()` before creating the Trainer.

    Args:
      model: a Keras model.
      loss_fn: `fn(y_true, y_pred) -> (per_example_loss,)`, not reduced over the batch.
      optimizer: a Keras optimizer.
      strategy: a tf.distribute.Strategy (use `tf.distribute.get_strategy()` for the default).
      work_dir: directory for checkpoints, history and the best model.
      select_metric: key of the dict returned by `validate` that picks the best model.
      select_mode: "max" or "min".
    """

    def __init__(self, model, loss_fn, optimizer, strategy, work_dir, select_metric,
                 select_mode="max"):
        if select_mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {select_mode!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.strategy = strategy
        self.work_dir = str(work_dir)
        self.select_metric = select_metric
        self.sign = 1.0 if select_mode == "max" else -1.0
        self.chief = is_chief(strategy)
        os.makedirs(self.work_dir, exist_ok=True)
        with strategy.scope():
            optimizer.build(model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch,
                                              best=self.best)
        ckpt_dir = os.path.join(self.work_dir, CHECKPOINTS)
        if not self.chief:  # non-chief workers write to a scratch directory (TF's convention)
            ckpt_dir = os.path.join(self.work_dir, f".worker-{strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=2)
        self.history_path = os.path.join(self.work_dir, HISTORY)
        self.best_path = os.path.join(self.work_dir, BEST_MODEL)
        self._train_step = None

    def _build_train_step(self, global_batch_size):
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                per_example = loss_fn(y, pred)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function
        def train_step(batch):
            per_replica = self.strategy.run(replica_step, args=batch)
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

    def restore(self):
        """Restores the latest checkpoint if any; returns the epoch to start from."""
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            log.info("Resumed from %s (epoch %d done, best %s = %.4f)", latest,
                     int(self.epoch.numpy()), self.select_metric, self.sign * self.best.numpy())
        return int(self.epoch.numpy())

    def _load_history(self):
        if os.path.exists(self.history_path):
            with open(self.history_path) as f:
                return json.load(f)
        return []

    def fit(self, train_ds, epochs, global_batch_size, validate, verbose=1):
        """Trains until `epochs` epochs are done (counting epochs of a resumed run).

        Args:
          train_ds: a tf.data.Dataset of (image, target) batches of `global_batch_size`
            (drop_remainder=True), one pass = one epoch.
          epochs: total number of epochs.
          global_batch_size: examples per step across all replicas.
          validate: `fn(model) -> dict of floats`, run after every epoch; must contain
            `select_metric`.
          verbose: 1 shows a progress bar per epoch, 0 only per-epoch log lines.

        Returns:
          The history: a list with one dict per epoch.
        """
        start = self.restore()
        history = self._load_history()[:start]
        if start >= epochs:
            log.info("All %d epochs already done in %s", epochs, self.work_dir)
            return history
        if self._train_step is None:
            self._train_step = self._build_train_step(global_batch_size)
        dist_ds = self.strategy.experimental_distribute_dataset(train_ds)
        steps = int(train_ds.cardinality().numpy())
        for epoch in range(start, epochs):
            t0 = time.time()
            bar = keras.utils.Progbar(steps if steps > 0 else None, verbose=verbose,
                                      stateful_metrics=["loss"], unit_name="step")
            total, n = 0.0, 0
            for batch in dist_ds:
                loss = float(self._train_step(batch))
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"Training loss became {loss} at epoch {epoch + 1}, step {n + 1}; lower "
                        f"the learning rate or check the input data")
                total += loss
                n += 1
                bar.update(n, [("loss", total / n)])
            if n == 0:
                raise ValueError("The training dataset yielded no batch: it holds fewer examples "
                                 f"than one global batch ({global_batch_size})")
            train_time = time.time() - t0
            metrics = validate(self.model)
            if self.select_metric not in metrics:
                raise KeyError(f"validate() returned {sorted(metrics)}, which lacks the selection "
                               f"metric {self.select_metric!r}")
            value = float(metrics[self.select_metric])
            improved = math.isfinite(value) and self.sign * value > float(self.best.numpy())
            record = {"epoch": epoch + 1, "loss": total / n, "images_per_second":
                      n * global_batch_size / train_time, "train_seconds": train_time,
                      "learning_rate": float(keras.ops.convert_to_numpy(
                          self.optimizer.learning_rate)),
                      **{f"val_{k}": float(v) for k, v in metrics.items()},
                      "best": bool(improved)}
            if improved:
                self.best.assign(self.sign * value)
                if self.chief:
                    save_model_atomic(self.model, self.best_path)
            self.epoch.assign(epoch + 1)
            self.manager.save(checkpoint_number=epoch + 1)
            history.append(record)
            if self.chief:
                write_json_atomic(self.history_path, history)
            log.info("epoch %d/%d  loss %.4f  val %s %.4f%s  %.1f img/s", epoch + 1, epochs,
                     record["loss"], self.select_metric, value, "  (best, saved)" if improved
                     else "", record["images_per_second"])
        return history
