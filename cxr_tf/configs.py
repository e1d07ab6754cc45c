"""Experiment configurations: small readable presets and the paper's settings.

A config is plain data (dataclasses); binaries pick a preset with `--config` and override single
fields with flags. Presets:
  - `paper`: Fang et al. (2021) on ChestX-ray14: DenseNet121 at 224 (resize 256, centre crop),
    Adam 1e-3, weight decay 1e-4, 50 epochs. Batch 512 as in the paper needs several GPUs.
  - `demo`: the README demo on phantoms, sized to finish in a few minutes on a 2-core CPU.
  - `tiny`: the smallest thing that runs end to end, for tests.
"""

import dataclasses


def field(default, help, choices=None):
    """A config field with the help text its command-line flag shows (pipelines/flags.py makes
    one flag per field, named like the field) and, for a closed set of values, the choices."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "choices": tuple(choices or ())})


# ---- Names listed once ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    """A named classifier: CXR-IRNet, its two ablations (Fang et al. 2021, Table 2) or a
    baseline.

    Attributes:
      name: the name used on the command line and in reports.
      backbone: the backbone the variant is defined with (ClassifierConfig.backbone overrides).
      attention: the multi-scale attention module in front of the backbone.
      feature_weighting: backbone features weighted by the lung-and-heart mask (needs a
        segmenter).
      description: what it is, for tables.
      paper_name: the row of the paper's Table 2 (None: not published).
    """
    name: str
    backbone: str
    attention: bool
    feature_weighting: bool
    description: str
    paper_name: str = None


VARIANTS = {v.name: v for v in (
    Variant("cxr_irnet", "densenet121", True, True,
            "CXR-IRNet (attention + feature weighting)", "CXR-IRNet"),
    Variant("no_weighting", "densenet121", True, False,
            "without feature weighting (F_l)", "CXR-IRNet without F_l"),
    Variant("no_attention", "densenet121", False, True, "without multi-scale attention"),
    Variant("chexnet", "densenet121", False, False, "CheXNet (neither)", "CheXNet"),
    Variant("dcnn", "resnet50", False, False, "DCNN (ResNet-50)", "DCNN (ResNet-50)"),
)}
# Backbones cxr_tf builds (cxr_tf.models.backbones): keras.applications' DenseNet121 and ResNet50,
# and two small DenseNets for tests and the demo.
BACKBONES = ("densenet121", "resnet50", "densenet_small", "densenet_tiny")
# tf.distribute strategies by name (cxr_tf.training.strategies.make_strategy).
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "plateau", "cosine")
CLASS_WEIGHTINGS = ("none", "positive")


def variant(name):
    """The Variant called `name`; ValueError listing the names otherwise."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown classifier variant {name!r}; expected one of "
                         f"{', '.join(VARIANTS)}")
    return VARIANTS[name]


def needs_segmenter(name):
    """True when the variant called `name` weights its features by the lung-and-heart mask (and
    so needs a segmenter); the one place that question is answered."""
    return variant(name).feature_weighting


# ---- Configuration sections -------------------------------------------------------------------

@dataclasses.dataclass
class DataConfig:
    """Which data set and how it is built (synthetic_cxr's generation parameters included)."""
    dataset: str = field("synthetic_cxr", "TFDS data set: synthetic_cxr (generated phantoms), "
                         "chestxray14, jsrt_scr, montgomery or shenzhen (built from "
                         "--manual_dir; see docs/real_data.md).")
    image_size: int = field(128, "Stored image side in pixels: synthetic_cxr generates at this "
                            "size; the real data sets are resized to it when built.")
    num_train: int = field(2000, "synthetic_cxr: number of training phantoms.")
    num_validation: int = field(300, "synthetic_cxr: number of validation phantoms.")
    num_test: int = field(500, "synthetic_cxr: number of test phantoms.")
    seed: int = field(0, "Seed of data generation, shuffling, augmentation and initialisation.")
    shortcut: bool = field(False, "synthetic_cxr: label-correlated tags outside the lungs and "
                           "heart in train/validation, random in test.")
    cache: bool = field(True, "Cache decoded examples in memory (small data sets only).")


