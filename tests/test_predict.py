"""The predict command: files and folders of PNG, JPEG and DICOM -> JSON lines, overlays, status."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cxr_tf import environment
from cxr_tf.serving import overlay, predict

import serving_fixtures as sf

KEYS = {"file", "format", "probabilities", "positive_findings", "mask_coverage"}


@pytest.fixture(scope="module")
def export_path(tiny_segmenter_path, tmp_path_factory):
    return sf.tiny_export(tiny_segmenter_path, tmp_path_factory, resize_size=80)[1]


@pytest.fixture(scope="module")
def predictor(export_path):
    return predict.FilePredictor(export_path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Good images of every kind, bad files, and files the command must skip."""
    root = tmp_path_factory.mktemp("scans")
    grey = sf.radiograph(90, 70, seed=1)
    display16 = sf.radiograph(80, 64, seed=2, depth=np.uint16)
    sf.write(str(root / "a_grey.png"), sf.encode(grey, "png"))
    sf.write(str(root / "b_rgb.jpg"), sf.encode(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), "jpeg"))
    sf.write(str(root / "c_rgba.png"), sf.encode(grey, "rgba"))
    sf.write(str(root / "d_16bit.png"), sf.encode(display16, "png"))
    sf.make_dicom(str(root / "study" / "IM0001"), 65535 - display16, "MONOCHROME1", 16)
    sf.make_dicom(str(root / "study" / "e_mono2.dcm"), display16, "MONOCHROME2", 16)
    sf.write(str(root / "f_truncated.png"), sf.encode(grey, "png")[:100])
    sf.write(str(root / "g_text.jpg"), b"<html>not found</html>")
    sf.write(str(root / "notes.txt"), b"ignored")
    return root


