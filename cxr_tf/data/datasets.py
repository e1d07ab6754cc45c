"""Finding, building and reading cxr_tf's TFDS data sets.

Built records are checked before they are read: every shard a split needs must be there with
the byte size the build wrote (kept in cxr_tf_shards.json beside TFDS's dataset_info.json), so a
deleted or cut shard is named before a run starts. A record damaged inside a shard of the right
size (its checksum fails) is only found while reading; `naming_damage()` turns TensorFlow's
DataLossError, which names no file, into a DamagedData error naming the data set, split and
shard, found by re-reading the shards of the splits the block read.
"""

import contextlib
import logging
import os
import threading

import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_tf import errors, files
from cxr_tf import labels as labels_lib
from cxr_tf.data import features as fk

# Importing a builder module registers it with TFDS.
from cxr_tf.data.builders import chestxray14, jsrt_scr, montgomery, shenzhen, synthetic_cxr
from cxr_tf.data.builders._common import DataError

log = logging.getLogger("cxr_tf")

SYNTHETIC = "synthetic_cxr"
# Real data sets built from a manual download (--manual_dir): name -> make_builder(data_dir,
# image_size=...). DataConfig.image_size is their stored side.
REAL = {
    "chestxray14": chestxray14.make_builder,
    "jsrt_scr": jsrt_scr.make_builder,
    "montgomery": montgomery.make_builder,
    "shenzhen": shenzhen.make_builder,
}


def get_builder(data_config, data_dir):
    """Returns the TFDS builder described by a configs.DataConfig, writing under `data_dir`.

    `synthetic_cxr` is generated from the config's parameters; `chestxray14`, `jsrt_scr`,
    `montgomery` and `shenzhen` are stored at `data_config.image_size` pixels (built from a
    manual download, see docs/real_data.md); any other name is looked up in the TFDS registry.
    """
    if data_config.dataset == SYNTHETIC:
        return synthetic_cxr.make_builder(
            data_dir, image_size=data_config.image_size, num_train=data_config.num_train,
            num_validation=data_config.num_validation, num_test=data_config.num_test,
            seed=data_config.seed, shortcut=data_config.shortcut)
    if data_config.dataset in REAL:
        return REAL[data_config.dataset](data_dir, image_size=data_config.image_size)
    try:
        return tfds.builder(data_config.dataset, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"Unknown data set {data_config.dataset!r}; cxr_tf provides "
                         f"{', '.join([SYNTHETIC, *REAL])}") from None


