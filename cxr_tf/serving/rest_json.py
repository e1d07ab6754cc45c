"""TF Serving's REST predict API as a JSON codec: request JSON -> signature call -> response JSON.

TF Serving cannot be installed here (no binary package, no Docker daemon), so this module
reproduces what its REST front end does with a `:predict` request, to test requests and
exported models without it:

  - the body is a JSON object with an optional `signature_name` (default `serving_default`) and
    exactly one of `instances` (row format) or `inputs` (columnar format);
  - row format: `instances` is a non-empty list; each element is an object with one key per
    named input of the signature, or, for a single-input signature, the input's value itself
    (e.g. `{"b64": ...}`); the elements are stacked on a new batch axis;
  - columnar format: `inputs` is an object with one key per named input (keys that are not
    inputs are ignored, as TF Serving does), or, for a single-input signature, the value itself;
    the values are taken as whole tensors (the batch axis is in the value);
  - a value is a (nested) list or scalar; lists must be rectangular; a string input takes JSON
    strings or `{"b64": "<base64>"}` objects, decoded to bytes;
  - the response is `{"predictions": [...]}` (row format: one entry per instance, an object of
    named outputs, or the bare value when the signature has one output) or `{"outputs": ...}`
    (columnar: an object of named outputs, or the bare value); string outputs whose name ends
    in `_bytes` come back as `{"b64": ...}`;
  - errors are `{"error": "<message>"}` with the HTTP status TF Serving maps the error code to
    (InvalidArgument -> 400, NotFound -> 404, ...).

This follows tensorflow_serving/util/json_tensor.cc and model_servers/http_rest_api_handler.cc
(request parsing, batching and response layout), and the REST API guide
(tensorflow.org/tfx/serving/api_rest). It calls the signature through `tf.saved_model.load`,
the same SavedModel loader TF Serving uses. Error messages are TF Serving's where it has one.

Errors take their HTTP status from serving.error_codes (the table the gRPC front end shares);
serving.rest_server puts this behind TF Serving's URLs in a local HTTP server.

Example:
  loaded = tf.saved_model.load("work/export/1")
  status, response = rest_json.predict(loaded, '{"instances": [{"b64": "iVBORw0..."}]}')
"""

import base64
import binascii
import json
import logging
import os

import numpy as np
import tensorflow as tf

from cxr_tf import saved_models
from cxr_tf.serving import error_codes

log = logging.getLogger("cxr_tf")

DEFAULT_SIGNATURE = "serving_default"
BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"
ROW, COLUMNAR = "row", "columnar"

_INT_RANGES = {
    tf.int8: (-2**7, 2**7 - 1), tf.uint8: (0, 2**8 - 1), tf.int16: (-2**15, 2**15 - 1),
    tf.int32: (-2**31, 2**31 - 1), tf.int64: (-2**63, 2**63 - 1), tf.uint32: (0, 2**32 - 1),
    tf.uint64: (0, 2**64 - 1),
}


