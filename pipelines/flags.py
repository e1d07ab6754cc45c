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
    flags.DEFINE_bool("handle_preemption", None, "Checkpoint and exit (status 42) on SIGTERM or "
                      "a Google Cloud maintenance notice, with TensorFlow's "
                      "PreemptionCheckpointHandler (default on). Creating it makes one HTTP "
                      "probe of the Google Cloud metadata server (at most 5 s); "
                      "--nohandle_preemption avoids it on sites where no outbound request may be "
                      "attempted.")


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


def define_export():
    """Flags of cxr-export."""
    flags.DEFINE_string("work_dir", None, "Work directory holding classifier/ and eval/.",
                        required=True)
    flags.DEFINE_string("model", None, "Classifier .keras file (default WORK_DIR/classifier/"
                        "best.keras).")
    flags.DEFINE_string("export_dir", None, "Model base directory (default WORK_DIR/export); the "
                        "version is a numbered subdirectory, as TF Serving expects.")
    flags.DEFINE_integer("version", None, "Version number (default: next free one).")
    flags.DEFINE_string("report", None, "Evaluation report.json whose validation-chosen thresholds "
                        "are exported (default WORK_DIR/eval/report.json when it exists).")

def define_predict():
    """Flags of cxr-predict."""
    flags.DEFINE_string("model", None, "Export directory: a version directory or the base "
                        "directory (highest version used).", required=True)
    flags.DEFINE_string("output", None, "Write the JSON lines to this file instead of stdout.")
    flags.DEFINE_string("overlay_dir", None, "Write a heat-map overlay PNG per image here.")
    flags.DEFINE_integer("overlay_top_k", 3, "Findings (highest probabilities) shown per overlay.",
                         lower_bound=1)
    flags.DEFINE_string("colormap", "jet", "Matplotlib colour map of the overlays.")
    flags.DEFINE_integer("batch_size", 16, "Images per call of the model.", lower_bound=1)
    flags.DEFINE_float("warn_coverage", None, "Warn when the lung-and-heart mask covers less than "
                       "this share of the image (default: the model's own minimum, below which "
                       "the features are not weighted).", lower_bound=0.0, upper_bound=1.0)

def define_rest():
    """Flags of the local TF Serving REST stand-in (cxr-rest)."""
    flags.DEFINE_string("model", None, "Export directory: the model base path (versions in numbered "
                        "subdirectories; the highest is used) or one version directory.",
                        required=True)
    flags.DEFINE_bool("serve", False, "Serve TF Serving's REST URLs instead of answering a file.")
    flags.DEFINE_string("model_name", "cxr", "Model name in the URLs (/v1/models/<name>:predict).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on with --serve.")
    flags.DEFINE_integer("port", 8501, "Port with --serve (TF Serving's REST default is 8501; 0 "
                         "picks a free one).")

def define_evaluate():
    """Flags of cxr-evaluate (besides define_common)."""
    flags.DEFINE_string("model", None, "Classifier to evaluate: a .keras file (its directory's "
                        "experiment.json gives the data set and preprocessing), or an exported "
                        "SavedModel version directory or export base directory (data set from "
                        "--config and the data flags). Default WORK_DIR/classifier/best.keras; "
                        "'none' evaluates only the segmenter.")
    flags.DEFINE_enum("signature", "predict_pixels", ["predict_pixels", "serving_default"],
                      "SavedModel signature: predict_pixels (float images) or serving_default "
                      "(images PNG-encoded first: the full serving path, decoding included).")
    flags.DEFINE_string("segmenter_model", None, "Segmenter .keras file to score with Dice and IoU "
                        "per structure (default WORK_DIR/segmenter/best.keras when it exists; "
                        "'pretrained' scores the one shipped with cxr_tf; 'none' skips). On a "
                        "data set without masks (chestxray14) it is screened instead: mask "
                        "coverage per film, a contact sheet, and the share of boxes kept.")
    flags.DEFINE_string("split", "test", "Split to evaluate. Thresholds always come from the "
                        "'validation' split.")
    flags.DEFINE_string("out_dir", None, "Report directory (default WORK_DIR/eval).")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the intervals (0: none).",
                         lower_bound=0)
    flags.DEFINE_float("cam_threshold", 0.5, "Box rule: fraction of the normalised CAM maximum a "
                       "pixel must reach to belong to the box's connected component.",
                       lower_bound=0.01, upper_bound=1.0)
    flags.DEFINE_integer("overlays", 24, "Number of CAM overlay PNGs (0: none).", lower_bound=0)
    flags.DEFINE_string("box_split", None, "Split with ground-truth boxes for localisation (default "
                        "'bbox' when the data set has it, else --split).")
    flags.DEFINE_string("segmentation_dataset", None, "Data set for the segmenter's scores (default: "
                        "the evaluated data set; e.g. jsrt_scr, montgomery, synthetic_cxr).")
    flags.DEFINE_string("segmentation_split", None, "Split for the segmenter's scores (default "
                        "--split).")
    flags.DEFINE_string("segmentation_manual_dir", None, "Raw download of --segmentation_dataset "
                        "(real data sets only).")

def define_ablation():
    """Flags of cxr-ablation (besides define_common)."""
    flags.DEFINE_list("variants", ["cxr_irnet", "no_weighting", "no_attention", "chexnet", "dcnn"],
                      "Variants to train and compare, in table order.")
    flags.DEFINE_list("data_variants", ["clean", "shortcut"], "Phantom data variants: 'clean' and/or "
                      "'shortcut' (synthetic_cxr only; real data sets run as they are).")
    flags.DEFINE_integer("epochs", None, "Classifier training epochs for every variant (overrides "
                         "the preset).", lower_bound=1)
    flags.DEFINE_integer("batch_size", None, "Classifier batch size.", lower_bound=1)
    flags.DEFINE_float("learning_rate", None, "Classifier Adam learning rate.")
    flags.DEFINE_integer("dcnn_input_size", None, "Input side of the ResNet-50 baseline only (a "
                         "multiple of 32; default: the preset's, like every other variant).")
    flags.DEFINE_string("segmenter", None, "A trained segmenter (.keras) to use instead of training "
                        "one.")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of every interval.", lower_bound=0)
    flags.DEFINE_integer("overlays", 4, "CAM overlay PNGs per variant.", lower_bound=0)

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
              sync_batch_norm=get("sync_batch_norm"), deterministic=get("deterministic"),
              handle_preemption=get("handle_preemption"))
    if hasattr(section, "class_weighting"):
        _override(section, class_weighting=get("class_weighting"))
