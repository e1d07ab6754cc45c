"""The REST and gRPC front ends answer every TensorFlow error code the same way: REST with TF
Serving's HTTP status for it, gRPC with the status code of the same name and number."""

import pytest
import tensorflow as tf

from cxr_tf.serving import error_codes, grpc_service, rest_json


def test_the_table_covers_tensorflows_error_codes_proto():
    from tensorflow.core.protobuf import error_codes_pb2
    names = {v.name for v in error_codes_pb2.Code.DESCRIPTOR.values} - {
        "DO_NOT_USE_RESERVED_FOR_FUTURE_EXPANSION_USE_DEFAULT_IN_SWITCH_INSTEAD_"}
    assert set(error_codes.HTTP_STATUS) == names and len(names) == 17


# tf.errors' public class for each code, e.g. FailedPreconditionError for 9.
ERROR_CLASSES = {cls(None, None, "").error_code: cls for cls in vars(tf.errors).values()
                 if isinstance(cls, type) and issubclass(cls, tf.errors.OpError)
                 and cls is not tf.errors.OpError}


@pytest.mark.parametrize("name", sorted(set(error_codes.CODES) - {"OK"}))
def test_rest_and_grpc_answer_each_tensorflow_error_code_alike(name):
    number = error_codes.CODES[name]
    exc = ERROR_CLASSES[number](None, None, f"{name} happened")
    over_rest = rest_json.rest_error(exc)
    over_grpc, message = grpc_service.abort_code(exc)
    assert over_rest.code == over_grpc.name == name
    assert over_grpc.value[0] == number == exc.error_code
    assert over_rest.status == error_codes.HTTP_STATUS[name]
    assert over_rest.message == message == f"{name} happened"


@pytest.mark.parametrize("name, http", [("FAILED_PRECONDITION", 400), ("RESOURCE_EXHAUSTED", 429),
                                        ("NOT_FOUND", 404), ("UNAVAILABLE", 503),
                                        ("DATA_LOSS", 500), ("CANCELLED", 499)])
def test_tf_servings_http_statuses(name, http):
    assert error_codes.http_status(name) == http


def test_requests_that_do_not_fit_are_invalid_arguments_on_both():
    exc = ValueError("Cannot convert 'x' to EagerTensor of dtype string")
    over_rest = rest_json.rest_error(exc)
    assert over_rest.status == 400 and over_rest.code == "INVALID_ARGUMENT"
    assert grpc_service.abort_code(exc)[0].name == "INVALID_ARGUMENT"
    assert error_codes.code_of(KeyError("x")) == "UNKNOWN"
