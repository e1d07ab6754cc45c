"""Running a model over a dataset and collecting its outputs as numpy arrays."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from cxr_tf import files, saved_models
from cxr_tf import labels as labels_lib
from cxr_tf.data import preprocessing
from cxr_tf.models import classifier as classifier_lib


class InferenceRunner:
    """Runs one model in inference mode over datasets, tracing its step function once.

    A validation pass after every epoch must not re-trace the model (for DenseNet121 with its
    inline segmenter a fresh `tf.function` costs seconds on a CPU before the first batch runs):
    the runner builds its step on the first call and reuses it for every later dataset. The
    step's input signature leaves the batch dimension open, so the last, smaller batch of a
    split does not trace again: there is one trace per distinct image shape (`traces` counts
    them).

    Under a strategy with several replicas (MirroredStrategy, MultiWorkerMirroredStrategy),
    each batch is split over the replicas (`experimental_distribute_dataset`; a last batch
    smaller than the number of replicas leaves some replicas an empty share) and the outputs
    and targets are gathered back (`strategy.gather`), so every worker ends with the outputs
    of the whole dataset, row-aligned with its targets. Multi-worker runs shard the batches
    between workers by data (every worker reads the files; each keeps its share).

    Args:
      model: a Keras model or any callable taking an image batch (`training=False` is passed).
      strategy: the tf.distribute strategy to run under (default: the current one).
    """

    def __init__(self, model, strategy=None):
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.distributed = self.strategy.num_replicas_in_sync > 1
        self.traces = 0
        self._steps = {}

    def _step(self, key, element_spec):
        """The compiled step for one image shape `key` (built on first use)."""
        if key in self._steps:
            return self._steps[key]
        model, strategy = self.model, self.strategy

        def forward(x, y):
            return model(x, training=False), y

        def counted(fn):
            def traced(x, y):
                self.traces += 1  # Python side effect: runs only while tracing
                return fn(x, y)
            return traced

        if self.distributed:
            def distributed_step(x, y):
                outputs, targets = strategy.run(forward, args=(x, y))
                gather = lambda t: strategy.gather(t, axis=0)  # noqa: E731
                return (tf.nest.map_structure(gather, outputs),
                        tf.nest.map_structure(gather, targets))

            step = tf.function(counted(distributed_step),
                               input_signature=list(element_spec[:2]))
        else:
            relaxed = tf.nest.map_structure(lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype),
                                            tuple(element_spec[:2]))
            step = tf.function(counted(forward), input_signature=list(relaxed))
        self._steps[key] = step
        return step

    def _batches(self, dataset):
        """(image, target[, ids]) batches as the step expects them."""
        if not self.distributed:
            return dataset
        pairs = dataset.map(lambda *b: (b[0], b[1]))  # ids are strings: not gathered
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return self.strategy.experimental_distribute_dataset(pairs.with_options(options))

    def __call__(self, dataset, outputs_key=None):
        """Runs the model over `dataset` and concatenates the results.

        Args:
          dataset: yields (image, target) or (image, target, image_id) batches; a target may be
            a tuple of tensors (e.g. segmentation masks and their known flags).
          outputs_key: when the model returns a dict, keep only this key (None keeps the dict).

        Returns:
          dict with "outputs" (array, or dict of arrays), "targets" and, if present (and not
          distributed), "ids" (list of str).
        """
        batches = self._batches(dataset)
        step = self._step(tuple(dataset.element_spec[0].shape.as_list()[1:]),
                          batches.element_spec)
        outs, targets, ids = [], [], []
        for batch in batches:
            y, t = step(batch[0], batch[1])
            if isinstance(y, dict):
                y = {k: v.numpy() for k, v in y.items()}
                if outputs_key is not None:
                    y = y[outputs_key]
            else:
                y = y.numpy()
            outs.append(y)
            targets.append(tf.nest.map_structure(lambda v: v.numpy(), t))
            if len(batch) > 2:
                ids.extend(s.decode() for s in batch[2].numpy())
        if not outs:
            raise ValueError("The evaluation dataset is empty: nothing to evaluate")
        if isinstance(outs[0], dict):
            merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        else:
            merged = np.concatenate(outs)
        result = {"outputs": merged,
                  "targets": tf.nest.map_structure(lambda *v: np.concatenate(v), *targets)}
        if ids:
            result["ids"] = ids
        return result


def collect(model, dataset, outputs_key=None):
    """Runs `model` (inference mode) over `dataset` once; see InferenceRunner (keep a runner
    when the same model is run again, e.g. validation after every epoch).

    Returns:
      dict with "outputs" (array, or dict of arrays), "targets" and, if present, "ids"
      (list of str).
    """
    return InferenceRunner(model)(dataset, outputs_key)


# ---- Classifiers as evaluation sees them: a .keras model or an exported SavedModel -----------

SAVED_MODEL_SIGNATURES = saved_models.PREDICTION_SIGNATURES


class Predictor:
    """A trained classifier behind one interface, whatever its format.

    Call it with a batch of images as stored in a data set, (B, H, W, 1) float32 in [0, 1]; it
    resizes and centre-crops them to the model input exactly as training, evaluation and serving
    do (`cxr_tf.data.preprocessing.resize_and_crop`) and returns a dict of numpy arrays:
      - "probabilities" (B, C);
      - "class_activation_maps" (B, h, w, C): per-cell head logits on the feature grid;
      - "mask_coverage" (B,);
      - "grid_mask" (B, h, w, 1), the lung-and-heart mask applied to the features (only where
        the format exposes it: .keras models).

    Attributes:
      source: "keras" or "saved_model".
      path: where the model was loaded from (None for an in-memory model).
      input_size, resize_size: model input side and the resize side before the centre crop.
      label_names: class names in output order (checked against cxr_tf.labels.FINDINGS).
      name: the model's name (its variant, e.g. "cxr_irnet").
      feature_weighting: whether the model weights features by the lung-and-heart mask.
    """

    source = None

    def __init__(self, path, input_size, resize_size, label_names, name, feature_weighting):
        labels_lib.check_label_names(label_names, what=f"classifier {path or name}")
        self.path = path
        self.input_size = int(input_size)
        self.resize_size = int(resize_size or input_size)
        if self.resize_size < self.input_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= the model input size "
                             f"({self.input_size})")
        self.label_names = tuple(label_names)
        self.name = name
        self.feature_weighting = bool(feature_weighting)

    def model_inputs(self, images):
        """The images as the model sees them: (B, input_size, input_size, 1) numpy float32."""
        return preprocessing.resize_and_crop(tf.convert_to_tensor(images, tf.float32),
                                             self.input_size, self.resize_size).numpy()

    def describe(self):
        """A JSON-ready description for reports."""
        return {"source": self.source, "path": self.path, "name": self.name,
                "input_size": self.input_size, "resize_size": self.resize_size,
                "feature_weighting": self.feature_weighting}

    def __call__(self, images):
        raise NotImplementedError


class KerasPredictor(Predictor):
    """A CXRClassifier in memory (or loaded from .keras), run through its explain_model()."""

    source = "keras"

    def __init__(self, model, resize_size=None, path=None):
        if not isinstance(model, classifier_lib.CXRClassifier):
            raise TypeError(f"KerasPredictor needs a cxr_tf CXRClassifier, got "
                            f"{type(model).__name__}")
        super().__init__(path, model.input_size, resize_size, model.label_names, model.name,
                         model.feature_weighting)
        self.model = model
        explain = model.explain_model()
        size, resize = self.input_size, self.resize_size

        @tf.function(reduce_retracing=True)
        def run(images):
            return explain(preprocessing.resize_and_crop(images, size, resize), training=False)

        self._run = run

    def __call__(self, images):
        out = self._run(tf.convert_to_tensor(images, tf.float32))
        return {k: np.asarray(v) for k, v in out.items()}


class SavedModelPredictor(Predictor):
    """A SavedModel written by cxr_tf.serving.export, called through one of its signatures.

    `predict_pixels` (default) takes the float images directly; `serving_default` takes encoded
    PNG bytes, so the images are PNG-encoded first (8-bit: lossless for the 8-bit images every
    cxr_tf data set stores), exercising the full serving path including decoding.
    """

    source = "saved_model"

    def __init__(self, path, signature="predict_pixels"):
        if signature not in SAVED_MODEL_SIGNATURES:
            raise ValueError(f"signature must be one of {SAVED_MODEL_SIGNATURES}, got "
                             f"{signature!r}")
        loaded, meta = saved_models.load_exported(path)
        super().__init__(path, meta["input_size"], meta["resize_size"], meta["label_names"],
                         meta.get("model_name", "saved_model"), meta.get("feature_weighting", True))
        self.signature = signature
        self.metadata = meta
        self._loaded = loaded  # keeps the signature's variables alive
        self._fn = loaded.signatures[signature]

    def describe(self):
        return {**super().describe(), "signature": self.signature,
                "version": self.metadata.get("version")}

    def __call__(self, images):
        images = tf.convert_to_tensor(images, tf.float32)
        if self.signature == "predict_pixels":
            out = self._fn(images=images)
        else:
            pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
            pngs = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)
            out = self._fn(image_bytes=pngs)
        keep = (classifier_lib.PROBABILITIES, classifier_lib.CAMS, classifier_lib.MASK_COVERAGE,
                classifier_lib.GRID_MASK)  # grid_mask: exports written by cxr_tf >= 0.2
        return {k: out[k].numpy() for k in keep if k in out}


def load_predictor(path: str | os.PathLike, resize_size: int | None = None,
                   signature: str = "predict_pixels") -> KerasPredictor | SavedModelPredictor:
    """Loads a classifier for evaluation from a .keras file or an exported SavedModel.

    Args:
      path: a `.keras` file saved by cxr_tf training, or a SavedModel version directory (or its
        export base directory: the highest version is used).
      resize_size: for .keras models, the resize side before the centre crop (the training
        setting, e.g. from the run's experiment.json); default: the model input size. A
        SavedModel carries its own.
      signature: for SavedModels, "predict_pixels" or "serving_default".

    Raises:
      FileNotFoundError: when `path` does not exist.
      ValueError: when it holds something other than a cxr_tf classifier.
    """
    path = str(path)
    if not files.exists(path):
        raise FileNotFoundError(f"Model not found: {path} (expected a .keras classifier or an "
                                f"exported SavedModel directory)")
    if files.isdir(path):
        return SavedModelPredictor(saved_models.resolve_version(path), signature=signature)
    if not path.endswith(".keras"):
        raise ValueError(f"{path} is neither a .keras file nor a SavedModel directory")
    model = classifier_lib.load_model(path)
    if not isinstance(model, classifier_lib.CXRClassifier):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a classifier (to score a "
                         f"segmenter, pass it as the segmenter model)")
    return KerasPredictor(model, resize_size=resize_size, path=path)


def predict(predictor, dataset, keep_cams=False):
    """Runs a Predictor over `cxr_tf.data.pipeline.examples_dataset` batches.

    Returns:
      dict with "probabilities" (N, C), "labels" (N, C), "ids" (list of str), "mask_coverage"
      (N,) and, with `keep_cams`, "class_activation_maps" (N, h, w, C).
    """
    probs, labels, ids, coverage, cams = [], [], [], [], []
    for batch in dataset:
        out = predictor(batch["image"])
        probs.append(out[classifier_lib.PROBABILITIES])
        coverage.append(out[classifier_lib.MASK_COVERAGE])
        if keep_cams:
            cams.append(out[classifier_lib.CAMS])
        labels.append(batch["labels"].numpy())
        ids.extend(s.decode() for s in batch["image_id"].numpy())
    if not probs:
        raise ValueError("The evaluation dataset is empty: nothing to evaluate")
    result = {"probabilities": np.concatenate(probs).astype(np.float64),
              "labels": np.concatenate(labels), "ids": ids,
              "mask_coverage": np.concatenate(coverage)}
    if keep_cams:
        result["class_activation_maps"] = np.concatenate(cams)
    return result
