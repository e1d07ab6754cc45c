"""Tiny raw data sets in the official formats, generated for the real-data builder tests.

Each `make_*` function writes a manual_dir the way users unpack the official downloads (raw JSRT
`.IMG`, SCR `.gif` masks with spaces in folder names, both ChestX-ray14 CSV headers, RGBA and
16-bit PNGs, ...) and returns what the test needs to know about it.
"""

import os

import cv2
import numpy as np
from PIL import Image

from cxr_tf import labels

# --- Drawing ------------------------------------------------------------------------------------

# Structures as fractions of the frame (x0, y0, x1, y1). Patient's left = image right.
LEFT_LUNG = (0.55, 0.2, 0.85, 0.75)
RIGHT_LUNG = (0.15, 0.2, 0.45, 0.75)
HEART = (0.45, 0.5, 0.65, 0.8)
LEFT_CLAVICLE = (0.55, 0.1, 0.85, 0.15)
RIGHT_CLAVICLE = (0.15, 0.1, 0.45, 0.15)


def box_mask(shape, frac):
    """Boolean (H, W) mask of a rectangle given as fractions of the frame."""
    h, w = shape
    m = np.zeros(shape, bool)
    m[int(frac[1] * h):int(frac[3] * h), int(frac[0] * w):int(frac[2] * w)] = True
    return m


def radiograph(shape, top=255, seed=0):
    """A display-polarity radiograph: bright body (about 0.8 * top), dark lungs (0.15 * top),
    mid-grey heart, with a little noise; dtype follows `top` (uint8 up to 255, else uint16)."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 0.8)
    img[box_mask(shape, LEFT_LUNG) | box_mask(shape, RIGHT_LUNG)] = 0.15
    img[box_mask(shape, HEART)] = 0.5
    img += rng.uniform(-0.03, 0.03, shape)
    dtype = np.uint8 if top <= 255 else np.uint16
    return np.clip(np.round(img * top), 0, top).astype(dtype)


def write_png(path, array):
    """Writes a PNG with OpenCV (grey, BGR, BGRA; 8- or 16-bit), creating folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array), path


