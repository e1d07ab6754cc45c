"""A custom training loop that runs under any tf.distribute strategy and survives interruptions.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so training
uses one explicit loop everywhere: `strategy.run` on distributed batches, the loss averaged over
the *global* batch (`tf.nn.compute_average_loss`), gradients summed across replicas by the
optimizer. The same loop serves the segmenter and the classifier.

Files in `work_dir` (written by the chief worker only):
  checkpoints/    tf.train checkpoints: model, optimizer and the loop's position (epoch, step in
                  epoch, global step, best score, ...), at every epoch end and, with
                  `checkpoint_every_steps`, every N steps. Non-chief workers write theirs to
                  `workertemp_<id>/` and delete it again, as TensorFlow recommends.
  best.keras      the model with the best validation score so far (selection on validation only).
  history.json    one record per epoch: loss, learning rate, images/s, validation metrics; and
                  one {"diverged": true, ...} record where training diverged (step, learning
                  rate, the checkpoint a rerun resumes from).
  tensorboard/    TensorBoard event files: per-step loss, learning rate and images/s, per-epoch
                  validation metrics (e.g. per-class AUROC).

Resuming needs no option: `fit` restores the latest checkpoint and continues at the step after
it, mid-epoch included. With an `EpochInput` (a seeded, per-epoch deterministic data
stream) the resumed run sees exactly the batches the uninterrupted run would have seen, so in
deterministic mode (`tf.config.experimental.enable_op_determinism`) it ends with the same weights.
Preemption (SIGTERM, or a cloud maintenance notice) is handled by TensorFlow's
`tf.distribute.experimental.PreemptionCheckpointHandler`: all workers checkpoint at the same step
and exit, and the restarted job resumes from there.
"""

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from cxr_tf import errors, files, layout
from cxr_tf.data.pipeline import EpochInput
from cxr_tf.training import strategies

log = logging.getLogger("cxr_tf")

# File names of a run directory (defined in cxr_tf.layout).
BEST_MODEL, HISTORY = layout.BEST_MODEL, layout.HISTORY
CHECKPOINTS, TENSORBOARD = layout.CHECKPOINTS, layout.TENSORBOARD


def is_chief(strategy):
    """True on the worker that writes files (the only worker outside multi-worker training)."""
    return strategies.is_chief(strategy)


def _interactive_stdout():
    """True in a terminal or a Jupyter kernel, where a redrawn progress bar reads well."""
    return ("ipykernel" in sys.modules
            or (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()))


def summary_scalar(name, value, step):
    """Writes one TensorBoard scalar to the default tf.summary writer.

    The same record `tf.summary.scalar` writes, but without needing the `tensorboard` package
    (which `tf.summary.scalar` imports and TensorFlow 2.21 does not install): only viewing the
    logs needs TensorBoard.
    """
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    return tf.summary.write(name, tf.constant(float(value), tf.float32), step=step,
                            metadata=metadata)


def summary_images(name, images, step):
    """Writes a TensorBoard image summary (the images plugin's record, as tf.summary.image
    writes it, without the `tensorboard` package): `images` (k, H, W, 3) uint8."""
    images = np.asarray(images, np.uint8)
    pngs = [tf.io.encode_png(image).numpy() for image in images]
    tensor = tf.constant([str(images.shape[2]).encode(), str(images.shape[1]).encode(), *pngs])
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "images"
    metadata.data_class = summary_pb2.DATA_CLASS_BLOB_SEQUENCE
    return tf.summary.write(name, tensor, step=step, metadata=metadata)


