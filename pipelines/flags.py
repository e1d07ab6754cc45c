"""Every command-line flag of cxr_tf's binaries, defined in this one module.

Binaries call the `define_*` groups they need; `experiment_config()` turns the parsed flags into
an ExperimentConfig (a preset from cxr_tf.configs with single fields overridden).
"""

import logging
import os

from absl import flags

from cxr_tf import configs, errors

FLAGS = flags.FLAGS
EXIT_CODES = errors.EXIT_CODES  # exit code of each failure class (docs/errors.md)

flags.DEFINE_bool("traceback", False, "On a known failure (exit codes 2-8, docs/errors.md), "
                  "print Python's full traceback instead of the one-line message (absl's "
                  "--pdb opens the debugger instead).")
flags.DEFINE_bool("wait_for_lock", False, "When another process is writing the same stage of "
                  "the work directory (segmenter/, classifier/, eval/, an ablation), wait for it "
                  "instead of stopping at once with exit code 8.")


def _binary_name():
    import sys
    return os.path.basename(sys.argv[0]) or "cxr_tf"


def _parse_flags(argv):
    """absl's flag parsing, with a bad or missing flag reported as one line and exit code 2."""
    import sys
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"{_binary_name()}: error: {errors.one_line(e)} (see --help)", file=sys.stderr)
        sys.exit(errors.EXIT_CODES["usage"])


def run(main):
    """app.run(main), ending every known failure (cxr_tf.errors.classify: bad flags or config,
    missing or damaged data, divergence, a full disk or a file-size limit, permission denied, a
    file that is not a model, a busy stage) with one line `<binary>: error: <message>` on stderr
    and the exit code of its class (docs/errors.md); preemption exits 42 from TensorFlow's
    handler. Unknown failures keep their traceback (exit 1); --traceback or --pdb shows it for
    known ones too."""
    import sys

    from absl import app

    def friendly(argv):
        try:
            if FLAGS.wait_for_lock:
                from cxr_tf import workflow
                with workflow.files.waiting_for_stages():
                    return main(argv)
            return main(argv)
        except app.UsageError as e:
            if FLAGS.traceback:
                raise
            print(f"{_binary_name()}: error: {errors.one_line(e)}", file=sys.stderr)
            return errors.EXIT_CODES["usage"]
        except Exception as e:
            kind = errors.classify(e)
            if kind is None or FLAGS.traceback or FLAGS["pdb_post_mortem"].value:
                raise
            print(f"{_binary_name()}: error: {errors.message(e, kind)}", file=sys.stderr)
            return errors.EXIT_CODES[kind]

    app.run(friendly, flags_parser=_parse_flags)


# {section: {field: flag name}} of the config flags this binary defined (experiment_config
# applies them).
_SECTION_FLAGS = {}


def define_section(section, only=None, aliases=None):
    """One flag per field of a config section (configs.SECTIONS: "data", "segmenter",
    "classifier"), named like the field, typed like it, with the field's help text; default
    None, meaning "keep the preset's value". `experiment_config()` applies the given ones.

    Args:
      section: the section name.
      only: define flags for these fields only (default: all).
      aliases: {old flag name: field}, extra names for documented commands (absl aliases).
    """
    import dataclasses
    defined = _SECTION_FLAGS.setdefault(section, {})
    for fld in dataclasses.fields(configs.SECTIONS[section]):
        if only is not None and fld.name not in only:
            continue
        kind = fld.type if isinstance(fld.type, str) else fld.type.__name__
        text = f"{fld.metadata['help']} (config: {section}.{fld.name})"
        choices = fld.metadata.get("choices")
        if choices and kind == "str":
            flags.DEFINE_enum(fld.name, None, list(choices), text)
        elif kind == "bool":
            flags.DEFINE_bool(fld.name, None, text)
        elif kind == "int":
            flags.DEFINE_integer(fld.name, None, text)
        elif kind == "float":
            flags.DEFINE_float(fld.name, None, text)
        else:
            flags.DEFINE_string(fld.name, None, text)
        defined[fld.name] = fld.name
    for alias, target in (aliases or {}).items():
        flags.DEFINE_alias(alias, defined[target])


