"""Finding, building and reading cxr_tf's TFDS data sets."""

import logging
import os
import shutil

import tensorflow_datasets as tfds

from cxr_tf import files

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
            for name in sorted(os.listdir(config_dir) if os.path.isdir(config_dir) else []):
                if name.startswith("incomplete."):
                    log.warning("Removing %s, left by an interrupted build",
                                os.path.join(config_dir, name))
                    shutil.rmtree(os.path.join(config_dir, name), ignore_errors=True)
            if not builder.is_prepared():
                log.info("Building %s into %s", builder.info.full_name, builder.data_dir)
            builder.download_and_prepare(download_config=config)
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
    return builder.as_dataset(split=split, shuffle_files=False,
                              read_config=tfds.ReadConfig(try_autocache=False))
