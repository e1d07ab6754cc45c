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


LR_SCHEDULES = ("constant", "plateau", "cosine")
CLASS_WEIGHTINGS = ("none", "positive")


@dataclasses.dataclass
class TrainingOptions:
    """How a model is trained, shared by SegmenterConfig and ClassifierConfig.

    Defaults reproduce the paper (constant learning rate, float32, no step checkpoints).

    Attributes:
      lr_schedule: "constant" (paper), "plateau" (multiply the learning rate by
        `lr_plateau_factor` after `lr_plateau_patience` epochs without a new best validation
        score, down to `min_learning_rate`) or "cosine" (keras.optimizers.schedules.CosineDecay
        from `learning_rate` to `min_learning_rate` over all training steps).
      lr_plateau_factor: factor of the "plateau" schedule, in (0, 1).
      lr_plateau_patience: epochs without improvement before the "plateau" schedule decays.
      min_learning_rate: floor of "plateau", end value of "cosine".
      mixed_precision: compute in float16 with dynamic loss scaling on GPUs, bfloat16 on CPUs
        and TPUs; variables, outputs and losses stay float32, and best.keras is saved float32.
      jit_compile: compile the train step with XLA where the strategy allows it (not with
        several replicas on CPU devices: a warning is logged and XLA stays off).
      checkpoint_every_steps: also checkpoint every N training steps (0: epoch ends only).
      sync_batch_norm: with several replicas, batch-norm statistics over the global batch
        instead of each replica's share (training then follows single-device training).
      deterministic: deterministic ops (tf.config.experimental.enable_op_determinism): a run
        interrupted and resumed ends with the same weights as an uninterrupted one. Slower.
      handle_preemption: TensorFlow's PreemptionCheckpointHandler: on SIGTERM (or a Google
        Cloud maintenance notice) all workers checkpoint at the same step and exit for a restart.
        On creation TensorFlow probes the Google Cloud metadata server once (one HTTP request,
        at most 5 s; about 4 ms where the name does not resolve) to tell whether it runs there;
        turn this off where no outbound request may be attempted (SIGTERM then just stops).
    """
    lr_schedule: str = "constant"
    lr_plateau_factor: float = 0.1
    lr_plateau_patience: int = 2
    min_learning_rate: float = 0.0
    mixed_precision: bool = False
    jit_compile: bool = False
    checkpoint_every_steps: int = 0
    sync_batch_norm: bool = False
    deterministic: bool = False
    handle_preemption: bool = True


@dataclasses.dataclass
class SegmenterConfig(TrainingOptions):
    """U-Net and its training (TrainingOptions hold the shared training fields).

    Attributes:
      input_size, base_filters, depth: the U-Net (cxr_tf.models.UNetSegmenter).
      datasets: the data sets to train on, "name[:repeats],..." (e.g.
        "jsrt_scr:3,montgomery,shenzhen": JSRT's films three times per epoch); "" trains on
        `DataConfig.dataset`. Each image is supervised only on what its data set labels
        (lungs-only sets never touch the heart channel; see
        cxr_tf.models.losses.partial_dice_loss).
      bce_weight: weight of a pixel-wise cross-entropy term added to the soft Dice loss.
      min_crop_fraction: random-crop augmentation (1 disables).
      brightness ... overlays: augmentation imitating other hospitals' films
        (cxr_tf.data.pipeline.Augmentation; 0 disables each).
    """
    input_size: int = 256
    base_filters: int = 16
    depth: int = 4
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    datasets: str = ""
    bce_weight: float = 0.0
    min_crop_fraction: float = 0.85
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    scale: float = 0.0
    rotation: float = 0.0
    shift: float = 0.0
    borders: float = 0.0
    overlays: float = 0.0

    def augmentation_fields(self):
        """The fields that make its cxr_tf.data.pipeline.Augmentation, as a dict."""
        names = ("min_crop_fraction", "brightness", "contrast", "gamma", "noise", "blur",
                 "scale", "rotation", "shift", "borders", "overlays")
        return {n: getattr(self, n) for n in names}


