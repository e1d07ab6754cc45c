"""TF Serving's REST API on the exported model: requests built exactly as TF Serving receives them.

- `saved_model_cli show --all` (the tool TF Serving users inspect exports with) lists the
  signatures with TF Serving's predict method;
- row (`instances`) and columnar (`inputs`) requests with `{"b64": ...}` image bytes map onto
  the signature as TF Serving maps them, and answer `predictions` / `outputs`;
- the model is loaded in a fresh process (python -m pipelines.rest, file mode and HTTP mode);
- bad requests and bad bytes get TF Serving's HTTP status and a message naming the problem.
"""

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import environment, labels
from cxr_tf.serving import rest_json, rest_server

import serving_fixtures as sf

OUTPUTS = ["anatomy_ok", "anatomy_reason", "class_activation_maps", "decisions", "grid_mask",
           "low_mask_coverage", "mask_coverage", "probabilities"]


@pytest.fixture(scope="module")
def export_path(tiny_segmenter_path, tmp_path_factory):
    return sf.tiny_export(tiny_segmenter_path, tmp_path_factory, resize_size=80)[1]


@pytest.fixture(scope="module")
def loaded(export_path):
    return tf.saved_model.load(export_path)


@pytest.fixture(scope="module")
def images():
    """Two encoded images of different sizes and formats (the batch TF Serving gets)."""
    return [sf.encode(sf.radiograph(90, 70, seed=1), "png"),
            sf.encode(sf.radiograph(64, 100, seed=2), "jpeg")]


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def direct(loaded, images):
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    return {k: v.numpy() for k, v in out.items()}


def env():
    return environment.for_subprocess()