def run(*args):
    env = environment.for_subprocess()
    return subprocess.run([sys.executable, "-m", "pipelines.predict", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_predict_command_on_a_mixed_folder(export_path, image_folder, tmp_path):
    out_file = tmp_path / "predictions.jsonl"
    overlays = tmp_path / "overlays"
    proc = run(f"--model={os.path.dirname(export_path)}", f"--output={out_file}",
               f"--overlay_dir={overlays}", "--batch_size=3", str(image_folder))
    assert proc.returncode == 3, proc.stderr[-3000:]  # two files failed (data)
    assert proc.stdout == ""
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    names = [os.path.basename(r["file"]) for r in lines]
    assert names == ["a_grey.png", "b_rgb.jpg", "c_rgba.png", "d_16bit.png", "IM0001",
                     "e_mono2.dcm"]
    assert [r["format"] for r in lines] == ["png", "jpeg", "png", "png", "dicom", "dicom"]
    for r in lines:
        assert KEYS <= set(r) <= KEYS | {"warning", "overlay", "anatomy_ok", "reason"}
        assert len(r["probabilities"]) == 14 and all(0 < p < 1 for p in
                                                     r["probabilities"].values())
        assert set(r["positive_findings"]) <= set(r["probabilities"])
        assert 0 <= r["mask_coverage"] <= 1
        image = cv2.imread(r["overlay"], cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape[1] > image.shape[0]  # panels side by side
    # MONOCHROME1 without suffix and its MONOCHROME2 twin give the same answer.
    twins = {os.path.basename(r["file"]): r["probabilities"] for r in lines}
    np.testing.assert_allclose(list(twins["IM0001"].values()),
                               list(twins["e_mono2.dcm"].values()), atol=1e-5)
    # Grey PNG and its RGBA copy: same pixels, same answer.
    np.testing.assert_allclose(list(twins["a_grey.png"].values()),
                               list(twins["c_rgba.png"].values()), atol=1e-5)
    err = proc.stderr
    assert "f_truncated.png: not a decodable PNG or JPEG image" in err
    assert "g_text.jpg: not a PNG, JPEG or DICOM file" in err
    assert "skipped " in err and "notes.txt" in err
    assert "6 predicted, 2 failed, 1 skipped" in err
    assert sorted(os.listdir(overlays)) == sorted(
        ["a_grey.png", "b_rgb.png", "c_rgba.png", "d_16bit.png", "IM0001.png", "e_mono2.png"])
    assert sorted(os.listdir(tmp_path)) == ["overlays", "predictions.jsonl"]  # no temp files


def test_predict_command_succeeds_on_a_real_style_file(export_path, tmp_path):
    sample = _shared_sample() or sf.write(str(tmp_path / "x.png"),
                                          sf.encode(sf.radiograph(256, 256), "rgba"))
    proc = run(f"--model={export_path}", "--warn_coverage=1.0", sample)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result["file"] == sample and len(result["probabilities"]) == 14
    if result["mask_coverage"] < 1.0:
        assert result["warning"].startswith("low mask coverage")
    assert "1 predicted, 0 failed, 0 skipped" in proc.stderr


def _shared_sample():
    from conftest import shared_sample_dir
    folder = shared_sample_dir()
    if folder is None:
        return None
    images = sorted(os.listdir(os.path.join(folder, "images")))
    return os.path.join(folder, "images", images[0]) if images else None


def test_usage_errors_exit_2_and_empty_folders_fail(export_path, tmp_path):
    proc = run(f"--model={tmp_path / 'nothing'}", str(tmp_path))
    assert proc.returncode == 2 and "No SavedModel" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(f"--model={export_path}", str(empty))
    assert proc.returncode == 3 and "no PNG, JPEG or DICOM files found" in proc.stderr


def test_batches_match_single_files_and_bad_files_do_not_spoil_a_batch(predictor, tmp_path):
    paths = [sf.write(str(tmp_path / f"{i}.png"), sf.encode(sf.radiograph(60 + i, 70, seed=i),
                                                            "png")) for i in range(4)]
    broken = sf.write(str(tmp_path / "broken.png"), sf.encode(sf.radiograph(64, 64), "png")[:80])
    order = paths[:2] + [broken] + paths[2:]
    batched = list(predictor.predict_files(order, batch_size=3))
    assert [p for p, _ in batched] == order
    results = dict(batched)
    assert isinstance(results[broken], ValueError) and str(results[broken]).startswith(broken)
    for path in paths:
        single = predictor.predict_file(path)
        np.testing.assert_allclose(list(results[path]["probabilities"].values()),
                                   list(single["probabilities"].values()), atol=1e-6)
    with pytest.raises(ValueError, match="cannot be read"):
        predictor.predict_file(str(tmp_path / "absent.png"))
    with pytest.raises(ValueError, match="empty file"):
        predictor.predict_file(sf.write(str(tmp_path / "empty.png"), b""))


def test_low_coverage_warning(predictor, tmp_path):
    path = sf.write(str(tmp_path / "a.png"), sf.encode(sf.radiograph(64, 64), "png"))
    quiet = predictor.predict_file(path)
    assert "warning" not in quiet or quiet["mask_coverage"] < predictor.warn_coverage
    strict = predict.FilePredictor.__new__(predict.FilePredictor)
    strict.__dict__.update(predictor.__dict__, warn_coverage=1.01)
    warned = strict.predict_file(path)
    assert warned["warning"].startswith("low mask coverage")
    assert "not a frontal chest X-ray" in warned["warning"]


def test_overlay_maps_the_crop_back_onto_the_image():
    cam = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)  # hot in the top-right cell
    heat, valid = overlay.cam_on_image(cam, (100, 50), input_size=64, resize_size=80)
    assert heat.shape == valid.shape == (100, 50)
    # The 64/80 centre crop covers the middle 80% of each side.
    assert not valid[:5].any() and not valid[:, :2].any() and valid[50, 25]
    assert heat[20:40, 30:40].mean() > heat[60:80, 10:20].mean()
    png = overlay.render_overlay(np.zeros((100, 50)), np.zeros((2, 2, 14)), np.linspace(0, 1, 14),
                                 [f"c{i}" for i in range(14)], ["c13"], 64, 80, top_k=2)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] > image.shape[0]
    with pytest.raises(ValueError, match="Unknown colour map"):
        overlay.render_overlay(np.zeros((8, 8)), np.zeros((2, 2, 14)), np.zeros(14),
                               [""] * 14, [], 64, 64, colormap="nope")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from cxr_tf import files
    target = tmp_path / "out.jsonl"

    with pytest.raises(RuntimeError):
        with files.atomic_path(str(target)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("disk on fire")
    assert os.listdir(tmp_path) == []
    files.write_bytes_atomic(str(target), b"ok\n")
    assert target.read_bytes() == b"ok\n" and os.listdir(tmp_path) == ["out.jsonl"]


def test_non_chest_inputs_get_no_findings_and_a_reason(tmp_path_factory, tmp_path):
    # Thresholds 0 (every finding passes) and a segmenter that sees a chest in any bright image:
    # only the anatomy check can withhold the findings.
    _, path = sf.region_export(tmp_path_factory)
    predictor = predict.FilePredictor(path)
    bright = sf.write(str(tmp_path / "bright.png"), sf.encode(np.full((64, 64), 230, np.uint8),
                                                              "png"))
    blank = sf.write(str(tmp_path / "blank.png"), sf.encode(np.zeros((64, 64), np.uint8), "png"))
    tiny = sf.write(str(tmp_path / "one_pixel.png"), sf.encode(np.zeros((1, 1), np.uint8), "png"))
    results = dict(predictor.predict_files([bright, blank, tiny]))
    assert results[bright]["anatomy_ok"] and len(results[bright]["positive_findings"]) == 14
    for path_ in (blank, tiny):
        assert results[path_]["positive_findings"] == [] and not results[path_]["anatomy_ok"]
        assert "not read as a frontal chest X-ray" in results[path_]["reason"]
        assert "covers 0.000" in results[path_]["reason"]


def test_a_cmyk_jpeg_is_predicted_not_called_corrupt(predictor, tmp_path):
    from PIL import Image
    grey = sf.radiograph(90, 70, seed=5)
    path = str(tmp_path / "cmyk.jpg")
    Image.fromarray(grey).convert("CMYK").save(path, "JPEG", quality=95)
    rgb = str(tmp_path / "rgb.jpg")
    Image.fromarray(grey).convert("RGB").save(rgb, "JPEG", quality=95)
    cmyk_result, rgb_result = (predictor.predict_file(p) for p in (path, rgb))
    assert cmyk_result["format"] == "jpeg"
    for name, p in cmyk_result["probabilities"].items():
        assert p == pytest.approx(rgb_result["probabilities"][name], abs=0.02)


def test_dicom_over_the_pixel_limit_is_refused_before_decoding(tmp_path_factory, tmp_path):
    _, path = sf.region_export(tmp_path_factory, max_image_pixels=5000)
    predictor = predict.FilePredictor(path)
    big = sf.make_dicom(str(tmp_path / "big.dcm"), np.zeros((100, 60), np.uint16) + 7)
    with pytest.raises(ValueError, match=r"big.dcm: 100 x 60 = 6,000 pixels; the model accepts "
                                         r"at most 5,000"):
        predictor.predict_file(big)
