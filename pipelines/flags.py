"""Every command-line flag of cxr_tf's binaries, defined in this one module.

Binaries call the `define_*` groups they need; `experiment_config()` turns the parsed flags into
an ExperimentConfig (a preset from cxr_tf.configs with single fields overridden).
"""

import logging
import os

from absl import flags

from cxr_tf import configs

FLAGS = flags.FLAGS


def define_common():
    """--work_dir, --config and the data set flags."""
    flags.DEFINE_string("work_dir", None, "Work directory: data sets, models, reports and exports "
                        "go into its subdirectories (tfds/, segmenter/, classifier/, eval/, "
                        "export/).", required=True)
    flags.DEFINE_enum("config", "demo", list(configs.PRESETS),
                      "Preset: 'demo' (phantoms, small DenseNet, minutes on a CPU), 'paper' "
                      "(ChestX-ray14, DenseNet121 at 224 as in Fang et al. 2021), 'tiny' (tests).")
    flags.DEFINE_string("dataset", None, "TFDS data set name, overriding the preset's "
                        "(synthetic_cxr, chestxray14, jsrt_scr, montgomery; see "
                        "docs/real_data.md).")
    flags.DEFINE_string("data_dir", None, "Where built data sets live (default WORK_DIR/tfds).")
    flags.DEFINE_string("manual_dir", None, "Folder holding the raw download of a real data set, "
                        "as unpacked by the user (never needed for synthetic_cxr).")
    flags.DEFINE_integer("image_size", None, "Stored image side in pixels: synthetic_cxr "
                         "generates at this size; chestxray14, jsrt_scr and montgomery resize "
                         "to it when building.")
    flags.DEFINE_integer("num_train", None, "synthetic_cxr: number of training phantoms.")
    flags.DEFINE_integer("num_validation", None, "synthetic_cxr: number of validation phantoms.")
    flags.DEFINE_integer("num_test", None, "synthetic_cxr: number of test phantoms.")
    flags.DEFINE_bool("shortcut", None, "synthetic_cxr: add label-correlated tags outside the "
                      "lungs and heart in train/validation, random in test.")
    flags.DEFINE_integer("seed", None, "Seed of data generation, shuffling, augmentation and "
                         "initialisation.")
    flags.DEFINE_bool("quiet", False, "Per-epoch log lines only, no progress bars.")


def define_training():
    """Flags shared by the two training binaries (see docs/training.md)."""
    flags.DEFINE_enum("strategy", "default",
                      ["default", "one_device", "mirrored", "multi_worker", "tpu"],
                      "tf.distribute strategy. 'default': no distribution (TensorFlow picks the "
                      "first GPU if any); 'one_device': one GPU, else the CPU; 'mirrored': all "
                      "local GPUs (all logical CPU devices without a GPU); 'multi_worker': the "
                      "machines listed in the TF_CONFIG environment variable, all GPUs of each; "
                      "'tpu': the TPU named by --tpu.")
    flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu ('' = local TPU VM).")
    flags.DEFINE_integer("epochs", None, "Training epochs (overrides the preset).")
    flags.DEFINE_integer("batch_size", None, "Global batch size, over all replicas and workers "
                         "(each replica gets batch_size / replicas); must divide by the number "
                         "of replicas.")
    flags.DEFINE_float("learning_rate", None, "Adam learning rate (the start of --lr_schedule).")
    flags.DEFINE_enum("lr_schedule", None, list(configs.LR_SCHEDULES),
                      "Learning-rate schedule: 'constant' (paper), 'plateau' (times "
                      "--lr_plateau_factor after --lr_plateau_patience epochs without a better "
                      "validation score) or 'cosine' (cosine decay to --min_learning_rate over "
                      "all steps).")
    flags.DEFINE_float("lr_plateau_factor", None, "'plateau' schedule: factor in (0, 1) applied "
                       "to the learning rate on a plateau (default 0.1).")
    flags.DEFINE_integer("lr_plateau_patience", None, "'plateau' schedule: epochs without a new "
                         "best validation score before the learning rate drops (default 2).")
    flags.DEFINE_float("min_learning_rate", None, "Floor of 'plateau', final value of 'cosine' "
                       "(default 0).")
    flags.DEFINE_bool("mixed_precision", None, "Mixed precision: float16 with dynamic loss "
                      "scaling on GPUs, bfloat16 on CPUs and TPUs. Variables and outputs stay "
                      "float32; best.keras is saved in float32.")
    flags.DEFINE_bool("jit_compile", None, "Compile the train step with XLA. Ignored with a "
                      "warning where the strategy cannot (several replicas on CPU devices).")
    flags.DEFINE_integer("checkpoint_every_steps", None, "Also checkpoint every N training "
                         "steps (0 = only at epoch ends). An interrupted run restarted with the "
                         "same command resumes from the latest checkpoint, mid-epoch included.")
    flags.DEFINE_bool("sync_batch_norm", None, "With several replicas, compute batch-norm "
                      "statistics over the global batch instead of each replica's share.")
    flags.DEFINE_bool("deterministic", None, "Deterministic ops "
                      "(tf.config.experimental.enable_op_determinism): a resumed run ends with "
                      "the same weights as an uninterrupted one. Slower.")


