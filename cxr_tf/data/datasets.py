"""Finding, building and reading cxr_tf's TFDS data sets."""

import logging
import os

import tensorflow_datasets as tfds

from cxr_tf.data.builders import synthetic_cxr

log = logging.getLogger("cxr_tf")

SYNTHETIC = "synthetic_cxr"


def get_builder(data_config, data_dir):
    """Returns the TFDS builder described by a configs.DataConfig, writing under `data_dir`."""
    if data_config.dataset == SYNTHETIC:
        return synthetic_cxr.make_builder(
            data_dir, image_size=data_config.image_size, num_train=data_config.num_train,
            num_validation=data_config.num_validation, num_test=data_config.num_test,
            seed=data_config.seed, shortcut=data_config.shortcut)
    try:
        return tfds.builder(data_config.dataset, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"Unknown data set {data_config.dataset!r}; cxr_tf provides "
                         f"{SYNTHETIC!r}") from None


def prepare(builder, manual_dir=None):
    """Builds the records if they are not there yet (never downloads anything)."""
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    if not builder.is_prepared():
        log.info("Building %s into %s", builder.info.full_name, builder.data_dir)
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


def data_dir_of(work_dir):
    """Where the data sets of a work directory live."""
    return os.path.join(str(work_dir), "tfds")
