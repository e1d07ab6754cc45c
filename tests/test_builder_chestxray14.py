"""The chestxray14 TFDS builder on generated official-format fixtures and the shared real sample."""

import functools
import os
import shutil

import cv2
import numpy as np
import pytest

from cxr_tf import configs, labels
from cxr_tf.data import datasets, pipeline
from cxr_tf.data import features as fk
from cxr_tf.data.builders import _common, chestxray14

import builder_fixtures as bf
from conftest import shared_sample_dir

SIZE = 64


def build(manual_dir, data_dir, **kwargs):
    builder = chestxray14.make_builder(str(data_dir), image_size=SIZE, **kwargs)
    return datasets.prepare(builder, manual_dir=str(manual_dir))


def examples(builder, split):
    return {e[fk.IMAGE_ID].decode(): e
            for e in datasets.load_split(builder, split).as_numpy_iterator()}


def summary(builder):
    return builder.info.metadata["build_summary"]


def assert_nothing_built(data_dir):
    """No records, no dataset_info and no temporary folder anywhere under data_dir (TFDS keeps
    only the description of a custom config, in `.config/`)."""
    left = [os.path.join(r, f) for r, _, files in os.walk(data_dir) for f in files
            if ".config" not in r]
    assert left == [], left
    assert not [d for r, dirs, _ in os.walk(data_dir) for d in dirs if "incomplete" in d]
    assert not chestxray14.make_builder(str(data_dir), image_size=SIZE).is_prepared()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr14")
    manual = bf.make_chestxray14(root / "raw", variant="v2020")
    return manual, build(manual, root / "tfds")


@pytest.fixture(scope="module")
def built_2017_png(tmp_path_factory):
    """The 2017 table (trailing column, `Patient Sex`, "058Y" ages), Kaggle folders, PNG storage."""
    root = tmp_path_factory.mktemp("cxr14_2017")
    manual = bf.make_chestxray14(root / "raw", variant="2017")
    return manual, build(manual, root / "tfds", image_format="png")


def test_splits_and_every_label_row_accounted_for(built):
    _, builder = built
    splits = {s: info.num_examples for s, info in builder.info.splits.items()}
    # train_val_list: 9 names, 00000001_002 not downloaded; test: 00000007_000 not downloaded.
    assert splits["train"] + splits["validation"] == 8
    assert splits["test"] == 2 and splits["bbox"] == 2
    s = summary(builder)
    assert s["skipped"]["label_row_image_missing"] == 2
    assert s["skipped"]["label_row_not_in_split_lists"] == 1  # 00000010_000: in no list
    rows = sum(s["built"][k] for k in ("train", "validation", "test"))
    rows += sum(n for k, n in s["skipped"].items() if k.startswith("label_row_"))
    assert rows == s["notes"]["label_rows"] == len(bf.CXR_ROWS)
    assert any("line 4: 00000001_002.png" in e for e in s["examples"]["label_row_image_missing"])


def test_labels_and_metadata_follow_the_table(built):
    _, builder = built
    got = {**examples(builder, "train"), **examples(builder, "validation"),
           **examples(builder, "test")}
    for name, findings, follow, patient, age, sex, view, kind in bf.CXR_ROWS:
        if kind is None or name == "00000010_000.png":
            assert name not in got
            continue
        e = got[name]
        np.testing.assert_array_equal(e[fk.LABELS], bf.expected_labels(findings))
        assert e[fk.PATIENT_ID].decode() == f"{patient:08d}"
        assert (int(e[fk.FOLLOW_UP]), int(e[fk.AGE])) == (follow, age)
        assert (e[fk.SEX].decode(), e[fk.VIEW_POSITION].decode()) == (sex, view)
    assert not got["00000006_000.png"][fk.LABELS].any()  # "No Finding" = all zeros
    assert builder.info.metadata["label_names"] == list(labels.FINDINGS)