class RestError(Exception):
    """A request TF Serving would refuse: `code` is the error code name, `status` the HTTP one."""

    def __init__(self, message, code="INVALID_ARGUMENT"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = error_codes.http_status(code)


def _json_str(value):
    return json.dumps(value, separators=(",", ":"))[:200]


def _is_b64(value):
    return (isinstance(value, dict) and len(value) == 1 and BASE64_KEY in value
            and isinstance(value[BASE64_KEY], str))


def _decode_b64(value):
    if not _is_b64(value):
        raise RestError(f"JSON Value: {_json_str(value)} not formatted correctly for base64 data")
    text = value[BASE64_KEY]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RestError("Unable to base64 decode") from None


def _type_error(value, dtype):
    kind = {dict: "Object", list: "Array", str: "String", bool: "Bool", type(None): "Null"}
    name = kind.get(type(value), "Number")
    return RestError(f"JSON Value: {_json_str(value)} Type: {name} is not of expected type: "
                     f"{dtype.name}")


def _scalar(value, dtype):
    """One JSON leaf as a Python value of the signature input's dtype."""
    if isinstance(value, dict):
        if dtype == tf.string:
            return _decode_b64(value)
        raise _type_error(value, dtype)
    if dtype == tf.string:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype.is_floating:
        if isinstance(value, int) and abs(value) > 2 ** np.finfo(dtype.as_numpy_dtype).nmant + 1:
            raise RestError(f"Cannot convert JSON value: {value} to {dtype.name} without loss "
                            f"of precision.")
        return float(value)
    if dtype.is_integer:
        lo, hi = _INT_RANGES.get(dtype, (-2**63, 2**63 - 1))
        if not isinstance(value, int) or not lo <= value <= hi:
            raise _type_error(value, dtype)
        return value
    raise RestError(f"Conversion of JSON Value: {_json_str(value)} to type: {dtype.name}",
                    code="UNIMPLEMENTED")


def _shape(value):
    """Dense shape of a JSON value, read from the first element at every level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, shape, level, dtype, out):
    if not isinstance(value, list):
        if level != len(shape):
            raise RestError(f"JSON Value: {_json_str(value)} found at incorrect level: "
                            f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise RestError(f"Encountered list at unexpected level: {level} expected < "
                        f"{len(shape)}")
    if len(value) != shape[level]:
        raise RestError(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                        f"expected size: {shape[level]}")
    for item in value:
        _fill(item, shape, level + 1, dtype, out)


def json_to_array(value, dtype):
    """A JSON (nested list / scalar / b64 object) value as a NumPy array of `dtype`."""
    dtype = tf.as_dtype(dtype)
    shape = _shape(value)
    flat = []
    _fill(value, shape, 0, dtype, flat)
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    return np.array(flat, dtype=np_dtype).reshape(shape)


def _signature_inputs(fn):
    """{input name: TensorSpec} of a loaded signature."""
    return dict(fn.structured_input_signature[1])


def parse_request(body, signatures):
    """Parses a :predict body the way TF Serving does.

    Args:
      body: the request body (str or bytes) or an already parsed dict.
      signatures: the loaded SavedModel's `signatures` mapping.

    Returns:
      (signature name, {input name: np.ndarray}, ROW or COLUMNAR).
    Raises:
      RestError: with TF Serving's message for a request it would refuse.
    """
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        if not body.strip():
            raise RestError("JSON Parse error: The document is empty")
        try:
            body = json.loads(body)
        except json.JSONDecodeError as e:
            raise RestError(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(body, dict):
        raise RestError(f"JSON Value: {_json_str(body)} Is not object")
    name = body.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise RestError(f"JSON Value: {_json_str(body)} not formatted correctly. "
                        f"'signature_name' key must be a string value.")
    name = name or DEFAULT_SIGNATURE
    if name not in signatures:
        raise RestError(f'Serving signature name: "{name}" not found in signature def')
    specs = _signature_inputs(signatures[name])
    if not specs:
        raise RestError(f"Failed to get input map for signature: {name}")
    if "instances" in body and "inputs" in body:
        raise RestError(f"JSON Value: {_json_str(body)} Not formatted correctly expecting only "
                        f"one of 'inputs' or 'instances' keys to exist ")
    if "instances" in body:
        return name, _from_instances(body["instances"], specs), ROW
    if "inputs" in body:
        return name, _from_inputs(body["inputs"], specs), COLUMNAR
    raise RestError("Missing 'inputs' or 'instances' key")


def _from_instances(instances, specs):
    if not isinstance(instances, list):
        raise RestError("Excepting 'instances' to be an list/array")
    if not instances:
        raise RestError("No values in 'instances' array")
    input_names = sorted(specs)

    def is_object(v):
        return isinstance(v, dict) and not _is_b64(v)

    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise RestError("instances is a plain list, but expecting list of objects as multiple "
                        "input tensors required as per tensorinfo_map")
    objects = is_object(instances[0])
    rows = {n: [] for n in input_names}
    shapes = {}
    for i, item in enumerate(instances):
        if objects:
            if not is_object(item):
                raise RestError(f"Expecting object but got list at item {i} of input list")
            pairs = list(item.items())
        else:
            if is_object(item):
                raise RestError(f"Expecting value/list but got object at item {i} of input list")
            pairs = [(input_names[0], item)]
        for key, value in pairs:
            where = f"Failed to process element: {i}" + (f" key: {key}" if objects else "")
            if key not in specs:
                raise RestError(f"{where} of 'instances' list. Error: INVALID_ARGUMENT: JSON "
                                f"object: does not have named input: {key}")
            try:
                array = json_to_array(value, specs[key].dtype)
            except RestError as e:
                raise RestError(f"{where} of 'instances' list. Error: {e.code}: {e.message}",
                                e.code) from None
            if key in shapes and shapes[key] != array.shape:
                raise RestError(f"{where} of 'instances' list. Error: INVALID_ARGUMENT: "
                                f"Expecting shape {list(shapes[key])} but got: "
                                f"{list(array.shape)}")
            shapes[key] = array.shape
            rows[key].append(array)
        if objects and sorted(item) != input_names:
            raise RestError(f"Failed to process element: {i} of 'instances' list. JSON object: "
                            f"{_json_str(item)} keys must be equal to: {','.join(input_names)}")
    return {n: np.stack(v) for n, v in rows.items()}


def _from_inputs(inputs, specs):
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) > 1:
            raise RestError("inputs is a plain value/list, but expecting an object as multiple "
                            "input tensors required as per tensorinfo_map")
        (name, spec), = specs.items()
        return {name: json_to_array(inputs, spec.dtype)}
    extra = sorted(set(inputs) - set(specs))
    if extra:
        log.warning("TF Serving ignores keys of 'inputs' that are not inputs of the signature: "
                    "%s", ", ".join(extra))
    out = {}
    for name in sorted(specs):
        if name not in inputs:
            raise RestError(f"Missing named input: {name} in 'inputs' object.")
        out[name] = json_to_array(inputs[name], specs[name].dtype)
    return out


def _check_shapes(inputs, specs, signature):
    for name, array in inputs.items():
        spec = specs[name]
        if not spec.shape.is_compatible_with(array.shape):
            raise RestError(f"Input {name!r} of signature {signature!r} has shape "
                            f"{list(array.shape)}, expected {spec.shape.as_list()} (None: any "
                            f"size)")


def _json_value(name, array):
    """A NumPy output as JSON-ready nested lists (floats written as their shortest text that
    reads back to the same float32, as TF Serving does)."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        as_bytes = name.endswith(BYTES_SUFFIX)

        def conv(v):
            v = v if isinstance(v, bytes) else str(v).encode()
            if as_bytes:
                return {BASE64_KEY: base64.b64encode(v).decode("ascii")}
            return v.decode("utf-8", errors="replace")
    elif array.dtype.kind == "f":
        array, conv = array.astype(str), float
    else:
        return array.tolist()
    return np.vectorize(conv, otypes=[object])(array).tolist()


def make_response(outputs, request_format):
    """{output name: np.ndarray} -> TF Serving's response dict for the request format."""
    if not outputs:
        raise RestError("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if request_format == COLUMNAR:
        values = {n: _json_value(n, outputs[n]) for n in names}
        return {"outputs": values if len(names) > 1 else values[names[0]]}
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise RestError(f"Tensor name: {n} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise RestError(f"Tensor name: {n} has inconsistent batch size: "
                            f"{outputs[n].shape[0]} expecting: {batch}")
        batch = outputs[n].shape[0]
    rows = []
    for i in range(batch):
        row = {n: _json_value(n, outputs[n][i]) for n in names}
        rows.append(row if len(names) > 1 else row[names[0]])
    return {"predictions": rows}


def answer_request(export_path: str | os.PathLike,
                   body: str | bytes | dict) -> tuple[int, dict]:
    """(HTTP status, response dict) TF Serving would give a :predict request `body` for the
    export at `export_path` (a version directory, or the base directory: latest version)."""
    return predict(tf.saved_model.load(saved_models.resolve_version(export_path)), body)


def predict(loaded, body: str | bytes | dict) -> tuple[int, dict]:
    """Answers a :predict request body as TF Serving would.

    Args:
      loaded: a SavedModel from `tf.saved_model.load`.
      body: the request JSON (str, bytes or parsed dict).

    Returns:
      (HTTP status, response dict): 200 and `{"predictions": ...}` / `{"outputs": ...}`, or an
      error status and `{"error": "<message>"}`.
    """
    try:
        name, inputs, request_format = parse_request(body, loaded.signatures)
        fn = loaded.signatures[name]
        specs = _signature_inputs(fn)
        _check_shapes(inputs, specs, name)
        try:
            out = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise rest_error(e) from None
        return 200, make_response({k: np.asarray(v.numpy()) for k, v in out.items()},
                                    request_format)
    except RestError as e:
        return e.status, {"error": e.message}


def rest_error(exc):
    """The RestError (message and HTTP status) a TensorFlow error met while predicting becomes
    (error_codes: the same code the gRPC front end answers with)."""
    message = error_codes.op_error_message(exc) if hasattr(exc, "error_code") else str(exc)
    return RestError(message, error_codes.code_of(exc))
