"""What a TF Serving deployment expects beside the SavedModel: warm-up requests and the server's
configuration files, written with TF Serving's own protocol buffers.

- Warm-up: TF Serving replays `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord
  of `PredictionLog` records, at most 1,000) when it loads a version, so the first user request
  does not pay for tracing and memory allocation. cxr_tf writes a few representative encoded
  films (phantom chest films of different sizes and encodings: 8- and 16-bit PNG, JPEG), each a
  `serving_default` request.
- `models.config`: a `ModelServerConfig` text proto (`--model_config_file`): the model's name,
  base path and version policy.
- `batching_parameters.txt`: a `BatchingParameters` text proto (`--enable_batching
  --batching_parameters_file`); the values and their reasons are in docs/serving.md.

The protos come from the `tensorflow-serving-api` package: the `serving` extra
(`pip install 'cxr_tf[cpu,serving]'`; `make install` installs it). `BatchingParameters` is not
in that package; its text format is written here as TF Serving documents it.
"""

import os

import cv2
import numpy as np
import tensorflow as tf

from cxr_tf import files, saved_models
from cxr_tf.data import phantom

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many
MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
# Batching defaults (docs/serving.md, "Batching"): on the 2-core CPU measured, batching bought at
# most about 2x images/s and batch 16 nothing over 8, so batches stay small and the wait short
# (2 ms of a ~100 ms call); GPUs want larger batches (see the doc).
BATCHING_DEFAULTS = {"max_batch_size": 8, "batch_timeout_micros": 2000, "num_batch_threads": 2,
                     "max_enqueued_batches": 64}


def available():
    """True when TF Serving's protos can be imported (the `serving` extra is installed)."""
    try:
        protos()
    except ImportError:
        return False
    return True


def protos():
    """TF Serving's API protos (tensorflow_serving.apis and .config), or ImportError saying how
    to install them."""
    try:
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            model_pb2,
            predict_pb2,
            prediction_log_pb2,
            prediction_service_pb2_grpc,
        )
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as e:
        raise ImportError(
            "TF Serving's protos (the tensorflow-serving-api package) are not installed: pip "
            "install 'cxr_tf[serving]' (from a checkout: pip install -e '.[cpu,serving]'; "
            f"`make install` has them) ({e})") from None
    return {"predict": predict_pb2, "prediction_log": prediction_log_pb2, "model": model_pb2,
            "metadata": get_model_metadata_pb2, "service_grpc": prediction_service_pb2_grpc,
            "model_server_config": model_server_config_pb2}


def warmup_images(seed=0):
    """(name, encoded bytes) of the warm-up films: phantom chest films at sizes a deployment
    sees (256 to 2048 px, square and not), as 8-bit PNG, 16-bit PNG and JPEG."""
    out = []
    for k, (size, height, encoding) in enumerate([(256, 256, "png8"), (1024, 1024, "png8"),
                                                   (1024, 1280, "png16"),
                                                   (2048, 2048, "jpeg")]):
        # Rendered at 512 px at most (large phantoms are slow to draw), then resized.
        image, _, _ = phantom.make_case(np.random.SeedSequence([seed, k]), min(size, 512))
        image = cv2.resize(image, (size, height), interpolation=cv2.INTER_LINEAR)
        if encoding == "png16":
            data = cv2.imencode(".png", image.astype(np.uint16) * 257)[1]
        elif encoding == "jpeg":
            data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        else:
            data = cv2.imencode(".png", image)[1]
        out.append((f"{size}x{height}_{encoding}", data.tobytes()))
    return out


def warmup_records(model_name="cxr", images=None):
    """Serialised PredictionLog records, one serving_default request per image."""
    p = protos()
    records = []
    for _, data in images or warmup_images():
        request = p["predict"].PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = saved_models.SERVING_DEFAULT
        request.inputs[saved_models.IMAGE_BYTES].CopyFrom(
            tf.make_tensor_proto([data], dtype=tf.string))
        log = p["prediction_log"].PredictionLog(
            predict_log=p["prediction_log"].PredictLog(request=request))
        records.append(log.SerializeToString())
    if len(records) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(records)} warm-up records; TF Serving reads at most "
                         f"{MAX_WARMUP_RECORDS}")
    return records


def write_warmup(version_dir, model_name="cxr", images=None):
    """Writes <version>/assets.extra/tf_serving_warmup_requests; returns its path."""
    path = os.path.join(version_dir, WARMUP_FILE)
    files.makedirs(os.path.dirname(path))
    with files.atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in warmup_records(model_name, images):
                writer.write(record)
    return path


def read_warmup(version_dir):
    """The PredictionLog records of a version's warm-up file (what TF Serving replays)."""
    p = protos()
    path = os.path.join(version_dir, WARMUP_FILE)
    logs = []
    for raw in tf.data.TFRecordDataset(path):
        log = p["prediction_log"].PredictionLog()
        log.ParseFromString(raw.numpy())
        logs.append(log)
    return logs


def models_config(model_name, base_path, versions=None):
    """`models.config` text (ModelServerConfig): serve the latest version of `base_path`, or the
    listed `versions`."""
    from google.protobuf import text_format
    p = protos()
    config = p["model_server_config"].ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    if versions:
        model.model_version_policy.specific.versions.extend(int(v) for v in versions)
    else:
        model.model_version_policy.latest.num_versions = 1
    return text_format.MessageToString(config)


def batching_parameters(**values):
    """`batching_parameters.txt` text (BatchingParameters; each field a wrapper message, as TF
    Serving reads it), from BATCHING_DEFAULTS updated with `values`."""
    settings = {**BATCHING_DEFAULTS, **values}
    unknown = set(settings) - set(BATCHING_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown batching parameters {sorted(unknown)}; expected "
                         f"{sorted(BATCHING_DEFAULTS)}")
    for key, value in settings.items():
        if int(value) < 1:
            raise ValueError(f"batching parameter {key} must be >= 1, got {value}")
    return "".join(f"{key} {{ value: {int(value)} }}\n" for key, value in settings.items())


def write_server_config(export_dir, model_name="cxr", base_path=None, **batching):
    """Writes models.config and batching_parameters.txt into the export base directory (TF
    Serving ignores files that are not numeric version directories there); returns both paths.

    Args:
      export_dir: the export base directory (versions inside).
      model_name: the name clients use (/v1/models/<name>).
      base_path: the base path as the server sees it (default `export_dir`, absolute; in a
        container usually /models/<name>).
      **batching: BatchingParameters fields overriding BATCHING_DEFAULTS.
    """
    base_path = base_path or files.absolute(export_dir)
    config_path = os.path.join(export_dir, MODELS_CONFIG)
    batching_path = os.path.join(export_dir, BATCHING_PARAMETERS)
    files.write_text_atomic(config_path, models_config(model_name, base_path))
    files.write_text_atomic(batching_path, batching_parameters(**batching))
    return config_path, batching_path