class Trainer:
    """Trains `model` with `loss_fn` and `optimizer` under `strategy`.

    Build the model and optimizer inside `strategy.scope()` before creating the Trainer.

    Args:
      model: a Keras model.
      loss_fn: `fn(y_true, y_pred) -> per_example_loss` of shape (batch,), not reduced over the
        batch.
      optimizer: a Keras optimizer; a keras.optimizers.LossScaleOptimizer for float16 training.
      strategy: a tf.distribute.Strategy (use `tf.distribute.get_strategy()` for the default).
      work_dir: directory for checkpoints, history, TensorBoard logs and the best model.
      select_metric: key of the dict returned by `validate` that picks the best model.
      select_mode: "max" or "min".
      checkpoint_every_steps: also checkpoint every N global steps (0: at epoch ends only).
      jit_compile: XLA-compile each replica's step. Ignored with a warning where the strategy
        cannot (see strategies.jit_support).
      plateau: None, or (factor, patience, min_learning_rate): after `patience` epochs without a
        new best `select_metric`, multiply the learning rate by `factor` (not below the minimum).
        Needs a constant (not scheduled) optimizer learning rate.
      save_model_fn: `fn(model, path)` writing best.keras (default: files.save_model_atomic).
      max_to_keep: checkpoints kept in work_dir/checkpoints.
      handle_preemption: install TensorFlow's PreemptionCheckpointHandler (SIGTERM and cloud
        maintenance notices: checkpoint at the next step, then exit for a restart).
      image_summary_fn: `fn(model) -> {name: (k, H, W, 3) uint8}` pictures for TensorBoard
        (e.g. masks or CAMs over a few validation films), written after every
        `image_summary_every`-th epoch (0: never).
      profile_steps: (first, last) global steps to trace with the TensorFlow profiler into
        tensorboard/ (None: no trace).
    """

    def __init__(self, model, loss_fn, optimizer, strategy, work_dir, select_metric,
                 select_mode="max", checkpoint_every_steps=0, jit_compile=False, plateau=None,
                 save_model_fn=None, max_to_keep=3, handle_preemption=True,
                 image_summary_fn=None, image_summary_every=0, profile_steps=None):
        if select_mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {select_mode!r}")
        if int(checkpoint_every_steps) < 0:
            raise ValueError(f"checkpoint_every_steps must be >= 0 (0 = epoch ends only), got "
                             f"{checkpoint_every_steps}")
        if plateau is not None:
            factor, patience, min_lr = plateau
            if not 0 < factor < 1 or int(patience) < 1 or min_lr < 0:
                raise ValueError(f"plateau must be (factor in (0, 1), patience >= 1, "
                                 f"min_learning_rate >= 0), got {plateau}")
            if isinstance(getattr(optimizer, "inner_optimizer", optimizer)._learning_rate,
                          keras.optimizers.schedules.LearningRateSchedule):
                raise ValueError("plateau needs a constant optimizer learning rate, got a "
                                 "LearningRateSchedule; use one or the other")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.strategy = strategy
        self.work_dir = str(work_dir)
        self.select_metric = select_metric
        self.sign = 1.0 if select_mode == "max" else -1.0
        self.checkpoint_every_steps = int(checkpoint_every_steps)
        self.plateau = plateau
        self.save_model_fn = save_model_fn or files.save_model_atomic
        self.handle_preemption = handle_preemption
        self.image_summary_fn = image_summary_fn
        self.image_summary_every = int(image_summary_every)
        self.profile_steps = profile_steps
        self._profiling = False
        self.chief = is_chief(strategy)
        self.jit_compile = bool(jit_compile)
        if self.jit_compile:
            supported, reason = strategies.jit_support(strategy)
            if not supported:
                log.warning("jit_compile ignored: %s; training without XLA", reason)
                self.jit_compile = False
        files.makedirs(self.work_dir)
        with strategy.scope():
            optimizer.build(model.trainable_variables)
            v = lambda value, dtype, name: tf.Variable(  # noqa: E731
                value, dtype=dtype, trainable=False, name=name)
            self.epoch = v(0, tf.int64, "epoch")                # completed epochs
            self.step_in_epoch = v(0, tf.int64, "step_in_epoch")  # steps done in the current one
            self.global_step = v(0, tf.int64, "global_step")
            self.best = v(-np.inf, tf.float64, "best")        # sign * best select_metric
            self.epoch_loss_sum = v(0.0, tf.float64, "epoch_loss_sum")
            self.plateau_wait = v(0, tf.int64, "plateau_wait")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, step_in_epoch=self.step_in_epoch,
            global_step=self.global_step, best=self.best, epoch_loss_sum=self.epoch_loss_sum,
            plateau_wait=self.plateau_wait)
        self.checkpoint_dir = os.path.join(self.work_dir, CHECKPOINTS)
        # Every worker restores from the chief's directory (on storage all workers share).
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir,
                                                  max_to_keep=max_to_keep)
        self.history_path = os.path.join(self.work_dir, HISTORY)
        self.best_path = os.path.join(self.work_dir, BEST_MODEL)
        self.tensorboard_dir = os.path.join(self.work_dir, TENSORBOARD)
        self._train_step = None
        self._train_step_batch = None
        self._state_sync = "unbuilt"
        self._position = {"step_in_epoch": 0, "global_step": 0, "epoch_loss_sum": 0.0}
        # A constant learning rate to use instead of the checkpointed one on resume (set by a
        # rerun after divergence; see train._record_experiment).
        self.resume_learning_rate = None

    # ---------------------------------------------------------------- the step

    def _build_train_step(self, global_batch_size):
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                per_example = loss_fn(y, pred)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                # Identity for plain optimizers; times the dynamic loss scale for
                # LossScaleOptimizer, which divides the gradients by it again in apply_gradients.
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        if self.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def train_step(batch):
            per_replica = self.strategy.run(replica_step, args=tuple(batch[:2]))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

    def _build_state_sync(self):
        """A function averaging batch-norm moving statistics over all replicas, or None.

        Keras 3 updates a BatchNormalization layer's moving mean and variance on each replica
        from that replica's batch only, so with several replicas (and workers) the copies drift
        apart while the trainable weights stay identical. Averaging them before every
        validation and checkpoint gives all replicas the same model (what Keras 2 did with
        MEAN-aggregated variables at every step).
        """
        if self.strategy.num_replicas_in_sync == 1:
            return None
        variables, stack = [], [self.model]
        while stack:
            layer = stack.pop()
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
                variables += [layer.moving_mean, layer.moving_variance]
            stack.extend(getattr(layer, "layers", []))
        if not variables:
            return None

        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            # The underlying tf.Variable: reading a Keras Variable (`.value`) in a
            # MultiWorkerMirroredStrategy replica context fails ("destinations can not be empty").
            local = [tf.identity(getattr(v, "_value", v)) for v in variables]
            means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)
            for v, m in zip(variables, means):
                v.assign(m)

        @tf.function
        def sync():
            self.strategy.run(replica_fn)

        return sync

    def sync_replica_state(self):
        """Makes non-trainable state (batch-norm statistics) equal on all replicas and workers.

        Every worker must call this at the same point (fit does, before validation and before
        every checkpoint).
        """
        if self._state_sync is None:
            return
        if self._state_sync == "unbuilt":
            self._state_sync = self._build_state_sync()
            if self._state_sync is None:
                return
        self._state_sync()

    # ---------------------------------------------------------------- checkpoints

    def _sync_position(self):
        """Copies the Python-side loop position into the checkpointed variables."""
        self.step_in_epoch.assign(self._position["step_in_epoch"])
        self.global_step.assign(self._position["global_step"])
        self.epoch_loss_sum.assign(self._position["epoch_loss_sum"])

    def save_checkpoint(self):
        """Checkpoints model, optimizer and loop position (every worker must call this).

        The chief writes into work_dir/checkpoints; other workers write into a scratch
        directory that is deleted at once (they take part because saving distributed variables
        may need all workers). Weights that are not all finite are never checkpointed (the
        run stops as diverged), so the latest checkpoint is always one to resume from.
        """
        self.sync_replica_state()
        self._sync_position()
        if not self._weights_finite():
            pos = self._position
            raise self._diverged("The model's weights became NaN or infinite",
                                 int(self.epoch.numpy()), pos["step_in_epoch"],
                                 pos["global_step"])
        number = self._position["global_step"]
        if self.chief:
            try:
                return self.manager.save(checkpoint_number=number)
            except Exception:
                # A failed save (full disk, file-size limit) leaves TensorFlow's ckpt-N_temp
                # folder; the earlier checkpoints are untouched.
                self._remove_temporaries()
                raise
        scratch = os.path.join(self.work_dir, f"workertemp_{strategies.task_id(self.strategy)}")
        manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(scratch, CHECKPOINTS),
                                             max_to_keep=1)
        path = manager.save(checkpoint_number=number)
        tf.io.gfile.rmtree(scratch)
        return path

    def _weights_finite(self):
        return all(bool(tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float32))))
                   for v in self.model.trainable_variables)

    def _diverged(self, what, epoch, step, global_step):
        """An errors.Diverged for `what` at (epoch index, step in it), carrying the history
        record fit() writes (where it diverged and the checkpoint a rerun resumes from)."""
        latest = self.manager.latest_checkpoint
        resume = (f"the last finite checkpoint {latest} and best.keras are kept; rerun with a "
                  f"lower learning rate (now {self._learning_rate():.3g}) to resume from it"
                  if latest else "no checkpoint was saved before it; rerun with a lower "
                  "learning rate to start again")
        exc = errors.Diverged(f"{what} at epoch {epoch + 1}, step {step} (global step "
                              f"{global_step}) in {self.work_dir}: {resume}, or check the "
                              f"input data")
        exc.record = {"epoch": epoch + 1, "diverged": True, "step_in_epoch": step,
                      "global_step": global_step, "what": what,
                      "learning_rate": self._learning_rate(),
                      "last_checkpoint": os.path.basename(latest) if latest else None}
        return exc

    def _apply_resume_learning_rate(self):
        if self.resume_learning_rate is not None and (
                abs(self._learning_rate() - self.resume_learning_rate)
                > 1e-6 * self.resume_learning_rate):
            log.info("Learning rate %.3g -> %.3g after the divergence", self._learning_rate(),
                     self.resume_learning_rate)
            self.optimizer.learning_rate = self.resume_learning_rate

    def _remove_temporaries(self):
        """Removes the *_temp folders of checkpoint saves that failed or were killed."""
        for path in tf.io.gfile.glob(os.path.join(self.checkpoint_dir, "*_temp")):
            tf.io.gfile.rmtree(path)

    def restore(self):
        """Restores the latest checkpoint if any; returns the epoch to continue in.

        Also restores the step within that epoch (`self.step_in_epoch`). When
        `self.resume_learning_rate` is set (a rerun after divergence with a lower rate), the
        optimizer takes it instead of the checkpointed one.
        """
        if self.chief:
            self._remove_temporaries()
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self._apply_resume_learning_rate()
            log.info("Resumed from %s (epoch %d done, step %d of the next, best %s = %.4f)",
                     latest, int(self.epoch.numpy()), int(self.step_in_epoch.numpy()),
                     self.select_metric, self.sign * self.best.numpy())
        self._position = {"step_in_epoch": int(self.step_in_epoch.numpy()),
                          "global_step": int(self.global_step.numpy()),
                          "epoch_loss_sum": float(self.epoch_loss_sum.numpy())}
        self._check_workers_agree(int(self.epoch.numpy()), self._position["global_step"])
        return int(self.epoch.numpy())

    def _check_workers_agree(self, epoch, global_step):
        """Multi-worker: all workers must resume at the same position, or they deadlock."""
        if not strategies.is_multi_worker(self.strategy):
            return
        mine = tf.constant([[epoch, global_step]], tf.int64)
        gathered = self.strategy.gather(self.strategy.run(lambda: tf.identity(mine)), axis=0)
        positions = {tuple(int(x) for x in row) for row in gathered.numpy()}
        if len(positions) > 1:
            raise RuntimeError(
                f"Workers resume at different (epoch, step) positions {sorted(positions)}: they "
                f"do not see the same checkpoints in {self.checkpoint_dir}. Put the work "
                f"directory on a file system all workers share, mounted at the same path "
                f"(e.g. NFS)")

    @contextlib.contextmanager
    def _preemption_handler(self):
        """TensorFlow's PreemptionCheckpointHandler for the duration of `fit` (or None)."""
        if not self.handle_preemption or threading.current_thread() is not threading.main_thread():
            yield None
            return
        previous = signal.getsignal(signal.SIGTERM)

        def save_on_preemption():
            path = self.save_checkpoint()
            log.warning("Preemption notice: checkpoint %s saved at step %d; exiting. Re-run the "
                        "same command to resume.", path or "(worker scratch)",
                        self._position["global_step"])

        config = tf.distribute.experimental.TerminationConfig(save_fn=save_on_preemption)
        handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategies.cluster_resolver(self.strategy) if strategies.is_multi_worker(
                self.strategy) else None, self.manager, termination_config=config)
        try:
            yield handler
        finally:
            del handler
            signal.signal(signal.SIGTERM, previous)

    # ---------------------------------------------------------------- data

    def _distribute(self, train_data, epoch, start_step):
        if isinstance(train_data, EpochInput):
            return self.strategy.distribute_datasets_from_function(
                lambda ctx: train_data.dataset_fn(epoch, start_step, ctx))
        # A plain dataset of global batches: resuming mid-epoch skips the batches already
        # trained on (exact only when the dataset yields the same order every pass).
        return self.strategy.experimental_distribute_dataset(train_data.skip(start_step))

    # ---------------------------------------------------------------- the loop

    def _load_history(self):
        if files.exists(self.history_path):
            return files.read_json(self.history_path)
        return []

    def _learning_rate(self):
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def fit(self, train_data, epochs, global_batch_size, validate, verbose=1):
        """Trains until `epochs` epochs are done (counting epochs of a resumed run).

        Args:
          train_data: an EpochInput (exact mid-epoch resumption), or a tf.data.Dataset of
            (image, target) batches of `global_batch_size` (drop_remainder=True), one pass = one
            epoch.
          epochs: total number of epochs.
          global_batch_size: examples per step across all replicas.
          validate: `fn(model) -> dict of floats`, run after every epoch; must contain
            `select_metric`.
          verbose: 1 shows a progress bar per epoch (chief only) where stdout is a terminal or
            a notebook (redirected to a file or pipe, only the per-epoch log lines remain: a bar
            redrawn there fills logs with one line of every step); 0 only per-epoch log lines.

        Returns:
          The history: a list with one dict per epoch.
        """
        global_batch_size = int(global_batch_size)
        if global_batch_size % self.strategy.num_replicas_in_sync:
            raise ValueError(f"The global batch size ({global_batch_size}) must be a multiple of "
                             f"the number of replicas ({self.strategy.num_replicas_in_sync})")
        if isinstance(train_data, EpochInput):
            if train_data.global_batch_size != global_batch_size:
                raise ValueError(f"EpochInput batches {train_data.global_batch_size} examples per "
                                 f"step but fit() got global_batch_size={global_batch_size}")
            steps = train_data.steps_per_epoch
            if steps < 1:
                raise ValueError("The training dataset yields no batch: it holds fewer examples "
                                 f"than one global batch ({global_batch_size})")
        else:
            steps = int(train_data.cardinality().numpy())
            steps = steps if steps > 0 else None
        start = self.restore()
        # Epochs done up to the checkpoint, and every divergence met on the way.
        history = [h for h in self._load_history() if h.get("diverged") or h["epoch"] <= start]
        if start >= epochs:
            log.info("All %d epochs already done in %s", epochs, self.work_dir)
            return history
        if self._train_step is None or self._train_step_batch != global_batch_size:
            self._train_step = self._build_train_step(global_batch_size)
            self._train_step_batch = global_batch_size
        writer = (tf.summary.create_file_writer(self.tensorboard_dir) if self.chief
                  else tf.summary.create_noop_writer())
        try:
            with self._preemption_handler() as handler, writer.as_default():
                # TensorFlow's handler restores the latest checkpoint again when it is made.
                self._apply_resume_learning_rate()
                for epoch in range(start, epochs):
                    try:
                        record = self._run_epoch(train_data, epoch, epochs, steps,
                                                 global_batch_size, validate, handler, verbose)
                    except errors.Diverged as e:
                        if self.chief:
                            files.write_json_atomic(self.history_path, history + [e.record])
                        raise
                    history.append(record)
                    if self.chief:
                        files.write_json_atomic(self.history_path, history)
                    self.epoch.assign(epoch + 1)
                    self._position.update(step_in_epoch=0, epoch_loss_sum=0.0)
                    self.save_checkpoint()
                    writer.flush()
        finally:
            writer.close()
        return history

    def _run_epoch(self, train_data, epoch, epochs, steps, global_batch_size, validate, handler,
                   verbose):
        pos = self._position
        first_step = pos["step_in_epoch"]
        if first_step:
            log.info("Epoch %d: continuing at step %d of %s", epoch + 1, first_step + 1,
                     steps or "?")
        show_bar = verbose and self.chief and _interactive_stdout()
        bar = keras.utils.Progbar(steps, verbose=1 if show_bar else 0,
                                  stateful_metrics=["loss"], unit_name="step")
        if first_step:
            bar.update(first_step, [("loss", pos["epoch_loss_sum"] / first_step)])
        t_epoch = time.time()
        t_last = None
        for batch in self._distribute(train_data, epoch, first_step):
            self._profile(pos["global_step"] + 1)
            loss = float(self._train_step(batch))
            if self._profiling and pos["global_step"] + 1 >= self.profile_steps[1]:
                tf.profiler.experimental.stop()
                self._profiling = False
                log.info("Profiler trace of steps %d-%d written to %s", *self.profile_steps,
                         self.tensorboard_dir)
            step = pos["step_in_epoch"] + 1
            if not math.isfinite(loss):
                raise self._diverged(f"Training loss became {loss}", epoch, step,
                                     pos["global_step"] + 1)
            now = time.time()
            pos["step_in_epoch"] = step
            pos["global_step"] += 1
            pos["epoch_loss_sum"] += loss
            gstep = pos["global_step"]
            summary_scalar("train/loss", loss, step=gstep)
            summary_scalar("train/learning_rate", self._learning_rate(), step=gstep)
            if t_last is not None:  # the first step of a process includes tracing
                summary_scalar("train/images_per_second", global_batch_size / (now - t_last),
                                  step=gstep)
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                summary_scalar("train/loss_scale", float(keras.ops.convert_to_numpy(
                    self.optimizer.dynamic_scale)), step=gstep)
            t_last = now
            bar.update(step, [("loss", pos["epoch_loss_sum"] / step)])
            if (self.checkpoint_every_steps and gstep % self.checkpoint_every_steps == 0
                    and step != steps):  # the epoch-end checkpoint follows validation
                self.save_checkpoint()
            if handler is not None:
                handler.save_checkpoint_if_preempted()
        done = pos["step_in_epoch"]
        if done == 0:
            raise ValueError("The training dataset yielded no batch: it holds fewer examples "
                             f"than one global batch ({global_batch_size})")
        if steps is not None and done != steps:
            raise RuntimeError(f"Epoch {epoch + 1} ended after {done} steps, expected {steps}: "
                               f"the training input yielded fewer batches than announced")
        trained_here = done - first_step
        train_time = time.time() - t_epoch
        self.sync_replica_state()
        if not self._weights_finite():
            raise self._diverged("The model's weights became NaN or infinite", epoch, done,
                                 pos["global_step"])
        try:
            metrics = validate(self.model)
        except FloatingPointError as e:  # finite weights, non-finite outputs (an overflow)
            raise self._diverged(f"Validation failed: {e}", epoch, done,
                                 pos["global_step"]) from e
        if self.select_metric not in metrics:
            raise KeyError(f"validate() returned {sorted(metrics)}, which lacks the selection "
                           f"metric {self.select_metric!r}")
        value = float(metrics[self.select_metric])
        improved = math.isfinite(value) and self.sign * value > float(self.best.numpy())
        record = {"epoch": epoch + 1, "loss": pos["epoch_loss_sum"] / done,
                  "images_per_second": trained_here * global_batch_size / max(train_time, 1e-9),
                  "train_seconds": train_time, "learning_rate": self._learning_rate(),
                  "global_step": pos["global_step"],
                  **{f"val_{k}": float(v) for k, v in metrics.items()},
                  "best": bool(improved)}
        if first_step:
            record["resumed_at_step"] = first_step
        if improved:
            self.best.assign(self.sign * value)
            if self.chief:
                self.save_model_fn(self.model, self.best_path)
        self._update_plateau(improved, epoch)
        gstep = pos["global_step"]
        summary_scalar("epoch/loss", record["loss"], step=gstep)
        summary_scalar("epoch/images_per_second", record["images_per_second"], step=gstep)
        summary_scalar("epoch/epoch", epoch + 1, step=gstep)
        for k, v in metrics.items():
            summary_scalar(f"validation/{k}", float(v), step=gstep)
        if (self.image_summary_fn is not None and self.image_summary_every
                and (epoch + 1) % self.image_summary_every == 0 and self.chief):
            for name, images in self.image_summary_fn(self.model).items():
                summary_images(name, images, step=gstep)
        log.info("epoch %d/%d  loss %.4f  val %s %.4f%s  %.1f img/s  lr %.3g", epoch + 1, epochs,
                 record["loss"], self.select_metric, value, "  (best, saved)" if improved
                 else "", record["images_per_second"], record["learning_rate"])
        return record

    def _profile(self, step):
        """Starts the profiler at the first step of `profile_steps` (chief only)."""
        if (self.profile_steps and self.chief and not self._profiling
                and step == self.profile_steps[0]):
            tf.profiler.experimental.start(self.tensorboard_dir)
            self._profiling = True

    def _update_plateau(self, improved, epoch):
        if self.plateau is None:
            return
        factor, patience, min_lr = self.plateau
        wait = 0 if improved else int(self.plateau_wait.numpy()) + 1
        if wait >= int(patience):
            old = self._learning_rate()
            new = max(old * factor, min_lr)
            if new < old:
                self.optimizer.learning_rate = new
                log.info("No better %s for %d epochs: learning rate %.3g -> %.3g (after epoch %d)",
                         self.select_metric, wait, old, new, epoch + 1)
            wait = 0
        self.plateau_wait.assign(wait)