def define_common():
    """--work_dir, --config, --data_dir, --manual_dir, --quiet and one flag per DataConfig field."""
    flags.DEFINE_string("work_dir", None, "Work directory: data sets, models, reports and exports "
                        "go into its subdirectories (tfds/, segmenter/, classifier/, eval/, "
                        "export/).", required=True)
    flags.DEFINE_enum("config", "demo", list(configs.PRESETS),
                      "Preset: 'demo' (phantoms, small DenseNet, minutes on a CPU), 'paper' "
                      "(ChestX-ray14, DenseNet121 at 224 as in Fang et al. 2021), 'tiny' (tests). "
                      "Every other flag named like a config field overrides that field.")
    flags.DEFINE_string("data_dir", None, "Where built data sets live (default WORK_DIR/tfds).")
    flags.DEFINE_string("manual_dir", None, "Folder holding the raw download of a real data set, "
                        "as unpacked by the user (never needed for synthetic_cxr). One folder "
                        "may hold several data sets' copies: each builder takes its own files.")
    flags.DEFINE_bool("quiet", False, "Per-epoch log lines only, no progress bars.")
    define_section("data")


def define_training():
    """--strategy, shared by the two training binaries (see docs/training.md)."""
    flags.DEFINE_enum("strategy", "default", list(configs.STRATEGIES),
                      "tf.distribute strategy. 'default': no distribution (TensorFlow picks the "
                      "first GPU if any); 'one_device': one GPU, else the CPU; 'mirrored': all "
                      "local GPUs (all logical CPU devices without a GPU); 'multi_worker': the "
                      "machines listed in the TF_CONFIG environment variable, all GPUs of each.")


def define_classifier():
    """One flag per ClassifierConfig field (architecture and training), --backbone_weights and
    --segmenter."""
    define_section("classifier")
    flags.DEFINE_string("backbone_weights", None, "Backbone start: 'imagenet' for "
                        "keras.applications' ImageNet weights (densenet121, resnet50), taken "
                        "from the Keras cache ($KERAS_HOME or ~/.keras, models/) or downloaded "
                        "into it once where the network is reachable; offline without the "
                        "cached file the run stops and names the file to place there. Or the "
                        "path of a local weights file. Default: random initialisation.")
    flags.DEFINE_string("segmenter", None, "Trained segmenter (.keras) for feature weighting "
                        "(default WORK_DIR/segmenter/best.keras when trained there, else the "
                        "segmenter shipped with cxr_tf; see cxr_tf/pretrained/MODEL_CARD.md).")