def prepare(builder, manual_dir=None):
    """Builds the records if they are not there yet (never downloads anything).

    Real data sets read the raw download from `manual_dir` (the folder as the user unpacked it).
    A build that fails leaves nothing behind (TFDS writes into a temporary folder and renames it
    when done); re-running a finished build reuses the records.

    Raises:
      ValueError: a real data set that is not built yet and no manual_dir was given.
      cxr_tf.data.builders._common.DataError: the raw files cannot be built (the message names
        the file, line and field).
    """
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    if not builder.is_prepared():
        if manual_dir is None and builder.name in REAL:
            raise ValueError(
                f"{builder.name} is not built yet under {builder.data_dir} and needs the raw "
                f"download: pass its folder as manual_dir (--manual_dir=...).\n"
                f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if manual_dir is not None and builder.name in REAL and not os.path.isdir(manual_dir):
            raise DataError(f"manual_dir {manual_dir} does not exist or is not a directory; pass "
                            f"the folder holding the unpacked {builder.name} download.\n"
                            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        # Builds of one data set take turns; the one holding the lock removes what killed
        # builds left (TFDS writes into incomplete.* folders and renames them when done).
        config_dir = os.path.dirname(builder.data_dir)
        with files.exclusive_lock(files.lock_path_for(config_dir), "cxr-build-dataset"):
            for name in sorted(files.listdir(config_dir) if files.isdir(config_dir) else []):
                if name.startswith("incomplete."):
                    log.warning("Removing %s, left by an interrupted build",
                                os.path.join(config_dir, name))
                    files.remove(os.path.join(config_dir, name))
            if not builder.is_prepared():
                log.info("Building %s into %s", builder.info.full_name, builder.data_dir)
            builder.download_and_prepare(download_config=config)
            write_shard_manifest(builder)
        return builder
    builder.download_and_prepare(download_config=config)
    return builder


def load_split(builder, split):
    """Decoded examples of one split, in stored order."""
    available = list(builder.info.splits)
    if split not in available:
        raise ValueError(f"Split {split!r} not in {builder.info.full_name}; available: "
                         f"{', '.join(available)}")
    # TFDS would cache small splits on its own; pipelines cache explicitly when configured.
    verify_split(builder, split)
    with _READ_LOCK:
        _READ.append((builder, split))
    return builder.as_dataset(split=split, shuffle_files=False,
                              read_config=tfds.ReadConfig(try_autocache=False))


# ---- Checking built records -------------------------------------------------------------------

SHARDS_MANIFEST = "cxr_tf_shards.json"
# Bytes of TFRecord framing per record (8 of length, 4 + 4 of CRC): a shard's size is the sum of
# its serialised examples (TFDS's num_bytes) plus this for each record.
TFRECORD_FRAMING = 16

# (builder, split) of every load_split in this process, in order: what naming_damage re-reads.
_READ = []
_READ_LOCK = threading.Lock()


def _shards(builder, split):
    """[(path, examples)] of one split's shard files, as TFDS's dataset_info records them."""
    info = builder.info.splits[split]
    return [(os.fspath(p), int(n)) for p, n in zip(info.filepaths, info.shard_lengths)]


def _rebuild_hint(builder):
    return (f"remove {builder.data_dir} and run the same command again to rebuild it (phantoms "
            f"are regenerated; a real data set also needs --manual_dir=<its raw copy>), or run "
            f"cxr-build-dataset with the flags that built it")


def write_shard_manifest(builder):
    """Records the byte size and example count of every shard of a prepared builder in
    SHARDS_MANIFEST (written whole or not at all); verify_split compares against it."""
    manifest = {split: [{"file": os.path.basename(p), "bytes": files.getsize(p),
                         "examples": n} for p, n in _shards(builder, split)]
                for split in builder.info.splits}
    files.write_json_atomic(os.path.join(builder.data_dir, SHARDS_MANIFEST), manifest)
    return manifest


def _read_manifest(builder):
    path = os.path.join(builder.data_dir, SHARDS_MANIFEST)
    if not files.exists(path):
        return None
    try:
        return files.read_json(path)
    except (OSError, ValueError) as e:
        raise errors.DamagedData(f"{path} cannot be read ({e}): {_rebuild_hint(builder)}") from e


def first_png(builder, split="test"):
    """(image id, PNG bytes, names of its true findings) of the first image of `split`, as
    stored: a file a client would send to an export (the demo's prediction)."""
    example = next(iter(load_split(builder, split).take(1)))
    truth = [n for n, t in zip(labels_lib.FINDINGS, example[fk.LABELS].numpy()) if t]
    return (example[fk.IMAGE_ID].numpy().decode(), tf.io.encode_png(example[fk.IMAGE]).numpy(),
            truth)


def verify_split(builder, split):
    """Checks that every shard file of `split` is present with the size the build wrote.

    Against cxr_tf_shards.json when the build wrote one (cxr-build-dataset does); for records
    built otherwise (`tfds build`), against TFDS's own byte count of the split, then writes the
    manifest when they agree.

    Raises:
      cxr_tf.errors.DamagedData: naming the data set, split and shard file (missing, shorter or
        longer than written) and how to rebuild it.
    """
    name = builder.info.full_name
    shards = _shards(builder, split)
    missing = [p for p, _ in shards if not files.exists(p)]
    if missing:
        raise errors.DamagedData(
            f"{name} split {split!r}: shard file {missing[0]} is missing"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
            f"{_rebuild_hint(builder)}")
    manifest = _read_manifest(builder)
    if manifest is not None and split in manifest:
        written = {s["file"]: s for s in manifest[split]}
        for path, _ in shards:
            want = written.get(os.path.basename(path))
            size = files.getsize(path)
            if want is not None and size != want["bytes"]:
                raise errors.DamagedData(
                    f"{name} split {split!r}: shard file {path} is {size:,} bytes, the build "
                    f"wrote {want['bytes']:,} ({'cut short' if size < want['bytes'] else 'grown'}"
                    f"); {_rebuild_hint(builder)}")
        return
    info = builder.info.splits[split]
    expected = int(info.num_bytes) + TFRECORD_FRAMING * int(info.num_examples)
    found = sum(files.getsize(p) for p, _ in shards)
    if int(info.num_bytes) and found != expected:
        damage = _scan_shards(builder, split)
        where = f"shard file {damage[0][0]} {damage[0][1]}" if damage else (
            f"its shard files hold {found:,} bytes, the build wrote {expected:,}")
        raise errors.DamagedData(f"{name} split {split!r}: {where}; {_rebuild_hint(builder)}")
    try:
        write_shard_manifest(builder)
    except OSError:
        pass  # a read-only copy: checked by total size, which is all that can be done


def _scan_shards(builder, split):
    """[(path, what is wrong)] of the shards of `split` that are missing, hold fewer or more
    records than the build wrote, or fail TFRecord's checksums (reads every record)."""
    damaged = []
    for path, n in _shards(builder, split):
        if not files.exists(path):
            damaged.append((path, "is missing"))
            continue
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
            damaged.append((path, f"is damaged after record {count} of {n} "
                                  f"({errors.one_line(e)})"))
            continue
        if count != n:
            damaged.append((path, f"holds {count} records, the build wrote {n}"))
    return damaged


def locate_damage(read=None):
    """Re-reads the shards of the splits read in this process (or of `read`, a list of
    (builder, split)) and returns [(data set, split, shard path, what is wrong)]."""
    with _READ_LOCK:
        read = list(_READ if read is None else read)
    found, seen = [], set()
    for builder, split in read:
        key = (builder.data_dir, split)
        if key in seen or not files.isdir(builder.data_dir):
            continue
        seen.add(key)
        for path, what in _scan_shards(builder, split):
            found.append((builder.info.full_name, split, path, what))
    return found


@contextlib.contextmanager
def naming_damage():
    """Turns a DataLossError (a record failing its checksum, a shard cut short) or a
    NotFoundError of a shard, raised while the block reads built records, into DamagedData
    naming the data set, split and shard file; other errors pass unchanged."""
    with _READ_LOCK:
        first = len(_READ)
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
        with _READ_LOCK:
            read = _READ[first:] or list(_READ)
        log.info("Reading a data set failed (%s); re-reading its shards to find the damage",
                 type(e).__name__)
        found = locate_damage(read)
        if not found:
            raise
        name, split, path, what = found[0]
        builder = next(b for b, s in read if b.info.full_name == name)
        more = f" ({len(found) - 1} more damaged shard(s))" if len(found) > 1 else ""
        raise errors.DamagedData(f"{name} split {split!r}: shard file {path} {what}{more}; "
                                 f"{_rebuild_hint(builder)}") from e
