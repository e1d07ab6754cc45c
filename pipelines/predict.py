"""Classifies PNG, JPEG and DICOM files with an exported SavedModel; one JSON line per image.

  cxr-predict --model=work/export image1.png scans/ study.dcm > predictions.jsonl

Each line holds the 14 probabilities, the positive findings (at the exported thresholds), the
lung-and-heart mask coverage and a warning when it is low (probably not a frontal chest X-ray).
Unreadable files are reported on stderr and skipped; the exit status is 1 if any file failed,
2 on a usage error.
"""

import json
import sys

from absl import app, flags

import pipelines  # noqa: F401  (TensorFlow environment defaults)

flags.DEFINE_string("model", None, "Export directory: a version directory or the base "
                    "directory (highest version used).", required=True)
flags.DEFINE_string("output", None, "Write JSON lines here instead of stdout.")


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("Give image files or folders to classify")
    from cxr_tf.serving import predict
    paths, skipped = predict.find_images(inputs)
    for path in skipped:
        print(f"skipped {path}: not a .png, .jpg, .jpeg, .dcm or .dicom file", file=sys.stderr)
    predictor = predict.Predictor(flags.FLAGS.model)
    out = open(flags.FLAGS.output, "w") if flags.FLAGS.output else sys.stdout
    failed = 0
    try:
        for path in paths:
            try:
                result = predictor.predict_file(path)
            except (ValueError, OSError) as e:
                failed += 1
                print(f"error {e}", file=sys.stderr)
                continue
            out.write(json.dumps(result) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{len(paths) - failed} predicted, {failed} failed, {len(skipped)} skipped",
          file=sys.stderr)
    return 1 if failed else 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