@dataclasses.dataclass
class TrainingOptions:
    """How a model is trained, shared by SegmenterConfig and ClassifierConfig.

    Defaults reproduce the paper (constant learning rate, float32, no step checkpoints).
    """
    lr_schedule: str = field(
        "constant", "Learning-rate schedule: 'constant' (paper), 'plateau' (times "
        "lr_plateau_factor after lr_plateau_patience epochs without a better validation score, "
        "down to min_learning_rate) or 'cosine' (keras CosineDecay from learning_rate to "
        "min_learning_rate over all training steps).", LR_SCHEDULES)
    lr_plateau_factor: float = field(0.1, "'plateau' schedule: factor in (0, 1) applied to the "
                                     "learning rate on a plateau.")
    lr_plateau_patience: int = field(2, "'plateau' schedule: epochs without a new best "
                                     "validation score before the learning rate drops.")
    min_learning_rate: float = field(0.0, "Floor of 'plateau', final value of 'cosine'.")
    mixed_precision: bool = field(False, "Mixed precision: float16 with dynamic loss scaling on "
                                  "GPUs, bfloat16 on CPUs and TPUs. Variables, outputs and "
                                  "losses stay float32; best.keras is saved in float32.")
    jit_compile: bool = field(False, "Compile the train step with XLA. Ignored with a warning "
                              "where the strategy cannot (several replicas on CPU devices).")
    checkpoint_every_steps: int = field(0, "Also checkpoint every N training steps (0 = only at "
                                        "epoch ends). An interrupted run restarted with the "
                                        "same command resumes from the latest checkpoint, "
                                        "mid-epoch included.")
    sync_batch_norm: bool = field(False, "With several replicas, batch-norm statistics over the "
                                  "global batch instead of each replica's share (training then "
                                  "follows single-device training).")
    deterministic: bool = field(False, "Deterministic ops "
                                "(tf.config.experimental.enable_op_determinism): a resumed run "
                                "ends with the same weights as an uninterrupted one. Slower.")
    image_summaries_every: int = field(0, "Every N epochs, pictures in TensorBoard: the "
                                       "segmenter's masks, or the classifier's CAMs and feature "
                                       "mask, over a few validation films (0 = off).")
    profile_steps: str = field("", "'FIRST,LAST': trace these global training steps with the "
                               "TensorFlow profiler into the run's tensorboard/ folder (the "
                               "Profile tab; '' = off). Tracing slows those steps.")
    handle_preemption: bool = field(True, "Checkpoint and exit (status 42) on SIGTERM or a "
                                    "Google Cloud maintenance notice, with TensorFlow's "
                                    "PreemptionCheckpointHandler. Creating it makes one HTTP "
                                    "probe of the Google Cloud metadata server (at most 5 s); "
                                    "turn it off where no outbound request may be attempted.")