def test_any_png_becomes_one_grey_channel(built):
    manual, builder = built
    got = {**examples(builder, "train"), **examples(builder, "validation")}
    for i, (name, *_, kind) in enumerate(bf.CXR_ROWS):
        if name not in got:
            continue
        image = got[name][fk.IMAGE]
        assert image.shape == (SIZE, SIZE, 1) and image.dtype == np.uint8
        expected = cv2.resize(bf.cxr_image("grey", i), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        # grey, RGB, RGBA and 16-bit sources of the same picture give the same stored image.
        assert np.abs(image[..., 0].astype(int) - expected).max() <= 1, (name, kind)


def test_validation_holds_whole_patients_chosen_by_the_documented_rule(built):
    _, builder = built
    patients = {s: {e[fk.PATIENT_ID].decode() for e in examples(builder, s).values()}
                for s in ("train", "validation", "test")}
    assert patients["validation"] and not patients["train"] & patients["validation"]
    assert not (patients["train"] | patients["validation"]) & patients["test"]
    listed = {f"{r[3]:08d}" for r in bf.CXR_ROWS if r[0] in bf.TRAIN_VAL}
    assert patients["validation"] == _common.hash_pick(listed, 0.1, 0)


def test_boxes_scaled_from_the_1024_frame(built):
    _, builder = built
    box = examples(builder, "bbox")
    assert set(box) == {"00000008_000.png", "00000009_000.png"}
    scale = SIZE / 1024
    e = box["00000008_000.png"]
    np.testing.assert_allclose(e[fk.BOXES], np.array([[100, 200, 256, 128],
                                                      [512, 512, 300, 200]]) * scale)
    assert e[fk.BOX_LABELS].tolist() == [labels.finding_index("Atelectasis"),
                                         labels.finding_index("Effusion")]
    e = box["00000009_000.png"]  # spelled "Infiltrate" in BBox_List_2017.csv
    assert e[fk.BOX_LABELS].tolist() == [labels.FINDINGS.index("Infiltration")]
    np.testing.assert_allclose(e[fk.BOXES], [[0, 0, SIZE, SIZE]])
    # The test split carries the same boxes; images without boxes have none.
    test = examples(builder, "test")
    np.testing.assert_array_equal(test["00000008_000.png"][fk.BOXES],
                                  box["00000008_000.png"][fk.BOXES])
    assert all(x[fk.BOXES].shape == (0, 4) for x in examples(builder, "train").values())
    s = summary(builder)
    assert s["notes"]["boxes_built"] == 3 and s["skipped"]["box_image_missing"] == 1


def test_2017_table_kaggle_folders_and_png_storage_give_the_same_data(built, built_2017_png):
    _, a = built
    _, b = built_2017_png
    assert b.builder_config.name == "64px_png"
    for split in ("train", "validation", "test", "bbox"):
        ea, eb = examples(a, split), examples(b, split)
        assert set(ea) == set(eb)
        for name in ea:
            for key in (fk.IMAGE, fk.LABELS, fk.AGE, fk.SEX, fk.BOXES, fk.PATIENT_ID):
                np.testing.assert_array_equal(ea[name][key], eb[name][key])
    assert summary(b)["notes"]["label_table"].endswith("Data_Entry_2017.csv")


def test_rerun_reuses_the_records(built):
    manual, builder = built
    shards = [os.path.join(builder.data_dir, f) for f in os.listdir(builder.data_dir)
              if ".tfrecord" in f]
    before = {p: os.stat(p).st_mtime_ns for p in shards}
    again = build(manual, os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir))))
    assert again.data_dir == builder.data_dir
    assert {p: os.stat(p).st_mtime_ns for p in shards} == before
    assert summary(again) == summary(builder)


