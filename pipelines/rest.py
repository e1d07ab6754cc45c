"""TF Serving's REST :predict API without TF Serving: answer a request file, or serve locally.

Answer one request body (as you would POST it to /v1/models/<name>:predict) and print the
response TF Serving would send:
  cxr-rest --model=work/export request.json        # or - for stdin

Serve TF Serving's REST URLs on localhost for trying curl commands and client code:
  cxr-rest --model=work/export --serve --model_name=cxr --port=8501
  curl -d @request.json http://localhost:8501/v1/models/cxr:predict

The request mapping (instances/inputs, b64 objects, predictions/outputs) is TF Serving's; see
cxr_tf/serving/rest_json.py and docs/serving.md. The server answers clients concurrently with
timeouts and size limits (--client_timeout, --max_body_bytes, --max_connections,
--max_predictions); it is a test double, not for production.
Exit status: 0 when the answer is HTTP 200, 1 otherwise (the error JSON is still printed),
2 on a usage error.
"""

import json
import sys

from absl import app, flags

from pipelines import flags as cxr_flags  # also sets TensorFlow environment defaults

cxr_flags.define_rest()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    from cxr_tf import workflow

    f = flags.FLAGS
    if f.serve:
        if len(argv) > 1:
            raise app.UsageError("--serve takes no request file")
        server = workflow.rest_server.ModelServer(
            f.model, f.model_name, host=f.host, port=f.port, max_body_bytes=f.max_body_bytes,
            client_timeout=f.client_timeout, max_connections=f.max_connections,
            max_predictions=f.max_predictions)
        host, port = server.server_address[:2]
        print(f"serving {f.model_name} version {server.version} at "
              f"http://{host}:{port}/v1/models/{f.model_name}", flush=True)
        grpc_server = None
        if f.grpc_port is not None:
            grpc_server, grpc_port = workflow.grpc_service.serve(f.model, f.model_name,
                                                                   host=f.host, port=f.grpc_port)
            print(f"gRPC PredictionService at {host}:{grpc_port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            if grpc_server is not None:
                grpc_server.stop(1)
        return 0

    if len(argv) != 2:
        raise app.UsageError("Give one request file (or - for stdin), or --serve")
    source = argv[1]
    try:
        if source == "-":
            body = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as fh:
                body = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise app.UsageError(f"cannot read request {source}: {e}")
    status, response = workflow.rest_json.answer_request(f.model, body)
    print(json.dumps(response, indent=1))
    if status != 200:
        # A refused request (HTTP 4xx) is the caller's to fix: the usage class (docs/errors.md).
        print(f"HTTP {status}", file=sys.stderr)
        return cxr_flags.EXIT_CODES["usage"] if 400 <= status < 500 else 1
    return 0


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