def write_gif(path, mask):
    """Writes a 0/255 mask as GIF with PIL (as SCR distributes them), creating folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="GIF")


# --- ChestX-ray14 --------------------------------------------------------------------------------

HEADER_V2020 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
HEADER_2017 = HEADER_V2020 + ","  # trailing empty column
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# (image, findings, follow-up, patient, age, sex, view, present as)
# "present as": grey / rgb / rgba / 16bit / None (image missing: not downloaded)
CXR_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA", "grey"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA", "rgba"),
    ("00000001_002.png", "No Finding", 2, 1, 58, "M", "AP", None),
    ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA", "16bit"),
    ("00000003_000.png", "Hernia", 0, 3, 74, "F", "PA", "rgb"),
    ("00000003_001.png", "Hernia|Infiltration", 1, 3, 75, "F", "PA", "grey"),
    ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP", "grey"),
    ("00000005_000.png", "Pleural_Thickening", 0, 5, 69, "F", "PA", "grey"),
    ("00000006_000.png", "No Finding", 0, 6, 30, "F", "PA", "grey"),
    ("00000007_000.png", "Effusion", 0, 7, 40, "M", "PA", None),
    ("00000008_000.png", "Atelectasis|Effusion", 0, 8, 50, "M", "AP", "grey"),
    ("00000009_000.png", "Pneumothorax", 0, 9, 61, "F", "PA", "grey"),
    ("00000010_000.png", "Edema", 0, 10, 45, "M", "PA", "grey"),   # in no split list
]
TRAIN_VAL = ["00000001_000.png", "00000001_001.png", "00000001_002.png", "00000002_000.png",
             "00000003_000.png", "00000003_001.png", "00000004_000.png", "00000005_000.png",
             "00000006_000.png"]
TEST = ["00000007_000.png", "00000008_000.png", "00000009_000.png"]
# (image, finding spelling, x, y, w, h) in the 1024 frame.
BOXES = [
    ("00000008_000.png", "Atelectasis", 100.0, 200.0, 256.0, 128.0),
    ("00000008_000.png", "Effusion", 512.0, 512.0, 300.0, 200.0),
    ("00000009_000.png", "Infiltrate", 0.0, 0.0, 1024.0, 1024.0),
    ("00000007_000.png", "Effusion", 10.0, 10.0, 10.0, 10.0),   # image missing
]
CXR_SOURCE_SIDE = 96  # fixture PNG side (the official PNGs are 1024; boxes stay in that frame)


def write_label_table(path, rows, header=HEADER_V2020, age_format="{}", trailing=False,
                      sex_column=None):
    """Writes a ChestX-ray14 label table; rows as in CXR_ROWS (the 'present as' field ignored)."""
    if sex_column:
        header = header.replace("Patient Gender", sex_column)
    lines = [header]
    for name, findings, follow, patient, age, sex, view, *_ in rows:
        lines.append(f"{name},{findings},{follow},{patient},{age_format.format(age)},{sex},"
                     f"{view},2500,2048,0.168,0.168" + ("," if trailing else ""))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def cxr_image(kind, seed):
    grey = radiograph((CXR_SOURCE_SIDE, CXR_SOURCE_SIDE), seed=seed)
    if kind == "grey":
        return grey
    if kind == "rgb":
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if kind == "rgba":
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA)
    if kind == "16bit":
        return grey.astype(np.uint16) * 257
    raise ValueError(kind)


def make_chestxray14(root, variant="v2020", rows=CXR_ROWS, boxes=BOXES):
    """Writes a ChestX-ray14 manual_dir under `root`; returns its path.

    variant "v2020": Data_Entry_2017_v2020.csv, plain ages, images in images/;
    variant "2017": Data_Entry_2017.csv with the trailing empty column, `Patient Sex`, ages like
      "058Y", images split over images_001/images and images_002/images as on Kaggle.
    """
    root = str(root)
    os.makedirs(root, exist_ok=True)
    if variant == "v2020":
        write_label_table(os.path.join(root, "Data_Entry_2017_v2020.csv"), rows)
    else:
        write_label_table(os.path.join(root, "Data_Entry_2017.csv"), rows, header=HEADER_2017,
                          age_format="{:03d}Y", trailing=True, sex_column="Patient Sex")
    for i, row in enumerate(rows):
        name, kind = row[0], row[-1]
        if kind is None:
            continue
        folder = "images" if variant == "v2020" else f"images_{1 + i % 2:03d}/images"
        write_png(os.path.join(root, folder, name), cxr_image(kind, i))
    for list_name, names in (("train_val_list.txt", TRAIN_VAL), ("test_list.txt", TEST)):
        with open(os.path.join(root, list_name), "w") as f:
            f.write("\n".join(names) + "\n")
    with open(os.path.join(root, "BBox_List_2017.csv"), "w") as f:
        f.write(BOX_HEADER + "\n")
        for name, finding, x, y, w, h in boxes:
            f.write(f"{name},{finding},{x},{y},{w},{h}\n")
    return root


def expected_labels(findings):
    y = np.zeros(labels.NUM_FINDINGS, np.uint8)
    for name in findings.split("|"):
        if name != labels.NO_FINDING:
            y[labels.finding_index(name)] = 1
    return y


# --- JSRT + SCR ----------------------------------------------------------------------------------

SCR_FOLDERS = {"left lung": LEFT_LUNG, "right lung": RIGHT_LUNG, "heart": HEART,
               "left clavicle": LEFT_CLAVICLE, "right clavicle": RIGHT_CLAVICLE}


def write_jsrt_raw(path, display12):
    """Writes an official JSRT .IMG: headerless 2048x2048 big-endian words, 4095 - display."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert display12.shape == (2048, 2048) and display12.max() <= 4095
    (4095 - display12.astype(np.int32)).astype(">u2").tofile(path)


def make_jsrt_scr(root, raw=("JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002"),
                  png=("JPCLN003", "JPCLN004"), mask_ext=".gif", swap_lung_folders=(),
                  no_clavicles=(), missing_heart=(), mask_side=1024):
    """Writes All247images/ and scratch/fold{1,2}/masks/<structure>/ under `root`.

    raw: names stored as official .IMG; png: names stored as 16-bit 2048 PNG redistributions.
    Fold by SCR's rule: odd-numbered images in fold1, even in fold2.
    swap_lung_folders: names whose "left lung"/"right lung" files are named by image side.
    Returns {name: display image (2048x2048, 12-bit values)}.
    """
    root = str(root)
    shown = {}
    for i, name in enumerate(list(raw) + list(png)):
        display12 = radiograph((2048, 2048), top=4095, seed=i)
        shown[name] = display12
        if name in raw:
            write_jsrt_raw(os.path.join(root, "All247images", name + ".IMG"), display12)
        else:
            write_png(os.path.join(root, "All247images", name + ".png"),
                      (display12.astype(np.uint16) * 16))  # full 16-bit range
        fold = 2 - int(name[-3:]) % 2
        for folder, frac in SCR_FOLDERS.items():
            if "clavicle" in folder and name in no_clavicles:
                continue
            if folder == "heart" and name in missing_heart:
                continue
            target = folder
            if name in swap_lung_folders and "lung" in folder:
                target = "right lung" if folder == "left lung" else "left lung"
            path = os.path.join(root, "scratch", f"fold{fold}", "masks", target, name + mask_ext)
            mask = box_mask((mask_side, mask_side), frac)
            if mask_ext == ".gif":
                write_gif(path, mask)
            else:
                write_png(path, mask.astype(np.uint8) * 255)
    return shown


