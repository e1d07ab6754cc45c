"""DICOM input: polarity, bit depth, modality rescale, window and VOI LUT, on files made here.

Expected values come from the DICOM standard's formulas (PS3.3 C.11.2.1.2, LINEAR window), not
from the code under test; the code itself only calls pydicom's transforms.
"""

import os

import numpy as np
import pydicom
import pytest

from cxr_tf.serving import predict

import serving_fixtures as sf


def window(values, center, width):
    """DICOM LINEAR window to [0, 1] (PS3.3 C.11.2.1.2.1)."""
    values = np.asarray(values, np.float64)
    y = (values - (center - 0.5)) / (width - 1) + 0.5
    y[values <= center - 0.5 - (width - 1) / 2] = 0.0
    y[values > center - 0.5 + (width - 1) / 2] = 1.0
    return y


def minmax(values):
    values = np.asarray(values, np.float64)
    return (values - values.min()) / (values.max() - values.min())


def lungs_darker(image):
    """The phantom's lungs (left and right of centre) darker than its mediastinum."""
    h, w = image.shape[:2]
    lungs = np.r_[image[h // 3:2 * h // 3, int(0.25 * w):int(0.35 * w)].ravel(),
                  image[h // 3:2 * h // 3, int(0.65 * w):int(0.75 * w)].ravel()]
    middle = image[h // 3:2 * h // 3, int(0.47 * w):int(0.53 * w)]
    return lungs.mean() + 0.1 < middle.mean()


@pytest.fixture()
def display16():
    """Display values (bone bright, lungs dark) of a 16-bit radiograph, 1000..60000."""
    image = sf.radiograph(48, 40, seed=5, depth=np.uint16).astype(np.int64)
    return (1000 + image * 59000 // 65535).astype(np.uint16)


def read(path):
    out = predict.read_dicom(str(path))
    assert out.shape[-1] == 1 and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    return out[..., 0]


def test_monochrome2_16_bit_without_window_uses_its_own_range(tmp_path, display16):
    out = read(sf.make_dicom(tmp_path / "a.dcm", display16, "MONOCHROME2", 16))
    np.testing.assert_allclose(out, minmax(display16), atol=1e-6)
    assert lungs_darker(out)


def test_monochrome1_is_inverted(tmp_path, display16):
    stored = 65535 - display16  # MONOCHROME1: high values are dark
    mono1 = read(sf.make_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 16))
    mono2 = read(sf.make_dicom(tmp_path / "m2.dcm", display16, "MONOCHROME2", 16))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    assert lungs_darker(mono1)


def test_12_bit_data_in_16_bit_words_ignores_the_unused_high_bits(tmp_path, display16):
    twelve = (display16 >> 4).astype(np.uint16)  # 0..4095
    clean = read(sf.make_dicom(tmp_path / "clean.dcm", twelve, "MONOCHROME2", 12))
    np.testing.assert_allclose(clean, minmax(twelve), atol=1e-6)
    # Bits 12-15 hold other data (overlays in old files): masked by pydicom.
    path = sf.make_dicom(tmp_path / "dirty.dcm", twelve, "MONOCHROME2", 12)
    ds = pydicom.dcmread(path)
    ds.PixelData = (twelve | 0xA000).astype(np.uint16).tobytes()
    ds.save_as(path)
    np.testing.assert_allclose(read(path), clean, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 16])
def test_window_center_and_width(tmp_path, display16, photometric, bits):
    display = (display16 >> (16 - bits)).astype(np.uint16)
    top = 2 ** bits - 1
    stored = top - display if photometric == "MONOCHROME1" else display
    center, width = float(np.percentile(stored, 50)), float(np.ptp(stored)) / 2
    out = read(sf.make_dicom(tmp_path / "w.dcm", stored, photometric, bits,
                             WindowCenter=center, WindowWidth=width))
    expected = window(stored, center, width)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out == 0).any() and (out == 1).any()  # the window clips both ends
    assert lungs_darker(out)


def test_window_that_the_image_does_not_fill_keeps_its_meaning(tmp_path, display16):
    """A wide window is not stretched to the image's own range."""
    twelve = (display16 >> 4).astype(np.uint16)
    out = read(sf.make_dicom(tmp_path / "wide.dcm", twelve, "MONOCHROME2", 12,
                             WindowCenter=2048, WindowWidth=8192))
    np.testing.assert_allclose(out, window(twelve, 2048, 8192), atol=1e-6)
    assert out.min() > 0.2 and out.max() < 0.8


def test_rescale_slope_and_intercept_before_the_window(tmp_path, display16):
    twelve = (display16 >> 4).astype(np.uint16)
    slope, intercept = 2.0, -1024.0
    values = twelve * slope + intercept  # the window is in rescaled (modality) units
    center, width = float(np.median(values)), 3000.0
    out = read(sf.make_dicom(tmp_path / "r.dcm", twelve, "MONOCHROME2", 12,
                             RescaleSlope=slope, RescaleIntercept=intercept,
                             WindowCenter=center, WindowWidth=width))
    np.testing.assert_allclose(out, window(values, center, width), atol=1e-6)


def test_rescale_without_window_uses_the_rescaled_range(tmp_path, display16):
    twelve = (display16 >> 4).astype(np.uint16)
    out = read(sf.make_dicom(tmp_path / "r.dcm", twelve, "MONOCHROME1", 12,
                             RescaleSlope=-1.0, RescaleIntercept=4095.0))
    # Rescaling flips the values; MONOCHROME1 flips them back.
    np.testing.assert_allclose(out, minmax(twelve), atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_voi_lut_sequence_is_preferred_over_the_window(tmp_path, display16, photometric):
    twelve = (display16 >> 4).astype(np.uint16)
    stored = 4095 - twelve if photometric == "MONOCHROME1" else twelve
    first, entries = 300, 3000
    lut = np.round(np.sqrt(np.arange(entries) / (entries - 1)) * 65535).astype(np.uint16)
    out = read(sf.make_dicom(tmp_path / "lut.dcm", stored, photometric, 12,
                             voi_lut=(first, lut), WindowCenter=100, WindowWidth=10))
    expected = lut[np.clip(stored.astype(np.int64) - first, 0, entries - 1)] / 65535.0
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert lungs_darker(out)


def test_signed_16_bit_data(tmp_path, display16):
    signed = (display16.astype(np.int32) - 30000).astype(np.int16)
    path = sf.make_dicom(tmp_path / "s.dcm", signed, "MONOCHROME2", 16)
    assert pydicom.dcmread(path).PixelRepresentation == 1
    np.testing.assert_allclose(read(path), minmax(signed), atol=1e-6)


def test_8_bit_data(tmp_path):
    image = sf.radiograph(30, 40, seed=2)
    np.testing.assert_allclose(read(sf.make_dicom(tmp_path / "8.dcm", image, "MONOCHROME2", 8)),
                               minmax(image), atol=1e-6)


def test_files_without_preamble_or_suffix_are_found_and_read(tmp_path, display16):
    folder = tmp_path / "pacs"
    with_marker = sf.make_dicom(folder / "IM000001", display16)
    no_marker = sf.make_dicom(folder / "old.dcm", display16, preamble=False)
    (folder / "DICOMDIR.txt").write_text("index")
    (folder / "README").write_text("not an image")
    paths, skipped = predict.find_images([str(folder)])
    assert sorted(os.path.basename(p) for p in paths) == ["IM000001", "old.dcm"]
    assert sorted(os.path.basename(p) for p in skipped) == ["DICOMDIR.txt", "README"]
    assert predict.file_format(with_marker) == predict.DICOM
    np.testing.assert_allclose(read(no_marker), read(with_marker), atol=1e-6)


def _constant(tmp_path):
    return sf.make_dicom(tmp_path / "const.dcm", np.full((8, 8), 7, np.uint16))


def _rgb(tmp_path):
    return sf.make_dicom(tmp_path / "rgb.dcm", np.zeros((8, 8, 3), np.uint8), "RGB", 8)


def _frames(tmp_path):
    return sf.make_dicom(tmp_path / "frames.dcm", np.arange(2 * 8 * 8, dtype=np.uint16)
                         .reshape(2, 8, 8))


def _no_pixels(tmp_path):
    path = sf.make_dicom(tmp_path / "sr.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def _junk(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"this is a text file, " * 20)
    return str(path)


@pytest.mark.parametrize("make, message", [
    (_constant, "the image is constant"),
    (_rgb, "PhotometricInterpretation RGB is not supported"),
    (_frames, "expected one 2-D frame"),
    (_no_pixels, "without pixel data"),
    (_junk, "not a readable DICOM file"),
])
def test_unusable_files_are_refused_by_name(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        predict.read_dicom(path)
    assert str(info.value).startswith(f"{path}: ")


def test_predictions_do_not_depend_on_polarity_or_container(tiny_segmenter_path,
                                                            tmp_path_factory, tmp_path,
                                                            display16):
    """MONOCHROME1 and MONOCHROME2 twins predict alike, and like a 16-bit PNG of the pixels."""
    _, export_path = sf.tiny_export(tiny_segmenter_path, tmp_path_factory, resize_size=80)
    predictor = predict.FilePredictor(export_path)
    mono2 = sf.make_dicom(tmp_path / "m2.dcm", display16, "MONOCHROME2", 16,
                          WindowCenter=30000, WindowWidth=50000)
    mono1 = sf.make_dicom(tmp_path / "m1.dcm", 65535 - display16, "MONOCHROME1", 16,
                          WindowCenter=65536 - 30000, WindowWidth=50000)
    png16 = sf.write(str(tmp_path / "same.png"), sf.encode(
        np.round(read(mono2) * 65535).astype(np.uint16), "png"))
    results = dict(predictor.predict_files([mono1, mono2, png16]))
    p1, p2, p3 = (np.array(list(results[p]["probabilities"].values()))
                  for p in (mono1, mono2, png16))
    assert results[mono1]["format"] == "dicom" and results[png16]["format"] == "png"
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    np.testing.assert_allclose(p3, p2, atol=1e-4)
    assert ((p1 > 0) & (p1 < 1)).all() and len(p1) == 14