def define_segmenter():
    """One flag per SegmenterConfig field; the names used before (--segmenter_size,
    --segmenter_filters) stay as aliases, and --segmenter_datasets names --datasets."""
    define_section("segmenter", aliases={"segmenter_size": "input_size",
                                         "segmenter_filters": "base_filters",
                                         "segmenter_datasets": "datasets"})


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
    flags.DEFINE_integer("max_image_pixels", 40_000_000, "Largest image (height x width) the "
                         "exported signatures accept; larger ones are refused from their file "
                         "header, before decoding.", lower_bound=1)
    flags.DEFINE_string("model_name", "cxr", "Name TF Serving serves the model under (the "
                        "warm-up requests and models.config use it).")
    flags.DEFINE_bool("warmup", True, "Write TF Serving's warm-up requests into the export and "
                      "models.config beside it (needs TF Serving's protos, the `serving` extra: "
                      "without them the export stops at once and says so). --nowarmup exports "
                      "without them.")
    flags.DEFINE_string("serving_base_path", None, "Base path in the models.config written "
                        "beside the export, as TF Serving sees it (default /models/<model_name>, "
                        "the path in TF Serving's container).")

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
    flags.DEFINE_string("model", None, "Export directory: the model base path (versions in "
                        "numbered "
                        "subdirectories; the highest is used) or one version directory.",
                        required=True)
    flags.DEFINE_bool("serve", False, "Serve TF Serving's REST URLs instead of answering a file.")
    flags.DEFINE_string("model_name", "cxr", "Model name in the URLs (/v1/models/<name>:predict).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on with --serve.")
    flags.DEFINE_integer("port", 8501, "Port with --serve (TF Serving's REST default is 8501; 0 "
                         "picks a free one).")
    flags.DEFINE_integer("max_body_bytes", 32 * 1024 * 1024, "With --serve: larger request "
                         "bodies get HTTP 413 before they are read.", lower_bound=1)
    flags.DEFINE_float("client_timeout", 30.0, "With --serve: seconds a client may take to send "
                       "a request; idle keep-alive connections are closed after it, slow bodies "
                       "get HTTP 408.", lower_bound=0.001)
    flags.DEFINE_integer("max_connections", 16, "With --serve: connections served at a time; "
                         "more get HTTP 503 at once.", lower_bound=1)
    flags.DEFINE_integer("max_predictions", 2, "With --serve: predictions run at a time (the "
                         "others wait).", lower_bound=1)
    flags.DEFINE_integer("grpc_port", None, "With --serve: also answer TF Serving's gRPC "
                         "PredictionService (Predict, GetModelMetadata) on this port (TF "
                         "Serving's default is 8500; 0 picks a free one). Needs the "
                         "tensorflow-serving-api protos.", lower_bound=0)

def define_evaluate():
    """Flags of cxr-evaluate (besides define_common); the classifier geometry and mask rule flags
    matter for a segmenter screened on its own (--model=none on chestxray14)."""
    define_section("classifier", only=("input_size", "resize_size", "mask_threshold",
                                       "min_mask_coverage", "mask_dilation"))
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
    flags.DEFINE_string("box_split", None, "Split with ground-truth boxes for localisation "
                        "(default "
                        "'bbox' when the data set has it, else --split).")
    flags.DEFINE_string("segmentation_dataset", None, "Data set for the segmenter's scores "
                        "(default: "
                        "the evaluated data set; e.g. jsrt_scr, montgomery, synthetic_cxr).")
    flags.DEFINE_string("segmentation_split", None, "Split for the segmenter's scores (default "
                        "--split).")
    flags.DEFINE_string("segmentation_manual_dir", None, "Raw download of --segmentation_dataset "
                        "(real data sets only).")

def define_ablation():
    """Flags of cxr-ablation (besides define_common); --epochs, --batch_size and --learning_rate
    set the classifier's for every variant."""
    define_section("classifier", only=("epochs", "batch_size", "learning_rate"))
    flags.DEFINE_list("variants", ["cxr_irnet", "no_weighting", "no_attention", "chexnet", "dcnn"],
                      "Variants to train and compare, in table order.")
    flags.DEFINE_list("data_variants", ["clean", "shortcut"], "Phantom data variants: 'clean' "
                      "and/or "
                      "'shortcut' (synthetic_cxr only; real data sets run as they are).")
    flags.DEFINE_integer("dcnn_input_size", None, "Input side of the ResNet-50 baseline only (a "
                         "multiple of 32; default: the preset's, like every other variant).")
    flags.DEFINE_string("segmenter", None, "A trained segmenter (.keras) to use instead of "
                        "training "
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
    """--data_dir, or WORK_DIR/tfds."""
    from cxr_tf import workflow  # here, not at the top: --help stays fast without TensorFlow
    return FLAGS.data_dir or workflow.layout.data_dir(FLAGS.work_dir)


def experiment_config(base=None):
    """`base` (default: the preset named by --config) with every config flag given on the command
    line applied to its field; --seed also sets the experiment's seed."""
    config = base or configs.get(FLAGS.config)
    for section, fields in _SECTION_FLAGS.items():
        target = getattr(config, section)
        for field, name in fields.items():
            if FLAGS[name].value is not None:
                setattr(target, field, FLAGS[name].value)
    if "seed" in FLAGS and FLAGS.seed is not None:
        config.seed = FLAGS.seed
    return config