# --- Montgomery ----------------------------------------------------------------------------------

def make_montgomery(root, names=("MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0",
                                 "MCUCXR_0004_1", "MCUCXR_0005_0", "MCUCXR_0006_1"),
                    shape=(120, 100), left_folder_is_image_left=True, missing_right=()):
    """Writes CXR_png/, ManualMask/leftMask|rightMask/ and ClinicalReadings/ under `root`.

    left_folder_is_image_left: leftMask holds the lung on the IMAGE's left (named by image side).
    Images alternate 8-bit and 16-bit; shape is (H, W), not square on purpose.
    """
    root = str(root)
    for i, name in enumerate(names):
        top = 255 if i % 2 == 0 else 65535
        write_png(os.path.join(root, "CXR_png", name + ".png"), radiograph(shape, top, seed=i))
        image_left, image_right = box_mask(shape, RIGHT_LUNG), box_mask(shape, LEFT_LUNG)
        left_file, right_file = ((image_left, image_right) if left_folder_is_image_left
                                 else (image_right, image_left))
        write_png(os.path.join(root, "ManualMask", "leftMask", name + ".png"),
                  left_file.astype(np.uint8) * 255)
        if name not in missing_right:
            write_png(os.path.join(root, "ManualMask", "rightMask", name + ".png"),
                      right_file.astype(np.uint8) * 255)
        os.makedirs(os.path.join(root, "ClinicalReadings"), exist_ok=True)
        with open(os.path.join(root, "ClinicalReadings", name + ".txt"), "w") as f:
            f.write(f"Patient's Sex: {'MF'[i % 2]}\nPatient's Age: {30 + i:03d}Y\n"
                    f"{'normal' if name.endswith('_0') else 'TB'}\n")
    return root


# --- Public redistributions ----------------------------------------------------------------------

def make_jsrt_public_copy(root, names=("JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002"),
                          side=512, mask_side=256):
    """Writes a JSRT + SCR copy laid out like the public GitHub copy the docs name:
    JSRT/jsrt_images/images/<name>.IMG.png (8-bit RGB, display polarity), the SCR masks in
    JSRT/masks/masks/<structure>/<name>.gif with underscores and no fold folders, and PNG copies
    in <structure>_png/ folders beside them (to be ignored)."""
    root = str(root)
    for i, name in enumerate(names):
        grey = radiograph((side, side), seed=i)
        write_png(os.path.join(root, "JSRT", "jsrt_images", "images", name + ".IMG.png"),
                  cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
        for folder, frac in SCR_FOLDERS.items():
            structure = folder.replace(" ", "_")
            mask = box_mask((mask_side, mask_side), frac)
            write_gif(os.path.join(root, "JSRT", "masks", "masks", structure, name + ".gif"),
                      mask)
            write_png(os.path.join(root, "JSRT", "masks", "masks", structure + "_png",
                                   name + ".png"), mask.astype(np.uint8) * 255)
    return root


def make_nlm_public_copy(root, montgomery=("MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0"),
                         shenzhen=("CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0003_0",
                                   "CHNCXR_0004_1"),
                         touching=("CHNCXR_0004_1",), mask_suffix=(), side=128):
    """Writes a lungs-only copy with one both-lungs mask per film: data/cxr/<name>.png and
    data/masks/<name>.png (or <name>_mask.png for names in `mask_suffix`), Montgomery and
    Shenzhen films mixed in one folder. Films in `touching` get lungs joined by a bridge, so
    their sides cannot be told apart."""
    root = str(root)
    for i, name in enumerate(list(montgomery) + list(shenzhen)):
        shape = (side, side)
        write_png(os.path.join(root, "data", "cxr", name + ".png"), radiograph(shape, seed=i))
        union = box_mask(shape, LEFT_LUNG) | box_mask(shape, RIGHT_LUNG)
        if name in touching:
            union |= box_mask(shape, (0.4, 0.4, 0.6, 0.45))
        stem = name + ("_mask" if name in mask_suffix else "")
        write_png(os.path.join(root, "data", "masks", stem + ".png"),
                  union.astype(np.uint8) * 255)
    return root
