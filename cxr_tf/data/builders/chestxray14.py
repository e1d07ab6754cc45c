"""TFDS builder `chestxray14`: NIH ChestX-ray14 from the official download (manual_dir).

Reads the download as users unpack it (any folder layout under `manual_dir`; images are found by
file name wherever they are, e.g. `images/`, or `images_001/images/` ... as on Kaggle):

  - `Data_Entry_2017_v2020.csv` or `Data_Entry_2017.csv` (also `.csv.gz`; v2020 preferred when
    both exist): one row per image. Columns are read by name; the 2017 table's trailing empty
    column and the `Patient Gender` / `Patient Sex` spellings are accepted.
  - or Kaggle's "Random Sample of NIH Chest X-ray Dataset" table `sample_labels.csv` (the same
    columns and more; 5,606 films in `images/`).
  - `train_val_list.txt`, `test_list.txt`: the official patient-disjoint split. Copies without
    them get a patient-level split of the films present: `test_list.txt` alone is honoured where
    its films are present; with neither, 20% of the patients (by hash) are the test split.
  - `BBox_List_2017.csv` (optional): 984 boxes on 880 test images, x, y, w, h in the 1024-pixel
    frame of the official PNGs (NOT the `OriginalImage[Width,Height]` frame of the label table,
    which is the size of the DICOM before NIH resized it to 1024x1024).

Splits:
  - `train` / `validation`: `train_val_list.txt`, with 10% of its PATIENTS (not images) held out
    for validation. The held-out patients are the first round(0.1 * n) of the list's patients
    (from the label table's `Patient ID`) ordered by SHA-256 of "<split_seed>:<patient id>"
    (split_seed = 0). The choice depends only on the list and the label table, so it is the same
    whichever image archives were downloaded.
  - `test`: `test_list.txt`.
  - `bbox`: every image with boxes in `BBox_List_2017.csv` (all official ones are test images, so
    `bbox` is a subset of `test` carrying the same examples; never train on it).

Every example: the image as one 8-bit grey channel (grey, RGB, RGBA and 16-bit PNGs all
converted), resized to `image_size` (default 256, for "resize 256, crop 224" training) and stored
as raw 8-bit pixels (fast to read; `image_format="png"` halves the disk space); 14 multi-hot
labels in `cxr_tf.labels.FINDINGS` order ("No Finding" = all zeros); image and patient id, view
position, age, sex, follow-up number; and the image's boxes scaled to the stored size (zero boxes
for most images).

Rows whose image is not under manual_dir (users often download only some of the 12 archives) and
images that cannot be decoded are skipped and counted. The summary of what was built and skipped
is logged and stored in `builder.info.metadata["build_summary"]` (metadata.json beside the
records). Malformed tables (missing column, unknown finding, duplicated image name, bad number)
stop the build with a message naming the file, line and field; TFDS then leaves no partial data
set behind.

Usage:
    builder = make_builder("work/tfds", image_size=256)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/data/ChestX-ray14"))
    ds = builder.as_dataset(split="train")
"""

import collections
import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from cxr_tf import labels as labels_lib
from cxr_tf.data import features as fk
from cxr_tf.data.builders import _common, _imaging
from cxr_tf.data.builders._common import DataError

log = logging.getLogger("cxr_tf")

# The NIH tables, then the label table of Kaggle's "Random Sample of NIH Chest X-ray Dataset"
# (5,606 films in images/, the same columns, no split lists).
LABEL_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "sample_labels.csv")
BOX_TABLE = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
SPLITS = ("train", "validation", "test", "bbox")
# Without test_list.txt (copies that ship none): the share of PATIENTS held out as `test`, chosen
# by hash like the validation patients (with the split seed + 1, so the two picks differ).
TEST_FRACTION_WITHOUT_LIST = 0.2
BOX_FRAME = 1024  # side of the official PNGs, the frame of BBox_List_2017.csv
BOX_TOLERANCE = 1.0  # boxes may overshoot the frame by this many pixels (then clipped)
IMAGE_FORMATS = ("raw", "png")  # stored image encodings (Chestxray14Config.image_format)

