"""Tiny exported models and test images for the serving tests, built once per test session.

Exporting takes several seconds even for the tiny model, so every serving test module asks
here for the same exports (`tiny_export`) instead of exporting its own.
"""

import os

import cv2
import numpy as np

THRESHOLDS = np.linspace(0.1, 0.9, 14)
_EXPORTS = {}


def tiny_export(segmenter_path, tmp_path_factory, resize_size):
    """(in-memory model, export version dir) of an untrained tiny CXR-IRNet (64 px, densenet_tiny,
    the tiny trained segmenter inline) exported with `resize_size` and THRESHOLDS."""
    key = (segmenter_path, resize_size)
    if key not in _EXPORTS:
        from cxr_tf.models import build_classifier, load_model
        from cxr_tf.serving import export as export_lib
        model = _EXPORTS.get(("model", segmenter_path))
        if model is None:
            model = build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=64,
                                     segmenter=load_model(segmenter_path))
            _EXPORTS[("model", segmenter_path)] = model
        base = str(tmp_path_factory.mktemp(f"export_{resize_size}"))
        path = export_lib.export_classifier(model, base, resize_size=resize_size,
                                            thresholds=THRESHOLDS)
        _EXPORTS[key] = (model, path)
    return _EXPORTS[key]


def radiograph(height, width, seed=0, depth=np.uint8):
    """A smooth chest-like grey image (dark lungs, bright mediastinum) with some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    image = 0.8 - 0.6 * lungs + 0.05 * rng.standard_normal((height, width))
    image = np.clip(image, 0, 1)
    top = np.iinfo(depth).max
    return np.round(image * top).astype(depth)


def encode(image, fmt):
    """PNG/JPEG bytes of a grey image; "rgb"/"rgba" store it as equal colour channels."""
    if fmt == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif fmt == "rgba":
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
    ext = ".jpg" if fmt == "jpeg" else ".png"
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=16, preamble=True,
               voi_lut=None, **attributes):
    """Writes a DX-like DICOM file with pydicom and returns its path.

    Args:
      pixels: (H, W) uint16 / int16 / uint8 stored values (already inverted for MONOCHROME1).
      bits_stored: BitsStored (12 for 12-bit data in 16-bit words).
      preamble: False writes a file without the 128-byte preamble and "DICM" marker.
      voi_lut: optional (first_mapped, lut_values uint16 array) for a VOI LUT sequence.
      **attributes: extra elements, e.g. WindowCenter=..., RescaleSlope=...
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.set_pixel_data(np.asarray(pixels), photometric, bits_stored)
    if voi_lut is not None:
        first, values = voi_lut
        item = Dataset()
        item.add_new("LUTDescriptor", "US", [len(values), int(first), 16])
        item.add_new("LUTData", "US", [int(v) for v in values])
        ds.VOILUTSequence = [item]
    for key, value in attributes.items():
        setattr(ds, key, value)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=False,
                         little_endian=True)
    return path


# Where the region segmenter puts each structure, as fractions (x0, y0, x1, y1) of the frame:
# left lung on the image's right, heart between and below the lungs' centres; large enough to
# fill every cell of a 64 px classifier's 2 x 2 grid.
REGIONS = ((0.5, 0.05, 0.95, 0.95), (0.05, 0.05, 0.5, 0.95), (0.4, 0.5, 0.6, 0.9))


def region_segmenter(size=64):
    """A stand-in segmenter for export tests: each structure's probability is the image itself
    inside that structure's fixed region (REGIONS) and 0 outside, so a bright image reads as a
    frontal chest film and a black one as nothing."""
    import keras

    regions = np.zeros((size, size, 3), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(REGIONS):
        regions[int(y0 * size):int(y1 * size), int(x0 * size):int(x1 * size), k] = 1.0

    class RegionMasks(keras.layers.Layer):
        def call(self, x):
            return x * keras.ops.convert_to_tensor(regions)

    inputs = keras.Input((size, size, 1), name="image")
    stub = keras.Model(inputs, RegionMasks()(inputs), name="region_segmenter")
    stub.structures = ("left_lung", "right_lung", "heart")
    stub.input_size = size
    return stub


def region_export(tmp_path_factory, **export_kwargs):
    """(in-memory model, export version dir) of an untrained tiny CXR-IRNet whose inline
    segmenter is region_segmenter(), thresholds 0 (every finding positive when allowed)."""
    key = ("region", tuple(sorted(export_kwargs.items())))
    if key not in _EXPORTS:
        import keras

        from cxr_tf.models import build_classifier
        from cxr_tf.serving import export as export_lib
        keras.utils.set_random_seed(0)
        model = build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=64,
                                 segmenter=region_segmenter())
        base = str(tmp_path_factory.mktemp("export_regions"))
        path = export_lib.export_classifier(model, base, thresholds=np.zeros(14),
                                            **export_kwargs)
        _EXPORTS[key] = (model, path)
    return _EXPORTS[key]


def png_header_only(height, width):
    """A PNG signature and IHDR chunk claiming height x width grey pixels, then no image data:
    what a header-based size check must refuse before any decoder runs."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16
