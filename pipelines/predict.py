"""Classifies PNG, JPEG and DICOM files with an exported SavedModel; one JSON line per image.

  cxr-predict --model=work/export image1.png scans/ study.dcm > predictions.jsonl
  cxr-predict --model=work/export --output=out.jsonl --overlay_dir=heatmaps scans/

Each line holds the file, its format, the 14 probabilities, the positive findings (at the
exported thresholds, chosen on validation), the lung-and-heart mask coverage and a `warning`
when the coverage is low (probably not a frontal chest X-ray). With --overlay_dir, a PNG per
image shows the class activation maps of the top findings on the image; its path is in the line
as `overlay`.

Folders are searched recursively for .png, .jpg, .jpeg, .dcm, .dicom files and for DICOM files
without a suffix. DICOM: modality LUT / rescale, VOI LUT or window applied, MONOCHROME1 inverted.
Unreadable files are reported on stderr and skipped; the exit status is 3 if any file failed
(or none was found), 2 on a usage error. --output is written only when the run completes
(never a partial file); overlays are written whole or not at all.
"""

import json
import os
import sys

from absl import app, flags

from pipelines import flags as cxr_flags  # also sets TensorFlow environment defaults

cxr_flags.define_predict()
flags.adopt_module_key_flags(cxr_flags)


def _overlay_name(path, used):
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}.png"
    used.add(name)
    return name


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("Give image files or folders to classify", exitcode=2)
    f = flags.FLAGS
    from cxr_tf import workflow

    if f.overlay_dir:
        from matplotlib import colormaps
        if f.colormap not in colormaps:
            raise app.UsageError(f"--colormap={f.colormap} is not a matplotlib colour map "
                                 f"(e.g. jet, inferno, viridis)", exitcode=2)
    if f.output and not workflow.files.isdir(os.path.dirname(workflow.files.absolute(f.output))):
        raise app.UsageError(f"--output={f.output}: its folder does not exist", exitcode=2)
    try:
        predictor = workflow.predict.FilePredictor(f.model, warn_coverage=f.warn_coverage)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(f"--model: {e}", exitcode=2)
    paths, skipped = workflow.predict.find_images(inputs)
    for path in skipped:
        print(f"skipped {path}: not a .png, .jpg, .jpeg, .dcm or .dicom file (nor DICOM "
              f"without a suffix)", file=sys.stderr)
    if not paths:
        raise FileNotFoundError(f"no PNG, JPEG or DICOM files found in {', '.join(inputs)}")
    if f.overlay_dir:
        workflow.files.makedirs(f.overlay_dir)
    meta = predictor.meta

    lines, failed, predicted, used_names = [], 0, 0, set()
    for path, result in predictor.predict_files(paths, batch_size=f.batch_size,
                                                raw=bool(f.overlay_dir)):
        if isinstance(result, Exception):
            failed += 1
            print(f"error {result}", file=sys.stderr)
            continue
        if f.overlay_dir:
            summary, outputs, image = result
            target = os.path.join(f.overlay_dir, _overlay_name(path, used_names))
            try:
                png = workflow.overlay.render_overlay(
                    image, outputs["class_activation_maps"], outputs["probabilities"],
                    meta["label_names"], summary["positive_findings"], meta["input_size"],
                    meta["resize_size"], top_k=f.overlay_top_k, colormap=f.colormap,
                    title=os.path.basename(path), mask=outputs.get("grid_mask"))
                workflow.files.write_bytes_atomic(target, png)
                summary["overlay"] = target
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error {path}: overlay not written to {target} ({e})", file=sys.stderr)
            result = summary
        predicted += 1
        line = json.dumps(result)
        if f.output:
            lines.append(line)
        else:
            print(line, flush=True)
    if f.output:
        workflow.files.write_text_atomic(f.output, "".join(x + "\n" for x in lines))
    print(f"{predicted} predicted, {failed} failed, {len(skipped)} skipped",
          file=sys.stderr)
    # Some inputs unreadable: the data class (docs/errors.md), each file named above.
    return cxr_flags.EXIT_CODES["data"] if failed else 0


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
