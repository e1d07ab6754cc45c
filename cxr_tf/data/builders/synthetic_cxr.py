"""TFDS builder `synthetic_cxr`: generated chest X-ray phantoms (no download needed).

Each example is a phantom from `cxr_tf.data.phantom` with its exact left-lung, right-lung and
heart masks and its 14 finding labels. Configs are named after their parameters, so builds with
different sizes, counts, seeds or the shortcut variant never overwrite each other and re-running a
build with the same config reuses the records.

The `shortcut` variant adds a strip of label-correlated tags below the diaphragm (outside the
lung-and-heart region). In train and validation each tag agrees with its finding 95% of the time;
in test the tags are drawn independently of the labels, so a model that relies on them fails there.

Usage:
    config = SyntheticCxrConfig.make(image_size=128, num_train=2000, seed=0)
    builder = SyntheticCxr(config=config, data_dir="work/tfds")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from cxr_tf import labels as labels_lib
from cxr_tf.data import features as fk
from cxr_tf.data import phantom
from cxr_tf.data.builders import _common, _imaging

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class SyntheticCxrConfig(tfds.core.BuilderConfig):
    """Parameters of a phantom data set. Build with `SyntheticCxrConfig.make(...)`."""
    image_size: int = 128
    num_train: int = 2000
    num_validation: int = 300
    num_test: int = 500
    seed: int = 0
    shortcut: bool = False

    @classmethod
    def make(cls, image_size=128, num_train=2000, num_validation=300, num_test=500, seed=0,
             shortcut=False):
        """A config whose name encodes every parameter, e.g. `clean_128px_2000-300-500_seed0`."""
        for field, value, low in (("image_size", image_size, 32), ("num_train", num_train, 1),
                                  ("num_validation", num_validation, 1),
                                  ("num_test", num_test, 1), ("seed", seed, 0)):
            if int(value) < low:
                raise ValueError(f"synthetic_cxr {field} must be >= {low}, got {value}")
        kind = "shortcut" if shortcut else "clean"
        name = (f"{kind}_{int(image_size)}px_{int(num_train)}-{int(num_validation)}-"
                f"{int(num_test)}_seed{int(seed)}")
        return cls(name=name, image_size=int(image_size), num_train=int(num_train),
                   num_validation=int(num_validation), num_test=int(num_test), seed=int(seed),
                   shortcut=bool(shortcut), description=f"Phantoms: {name}")

    def count(self, split):
        return {"train": self.num_train, "validation": self.num_validation,
                "test": self.num_test}[split]


def _render(args):
    """Worker: renders case `index` of `split` (top-level so process pools can pickle it)."""
    seed, split, index, size, shortcut = args
    mode = None
    if shortcut:
        mode = "test" if split == "test" else "train"
    return phantom.make_case([seed, SPLITS.index(split), index], size, shortcut=mode)


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
    """Chest X-ray phantoms with exact lung/heart masks and 14 learnable findings."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [SyntheticCxrConfig.make(), SyntheticCxrConfig.make(shortcut=True)]

    def _info(self):
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                fk.IMAGE: tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                fk.MASKS: tfds.features.Image(shape=(size, size, labels_lib.NUM_STRUCTURES),
                                              encoding_format="png"),
                fk.LABELS: tfds.features.Tensor(shape=(labels_lib.NUM_FINDINGS,),
                                                dtype=np.uint8),
                fk.IMAGE_ID: tfds.features.Text(),
                fk.PATIENT_ID: tfds.features.Text(),
            }),
            supervised_keys=(fk.IMAGE, fk.LABELS),
            homepage="https://github.com/cxr-tf/cxr_tf",
            metadata=tfds.core.MetadataDict(label_names=list(labels_lib.FINDINGS),
                                            structure_names=list(labels_lib.STRUCTURES)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        cfg = self.builder_config
        jobs = [(cfg.seed, split, i, cfg.image_size, cfg.shortcut) for i in range(cfg.count(split))]
        workers = min(os.cpu_count() or 1, 8)
        with _imaging.worker_pool(workers) as pool:
            for i, (image, masks, y) in enumerate(pool.map(_render, jobs, chunksize=32)):
                image_id = f"phantom_{split}_{i:06d}.png"
                yield image_id, {
                    fk.IMAGE: image[..., None],
                    fk.MASKS: masks * np.uint8(255),
                    fk.LABELS: y,
                    fk.IMAGE_ID: image_id,
                    fk.PATIENT_ID: f"{split}_{i:06d}",
                }


def make_builder(data_dir, **config_kwargs):
    """Returns a SyntheticCxr builder writing under `data_dir` for `SyntheticCxrConfig.make(...)`.

    TFDS refuses a custom config object named like a predefined one, so predefined configs are
    selected by name.
    """
    config = SyntheticCxrConfig.make(**config_kwargs)
    return _common.builder_for(SyntheticCxr, config, data_dir)