def define_classifier_training():
    """Training flags of the classifier binary only."""
    flags.DEFINE_enum("class_weighting", None, list(configs.CLASS_WEIGHTINGS),
                      "Class imbalance: 'none' (plain binary cross-entropy, paper) or 'positive' "
                      "(positive examples of each class weighted by N_negative / N_positive, "
                      "counted on the train split).")


def define_classifier():
    """Classifier architecture flags."""
    flags.DEFINE_enum("variant", None, ["cxr_irnet", "no_weighting", "no_attention", "chexnet",
                                        "dcnn"],
                      "Model: CXR-IRNet, its ablations without feature weighting or without "
                      "attention, CheXNet (DenseNet121), DCNN (ResNet-50).")
    flags.DEFINE_string("backbone", None, "Backbone override: densenet121, resnet50, "
                        "densenet_small, densenet_tiny.")
    flags.DEFINE_integer("input_size", None, "Classifier input side (a multiple of 32).")
    flags.DEFINE_integer("resize_size", None, "Resize side before the centre crop to input_size.")
    flags.DEFINE_string("backbone_weights", None, "Optional local weights file for the backbone "
                        "(e.g. ImageNet weights for keras.applications DenseNet121). Nothing is "
                        "ever downloaded.")
    flags.DEFINE_string("segmenter", None, "Trained segmenter (.keras) for feature weighting "
                        "(default WORK_DIR/segmenter/best.keras).")


def define_segmenter():
    flags.DEFINE_integer("segmenter_size", None, "Segmenter input side (a multiple of 2**depth).")
    flags.DEFINE_integer("segmenter_filters", None, "U-Net filters at the first level.")


def setup_logging():
    """Shows cxr_tf's INFO lines; other libraries (TensorFlow, TFDS) log warnings and errors only.

    absl's --verbosity / -v still raises everything back to INFO or DEBUG for debugging.
    """
    from absl import logging as absl_logging
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("cxr_tf").setLevel(logging.INFO)


def data_dir():
    return FLAGS.data_dir or os.path.join(FLAGS.work_dir, "tfds")


def _override(obj, **values):
    for key, value in values.items():
        if value is not None:
            setattr(obj, key, value)


def experiment_config(base=None):
    """`base` (default: the preset named by --config) with every given flag override applied."""
    config = base or configs.get(FLAGS.config)
    get = lambda name: FLAGS[name].value if name in FLAGS else None  # noqa: E731
    _override(config.data, dataset=get("dataset"), image_size=get("image_size"),
              num_train=get("num_train"), num_validation=get("num_validation"),
              num_test=get("num_test"), shortcut=get("shortcut"), seed=get("seed"))
    _override(config, seed=get("seed"))
    _override(config.segmenter, input_size=get("segmenter_size"),
              base_filters=get("segmenter_filters"))
    _override(config.classifier, variant=get("variant"), backbone=get("backbone"),
              input_size=get("input_size"), resize_size=get("resize_size"))
    return config


def apply_training_overrides(section):
    """Applies the define_training() (and --class_weighting) flags given on the command line to
    a SegmenterConfig or ClassifierConfig; flags left unset keep the preset's values."""
    get = lambda name: FLAGS[name].value if name in FLAGS else None  # noqa: E731
    _override(section, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
              learning_rate=FLAGS.learning_rate, lr_schedule=get("lr_schedule"),
              lr_plateau_factor=get("lr_plateau_factor"),
              lr_plateau_patience=get("lr_plateau_patience"),
              min_learning_rate=get("min_learning_rate"),
              mixed_precision=get("mixed_precision"), jit_compile=get("jit_compile"),
              checkpoint_every_steps=get("checkpoint_every_steps"),
              sync_batch_norm=get("sync_batch_norm"), deterministic=get("deterministic"))
    if hasattr(section, "class_weighting"):
        _override(section, class_weighting=get("class_weighting"))