def test_unreadable_images_and_boxes_outside_the_frame_are_counted_skips(tmp_path):
    boxes = bf.BOXES + [("00000009_000.png", "Nodule", 900.0, 900.0, 200.0, 50.0),
                        ("00000008_000.png", "Mass", 10.0, 10.0, -5.0, 5.0)]
    manual = bf.make_chestxray14(tmp_path / "raw", boxes=boxes)
    truncated = os.path.join(manual, "images", "00000003_001.png")
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    open(os.path.join(manual, "images", "00000004_000.png"), "wb").close()  # zero bytes
    builder = build(manual, tmp_path / "tfds")
    s = summary(builder)
    assert s["skipped"]["label_row_image_unreadable"] == 2
    messages = " ".join(s["examples"]["label_row_image_unreadable"])
    assert "00000003_001.png" in messages and "truncated" in messages and "line 7" in messages
    assert "00000004_000.png" in messages and "0 bytes" in messages and "line 8" in messages
    assert s["built"]["train"] + s["built"]["validation"] == 6
    assert s["skipped"]["box_outside_frame"] == 2
    outside = " ".join(s["examples"]["box_outside_frame"])
    assert "BBox_List_2017.csv, line 6: 00000009_000.png" in outside
    assert "line 7: 00000008_000.png" in outside
    assert len(examples(builder, "bbox")["00000009_000.png"][fk.BOXES]) == 1


def _fails_cleanly(manual, data_dir, *needles):
    with pytest.raises(chestxray14.DataError) as err:
        build(manual, data_dir)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert_nothing_built(data_dir)
    return err


def test_missing_column_fails_cleanly_and_a_rerun_after_the_fix_works(tmp_path):
    manual = bf.make_chestxray14(tmp_path / "raw")
    table = os.path.join(manual, "Data_Entry_2017_v2020.csv")
    good = open(table).read()
    with open(table, "w") as f:
        f.write(good.replace("Patient ID", "Patient Identifier", 1))
    _fails_cleanly(manual, tmp_path / "tfds", "Data_Entry_2017_v2020.csv", "'Patient ID'",
                   "Patient Identifier")
    with open(table, "w") as f:
        f.write(good)
    builder = build(manual, tmp_path / "tfds")
    assert builder.info.splits["test"].num_examples == 2


@pytest.mark.parametrize("edit, needles", [
    (lambda t: t.replace("Hernia|Infiltration", "Hernia|Pneumonitis"),
     ["Data_Entry_2017_v2020.csv, line 7", "Finding Labels", "'Pneumonitis'"]),
    (lambda t: t + "00000003_000.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168\n",
     ["line 15", "'00000003_000.png' appears twice", "line 6"]),
    (lambda t: t.replace(",57,M,", ",fifty,M,"),
     ["line 2", "Patient Age 'fifty'"]),
])
def test_bad_label_table_fails_cleanly(tmp_path, edit, needles):
    manual = bf.make_chestxray14(tmp_path / "raw")
    table = os.path.join(manual, "Data_Entry_2017_v2020.csv")
    text = open(table).read()
    with open(table, "w") as f:
        f.write(edit(text))
    _fails_cleanly(manual, tmp_path / "tfds", *needles)


def test_bad_lists_boxes_and_duplicate_files_fail_cleanly(tmp_path):
    manual = bf.make_chestxray14(tmp_path / "raw")
    # The same image in two archives' folders.
    os.makedirs(os.path.join(manual, "images_002", "images"))
    copy = os.path.join(manual, "images_002", "images", "00000005_000.png")
    shutil.copy(os.path.join(manual, "images", "00000005_000.png"), copy)
    _fails_cleanly(manual, tmp_path / "a", "00000005_000.png found 2 times", copy)
    os.remove(copy)
    # An image in both split lists.
    with open(os.path.join(manual, "test_list.txt"), "a") as f:
        f.write("00000002_000.png\n")
    _fails_cleanly(manual, tmp_path / "b", "test_list.txt, line 4", "00000002_000.png",
                   "train_val_list.txt (line 4)")
    # A name listed twice.
    with open(os.path.join(manual, "test_list.txt"), "w") as f:
        f.write("\n".join(bf.TEST + bf.TEST[:1]) + "\n")
    _fails_cleanly(manual, tmp_path / "c", "test_list.txt, line 4", "listed twice",
                   "line 1")
    with open(os.path.join(manual, "test_list.txt"), "w") as f:
        f.write("\n".join(bf.TEST) + "\n")
    # An unknown finding in the box table.
    with open(os.path.join(manual, "BBox_List_2017.csv"), "a") as f:
        f.write("00000008_000.png,Tumour,1,1,10,10\n")
    _fails_cleanly(manual, tmp_path / "d", "BBox_List_2017.csv, line 6", "'Tumour'")


