"""Experiment configurations: small readable presets and the paper's settings.

A config is plain data (dataclasses); binaries pick a preset with `--config` and override single
fields with flags. Presets:
  - `paper`: Fang et al. (2021) on ChestX-ray14: DenseNet121 at 224 (resize 256, centre crop),
    Adam 1e-3, weight decay 1e-4, 50 epochs. Batch 512 as in the paper needs several GPUs.
  - `demo`: the README demo on phantoms, sized to finish in a few minutes on a 2-core CPU.
  - `tiny`: the smallest thing that runs end to end, for tests.
"""

import dataclasses


@dataclasses.dataclass
class DataConfig:
    """Which data set and how it was built.

    Attributes:
      dataset: TFDS builder name ("synthetic_cxr", or a real data set builder).
      image_size: stored image side (synthetic_cxr generates at this size).
      num_train, num_validation, num_test, seed, shortcut: synthetic_cxr parameters.
      cache: cache decoded examples in memory (small data sets only).
    """
    dataset: str = "synthetic_cxr"
    image_size: int = 128
    num_train: int = 2000
    num_validation: int = 300
    num_test: int = 500
    seed: int = 0
    shortcut: bool = False
    cache: bool = True


@dataclasses.dataclass
class SegmenterConfig:
    """U-Net and its training."""
    input_size: int = 256
    base_filters: int = 16
    depth: int = 4
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    min_crop_fraction: float = 0.85  # random-crop augmentation (1 disables)


@dataclasses.dataclass
class ClassifierConfig:
    """Classifier variant, input geometry and training.

    Attributes:
      variant: cxr_irnet, no_weighting, no_attention, chexnet or dcnn.
      backbone: overrides the variant's backbone ("" keeps it).
      input_size: model input side (the crop).
      resize_size: images are resized to this side, then centre-cropped to input_size.
      weight_decay: decoupled weight decay of Adam (Keras' Adam `weight_decay`).
      min_crop_fraction, brightness, contrast: training augmentation (off in the paper).
    """
    variant: str = "cxr_irnet"
    backbone: str = ""
    input_size: int = 224
    resize_size: int = 256
    epochs: int = 50
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    mask_threshold: float = 0.5
    min_mask_coverage: float = 0.05
    feature_activation: str = ""  # "" (paper) or "sigmoid" (authors' code)
    dropout: float = 0.0
    min_crop_fraction: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    segmenter: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    seed: int = 0


def paper():
    """Fang et al. (2021): ChestX-ray14, DenseNet121 at 224, segmenter at 256."""
    return ExperimentConfig(
        data=DataConfig(dataset="chestxray14", image_size=256, cache=False),
        segmenter=SegmenterConfig(input_size=224, base_filters=16, depth=4, epochs=30,
                                  batch_size=16),
        classifier=ClassifierConfig())


def demo():
    """The README demo: phantoms at 128 px, a small DenseNet, about 5 minutes on 2 CPU cores."""
    return ExperimentConfig(
        data=DataConfig(dataset="synthetic_cxr", image_size=128, num_train=2400,
                        num_validation=300, num_test=600, seed=0),
        segmenter=SegmenterConfig(input_size=64, base_filters=8, depth=4, epochs=4,
                                  batch_size=16, learning_rate=2e-3),
        classifier=ClassifierConfig(backbone="densenet_tiny", input_size=128, resize_size=128,
                                    epochs=6, batch_size=32, learning_rate=2e-3,
                                    weight_decay=1e-4))


def tiny():
    """Smallest end-to-end configuration (tests): 64 px phantoms, a few dozen images."""
    return ExperimentConfig(
        data=DataConfig(dataset="synthetic_cxr", image_size=64, num_train=48,
                        num_validation=16, num_test=24, seed=0),
        segmenter=SegmenterConfig(input_size=32, base_filters=4, depth=2, epochs=1, batch_size=8),
        classifier=ClassifierConfig(backbone="densenet_tiny", input_size=64, resize_size=64,
                                    epochs=1, batch_size=8))


PRESETS = {"paper": paper, "demo": demo, "tiny": tiny}


def get(name):
    """Returns a fresh ExperimentConfig for a preset name."""
    if name not in PRESETS:
        raise ValueError(f"Unknown config {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def to_dict(config):
    return dataclasses.asdict(config)


def from_dict(d):
    """Inverse of to_dict (for configs stored beside trained models)."""
    return ExperimentConfig(data=DataConfig(**d["data"]),
                            segmenter=SegmenterConfig(**d["segmenter"]),
                            classifier=ClassifierConfig(**d["classifier"]), seed=d["seed"])
