"""tf.distribute strategies by name, and what the training loop needs to know about them.

Names (the `--strategy` flag of the training binaries):
  - "default": no distribution; TensorFlow places ops itself (the first GPU if there is one).
  - "one_device": everything on one device: the first GPU, else the CPU.
  - "mirrored": synchronous data parallelism over all local GPUs (all logical CPU devices when
    there is no GPU, which is how the tests run it on a CPU-only machine).
  - "multi_worker": MultiWorkerMirroredStrategy over the machines listed in the TF_CONFIG
    environment variable (each machine uses all its local GPUs). Create it at program start,
    before other TensorFlow calls.

There is no TPU strategy: a TPU run needs its work directory and records on Cloud Storage
(gs://), which cxr_tf does not write yet, and nothing here could test it.

The batch size passed to training is always the GLOBAL batch, over all replicas of all workers;
each replica processes `global_batch / num_replicas` examples per step.
"""

import json
import logging
import os

import tensorflow as tf

from cxr_tf import configs

log = logging.getLogger("cxr_tf")

STRATEGIES = configs.STRATEGIES


def make_strategy(name="default"):
    """Creates a tf.distribute strategy.

    Args:
      name: "default" (no distribution), "one_device" (first GPU if any, else CPU), "mirrored"
        (all local GPUs; all logical CPU devices without GPU), "multi_worker" (cluster from the
        TF_CONFIG environment variable).

    Raises:
      ValueError: for an unknown name, or for "multi_worker" with a malformed TF_CONFIG.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        log.warning("--strategy=multi_worker without a TF_CONFIG environment variable: training "
                    "on this machine only (set TF_CONFIG on every worker, see docs/training.md)")
        return
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        if index >= len(cluster[task_type]):
            raise IndexError(index)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(
            f"TF_CONFIG must be JSON like {{\"cluster\": {{\"worker\": [\"host1:port\", "
            f"\"host2:port\"]}}, \"task\": {{\"type\": \"worker\", \"index\": 0}}}} with the task "
            f"index inside its job's list; got {raw!r} ({type(e).__name__}: {e})") from None


def cluster_resolver(strategy):
    """The strategy's cluster resolver, or None for single-machine strategies."""
    return getattr(strategy, "cluster_resolver", None)


def is_multi_worker(strategy):
    """True when the strategy spans several worker processes (a TF_CONFIG cluster)."""
    resolver = cluster_resolver(strategy)
    if resolver is None:
        return False
    return bool(resolver.cluster_spec().as_dict())


def task_id(strategy):
    """This worker's index in its job (0 outside multi-worker training)."""
    return int(cluster_resolver(strategy).task_id or 0) if is_multi_worker(strategy) else 0


def is_chief(strategy):
    """True on the worker that writes files (the only worker outside multi-worker training).

    The chief is the task of type "chief" when the cluster has one, else worker 0, as in
    TensorFlow's multi-worker tutorials.
    """
    if not is_multi_worker(strategy):
        return True
    resolver = cluster_resolver(strategy)
    spec = resolver.cluster_spec().as_dict()
    task_type, index = resolver.task_type, int(resolver.task_id or 0)
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in spec)


def local_devices(strategy):
    """Device names this worker computes on (for the default strategy: where TF places ops)."""
    try:
        return tuple(strategy.extended.worker_devices)
    except (RuntimeError, NotImplementedError):  # the default strategy has no device list
        gpus = tf.config.list_logical_devices("GPU")
        return (gpus[0].name if gpus else "/device:CPU:0",)


def device_kind(strategy):
    """"GPU" or "CPU": what the strategy's replicas run on."""
    devices = local_devices(strategy)
    return "GPU" if any("GPU" in d.upper() for d in devices) else "CPU"


def mixed_precision_policy(strategy):
    """The Keras mixed-precision policy for the strategy's devices.

    "mixed_float16" on GPUs (the training loop then scales the loss, see
    keras.optimizers.LossScaleOptimizer), "mixed_bfloat16" on TPUs and CPUs (bfloat16 has
    float32's exponent range and needs no loss scaling).
    """
    return "mixed_float16" if device_kind(strategy) == "GPU" else "mixed_bfloat16"


def jit_support(strategy):
    """(supported, reason): whether the train step can be XLA-compiled under `strategy`.

    XLA cannot compile a step whose variables are mirrored over several CPU devices of one
    process (MirroredStrategy over logical CPUs fails with "Trying to access resource ... located
    in device CPU:1 from device CPU:0"). TPU steps are always compiled.
    """
    if device_kind(strategy) == "CPU" and len(local_devices(strategy)) > 1:
        return False, (f"XLA cannot compile a step mirrored over {len(local_devices(strategy))} "
                       f"CPU devices of one process")
    return True, ""


def describe(strategy):
    """One line for logs: strategy class, replicas, workers, devices."""
    workers = 1
    if is_multi_worker(strategy):
        spec = cluster_resolver(strategy).cluster_spec().as_dict()
        workers = sum(len(spec.get(job, [])) for job in ("chief", "worker"))
    return (f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replica(s) on "
            f"{workers} worker(s), {device_kind(strategy)} ({', '.join(local_devices(strategy))})")