def test_a_split_whose_images_are_all_unreadable_fails_cleanly(tmp_path):
    manual = bf.make_chestxray14(tmp_path / "raw")
    for name in ("00000008_000.png", "00000009_000.png"):
        open(os.path.join(manual, "images", name), "wb").close()
    _fails_cleanly(manual, tmp_path / "tfds", "Split 'test'", "none of its 2 images")


def test_prepare_without_manual_dir_says_what_to_pass(tmp_path):
    builder = datasets.get_builder(configs.DataConfig(dataset="chestxray14", image_size=SIZE),
                                   str(tmp_path))
    assert isinstance(builder, chestxray14.Chestxray14)
    with pytest.raises(ValueError, match="manual_dir"):
        datasets.prepare(builder)


def test_shared_real_sample_builds_with_the_documented_config(tmp_path):
    """../shared/data/chestxray14_sample: 621 real images, the full 112,120-row table."""
    sample = shared_sample_dir()
    if sample is None:
        pytest.skip("../shared/data/chestxray14_sample is absent (only CI machines have it)")
    from cxr_tf import workflow
    config = configs.paper()  # what `cxr-build-dataset --config=paper --dataset=chestxray14` uses
    builder = workflow.build_data(config, str(tmp_path), manual_dir=sample)
    splits = {s: info.num_examples for s, info in builder.info.splits.items()}
    assert splits["train"] + splits["validation"] == 497 and splits["test"] == 124
    assert splits["train"] + splits["validation"] + splits["test"] == 621
    assert splits["bbox"] == 12
    s = summary(builder)
    assert s["notes"]["boxes_built"] == 12
    accounted = sum(s["built"][k] for k in ("train", "validation", "test"))
    accounted += sum(n for k, n in s["skipped"].items() if k.startswith("label_row_"))
    assert accounted == s["notes"]["label_rows"] == 112_120
    assert s["skipped"]["label_row_image_missing"] == 112_120 - 621
    assert s["skipped"]["box_image_missing"] == 984 - 12
    size = config.data.image_size
    patients = {}
    for split in ("train", "validation", "test"):
        ex = examples(builder, split)
        patients[split] = {e[fk.PATIENT_ID] for e in ex.values()}
        assert all(e[fk.IMAGE].shape == (size, size, 1) for e in ex.values())
    assert not patients["train"] & patients["validation"]
    assert not (patients["train"] | patients["validation"]) & patients["test"]
    for e in examples(builder, "bbox").values():
        boxes = e[fk.BOXES]
        assert boxes.shape == (1, 4) and (boxes[:, :2] >= 0).all()
        assert (boxes[:, :2] + boxes[:, 2:] <= size + 1e-3).all()
    # Reading it back through the classification pipeline at 224 px.
    parse = functools.partial(pipeline.parse_classification, size=224, resize_size=size)
    x, y = next(iter(pipeline.make_dataset(datasets.load_split(builder, "train"), parse, 16,
                                           training=True)))
    assert x.shape == (16, 224, 224, 1) and y.shape == (16, labels.NUM_FINDINGS)


def test_a_dying_worker_is_explained():
    from cxr_tf.data.builders import _imaging
    pool = _imaging.Pool(workers=2)
    try:
        with pytest.raises(RuntimeError, match="worker process decoding images died.*"
                                               "CXR_TF_BUILD_WORKERS"):
            list(pool.map(os._exit, [3] * 8, chunksize=2))  # each worker exits at once
    finally:
        pool.close()