@dataclasses.dataclass
class SegmenterConfig(TrainingOptions):
    """The lung-and-heart U-Net and its training (plus the shared TrainingOptions)."""
    input_size: int = field(256, "Segmenter input side in pixels (a multiple of 2**depth and of "
                            "the classifier's feature grid).")
    base_filters: int = field(16, "U-Net filters at the first level (doubled at each level).")
    depth: int = field(4, "U-Net down-sampling steps.")
    epochs: int = field(30, "Training epochs.")
    batch_size: int = field(16, "Global batch size, over all replicas and workers.")
    learning_rate: float = field(1e-3, "Adam learning rate (the start of lr_schedule).")
    datasets: str = field("", "Data sets to train on, 'name[:repeats],...' (e.g. "
                          "'jsrt_scr:3,montgomery,shenzhen': JSRT's films three times per "
                          "epoch); '' trains on --dataset. Each film is supervised only on what "
                          "its data set labels: lungs-only sets never touch the heart.")
    bce_weight: float = field(0.0, "Weight of a pixel-wise cross-entropy term added to the "
                              "soft Dice loss (0: Dice only, as in the paper).")
    min_crop_fraction: float = field(0.85, "Random square crop of at least this fraction of the "
                                     "side, resized back (1 = off).")
    brightness: float = field(0.0, "Augmentation: max exposure shift (0 = off).")
    contrast: float = field(0.0, "Augmentation: max relative contrast change (0 = off).")
    gamma: float = field(0.0, "Augmentation: max |log gamma| of a tone curve (0 = off).")
    noise: float = field(0.0, "Augmentation: max standard deviation of Gaussian noise "
                         "(0 = off).")
    blur: float = field(0.0, "Augmentation: max Gaussian blur sigma in input pixels (0 = off).")
    scale: float = field(0.0, "Augmentation: max relative zoom of image and masks (0 = off).")
    rotation: float = field(0.0, "Augmentation: max rotation in degrees (0 = off).")
    shift: float = field(0.0, "Augmentation: max shift as a fraction of the side (0 = off).")
    borders: float = field(0.0, "Augmentation: probability of collimation bands along the "
                           "edges (0 = off).")
    overlays: float = field(0.0, "Augmentation: probability of burnt-in lines and text blocks "
                            "(0 = off).")
    opacities: float = field(0.0, "Augmentation: probability of a dense opacity (effusion-like "
                             "meniscus or patchy consolidation) pasted inside a lung with the "
                             "masks unchanged, so opacified lung is still segmented as lung "
                             "(0 = off; not yet measured on validation, see docs/segmenter.md).")

    def augmentation_fields(self):
        """The fields that make its cxr_tf.data.pipeline.Augmentation, as a dict."""
        names = ("min_crop_fraction", "brightness", "contrast", "gamma", "noise", "blur",
                 "scale", "rotation", "shift", "borders", "overlays", "opacities")
        return {n: getattr(self, n) for n in names}


@dataclasses.dataclass
class ClassifierConfig(TrainingOptions):
    """The classifier variant, its input geometry and its training (plus TrainingOptions)."""
    variant: str = field("cxr_irnet", "Model: " + "; ".join(
        f"{v.name}: {v.description}" for v in VARIANTS.values()) + ".", tuple(VARIANTS))
    backbone: str = field("", "Backbone override (" + ", ".join(BACKBONES) + "); '' keeps the "
                          "variant's.")
    input_size: int = field(224, "Classifier input side (a multiple of 32).")
    resize_size: int = field(256, "Images are resized to this side, then centre-cropped to "
                             "input_size.")
    epochs: int = field(50, "Training epochs.")
    batch_size: int = field(512, "Global batch size, over all replicas and workers (each "
                            "replica gets batch_size / replicas); must divide by the replicas.")
    learning_rate: float = field(1e-3, "Adam learning rate (the start of lr_schedule).")
    weight_decay: float = field(1e-4, "Decoupled weight decay of Adam.")
    mask_threshold: float = field(0.5, "Feature weighting: a grid cell is kept when its pooled "
                                  "lung-and-heart mask is >= this (0.5 in the paper).")
    min_mask_coverage: float = field(0.05, "Feature weighting: an image whose kept share of "
                                     "cells is below this is not weighted at all.")
    mask_dilation: int = field(0, "Feature weighting: grow the kept cells by this many cells "
                               "(0 in the paper).")
    feature_activation: str = field("", "'' (paper) or 'sigmoid' (the authors' code squashes "
                                    "the features before masking).", ("", "sigmoid"))
    dropout: float = field(0.0, "Dropout before the head (0 in the paper).")
    min_crop_fraction: float = field(1.0, "Random square crop of at least this fraction of the "
                                     "side (1 = off, as in the paper).")
    brightness: float = field(0.0, "Augmentation: max brightness shift (0 = off).")
    contrast: float = field(0.0, "Augmentation: max relative contrast change (0 = off).")
    class_weighting: str = field("none", "Class imbalance: 'none' (plain binary cross-entropy, "
                                 "paper) or 'positive' (positive examples of each class "
                                 "weighted by N_negative / N_positive on the train split).",
                                 CLASS_WEIGHTINGS)


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    segmenter: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    seed: int = 0


SECTIONS = {"data": DataConfig, "segmenter": SegmenterConfig, "classifier": ClassifierConfig}