# Label table columns: feature -> accepted spellings.
COLUMNS = {
    "image": ("Image Index",),
    "findings": ("Finding Labels",),
    "follow_up": ("Follow-up #",),
    "patient": ("Patient ID",),
    "age": ("Patient Age",),
    "sex": ("Patient Gender", "Patient Sex"),
    "view": ("View Position",),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC (or a mirror such as
Kaggle's "NIH Chest X-rays"), unpack the image archives you want and put the tables beside them:
  MANUAL_DIR/Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv; .csv.gz also accepted)
  MANUAL_DIR/train_val_list.txt, MANUAL_DIR/test_list.txt (without them, as in Kaggle's
    sample with its sample_labels.csv: a patient-level split of the films present)
  MANUAL_DIR/BBox_List_2017.csv (optional: the `bbox` split)
  MANUAL_DIR/images/*.png (any sub-folders; missing images are skipped and counted)
then: cxr-build-dataset --work_dir=WORK --config=paper --dataset=chestxray14 --manual_dir=MANUAL_DIR
"""

_AGE = re.compile(r"^\s*(\d+)\s*([YyMmWwDd]?)\s*$")
_AGE_UNIT = {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}


@dataclasses.dataclass(eq=False)
class Chestxray14Config(tfds.core.BuilderConfig):
    """How ChestX-ray14 is stored. Build with `Chestxray14Config.make(...)`.

    Attributes:
      image_size: stored side in pixels (images are resized to image_size x image_size).
      validation_fraction: share of train_val PATIENTS held out as `validation`.
      split_seed: seed of the validation patient choice (see the module docstring).
      image_format: "raw" (default): uncompressed 8-bit pixels, 64 KiB per image at 256 px,
        decoded at several thousand images/s per core; "png": lossless PNG, about half the disk
        space but about 6x slower to decode (read throughput about 1,000 images/s on 2 cores).
        Both decode to the same uint8 (image_size, image_size, 1) tensor.
    """
    image_size: int = 256
    validation_fraction: float = 0.1
    split_seed: int = 0
    image_format: str = "raw"

    @classmethod
    def make(cls, image_size=256, validation_fraction=0.1, split_seed=0, image_format="raw"):
        """A config named after its parameters: `256px`, or e.g. `512px_val15_seed3_png`."""
        if int(image_size) < 32:
            raise ValueError(f"chestxray14 image_size must be >= 32, got {image_size}")
        _common.check_fraction("chestxray14 validation_fraction", validation_fraction)
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"chestxray14 image_format must be one of {IMAGE_FORMATS}, got "
                             f"{image_format!r}")
        name = f"{int(image_size)}px"
        if float(validation_fraction) != 0.1 or int(split_seed) != 0:
            name += f"_val{round(100 * float(validation_fraction)):g}_seed{int(split_seed)}"
        if image_format != "raw":
            name += f"_{image_format}"
        return cls(name=name, image_size=int(image_size),
                   validation_fraction=float(validation_fraction), split_seed=int(split_seed),
                   image_format=image_format,
                   description=f"ChestX-ray14 stored at {int(image_size)} px ({image_format})")


@dataclasses.dataclass
class Row:
    """One parsed row of the label table."""
    line: int
    labels: np.ndarray
    patient: str
    follow_up: int
    age: int
    sex: str
    view: str


@dataclasses.dataclass
class Plan:
    """What a build will write, decided from the tables and the files present.

    Attributes:
      rows: image name -> Row, every row of the label table.
      splits: split name -> image names to build, in list order.
      paths: image name -> image file path (present images only).
      boxes: image name -> [(finding index, x, y, w, h) in the 1024 frame].
      label_table: path of the label table read.
      summary: _common.Summary with every row accounted for (decode failures are added later).
    """
    rows: dict
    splits: dict
    paths: dict
    boxes: dict
    label_table: str
    summary: _common.Summary


def _parse_age(text, path, line):
    m = _AGE.match(text)
    if not m:
        raise DataError(f"{path}, line {line}: Patient Age {text!r} is not a number of years "
                        f"(expected e.g. 58 or 058Y)")
    return int(m.group(1)) // _AGE_UNIT[m.group(2).upper()]


def _parse_int(text, path, line, field):
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{path}, line {line}: {field} {text!r} is not an integer") from None


def normalise_patient_id(text):
    """Patient ids as in the image names: "1" -> "00000001"; non-numeric ids kept as they are."""
    text = text.strip()
    return f"{int(text):08d}" if text.isdigit() else text


def parse_findings(text, path, line):
    """`Finding Labels` ("A|B", or "No Finding") -> (14,) uint8 multi-hot in FINDINGS order.

    Raises:
      DataError: an unknown or empty finding name, naming file, line and the accepted names.
    """
    y = np.zeros(labels_lib.NUM_FINDINGS, np.uint8)
    for name in text.split("|"):
        name = name.strip()
        if name == labels_lib.NO_FINDING:
            continue
        try:
            y[labels_lib.finding_index(name)] = 1
        except ValueError as e:
            raise DataError(f"{path}, line {line}, Finding Labels: {e}") from None
    return y


def read_label_table(path):
    """Parses the label table -> {image name: Row}.

    Raises:
      DataError: missing column, short row, bad number, unknown finding, duplicated image name.
    """
    header, rows = _common.read_csv(path)
    idx = {key: _common.column_index(header, path, names) for key, names in COLUMNS.items()}
    width = max(idx.values()) + 1
    table = {}
    for line, fields in rows:
        if len(fields) < width:
            raise DataError(f"{path}, line {line}: {len(fields)} fields, expected at least "
                            f"{width} (columns {header[:width]})")
        get = lambda key: fields[idx[key]].strip()  # noqa: E731
        name = get("image")
        if not name:
            raise DataError(f"{path}, line {line}: empty Image Index")
        if name in table:
            raise DataError(f"{path}, line {line}: image {name!r} appears twice (first on line "
                            f"{table[name].line}); each image must have exactly one row")
        patient = normalise_patient_id(get("patient"))
        if not patient:
            raise DataError(f"{path}, line {line}: empty Patient ID for {name}")
        table[name] = Row(line=line, labels=parse_findings(get("findings"), path, line),
                          patient=patient,
                          follow_up=_parse_int(get("follow_up"), path, line, "Follow-up #"),
                          age=_parse_age(get("age"), path, line), sex=get("sex"),
                          view=get("view"))
    return table


def read_box_table(path, summary):
    """Parses BBox_List_2017.csv -> {image name: [(finding index, x, y, w, h)]} (1024 frame).

    The header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`: the box is read from the 3rd to
    6th fields by position. Boxes outside the 1024 frame (by more than BOX_TOLERANCE pixels), or
    with a non-positive side, are skipped and counted; small overshoots are clipped.

    Raises:
      DataError: wrong header, short row, non-numeric coordinate, unknown finding name.
    """
    header, rows = _common.read_csv(path)
    if header[:2] != ["Image Index", "Finding Label"] or not header[2].startswith("Bbox"):
        raise DataError(f"{path}: header {header} does not start with the columns 'Image Index', "
                        f"'Finding Label', 'Bbox [x,y,w,h]' of BBox_List_2017.csv")
    boxes = collections.defaultdict(list)
    for line, fields in rows:
        if len(fields) < 6:
            raise DataError(f"{path}, line {line}: {len(fields)} fields, expected 6 (image, "
                            f"finding, x, y, w, h)")
        name, finding = fields[0].strip(), fields[1].strip()
        try:
            index = labels_lib.finding_index(finding)
        except ValueError as e:
            raise DataError(f"{path}, line {line}, Finding Label: {e}") from None
        try:
            x, y, w, h = (float(v) for v in fields[2:6])
        except ValueError:
            raise DataError(f"{path}, line {line}: box {fields[2:6]} is not four numbers "
                            f"(x, y, w, h)") from None
        t = BOX_TOLERANCE
        if (w <= 0 or h <= 0 or x < -t or y < -t or x + w > BOX_FRAME + t
                or y + h > BOX_FRAME + t or not np.isfinite([x, y, w, h]).all()):
            summary.skip("box_outside_frame", warn=True,
                         example=f"{path}, line {line}: {name} box x={x:g} y={y:g} w={w:g} "
                                 f"h={h:g} is not inside the {BOX_FRAME}x{BOX_FRAME} frame")
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, BOX_FRAME), min(y + h, BOX_FRAME)
        boxes[name].append((index, x0, y0, x1 - x0, y1 - y0))
    summary.note("box_rows", len(rows))
    return dict(boxes)


def index_images(found, manual_dir):
    """{image name: path} of every .png under manual_dir.

    Raises:
      DataError: one image name in two places (naming both paths).
    """
    paths = {}
    for name, places in found.items():
        if not name.endswith(".png"):
            continue
        if len(places) > 1:
            raise DataError(f"Image {name} found {len(places)} times under {manual_dir}: "
                            f"{', '.join(sorted(places))}; keep one copy")
        paths[os.path.basename(places[0])] = places[0]
    return paths


def _split_lists(found, manual_dir, rows, paths, split_seed, summary):
    """{"train_val"|"test": {image name: line}, "<key>_path": the list file or a description}.

    The official lists when they are there. Copies without them (Kaggle's sample, flat folders
    of some films) get a patient-level split of the films present: test_list.txt alone is
    honoured where its films are present, the other films being train_val; with no list at all,
    TEST_FRACTION_WITHOUT_LIST of the patients (by hash) are the test split.

    Raises:
      DataError: an image listed in both official lists; train_val_list.txt without
        test_list.txt.
    """
    lists = {}
    for key, name in (("train_val", TRAIN_VAL_LIST), ("test", TEST_LIST)):
        path = _common.find_table(found, (name,), manual_dir, required=False)
        if path:
            lists[key], lists[key + "_path"] = _common.read_name_list(path), path
    if "train_val" in lists and "test" not in lists:
        raise DataError(f"{lists['train_val_path']} found but no {TEST_LIST} under {manual_dir}: "
                        f"put the official test list beside it (or remove both for a "
                        f"patient-level split of the films present)")
    present = sorted(n for n in rows if n in paths)
    if "test" not in lists:
        patients = {rows[n].patient for n in present}
        test_patients = _common.hash_pick(patients, TEST_FRACTION_WITHOUT_LIST, split_seed + 1)
        rule = (f"no {TRAIN_VAL_LIST} / {TEST_LIST}: round({TEST_FRACTION_WITHOUT_LIST} * "
                f"patients) first by sha256('{split_seed + 1}:<patient id>') are test")
        lists["test"] = {n: 0 for n in present if rows[n].patient in test_patients}
        lists["test_path"] = f"(patient-level split: {rule})"
        log.warning("%s has no official split lists: %s", manual_dir, rule)
        summary.note("split_rule", rule)
    if "train_val" not in lists:
        lists["train_val"] = {n: 0 for n in present if n not in lists["test"]}
        lists["train_val_path"] = f"(every film present not in {lists['test_path']})"
    summary.note("split_lists", {k: lists[k + "_path"] for k in ("train_val", "test")})
    both = set(lists["train_val"]) & set(lists["test"])
    if both:
        name = sorted(both)[0]
        raise DataError(f"{lists['test_path']}, line {lists['test'][name]}: image {name!r} is "
                        f"also in {lists['train_val_path']} (line {lists['train_val'][name]}); "
                        f"{len(both)} images are in both lists")
    return lists


def plan_build(manual_dir, validation_fraction=0.1, split_seed=0):
    """Reads the tables and lists the images present; decides every split.

    Every row of the label table ends up in exactly one of: a split, `label_row_image_missing`,
    `label_row_not_in_split_lists` (and, during the build, `label_row_image_unreadable`).

    Raises:
      DataError: see read_label_table, read_box_table, _common.read_name_list; also an image
        listed in both train_val_list.txt and test_list.txt.
    """
    found = _common.scan(manual_dir)
    summary = _common.Summary("chestxray14")
    label_path = _common.find_table(found, LABEL_TABLES, manual_dir)
    rows = read_label_table(label_path)
    summary.note("label_table", label_path)
    summary.note("label_rows", len(rows))
    paths = index_images(found, manual_dir)
    lists = _split_lists(found, manual_dir, rows, paths, split_seed, summary)
    # Validation patients: chosen from the whole train_val list, present images or not.
    train_val_patients = {rows[n].patient for n in lists["train_val"] if n in rows}
    val_patients = _common.hash_pick(train_val_patients, validation_fraction, split_seed)
    test_patients = {rows[n].patient for n in lists["test"] if n in rows}
    shared = train_val_patients & test_patients
    if shared:
        log.warning("%d patients have images in both %s and %s: the test split is not "
                    "patient-disjoint from training (the official lists are)", len(shared),
                    TRAIN_VAL_LIST, TEST_LIST)
    summary.note("patients_in_train_val_and_test", len(shared))
    summary.note("train_val_patients", len(train_val_patients))
    summary.note("validation_patients", len(val_patients))
    summary.note("validation_rule", f"round({validation_fraction} * train_val patients) first "
                                    f"by sha256('{split_seed}:<patient id>')")

    split_of = {}
    for key in ("train_val", "test"):
        for name, line in lists[key].items():
            if name not in rows:
                summary.skip("list_entry_without_label_row",
                             example=f"{lists[key + '_path']}, line {line}: {name}")
                continue
            if key == "test":
                split_of[name] = "test"
            else:
                split_of[name] = ("validation" if rows[name].patient in val_patients
                                  else "train")
    splits = {s: [] for s in SPLITS}
    for name, row in rows.items():
        if name not in paths:
            summary.skip("label_row_image_missing", example=f"{label_path}, line {row.line}: "
                                                            f"{name}")
        elif name not in split_of:
            summary.skip("label_row_not_in_split_lists",
                         example=f"{label_path}, line {row.line}: {name}")
        else:
            splits[split_of[name]].append(name)

    boxes = {}
    box_path = _common.find_table(found, (BOX_TABLE,), manual_dir, required=False)
    summary.note("box_table", box_path)
    if box_path:
        for name, items in read_box_table(box_path, summary).items():
            if name not in rows:
                summary.skip("box_image_without_label_row", len(items),
                             example=f"{box_path}: {name}")
            elif name not in paths:
                summary.skip("box_image_missing", len(items), example=f"{box_path}: {name}")
            else:
                boxes[name] = items
        splits["bbox"] = sorted(boxes)
    else:
        log.warning("%s not found under %s: the bbox split will be empty", BOX_TABLE, manual_dir)
    return Plan(rows=rows, splits=splits, paths=paths, boxes=boxes, label_table=label_path,
                summary=summary)


class Chestxray14(tfds.core.GeneratorBasedBuilder):
    """NIH ChestX-ray14 (manual download): 14 findings, patient-disjoint splits, boxes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [Chestxray14Config.make(256), Chestxray14Config.make(224),
                       Chestxray14Config.make(512), Chestxray14Config.make(1024),
                       Chestxray14Config.make(256, image_format="png")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self):
        size = self.builder_config.image_size
        if self.builder_config.image_format == "png":
            image = tfds.features.Image(shape=(size, size, 1), encoding_format="png")
        else:
            image = tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                fk.IMAGE: image,
                fk.LABELS: tfds.features.Tensor(shape=(labels_lib.NUM_FINDINGS,),
                                                dtype=np.uint8),
                fk.IMAGE_ID: tfds.features.Text(),
                fk.PATIENT_ID: tfds.features.Text(),
                fk.VIEW_POSITION: tfds.features.Text(),
                fk.SEX: tfds.features.Text(),
                fk.AGE: tfds.features.Tensor(shape=(), dtype=np.int32),
                fk.FOLLOW_UP: tfds.features.Tensor(shape=(), dtype=np.int32),
                fk.BOXES: tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                fk.BOX_LABELS: tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
            supervised_keys=(fk.IMAGE, fk.LABELS),
            homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
            citation="Wang et al., ChestX-ray8: Hospital-scale chest X-ray database and "
                     "benchmarks, CVPR 2017.",
            metadata=tfds.core.MetadataDict(
                label_names=list(labels_lib.FINDINGS),
                box_format="[x, y, w, h] in pixels of the stored image",
                box_source_frame=BOX_FRAME,
                validation_fraction=self.builder_config.validation_fraction,
                split_seed=self.builder_config.split_seed),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        plan = plan_build(dl_manager.manual_dir, cfg.validation_fraction, cfg.split_seed)
        self._plan, self._summary = plan, plan.summary
        splits = _common.drop_empty_splits(self, plan.splits)
        self._pool = _imaging.Pool()
        self._pending = set(splits)
        return {split: self._generate_examples(split) for split in splits}

    def _example(self, name, image):
        row = self._plan.rows[name]
        scale = self.builder_config.image_size / BOX_FRAME
        items = self._plan.boxes.get(name, [])
        boxes = np.array([b[1:] for b in items], np.float32).reshape(-1, 4) * np.float32(scale)
        return {
            fk.IMAGE: image,
            fk.LABELS: row.labels,
            fk.IMAGE_ID: name,
            fk.PATIENT_ID: row.patient,
            fk.VIEW_POSITION: row.view,
            fk.SEX: row.sex,
            fk.AGE: np.int32(row.age),
            fk.FOLLOW_UP: np.int32(row.follow_up),
            fk.BOXES: boxes,
            fk.BOX_LABELS: np.array([b[0] for b in items], np.int32),
        }

    def _generate_examples(self, split):
        plan, summary = self._plan, self._plan.summary
        size = self.builder_config.image_size
        fmt = self.builder_config.image_format
        jobs = [(name, plan.paths[name], size, fmt) for name in plan.splits[split]]
        built = 0
        results = _common.generate(self, split, _imaging.chestxray14_job, jobs, 8)
        for name, image, message in results:
            row = plan.rows[name]
            if image is None:
                if split == "bbox":
                    summary.skip("box_image_unreadable", len(plan.boxes[name]),
                                 example=message)
                else:
                    summary.skip("label_row_image_unreadable", warn=True,
                                 example=f"{message} (label table line {row.line})")
                continue
            if message:
                summary.count_note(f"images_{message}")
            summary.built(split)
            built += 1
            if split == "bbox":
                summary.count_note("boxes_built", len(plan.boxes[name]))
            yield name, self._example(name, image)
        _common.check_not_all_unreadable(
            split, len(jobs), built, summary,
            "box_image_unreadable" if split == "bbox" else "label_row_image_unreadable")
        _common.finish_split(self, split)


def make_builder(data_dir, image_size=256, validation_fraction=0.1, split_seed=0,
                 image_format="raw"):
    """Returns a Chestxray14 builder writing under `data_dir` for `Chestxray14Config.make(...)`.

    Predefined configs (256, 224, 512, 1024 px raw and 256 px PNG, with the default split) are
    selected by name, as TFDS refuses a custom config object named like a predefined one.
    """
    config = Chestxray14Config.make(image_size, validation_fraction, split_seed, image_format)
    return _common.builder_for(Chestxray14, config, data_dir)