# Hand-written label vectors of named fixture rows, in the paper's order (Atelectasis,
# Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax, Consolidation,
# Edema, Emphysema, Fibrosis, Pleural_Thickening, Hernia): never computed from the table.
LITERAL_LABELS = {
    "00000001_001.png": [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],  # Cardiomegaly|Emphysema
    "00000003_001.png": [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # Hernia|Infiltration
    "00000004_000.png": [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # Mass|Nodule
    "00000005_000.png": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # Pleural_Thickening
    "00000006_000.png": [0] * 14,                                     # No Finding
    "00000008_000.png": [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # Atelectasis|Effusion
    "00000009_000.png": [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # Pneumothorax
}


def test_named_rows_have_hand_written_label_vectors(built):
    _, builder = built
    got = {**examples(builder, "train"), **examples(builder, "validation"),
           **examples(builder, "test")}
    for name, vector in LITERAL_LABELS.items():
        np.testing.assert_array_equal(got[name][fk.LABELS], vector, err_msg=name)
    box = examples(builder, "bbox")
    # Atelectasis = 0, Effusion = 2, "Infiltrate" (the box table's spelling) = Infiltration = 3.
    assert box["00000008_000.png"][fk.BOX_LABELS].tolist() == [0, 2]
    assert box["00000009_000.png"][fk.BOX_LABELS].tolist() == [3]


def make_kaggle_sample(root, n_patients=20, with_test_list=False):
    """Kaggle's "Random Sample of NIH Chest X-ray Dataset" layout: sample_labels.csv (the NIH
    columns plus OriginalImageWidth/Height/PixelSpacing_x/_y, ages like "060Y") and images/,
    no split lists; optionally the official test_list.txt naming some of the films."""
    os.makedirs(root / "sample" / "images")
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
             "View Position,OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,"
             "OriginalImagePixelSpacing_y"]
    names = []
    for p in range(1, n_patients + 1):
        for follow in range(2):
            name = f"{p:08d}_{follow:03d}.png"
            names.append(name)
            finding = "Effusion" if p % 3 == 0 else "No Finding"
            lines.append(f"{name},{finding},{follow},{p},0{40 + p}Y,{'MF'[p % 2]},PA,2500,2048,"
                         f"0.143,0.143")
            bf.write_png(str(root / "sample" / "images" / name), bf.radiograph((40, 40), seed=p))
    (root / "sample" / "sample_labels.csv").write_text("\n".join(lines) + "\n")
    if with_test_list:
        (root / "sample" / "test_list.txt").write_text("\n".join(names[:6]) + "\n")
    return root / "sample", names


def patients_of(builder, split):
    return {e[fk.PATIENT_ID].decode() for e in examples(builder, split).values()}


def test_kaggle_sample_layout_gets_a_patient_level_split(tmp_path):
    manual, names = make_kaggle_sample(tmp_path)
    builder = build(manual, tmp_path / "tfds")
    counts = {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
    assert sum(counts.values()) == len(names) == 40
    assert counts["test"] == 8  # 20% of the 20 patients, both films of each
    parts = [patients_of(builder, s) for s in ("train", "validation", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert summary(builder)["notes"]["label_table"].endswith("sample_labels.csv")
    assert "patient-level split" in summary(builder)["notes"]["split_lists"]["test"]
    effusion = labels.FINDINGS.index("Effusion")
    for e in examples(builder, "train").values():
        assert e[fk.LABELS][effusion] == (int(e[fk.PATIENT_ID].decode()) % 3 == 0)
        assert e[fk.AGE] == 40 + int(e[fk.PATIENT_ID].decode())


def test_the_official_test_list_is_honoured_where_its_films_are_present(tmp_path):
    manual, names = make_kaggle_sample(tmp_path, with_test_list=True)
    builder = build(manual, tmp_path / "tfds")
    assert sorted(examples(builder, "test")) == sorted(names[:6])
    assert builder.info.splits["train"].num_examples + builder.info.splits[
        "validation"].num_examples == 34


def test_a_train_val_list_without_the_test_list_is_refused(tmp_path):
    manual, names = make_kaggle_sample(tmp_path)
    (manual / "train_val_list.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(_common.DataError, match="train_val_list.txt found but no test_list.txt"):
        build(manual, tmp_path / "tfds")
