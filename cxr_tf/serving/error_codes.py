"""TensorFlow's error codes and what each becomes over TF Serving's REST and gRPC APIs, in one
table for cxr_tf's two front ends (serving.rest_json, serving.grpc_service).

The codes are TensorFlow's own (`tensorflow/core/protobuf/error_codes.proto`, the enum every
`tf.errors.OpError` carries as `error_code`). gRPC's status codes are the same enum, name for
name. The HTTP statuses are TF Serving's (`ToHTTPStatusCode` in its REST handler): for example
FAILED_PRECONDITION is HTTP 400 over REST and FAILED_PRECONDITION over gRPC.
"""

from tensorflow.core.protobuf import error_codes_pb2

# name -> number, from the proto (its reserved sentinel left out).
CODES = {v.name: v.number for v in error_codes_pb2.Code.DESCRIPTOR.values
         if not v.name.startswith("DO_NOT_USE")}
NAMES = {number: name for name, number in CODES.items()}

HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}
assert set(HTTP_STATUS) == set(CODES), "error_codes.proto changed: extend HTTP_STATUS"


def code_of(exc):
    """The error code name of an exception met while answering a request: a tf.errors.OpError's
    own code; INVALID_ARGUMENT for ValueError and TypeError (a request that does not fit the
    signature); UNKNOWN otherwise."""
    number = getattr(exc, "error_code", None)
    if number is not None:
        return NAMES.get(int(number), "UNKNOWN")
    if isinstance(exc, (ValueError, TypeError)):
        return "INVALID_ARGUMENT"
    return "UNKNOWN"


def http_status(name):
    """The HTTP status TF Serving's REST API answers error code `name` with."""
    return HTTP_STATUS[name]


def grpc_status(name):
    """The grpc.StatusCode TF Serving's gRPC API answers error code `name` with."""
    import grpc
    return grpc.StatusCode[name]


def op_error_message(exc):
    """A TensorFlow OpError's message without the Python-side "Graph execution error" preamble
    and stack trace (TF Serving's messages start at the op's own text)."""
    lines = exc.message.splitlines()
    if lines and lines[0].startswith("Graph execution error"):
        keep = 0
        for i, line in enumerate(lines):
            if (line.startswith(("Detected at node", "  File ", "<stack traces unavailable>"))
                    or not line.strip()):
                keep = i + 1
            elif keep:
                break
        lines = lines[keep:] or lines
    return "\n".join(lines).strip()