@dataclasses.dataclass
class ClassifierConfig(TrainingOptions):
    """Classifier variant, input geometry and training.

    Attributes:
      variant: cxr_irnet, no_weighting, no_attention, chexnet or dcnn.
      backbone: overrides the variant's backbone ("" keeps it).
      input_size: model input side (the crop).
      resize_size: images are resized to this side, then centre-cropped to input_size.
      weight_decay: decoupled weight decay of Adam (Keras' Adam `weight_decay`).
      min_crop_fraction, brightness, contrast: training augmentation (off in the paper).
      class_weighting: "none" (plain binary cross-entropy, paper) or "positive" (each class's
        positive examples weighted by N_negative / N_positive of that class in the train split).
      Plus the shared TrainingOptions fields (schedule, precision, checkpoints).
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
    mask_dilation: int = 0
    feature_activation: str = ""  # "" (paper) or "sigmoid" (authors' code)
    dropout: float = 0.0
    min_crop_fraction: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    class_weighting: str = "none"


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    segmenter: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    seed: int = 0


def paper():
    """Fang et al. (2021): ChestX-ray14, DenseNet121 at 224.

    The inline segmenter is sized for its job: its mask is pooled to the 7 x 7 feature grid, and
    a 112 px, 8-filter U-Net gives the same grid mask as a 224 px, 16-filter one (union Dice
    within 0.007, grid Dice within 0.002 on phantoms) at 1.7% of a training step's FLOPs instead
    of 27% (BENCHMARKS.md, "Sizing the inline segmenter").
    """
    return ExperimentConfig(
        data=DataConfig(dataset="chestxray14", image_size=256, cache=False),
        segmenter=SegmenterConfig(input_size=112, base_filters=8, depth=4, epochs=30,
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


def check_training_options(options, what="training"):
    """Raises ValueError naming the field when a TrainingOptions (or subclass) is inconsistent.

    Args:
      options: a SegmenterConfig or ClassifierConfig.
      what: how errors name the section, e.g. "classifier".
    """
    def fail(field, value, expected):
        raise ValueError(f"{what}.{field} = {value!r}: expected {expected}")

    if options.lr_schedule not in LR_SCHEDULES:
        fail("lr_schedule", options.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
    if not 0.0 < options.lr_plateau_factor < 1.0:
        fail("lr_plateau_factor", options.lr_plateau_factor, "a factor in (0, 1)")
    if options.lr_plateau_patience < 1:
        fail("lr_plateau_patience", options.lr_plateau_patience, "at least 1 epoch")
    if options.min_learning_rate < 0 or options.min_learning_rate > options.learning_rate:
        fail("min_learning_rate", options.min_learning_rate,
             f"a value in [0, learning_rate = {options.learning_rate}]")
    if options.checkpoint_every_steps < 0:
        fail("checkpoint_every_steps", options.checkpoint_every_steps, "0 (off) or a step count")
    if options.epochs < 1:
        fail("epochs", options.epochs, "at least 1")
    if options.batch_size < 1:
        fail("batch_size", options.batch_size, "at least 1 (the global batch size)")
    if options.learning_rate <= 0:
        fail("learning_rate", options.learning_rate, "a positive number")
    weighting = getattr(options, "class_weighting", "none")
    if weighting not in CLASS_WEIGHTINGS:
        fail("class_weighting", weighting, f"one of {', '.join(CLASS_WEIGHTINGS)}")


def segmenter_sources(seg, default_dataset):
    """[(data set name, repeats per epoch)] of `SegmenterConfig.datasets` ("" = the one
    `default_dataset`).

    Raises:
      ValueError: a malformed entry, naming it.
    """
    spec = seg.datasets.strip() or default_dataset
    sources = []
    for entry in spec.split(","):
        name, _, repeats = entry.strip().partition(":")
        try:
            count = int(repeats) if repeats else 1
        except ValueError:
            count = 0
        if not name or count < 1:
            raise ValueError(f"segmenter.datasets entry {entry!r}: expected NAME or "
                             f"NAME:REPEATS with REPEATS a positive integer (e.g. "
                             f"'jsrt_scr:3,montgomery,shenzhen')")
        if name in (n for n, _ in sources):
            raise ValueError(f"segmenter.datasets names {name!r} twice: {seg.datasets!r}")
        sources.append((name, count))
    return sources


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
