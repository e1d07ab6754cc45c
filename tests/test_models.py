"""Model construction, variants, freezing and serialisation (tiny configurations)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.models import (
    CXRClassifier,
    FeatureWeighting,
    MultiScaleAttention,
    SoftDiceLoss,
    UNetSegmenter,
    build_classifier,
    load_model,
)
from cxr_tf.models import classifier as classifier_lib

from model_harness import assert_config_round_trip, assert_saved_model_round_trip

SIZE = 64


@pytest.fixture(scope="module")
def segmenter():
    keras.utils.set_random_seed(0)
    return UNetSegmenter(input_size=32, base_filters=4, depth=2)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype("float32")


@pytest.mark.parametrize("layer", [MultiScaleAttention(filters=2, kernel_sizes=(3, 7)),
                                   FeatureWeighting(threshold=0.4, min_coverage=0.1),
                                   SoftDiceLoss(smooth=0.5)])
def test_layer_and_loss_configs_round_trip(layer):
    assert_config_round_trip(layer)


def test_segmenter_outputs_and_round_trip(segmenter, tmp_path):
    x = np.random.default_rng(1).random((2, 32, 32, 1)).astype("float32")
    y = np.asarray(segmenter(x))
    assert y.shape == (2, 32, 32, labels.NUM_STRUCTURES)
    assert y.min() >= 0 and y.max() <= 1
    assert_config_round_trip(segmenter)
    loaded = assert_saved_model_round_trip(segmenter, x, tmp_path)
    assert loaded.structures == labels.STRUCTURES


@pytest.mark.parametrize("variant", list(classifier_lib.VARIANTS))
def test_every_variant_builds_predicts_and_round_trips(variant, segmenter, images, tmp_path):
    backbone = "resnet50" if variant == "dcnn" else "densenet_tiny"
    model = build_classifier(variant, backbone=backbone, input_size=SIZE, segmenter=segmenter)
    spec = classifier_lib.VARIANTS[variant]
    attention, weighting = spec.attention, spec.feature_weighting
    names = [layer.name for layer in model.layers]
    assert ("attention" in names) == attention
    assert ("feature_weighting" in names) == weighting
    assert ("segmenter" in names) == weighting
    probs = np.asarray(model(images))
    assert probs.shape == (2, labels.NUM_FINDINGS)
    assert np.all((probs > 0) & (probs < 1))
    assert model.label_names == labels.FINDINGS
    loaded = assert_saved_model_round_trip(model, images, tmp_path, atol=1e-5)
    assert loaded.label_names == labels.FINDINGS


def test_explain_model_outputs_are_consistent(segmenter, images):
    model = build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=SIZE,
                             segmenter=segmenter)
    out = {k: np.asarray(v) for k, v in model.explain_model()(images).items()}
    grid = SIZE // 32
    assert out["class_activation_maps"].shape == (2, grid, grid, labels.NUM_FINDINGS)
    # The mean of the CAM over cells is the logit (head = GAP -> Dense written as 1x1 conv).
    logits = out["class_activation_maps"].mean(axis=(1, 2))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), out["probabilities"], rtol=1e-5)
    np.testing.assert_allclose(out["probabilities"], np.asarray(model(images)), rtol=1e-6)
    assert out["mask_coverage"].shape == (2,)
    assert out["grid_mask"].shape == (2, grid, grid, 1)


def test_variant_without_weighting_reports_full_coverage(images):
    model = build_classifier("chexnet", backbone="densenet_tiny", input_size=SIZE)
    out = model.explain_model()(images)
    np.testing.assert_array_equal(out["mask_coverage"], [1.0, 1.0])


def test_segmenter_is_frozen_inside_the_classifier(segmenter, images):
    model = build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=SIZE,
                             segmenter=segmenter)
    seg_ids = {id(v) for v in model.segmenter.weights}
    assert not seg_ids & {id(v) for v in model.trainable_variables}
    before = [np.array(v) for v in model.segmenter.weights]
    opt = keras.optimizers.Adam(0.1)
    y = np.ones((2, labels.NUM_FINDINGS), "float32")
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, model(images, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables))
    for b, v in zip(before, model.segmenter.weights):
        np.testing.assert_array_equal(b, np.array(v))  # batch-norm statistics included


def test_classifier_needs_a_segmenter_for_weighting():
    with pytest.raises(ValueError, match="needs a trained segmenter"):
        build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=SIZE)


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "resnet"}, "Unknown classifier variant 'resnet'"),
    ({"variant": "chexnet", "backbone": "vgg"}, "Unknown backbone 'vgg'"),
    ({"variant": "chexnet", "input_size": 100}, "multiple of 32 .* got 100"),
])
def test_bad_arguments_name_what_was_received(kwargs, message):
    variant = kwargs.pop("variant")
    kwargs.setdefault("backbone", "densenet_tiny")
    kwargs.setdefault("input_size", SIZE)
    with pytest.raises(ValueError, match=message):
        build_classifier(variant, **kwargs)


def test_unet_rejects_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16, got 40"):
        UNetSegmenter(input_size=40, depth=4)


def test_missing_backbone_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.h5.*or .imagenet. for"):
        build_classifier("chexnet", input_size=SIZE, backbone_weights=str(tmp_path / "none.h5"))


def test_load_model_checks_the_label_contract(images, tmp_path):
    model = CXRClassifier(backbone="densenet_tiny", input_size=SIZE, attention=False,
                          feature_weighting=False, label_names=labels.FINDINGS[::-1])
    path = str(tmp_path / "reversed.keras")
    model.save(path)
    with pytest.raises(ValueError, match="expects"):
        load_model(path)


def test_call_without_training_flag_runs_in_inference_mode(images):
    # Regression: keras.layers.Resizing in front of the segmenter made plain calls run the whole
    # model in training mode (batch statistics).
    segmenter = UNetSegmenter(input_size=32, base_filters=4, depth=2)
    model = build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=SIZE,
                             segmenter=segmenter)
    np.testing.assert_array_equal(np.asarray(model(images)),
                                  np.asarray(model(images, training=False)))


# ------------------------------------------------------------ wiring through build_classifier

def _pass_through_segmenter(size=SIZE):
    """A segmenter stub whose three structure probabilities are the input image itself, so a
    crafted image is a crafted mask."""
    inputs = keras.Input((size, size, 1), name="image")
    stub = keras.Model(inputs, keras.layers.Concatenate()([inputs, inputs, inputs]),
                       name="stub_segmenter")
    stub.structures = labels.STRUCTURES
    stub.input_size = size
    return stub


def _features(model, image):
    """(backbone features, weighted features, applied grid mask, coverage) for one image."""
    layer = model.get_layer("feature_weighting")
    raw = layer.input[0]  # the backbone's features as the outer graph feeds them
    weighted, grid, coverage = layer.output
    probe = keras.Model(model.input, [raw, weighted, grid, coverage])
    return [np.asarray(t) for t in probe(image[None], training=False)]


def _quadrants(values):
    """A SIZE x SIZE image whose four 32 px quadrants (the 2 x 2 feature cells) hold `values`
    (row-major: top-left, top-right, bottom-left, bottom-right)."""
    image = np.zeros((SIZE, SIZE, 1), np.float32)
    h = SIZE // 2
    for k, v in enumerate(values):
        r, c = divmod(k, 2)
        image[r * h:(r + 1) * h, c * h:(c + 1) * h] = v
    return image


def _wired(**kwargs):
    keras.utils.set_random_seed(3)
    return build_classifier("cxr_irnet", backbone="densenet_tiny", input_size=SIZE,
                            segmenter=_pass_through_segmenter(), **kwargs)


def test_built_classifier_zeroes_exactly_the_features_outside_the_mask():
    model = _wired(mask_threshold=0.5, min_mask_coverage=0.05)
    raw, weighted, grid, coverage = _features(model, _quadrants([1.0, 0.0, 1.0, 0.0]))
    assert raw.shape[1:3] == (2, 2)
    np.testing.assert_array_equal(grid[0, ..., 0], [[1, 0], [1, 0]])
    assert float(coverage[0]) == 0.5
    np.testing.assert_array_equal(weighted[0, :, 1], 0.0)          # right column masked
    np.testing.assert_allclose(weighted[0, :, 0], raw[0, :, 0])    # left column untouched
    assert np.abs(raw[0, :, 1]).max() > 0                          # there was something to zero


def test_built_classifier_cuts_at_the_configured_mask_threshold():
    image = _quadrants([0.4, 0.6, 0.0, 1.0])  # pooled mask 0.4, 0.6, 0, 1 per cell
    _, _, grid, _ = _features(_wired(mask_threshold=0.5, min_mask_coverage=0.05), image)
    np.testing.assert_array_equal(grid[0, ..., 0], [[0, 1], [0, 1]])
    _, _, grid, _ = _features(_wired(mask_threshold=0.3, min_mask_coverage=0.05), image)
    np.testing.assert_array_equal(grid[0, ..., 0], [[1, 1], [0, 1]])
    _, _, grid, _ = _features(_wired(mask_threshold=0.65, min_mask_coverage=0.05), image)
    np.testing.assert_array_equal(grid[0, ..., 0], [[0, 0], [0, 1]])


def test_built_classifier_turns_weighting_off_below_the_minimum_coverage():
    image = _quadrants([0.0, 0.0, 0.0, 1.0])  # one cell of four: coverage 0.25
    raw, weighted, grid, coverage = _features(
        _wired(mask_threshold=0.5, min_mask_coverage=0.3), image)
    assert float(coverage[0]) == 0.25
    np.testing.assert_array_equal(grid[0, ..., 0], np.ones((2, 2)))  # fallback: all kept
    np.testing.assert_allclose(weighted, raw)
    raw, weighted, grid, _ = _features(_wired(mask_threshold=0.5, min_mask_coverage=0.2), image)
    np.testing.assert_array_equal(grid[0, ..., 0], [[0, 0], [0, 1]])
    np.testing.assert_array_equal(weighted[0, 0], 0.0)
