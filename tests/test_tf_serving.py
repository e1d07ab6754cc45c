"""What a TF Serving deployment expects beside the SavedModel: warm-up requests replayed against
the export, the server's configuration files parsed with TF Serving's own protos, a real gRPC
client against the PredictionService stand-in, the model card inside the export, and
`tfds build` producing the records cxr-build-dataset does."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from cxr_tf import environment, saved_models
from cxr_tf.serving import grpc_service, model_card, tf_serving

import builder_fixtures as bf
import serving_fixtures as sf

pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api protos not "
                    "installed (make install does it)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    return sf.region_export(tmp_path_factory)[1]


def test_warmup_requests_are_read_back_and_replayed(export_path):
    from tensorflow_serving.apis import prediction_log_pb2
    logs = tf_serving.read_warmup(export_path)
    assert 1 <= len(logs) <= tf_serving.MAX_WARMUP_RECORDS
    loaded, _ = saved_models.load_exported(export_path)
    shapes = set()
    for log in logs:
        assert isinstance(log, prediction_log_pb2.PredictionLog)
        request = log.predict_log.request
        assert request.model_spec.name == "cxr"
        assert request.model_spec.signature_name == "serving_default"
        data = tf.make_ndarray(request.inputs["image_bytes"])
        shapes.add(tuple(saved_models_header(data[0])))
        out = loaded.signatures[request.model_spec.signature_name](
            image_bytes=tf.constant(data))
        assert out["probabilities"].shape == (1, 14)
    assert len(shapes) >= 3  # films of different sizes


def saved_models_header(data):
    from cxr_tf.data import preprocessing
    return preprocessing.encoded_image_shape(tf.constant(data)).numpy()


def _batching_parameters_message():
    """TF Serving's BatchingParameters (session_bundle_config.proto, not shipped in
    tensorflow-serving-api), declared here from that file's field list: each field a
    google.protobuf wrapper, as TF Serving parses --batching_parameters_file."""
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    f = descriptor_pb2.FileDescriptorProto(name="batching.proto", package="tensorflow.serving",
                                           dependency=["google/protobuf/wrappers.proto"],
                                           syntax="proto3")
    m = f.message_type.add(name="BatchingParameters")
    t = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(
            [("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
             ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
             ("thread_pool_name", "StringValue")], start=1):
        m.field.add(name=name, number=number, label=t.LABEL_OPTIONAL, type=t.TYPE_MESSAGE,
                    type_name=f".google.protobuf.{kind}")
    m.field.add(name="allowed_batch_sizes", number=6, label=t.LABEL_REPEATED, type=t.TYPE_INT64)
    m.field.add(name="pad_variable_length_inputs", number=7, label=t.LABEL_OPTIONAL,
                type=t.TYPE_BOOL)
    pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_server_config_files_parse_with_tf_servings_protos(tmp_path):
    from tensorflow_serving.config import model_server_config_pb2
    config_path, batching_path = tf_serving.write_server_config(str(tmp_path), "cxr",
                                                                "/models/cxr")
    config = text_format.Parse(open(config_path).read(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("cxr", "/models/cxr",
                                                                   "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
    batching = text_format.Parse(open(batching_path).read(), _batching_parameters_message()())
    assert batching.max_batch_size.value == tf_serving.BATCHING_DEFAULTS["max_batch_size"]
    assert batching.batch_timeout_micros.value == 2000
    assert batching.num_batch_threads.value >= 1 and batching.max_enqueued_batches.value >= 1
    with pytest.raises(ValueError, match="Unknown batching parameters"):
        tf_serving.batching_parameters(max_batch=3)


def test_a_real_grpc_client_gets_predictions_and_metadata(export_path):
    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    server, port = grpc_service.serve(export_path, "cxr", port=0)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "cxr"
        bright = sf.encode(np.full((64, 64), 230, np.uint8), "png")
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([bright]))
        response = stub.Predict(request, timeout=60)
        loaded, _ = saved_models.load_exported(export_path)
        direct = loaded.signatures["serving_default"](image_bytes=tf.constant([bright]))
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                                   direct["probabilities"].numpy(), rtol=1e-6)
        assert response.model_spec.version.value == 1
        assert tf.make_ndarray(response.outputs["anatomy_ok"]).tolist() == [1]
        meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
        meta_request.model_spec.name = "cxr"
        meta_request.metadata_field.append("signature_def")
        meta = stub.GetModelMetadata(meta_request, timeout=60)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        meta.metadata["signature_def"].Unpack(signatures)
        assert sorted(signatures.signature_def) == ["metadata", "predict_pixels",
                                                    "serving_default"]
        assert "image_bytes" in signatures.signature_def["serving_default"].inputs
        request.model_spec.name = "other"
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        request.model_spec.name = "cxr"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b"junk"]))
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a PNG or JPEG image" in err.value.details()
    finally:
        server.stop(0)


def test_the_export_carries_a_model_card_made_from_its_report(export_path, tmp_path):
    card = open(os.path.join(export_path, "assets.extra", model_card.CARD_FILE)).read()
    assert "made without an evaluation report" in card  # this export had none
    assert "Atelectasis" in card
    assert "Images larger than 40,000,000 pixels are refused" in card
    _, meta = saved_models.load_exported(export_path)
    classes = [{"name": n, "positives": 5, "auroc": 0.8, "ci_low": 0.7, "ci_high": 0.9,
                "threshold": 0.3, "sensitivity": 0.75, "specificity": 0.7}
               for n in meta["label_names"]]
    report = {"meta": {"dataset": "chestxray14/256px/1.0.0", "split": "test",
                       "created": "2026-12-02"},
              "classification": {"n_images": 124, "classes": classes, "mean_auroc": 0.8,
                                 "mean_auroc_ci": [0.75, 0.85], "classes_in_mean": 14,
                                 "threshold_rule": "Youden's J on validation"}}
    text = model_card.model_card(meta, report)
    assert "Mean AUROC 0.8000 (95% bootstrap interval 0.750-0.850" in text
    assert "| Hernia | 5 | 0.8000 | 0.700-0.900 | 0.300 | 0.750 | 0.700 |" in text
    assert "Youden's J on validation" in text and "Not intended for" in text
    assert "anatomy check" in text


def test_tfds_build_makes_the_records_cxr_build_dataset_makes(tmp_path):
    pytest.importorskip("apache_beam", reason="`tfds build` needs apache-beam (tfds extra)")
    manual = bf.make_jsrt_public_copy(tmp_path / "raw")
    env = environment.for_subprocess()
    tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
    by_tfds = subprocess.run(
        [tfds_cli, "build", "--imports=cxr_tf.data.datasets", "jsrt_scr", "--config=224px",
         f"--manual_dir={manual}", f"--data_dir={tmp_path / 'a'}"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600)
    assert by_tfds.returncode == 0, by_tfds.stderr[-3000:]
    ours = subprocess.run(
        [sys.executable, "-m", "pipelines.build_dataset", f"--work_dir={tmp_path}",
         "--config=paper", "--dataset=jsrt_scr", "--image_size=224", f"--manual_dir={manual}",
         f"--data_dir={tmp_path / 'b'}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert ours.returncode == 0, ours.stderr[-3000:]
    from cxr_tf.data import datasets
    from cxr_tf.data.builders import jsrt_scr
    records = []
    for root in ("a", "b"):
        builder = jsrt_scr.make_builder(str(tmp_path / root), image_size=224)
        records.append({e["image_id"].decode(): e for split in builder.info.splits
                        for e in datasets.load_split(builder, split).as_numpy_iterator()})
    assert sorted(records[0]) == sorted(records[1]) == ["JPCLN001", "JPCLN002", "JPCNN001",
                                                        "JPCNN002"]
    for name, example in records[0].items():
        for key in ("image", "masks", "clavicles", "fold"):
            np.testing.assert_array_equal(example[key], records[1][name][key], err_msg=key)


def test_an_export_without_the_protos_is_refused_at_once_or_warned(tmp_path, monkeypatch,
                                                                   caplog):
    from cxr_tf import workflow
    from cxr_tf.models import build_classifier
    monkeypatch.setattr(tf_serving, "available", lambda: False)
    # Refused before the model is even opened (this path does not exist).
    with pytest.raises(ValueError, match=r"export would lack its warm-up requests \(assets.extra/"
                                         r"tf_serving_warmup_requests.*and models.config: pip "
                                         r"install 'cxr_tf\[serving\]'.*--nowarmup"):
        workflow.export(str(tmp_path / "no_model.keras"), str(tmp_path / "export"))
    model = build_classifier("chexnet", backbone="densenet_tiny", input_size=64)
    model.save(str(tmp_path / "m.keras"))
    path = workflow.export(str(tmp_path / "m.keras"), str(tmp_path / "export"),
                           warmup="if_available")
    assert "export has no warm-up requests and no models.config" in caplog.text
    assert not os.path.exists(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
    assert not os.path.exists(tmp_path / "export" / "models.config")
