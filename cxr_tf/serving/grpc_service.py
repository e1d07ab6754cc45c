"""TF Serving's gRPC PredictionService (Predict, GetModelMetadata), offline, for testing clients.

TF Serving's main interface is gRPC on port 8500. `cxr-rest --serve --grpc_port=8500` answers it
beside the REST URLs, with the generated stubs of the `tensorflow-serving-api` package, so a
team can run its gRPC client against an exported model without TF Serving:

    channel = grpc.insecure_channel("127.0.0.1:8500")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "cxr"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png_bytes]))
    response = stub.Predict(request, timeout=30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])

Errors follow TF Serving: a model or version not served is NOT_FOUND, bad input
INVALID_ARGUMENT (the SavedModel's own message, e.g. an image over max_image_pixels). Like the
REST stand-in, it is a test double, not a production server.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os

import grpc
import tensorflow as tf

from cxr_tf import saved_models
from cxr_tf.serving import error_codes, tf_serving

log = logging.getLogger("cxr_tf")



def abort_code(exc):
    """(grpc.StatusCode, message) for an error met while predicting: the same code the REST
    front end answers with (error_codes)."""
    message = error_codes.op_error_message(exc) if hasattr(exc, "error_code") else str(exc)
    return error_codes.grpc_status(error_codes.code_of(exc)), message


class PredictionService:
    """The servicer: one loaded export version under `model_name`."""

    def __init__(self, loaded, model_name, version):
        self.loaded = loaded
        self.model_name = model_name
        self.version = int(version)
        self.p = tf_serving.protos()

    def _check_spec(self, spec, context):
        if spec.name != self.model_name or (spec.HasField("version")
                                            and spec.version.value != self.version):
            which = (f"Specific({spec.name}, {spec.version.value})" if spec.HasField("version")
                     else f"Latest({spec.name})")
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {which}")

    def Predict(self, request, context):  # noqa: N802 (gRPC's method names)
        self._check_spec(request.model_spec, context)
        name = request.model_spec.signature_name or saved_models.SERVING_DEFAULT
        if name not in self.loaded.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Serving signature name: \"{name}\" not found in signature def")
        fn = self.loaded.signatures[name]
        expected = fn.structured_input_signature[1]
        missing = sorted(set(expected) - set(request.inputs))
        extra = sorted(set(request.inputs) - set(expected))
        if missing or extra:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Request inputs do not match the signature {name}: missing "
                          f"{missing}, unexpected {extra}")
        try:
            inputs = {k: tf.constant(tf.make_ndarray(request.inputs[k]), dtype=spec.dtype)
                      for k, spec in expected.items()}
            outputs = fn(**inputs)
        except (tf.errors.OpError, ValueError, TypeError) as e:
            context.abort(*abort_code(e))
        response = self.p["predict"].PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        self._check_spec(request.model_spec, context)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "Metadata field(s) must be exactly ['signature_def']")
        meta = self.p["metadata"]
        signatures = meta.SignatureDefMap()
        for name, fn in self.loaded.signatures.items():
            signatures.signature_def[name].CopyFrom(_signature_def(fn))
        response = meta.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.metadata["signature_def"].Pack(signatures)
        return response


def _signature_def(fn):
    """A SignatureDef proto of a loaded concrete function (names, dtypes, shapes)."""
    from tensorflow.core.protobuf import meta_graph_pb2
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, spec in fn.structured_input_signature[1].items():
        info = sig.inputs[name]
        info.name = f"{name}:0"
        info.dtype = spec.dtype.as_datatype_enum
        info.tensor_shape.CopyFrom(spec.shape.as_proto())
    for name, spec in fn.structured_outputs.items():
        info = sig.outputs[name]
        info.name = name
        info.dtype = spec.dtype.as_datatype_enum
        info.tensor_shape.CopyFrom(spec.shape.as_proto())
    return sig


def serve(export_path: str | os.PathLike, model_name: str = "cxr", host: str = "127.0.0.1",
          port: int = 8500, max_workers: int = 4) -> tuple[grpc.Server, int]:
    """Starts a gRPC PredictionService on an export (its highest version); returns (server,
    bound port). Stop it with server.stop(grace)."""
    path = saved_models.resolve_version(export_path)
    loaded, _ = saved_models.load_exported(path)
    name = os.path.basename(os.path.normpath(path))
    p = tf_serving.protos()
    # Classify, Regress and MultiInference answer UNIMPLEMENTED, from the generated base class.
    servicer = type("Servicer", (PredictionService, p["service_grpc"].PredictionServiceServicer),
                    {})
    service = servicer(loaded, model_name, int(name) if name.isdigit() else 1)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_workers))
    p["service_grpc"].add_PredictionServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"Cannot listen on {host}:{port} for gRPC")
    server.start()
    log.info("gRPC PredictionService for %s version %d on %s:%d", model_name, service.version,
             host, bound)
    return server, bound