# The segmenter recipe of the shipped model (cxr_tf/pretrained), chosen on validation splits of
# real films (docs/segmenter.md): JSRT + SCR fold 1 three times per epoch beside the Montgomery
# and Shenzhen lungs, hospital-style augmentation, cosine schedule from 2e-3, 120 epochs.
PAPER_SEGMENTER = dict(input_size=112, base_filters=8, depth=4, epochs=120, batch_size=16,
                       learning_rate=2e-3, lr_schedule="cosine",
                       datasets="jsrt_scr:3,montgomery,shenzhen", min_crop_fraction=0.85,
                       brightness=0.1, contrast=0.2, gamma=0.3, noise=0.03, blur=1.0,
                       scale=0.12, rotation=8.0, shift=0.05, borders=0.3, overlays=0.3)


def paper():
    """Fang et al. (2021): ChestX-ray14, DenseNet121 at 224.

    The inline segmenter is sized for its job: its mask is pooled to the 7 x 7 feature grid, and
    a 112 px, 8-filter U-Net gives the same grid mask as a 224 px, 16-filter one (union Dice
    within 0.007, grid Dice within 0.002 on phantoms) at 1.7% of a training step's FLOPs instead
    of 27% (BENCHMARKS.md, "Sizing the inline segmenter"). Its training recipe (PAPER_SEGMENTER)
    is the shipped segmenter's: the paper's (JSRT only, 30 epochs) reached lung Dice 0.82 and
    0.73 on SCR validation films and 0.62-0.66 on other hospitals' (docs/segmenter.md).
    """
    return ExperimentConfig(
        data=DataConfig(dataset="chestxray14", image_size=256, cache=False),
        segmenter=SegmenterConfig(**PAPER_SEGMENTER),
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


def parse_profile_steps(spec):
    """TrainingOptions.profile_steps "FIRST,LAST" -> (first, last); "" -> None.

    Raises:
      ValueError: anything else.
    """
    if not spec:
        return None
    first, last = (int(v) for v in str(spec).split(","))
    if first < 1 or last < first:
        raise ValueError(f"profile_steps {spec!r}: need 1 <= FIRST <= LAST")
    return first, last


def check_training_options(options, what="training"):
    """Raises ValueError naming the field when a TrainingOptions (or subclass) is inconsistent.

    Args:
      options: a SegmenterConfig or ClassifierConfig.
      what: how errors name the section, e.g. "classifier".
    """
    def fail(field, value, expected):
        raise ValueError(f"{what}.{field} = {value!r}: expected {expected}")

    if options.learning_rate <= 0:  # before the checks that compare other fields with it
        fail("learning_rate", options.learning_rate, "a positive number")
    if options.lr_schedule not in LR_SCHEDULES:
        fail("lr_schedule", options.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
    if not 0.0 < options.lr_plateau_factor < 1.0:
        fail("lr_plateau_factor", options.lr_plateau_factor, "a factor in (0, 1)")
    if options.lr_plateau_patience < 1:
        fail("lr_plateau_patience", options.lr_plateau_patience, "at least 1 epoch")
    if options.image_summaries_every < 0:
        fail("image_summaries_every", options.image_summaries_every, "0 (off) or a number of "
             "epochs")
    try:
        parse_profile_steps(options.profile_steps)
    except ValueError:
        fail("profile_steps", options.profile_steps, "'FIRST,LAST' global steps with 1 <= FIRST "
             "<= LAST, e.g. '20,25', or '' (off)")
    if options.checkpoint_every_steps < 0:
        fail("checkpoint_every_steps", options.checkpoint_every_steps, "0 (off) or a step count")
    if options.epochs < 1:
        fail("epochs", options.epochs, "at least 1")
    if options.batch_size < 1:
        fail("batch_size", options.batch_size, "at least 1 (the global batch size)")
    if options.min_learning_rate < 0 or options.min_learning_rate > options.learning_rate:
        fail("min_learning_rate", options.min_learning_rate,
             f"a value in [0, learning_rate = {options.learning_rate}]")
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
