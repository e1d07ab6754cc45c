"""Running a model over a dataset and collecting its outputs as numpy arrays."""

import os

import numpy as np
import tensorflow as tf


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

SAVED_MODEL_SIGNATURES = ("predict_pixels", "serving_default")


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
        from cxr_tf import labels as labels_lib
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
        from cxr_tf.data import preprocessing
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
        from cxr_tf.data import preprocessing
        from cxr_tf.models import classifier as classifier_lib
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
        from cxr_tf.serving import export as export_lib
        if signature not in SAVED_MODEL_SIGNATURES:
            raise ValueError(f"signature must be one of {SAVED_MODEL_SIGNATURES}, got "
                             f"{signature!r}")
        loaded, meta = export_lib.load_exported(path)
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
        from cxr_tf.models import classifier as classifier_lib
        images = tf.convert_to_tensor(images, tf.float32)
        if self.signature == "predict_pixels":
            out = self._fn(images=images)
        else:
            pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
            pngs = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)
            out = self._fn(image_bytes=pngs)
        keep = (classifier_lib.PROBABILITIES, classifier_lib.CAMS, classifier_lib.MASK_COVERAGE)
        return {k: out[k].numpy() for k in keep}


def resolve_saved_model(path):
    """A SavedModel version directory from `path`: the directory itself when it holds
    saved_model.pb, else its highest numeric version subdirectory (the one TF Serving serves).

    Raises:
      FileNotFoundError: when neither is there.
    """
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(d) for d in os.listdir(path)
                       if d.isdigit() and os.path.exists(os.path.join(path, d, "saved_model.pb"))))
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel version directory (with "
                                f"saved_model.pb) nor an export base directory holding numeric "
                                f"version directories")
    return os.path.join(path, str(versions[-1]))


def load_predictor(path, resize_size=None, signature="predict_pixels"):
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
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model not found: {path} (expected a .keras classifier or an "
                                f"exported SavedModel directory)")
    if os.path.isdir(path):
        return SavedModelPredictor(resolve_saved_model(path), signature=signature)
    if not path.endswith(".keras"):
        raise ValueError(f"{path} is neither a .keras file nor a SavedModel directory")
    from cxr_tf.models import classifier as classifier_lib
    model = classifier_lib.load_model(path)
    if not isinstance(model, classifier_lib.CXRClassifier):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a classifier (to score a "
                         f"segmenter, pass it as the segmenter model)")
    return KerasPredictor(model, resize_size=resize_size, path=path)


def examples_dataset(builder, split, batch_size=64, with_boxes=False):
    """Batches of a split as stored (no resizing: predictors preprocess themselves).

    Each element is a dict: "image" (B, H, W, 1) float32 in [0, 1], "labels" (B, 14) float32,
    "image_id" (B,) string and, with `with_boxes`, "boxes" (B, N, 4) float32 [x, y, w, h] in
    pixels of the stored image and "box_labels" (B, N) int32 finding indices, padded with -1.
    """
    from cxr_tf.data import datasets
    from cxr_tf.data import features as fk
    from cxr_tf.data import preprocessing

    examples = datasets.load_split(builder, split)
    if with_boxes:
        missing = [k for k in (fk.BOXES, fk.BOX_LABELS) if k not in builder.info.features]
        if missing:
            raise ValueError(f"{builder.info.full_name} has no box features ({', '.join(missing)}"
                             f"): localisation needs a data set with ground-truth boxes")

    def parse(ex):
        out = {"image": preprocessing.to_float(ex[fk.IMAGE]),
               "labels": tf.cast(ex[fk.LABELS], tf.float32), "image_id": ex[fk.IMAGE_ID]}
        if with_boxes:
            out["boxes"] = tf.reshape(tf.cast(ex[fk.BOXES], tf.float32), [-1, 4])
            out["box_labels"] = tf.cast(ex[fk.BOX_LABELS], tf.int32)
        return out

    ds = examples.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if with_boxes:
        ds = ds.padded_batch(batch_size, padding_values={
            "image": 0.0, "labels": 0.0, "image_id": "", "boxes": 0.0, "box_labels": -1})
    else:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def predict(predictor, dataset, keep_cams=False):
    """Runs a Predictor over `examples_dataset` batches.

    Returns:
      dict with "probabilities" (N, C), "labels" (N, C), "ids" (list of str), "mask_coverage"
      (N,) and, with `keep_cams`, "class_activation_maps" (N, h, w, C).
    """
    from cxr_tf.models import classifier as classifier_lib
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


def segmentation_dataset(builder, split, size, batch_size=64):
    """(image, (masks, known), image_id) batches of a split with masks, at the segmenter's
    input size.

    Targets in labels.SEGMENTATION_TARGETS order (left lung, right lung, heart, both lungs) with
    their per-image known flags (cxr_tf.data.pipeline.segmentation_targets): data sets with
    `masks` (synthetic_cxr, jsrt_scr) label all four, lungs-only data sets (montgomery, shenzhen)
    both lungs and, where the mask tells them apart, each lung. Images and masks are resized
    together exactly as for training (cxr_tf.data.preprocessing.resize_and_crop), masks
    binarised at 0.5.

    Returns:
      (dataset, names of the targets the data set can label: all four, or the three lung
      targets for lungs-only data sets).
    """
    from cxr_tf import labels as labels_lib
    from cxr_tf.data import datasets
    from cxr_tf.data import features as fk
    from cxr_tf.data import pipeline

    features = builder.info.features
    if fk.MASKS in features:
        structures = labels_lib.SEGMENTATION_TARGETS
    elif fk.LUNGS in features:
        structures = ("left_lung", "right_lung", labels_lib.LUNGS)
    else:
        raise ValueError(f"{builder.info.full_name} has no segmentation masks ({fk.MASKS!r} or "
                         f"{fk.LUNGS!r}); score the segmenter on a data set with masks, e.g. "
                         f"synthetic_cxr, jsrt_scr, montgomery or shenzhen (rebuild a montgomery "
                         f"data set made by cxr_tf < 0.2)")

    def parse(ex):
        image, targets = pipeline.parse_partial_segmentation(ex, size)
        return image, targets, ex[fk.IMAGE_ID]

    ds = datasets.load_split(builder, split).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), tuple(structures)