def test_saved_model_cli_shows_the_signatures(export_path):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = ([cli] if os.path.exists(cli) else
               [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"])
    proc = subprocess.run(command + ["show", "--dir", export_path, "--all"],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    sections = {name: out.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
                for name in ("serving_default", "predict_pixels", "metadata")}
    default = sections["serving_default"]
    assert "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" \
        in default
    for name in OUTPUTS:
        assert f"outputs['{name}']" in default and f"outputs['{name}']" in \
            sections["predict_pixels"]
    assert "shape: (-1, 14)" in default and "shape: (-1, 2, 2, 14)" in default
    assert "inputs['images'] tensor_info:\n        dtype: DT_FLOAT\n        shape: " \
           "(-1, -1, -1, 1)" in sections["predict_pixels"]
    assert "inputs['ignored']" in sections["metadata"]
    assert "outputs['label_names']" in sections["metadata"]
    assert out.count("Method name is: tensorflow/serving/predict") == 3


@pytest.mark.parametrize("request_body", [
    lambda im: {"instances": [{"image_bytes": b64(i)} for i in im]},
    lambda im: {"instances": [b64(i) for i in im]},  # single input: bare values
    lambda im: {"signature_name": "serving_default",
                "instances": [{"image_bytes": b64(i)} for i in im]},
], ids=["named", "bare", "explicit_signature"])
def test_row_format(loaded, images, request_body):
    body = json.dumps(request_body(images))
    status, response = rest_json.predict(loaded, body)
    assert status == 200, response
    expected = direct(loaded, images)
    predictions = response["predictions"]
    assert len(predictions) == 2 and sorted(predictions[0]) == OUTPUTS
    for i, row in enumerate(predictions):
        np.testing.assert_allclose(row["probabilities"], expected["probabilities"][i], rtol=1e-6)
        np.testing.assert_allclose(row["class_activation_maps"],
                                   expected["class_activation_maps"][i], rtol=1e-6, atol=1e-7)
        assert row["decisions"] == expected["decisions"][i].tolist()
        assert isinstance(row["low_mask_coverage"], int)
        assert row["mask_coverage"] == pytest.approx(float(expected["mask_coverage"][i]))
        assert len(row["probabilities"]) == 14


@pytest.mark.parametrize("request_body", [
    lambda im: {"inputs": {"image_bytes": [b64(i) for i in im]}},
    lambda im: {"inputs": [b64(i) for i in im]},
], ids=["named", "bare"])
def test_columnar_format(loaded, images, request_body):
    status, response = rest_json.predict(loaded, json.dumps(request_body(images)))
    assert status == 200, response
    outputs = response["outputs"]
    assert sorted(outputs) == OUTPUTS
    expected = direct(loaded, images)
    for key in OUTPUTS:
        if key == "anatomy_reason":  # strings come back as JSON strings
            assert outputs[key] == [s.decode() for s in expected[key]]
            continue
        np.testing.assert_allclose(np.array(outputs[key]), expected[key], rtol=1e-6, atol=1e-7)


def test_pixels_and_metadata_signatures_over_rest(loaded):
    pixels = (sf.radiograph(40, 30)[None, ..., None] / 255.0).round(4)
    status, response = rest_json.predict(loaded, {"signature_name": "predict_pixels",
                                             "instances": pixels.tolist()})
    assert status == 200, response
    expected = loaded.signatures["predict_pixels"](images=tf.constant(pixels, tf.float32))
    np.testing.assert_allclose(response["predictions"][0]["probabilities"],
                               expected["probabilities"][0], rtol=1e-6)
    status, response = rest_json.predict(loaded, {"signature_name": "metadata",
                                             "inputs": {"ignored": 0}})
    assert status == 200, response
    meta = response["outputs"]
    assert meta["label_names"] == list(labels.FINDINGS)
    assert meta["input_size"] == 64 and meta["resize_size"] == 80 and meta["version"] == 1
    np.testing.assert_allclose(meta["thresholds"], sf.THRESHOLDS, rtol=1e-6)
    assert json.loads(meta["metadata_json"])["label_names"] == list(labels.FINDINGS)


def test_b64_outputs_and_float_text_follow_tf_serving():
    response = rest_json.make_response({"thumb_bytes": np.array([b"\x89PNG"], object),
                                   "name": np.array([b"cxr"], object),
                                   "p": np.array([0.1], np.float32)}, rest_json.ROW)
    assert response == {"predictions": [{"thumb_bytes": {"b64": "iVBORw=="}, "name": "cxr",
                                         "p": 0.1}]}
    columnar = rest_json.make_response({"p": np.array([[0.5, 2.0]], np.float32)},
                                       rest_json.COLUMNAR)
    assert columnar == {"outputs": [[0.5, 2.0]]}
    assert rest_json.make_response({"p": np.array([0.25], np.float32)}, rest_json.ROW) == \
        {"predictions": [0.25]}


@pytest.mark.parametrize("body, status, message", [
    ("", 400, "The document is empty"),
    ("{not json", 400, "JSON Parse error"),
    ("[1, 2]", 400, "Is not object"),
    ({"instances": [], "inputs": []}, 400, "expecting only one of 'inputs' or 'instances'"),
    ({"signature_name": "serve"}, 400, 'Serving signature name: "serve" not found'),
    ({"signature_name": 3, "instances": [1]}, 400, "'signature_name' key must be a string"),
    ({"examples": []}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instances": []}, 400, "No values in 'instances' array"),
    ({"instances": {"image_bytes": []}}, 400, "to be an list/array"),
    ({"instances": [{"image": {"b64": "AAAA"}}]}, 400,
     "key: image of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have "
     "named input: image"),
    ({"instances": [{"b64": "AAAA"}, {"image_bytes": {"b64": "AAAA"}}]}, 400,
     "Expecting value/list but got object at item 1"),
    ({"instances": [{"image_bytes": {"b64": "%%%"}}]}, 400, "Unable to base64 decode"),
    ({"instances": [{"image_bytes": {"b64": "AAAA", "x": 1}}]}, 400,
     "not formatted correctly for base64 data"),
    ({"instances": [{"image_bytes": 12}]}, 400, "is not of expected type: string"),
    ({"inputs": {"images": []}}, 400, "Missing named input: image_bytes in 'inputs' object."),
    ({"inputs": {"b64": "AAAA"}}, 400, "has shape [], expected [None]"),
    ({"signature_name": "predict_pixels", "instances": [[[[0.5]], [[0.5], [0.5]]]]}, 400,
     "Encountered list at unexpected size"),
    ({"signature_name": "predict_pixels", "instances": [[[["x"]]]]}, 400,
     "is not of expected type: float"),
    ({"signature_name": "predict_pixels", "instances": [[[[0.5]]], [[[0.5], [0.5]]]]}, 400,
     "Expecting shape [1, 1, 1] but got: [1, 2, 1]"),
    ({"signature_name": "predict_pixels", "instances": [[[[1.5]]]]}, 400,
     "images must be float32 grey pixels in [0, 1]"),
    ({"signature_name": "metadata", "inputs": {"ignored": 0.5}}, 400,
     "is not of expected type: int32"),
])
def test_bad_requests_get_tf_servings_errors(loaded, body, status, message):
    got_status, response = rest_json.predict(loaded, body if isinstance(body, str)
                                        else json.dumps(body))
    assert got_status == status, response
    assert set(response) == {"error"}
    assert message in response["error"]


def test_bad_bytes_are_a_400_naming_the_image(loaded, images):
    body = {"instances": [b64(images[0]), b64(b"GIF89a..."), b64(images[1])]}
    status, response = rest_json.predict(loaded, json.dumps(body))
    assert status == 400
    assert response["error"].startswith(
        "assertion failed: [image_bytes[1] is not a PNG or JPEG image: 9 bytes")
    assert "Graph execution error" not in response["error"]
    # Base64 text sent as the bytes themselves: encoded twice.
    twice = {"instances": [{"b64": base64.b64encode(b64(images[0])["b64"].encode()).decode()}]}
    status, response = rest_json.predict(loaded, json.dumps(twice))
    assert status == 400 and "base64 encoded twice" in response["error"]
    # Right magic number, broken content: the decoder's message, still a 400.
    truncated = {"instances": [b64(images[0][:60])]}
    status, response = rest_json.predict(loaded, json.dumps(truncated))
    assert status == 400 and "PNG" in response["error"]


def _run_rest(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.rest", *args],
                          capture_output=True, text=True, env=env(), timeout=300)


def test_request_file_answered_by_a_fresh_process(loaded, export_path, images, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": [{"image_bytes": b64(i)} for i in images]}))
    proc = _run_rest(f"--model={os.path.dirname(export_path)}", str(request))
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = json.loads(proc.stdout)["predictions"]
    expected = direct(loaded, images)
    np.testing.assert_allclose([p["probabilities"] for p in predictions],
                               expected["probabilities"], rtol=1e-6)


def _http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_server_in_a_fresh_process(loaded, export_path, images):
    """TF Serving's URLs and status codes over real HTTP (localhost only)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.rest", f"--model={os.path.dirname(export_path)}",
         "--serve", "--model_name=cxr", "--port=0", "--host=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving cxr version 1 at http://127.0.0.1:"), \
            line + proc.stderr.read()[-3000:] if proc.poll() is not None else line
        base = line.split(" at ")[1].strip()
        status, body = _http(base)
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        row = {"instances": [{"image_bytes": b64(i)} for i in images]}
        status, body = _http(base + ":predict", row)
        assert status == 200
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]],
                                   direct(loaded, images)["probabilities"], rtol=1e-6)
        status, body = _http(base + "/versions/1:predict",
                             {"inputs": {"image_bytes": [b64(images[0])]}})
        assert status == 200 and np.shape(body["outputs"]["probabilities"]) == (1, 14)
        status, body = _http(base + ":predict", {"instances": [b64(b"junk")]})
        assert status == 400 and "image_bytes[0] is not a PNG or JPEG image" in body["error"]
        status, body = _http(base + "/versions/2:predict", row)
        assert status == 404 and body["error"] == \
            "Servable not found for request: Specific(cxr, 2)"
        status, body = _http(base.replace("/cxr", "/other") + ":predict", row)
        assert status == 404 and "Latest(other)" in body["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


# ------------------------------------------------------------ a server one client cannot block

@pytest.fixture()
def server(export_path):
    """A ModelServer on a free local port with short limits, serving in a background thread."""
    import threading
    srv = rest_server.ModelServer(os.path.dirname(export_path), "cxr", port=0,
                                  max_body_bytes=200_000, client_timeout=2.0,
                                  max_connections=12, max_predictions=2)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _raw(server, data, read=True, timeout=20):
    """Sends raw bytes on a new connection; returns (status, JSON body) of the reply."""
    import socket
    with socket.create_connection(server.server_address[:2], timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return None
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(re_search(rb"Content-Length: (\d+)", head))
        while len(body) < length:
            body += s.recv(65536)
        return int(head.split()[1]), json.loads(body[:length])


def re_search(pattern, data):
    import re
    return re.search(pattern, data).group(1)


def _post(body, path="/v1/models/cxr:predict", headers=None):
    head = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(body)),
            **(headers or {})}
    lines = [f"POST {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_malformed_framing_gets_the_right_answers(server, images):
    body = json.dumps({"instances": [b64(images[0])]}).encode()
    status, reply = _raw(server, _post(body))
    assert status == 200 and len(reply["predictions"]) == 1
    status, reply = _raw(server, _post(body, headers={"Content-Length": "abc"}))
    assert status == 400 and "Content-Length must be a non-negative integer, got 'abc'" in \
        reply["error"]
    status, reply = _raw(server, _post(body, headers={"Content-Length": "-1"}))
    assert status == 400 and "got '-1'" in reply["error"]
    status, reply = _raw(server, _post(body, headers={"Content-Length": None}))
    assert status == 411
    status, reply = _raw(server, _post(b"x" * 300_000))
    assert status == 413 and "exceeds the limit of 200000 bytes" in reply["error"]
    # A chunked body is read, not misread.
    chunked = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n"
                       for part in (body[:100], body[100:])) + b"0\r\n\r\n"
    status, reply = _raw(server, _post(chunked, headers={"Content-Length": None,
                                                         "Transfer-Encoding": "chunked"}))
    assert status == 200 and len(reply["predictions"]) == 1
    status, reply = _raw(server, _post(b"zz\r\n", headers={"Content-Length": None,
                                                          "Transfer-Encoding": "chunked"}))
    assert status == 400 and "chunk size" in reply["error"]
    # A short body: the client stops sending; the answer comes at the timeout.
    status, reply = _raw(server, _post(body, headers={"Content-Length": str(len(body) + 50)}))
    assert status == 408
    status, reply = _raw(server, b"NONSENSE\r\n\r\n")
    assert status == 400 and "error" in reply


def test_idle_connection_does_not_block_other_clients(server, images):
    import socket
    import time
    idle = socket.create_connection(server.server_address[:2])  # connects, sends nothing
    keep_alive = socket.create_connection(server.server_address[:2])
    try:
        body = json.dumps({"instances": [b64(images[1])]}).encode()
        start = time.monotonic()
        for _ in range(3):
            status, _ = _raw(server, _post(body))
            assert status == 200
        assert time.monotonic() - start < 10  # not held up by the idle client's 2 s timeout
        # Two requests on one kept-alive connection.
        for _ in range(2):
            keep_alive.sendall(_post(body))
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += keep_alive.recv(65536)
            head, _, rest_ = reply.partition(b"\r\n\r\n")
            length = int(re_search(rb"Content-Length: (\d+)", head))
            while len(rest_) < length:
                rest_ += keep_alive.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")
        # The idle connection is closed by the server after client_timeout (2 s).
        idle.settimeout(10)
        assert idle.recv(1024) == b""
    finally:
        idle.close()
        keep_alive.close()


def test_bounded_load_with_malformed_requests(server, images):
    import concurrent.futures
    good = _post(json.dumps({"instances": [b64(images[0])]}).encode())
    bad_json = _post(b"{not json")
    bad_length = _post(b"{}", headers={"Content-Length": "abc"})
    requests = [good] * 216 + [bad_json] * 12 + [bad_length] * 12  # a tenth malformed
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: _raw(server, r)[0], requests))
    assert answers.count(200) == 216 and answers.count(400) == 24
    assert set(answers) <= {200, 400}  # no 503: 8 clients < 12 connections


def test_connections_beyond_the_limit_get_503_at_once(export_path, images):
    import socket
    import threading
    srv = rest_server.ModelServer(os.path.dirname(export_path), "cxr", port=0, client_timeout=5.0,
                           max_connections=2)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    held = [socket.create_connection(srv.server_address[:2]) for _ in range(2)]
    try:
        import time
        time.sleep(0.3)  # both accepted and holding their slots
        status, reply = _raw(srv, _post(json.dumps({"instances": [b64(images[0])]}).encode()))
        assert status == 503 and "Too many connections" in reply["error"]
    finally:
        for s in held:
            s.close()
        srv.shutdown()
        srv.server_close()
