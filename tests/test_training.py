"""The training loop on the tiny configuration: selection on validation, files, resume."""

import json
import os

import keras
import numpy as np
import pytest

from cxr_tf import configs
from cxr_tf.models import load_model
from cxr_tf.training import loop, train


def test_segmenter_training_writes_best_model_and_history(tiny_segmenter_path):
    run_dir = os.path.dirname(tiny_segmenter_path)
    assert os.path.exists(tiny_segmenter_path)
    with open(os.path.join(run_dir, loop.HISTORY)) as f:
        history = json.load(f)
    assert len(history) == 1 and "val_mean_dice" in history[0] and "val_dice_lungs" in history[0]
    assert load_model(tiny_segmenter_path).input_size == 32


def test_classifier_trains_resumes_and_selects_on_validation(tiny_builder, tiny_segmenter_path,
                                                              tmp_path):
    config = configs.tiny()  # a fresh copy: this test changes the epochs
    config.classifier.epochs = 2
    run_dir = str(tmp_path / "clf")
    path = train.train_classifier(config, tiny_builder, run_dir,
                                  segmenter_path=tiny_segmenter_path, verbose=0)
    with open(os.path.join(run_dir, loop.HISTORY)) as f:
        history = json.load(f)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all("val_mean_auroc" in h and "val_auroc_Hernia" in h for h in history)
    assert not any(k.startswith("test") for h in history for k in h)
    best_epoch = max(history, key=lambda h: h["val_mean_auroc"])["epoch"]
    assert [h["epoch"] for h in history if h["best"]][-1] == best_epoch
    model = load_model(path)
    assert model.segmenter is not None

    # Re-running with more epochs resumes at epoch 3 instead of starting over.
    config.classifier.epochs = 3
    train.train_classifier(config, tiny_builder, run_dir, segmenter_path=tiny_segmenter_path,
                           verbose=0)
    with open(os.path.join(run_dir, loop.HISTORY)) as f:
        assert [h["epoch"] for h in json.load(f)] == [1, 2, 3]
    # Already done: nothing is trained again.
    before = os.path.getmtime(os.path.join(run_dir, loop.HISTORY))
    train.train_classifier(config, tiny_builder, run_dir, segmenter_path=tiny_segmenter_path,
                           verbose=0)
    assert os.path.getmtime(os.path.join(run_dir, loop.HISTORY)) == before


def test_weighting_variant_without_segmenter_is_refused(tiny_config, tiny_builder, tmp_path):
    with pytest.raises(ValueError, match="needs a trained segmenter"):
        train.train_classifier(tiny_config, tiny_builder, str(tmp_path), segmenter_path=None)


def _linear_trainer(work_dir, x=None, **kwargs):
    """A Trainer of a 2 -> 1 linear model selecting on "auc", and 2 batches of 2 to train on."""
    import tensorflow as tf
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    trainer = loop.Trainer(model, keras.losses.mean_squared_error, keras.optimizers.SGD(0.1),
                           tf.distribute.get_strategy(), str(work_dir), "auc", **kwargs)
    x = np.ones((4, 2), "float32") if x is None else x
    return trainer, tf.data.Dataset.from_tensor_slices((x, np.ones((4, 1), "float32"))).batch(2)


def test_validate_must_return_the_selection_metric(tmp_path):
    trainer, ds = _linear_trainer(tmp_path)
    with pytest.raises(KeyError, match="lacks the selection metric 'auc'"):
        trainer.fit(ds, 1, 2, validate=lambda m: {"loss": 1.0}, verbose=0)


def test_non_finite_loss_stops_training_with_a_clear_error(tmp_path):
    trainer, ds = _linear_trainer(tmp_path, x=np.full((4, 2), np.nan, "float32"))
    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        trainer.fit(ds, 1, 2, validate=lambda m: {"auc": 1.0}, verbose=0)


@pytest.mark.parametrize("handle", [True, False])
def test_preemption_handler_only_when_asked(tmp_path, monkeypatch, handle):
    # --nohandle_preemption must not create TensorFlow's handler: creating it probes the Google
    # Cloud metadata server over HTTP.
    import tensorflow as tf
    created = []
    real = tf.distribute.experimental.PreemptionCheckpointHandler
    monkeypatch.setattr(tf.distribute.experimental, "PreemptionCheckpointHandler",
                        lambda *a, **k: created.append(1) or real(*a, **k))
    trainer, ds = _linear_trainer(tmp_path, handle_preemption=handle)
    trainer.fit(ds, 1, 2, validate=lambda m: {"auc": 1.0}, verbose=0)
    assert len(created) == (1 if handle else 0)


@pytest.mark.parametrize("interactive", [True, False])
def test_progress_bar_only_on_a_terminal_or_notebook(tmp_path, monkeypatch, capsys, interactive):
    monkeypatch.setattr(loop, "_interactive_stdout", lambda: interactive)
    trainer, ds = _linear_trainer(tmp_path, handle_preemption=False)
    trainer.fit(ds, 1, 2, validate=lambda m: {"auc": 1.0}, verbose=1)
    assert ("step" in capsys.readouterr().out) == interactive


def test_validation_traces_the_model_once_per_image_shape(tiny_builder, tmp_path, monkeypatch):
    # Validation after every epoch reuses one traced step: one trace per distinct image shape,
    # whatever the number of epochs and the size of the last batch.
    from cxr_tf.evaluation import inference
    runners = []
    real = inference.InferenceRunner

    def recording(*args, **kwargs):
        runners.append(real(*args, **kwargs))
        return runners[-1]

    monkeypatch.setattr(inference, "InferenceRunner", recording)
    config = configs.tiny()
    config.segmenter.epochs = 3
    train.train_segmenter(config, tiny_builder, str(tmp_path / "seg"), verbose=0)
    with open(tmp_path / "seg" / loop.HISTORY) as f:
        assert len(json.load(f)) == 3
    assert len(runners) == 1 and runners[0].traces == 1


def test_inference_runner_counts_one_trace_per_shape():
    import tensorflow as tf

    from cxr_tf.evaluation import inference
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D()])

    def data(n, side, batch):  # n % batch != 0: a smaller last batch
        x = np.random.default_rng(0).random((n, side, side, 1)).astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, np.zeros((n, 2), "float32"))).batch(batch)

    runner = inference.InferenceRunner(model)
    for _ in range(3):
        out = runner(data(10, 8, 4))
        assert out["outputs"].shape == (10, 2) and out["targets"].shape == (10, 2)
    assert runner.traces == 1
    runner(data(5, 12, 4))
    assert runner.traces == 2
    np.testing.assert_allclose(runner(data(10, 8, 4))["outputs"],
                               model(np.concatenate([b[0] for b in data(10, 8, 4)])), atol=1e-6)


def test_resume_refuses_changed_settings_and_records_more_epochs(tiny_builder,
                                                                 tiny_segmenter_path, tmp_path):
    # Issue: a rerun with --epochs=4 --learning_rate=0.5 --batch_size=4 trained epoch 4 at the
    # checkpointed learning rate and then claimed lr 0.5 and batch 4 in experiment.json.
    config = configs.tiny()
    config.classifier.handle_preemption = False
    run_dir = str(tmp_path / "clf")
    train.train_classifier(config, tiny_builder, run_dir, segmenter_path=tiny_segmenter_path,
                           verbose=0)
    with open(os.path.join(run_dir, train.EXPERIMENT)) as f:
        before = json.load(f)
    changed = configs.tiny()
    changed.classifier.handle_preemption = False
    changed.classifier.epochs, changed.classifier.learning_rate = 2, 0.5
    changed.classifier.batch_size = 4
    with pytest.raises(train.ResumeMismatch) as err:
        train.train_classifier(changed, tiny_builder, run_dir,
                               segmenter_path=tiny_segmenter_path, verbose=0)
    message = str(err.value)
    assert "classifier.learning_rate: checkpointed 0.001, now 0.5" in message
    assert "classifier.batch_size: checkpointed 8, now 4" in message
    assert "classifier.epochs" not in message and "another work directory" in message
    with open(os.path.join(run_dir, train.EXPERIMENT)) as f:
        assert json.load(f) == before  # nothing claimed, nothing trained
    with open(os.path.join(run_dir, loop.HISTORY)) as f:
        assert len(json.load(f)) == 1
    # More epochs alone is allowed, and recorded as a second segment.
    more = configs.tiny()
    more.classifier.epochs, more.classifier.handle_preemption = 2, False
    train.train_classifier(more, tiny_builder, run_dir, segmenter_path=tiny_segmenter_path,
                           verbose=0)
    with open(os.path.join(run_dir, train.EXPERIMENT)) as f:
        after = json.load(f)
    assert [(s["from_epoch"], s["epochs"]) for s in after["segments"]] == [(0, 1), (1, 2)]
    assert after["segments"][1]["changed"] == {"classifier.epochs": [1, 2]}
    assert after["config"]["classifier"]["learning_rate"] == 0.001
    with open(os.path.join(run_dir, loop.HISTORY)) as f:
        history = json.load(f)
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["learning_rate"] for h in history] == pytest.approx([0.001, 0.001])
    # The same segmenter file elsewhere (a copied or moved work directory) is the same run...
    import shutil
    copy = shutil.copy(tiny_segmenter_path, tmp_path / "copied_segmenter.keras")
    train.train_classifier(more, tiny_builder, run_dir, segmenter_path=str(copy), verbose=0)
    # ...another segmenter is another run.
    other = load_model(tiny_segmenter_path)
    other.trainable_variables[0].assign(other.trainable_variables[0] + 1.0)
    other.save(str(tmp_path / "other_segmenter.keras"))
    with pytest.raises(train.ResumeMismatch, match="segmenter: checkpointed 'sha256:"):
        train.train_classifier(more, tiny_builder, run_dir,
                               segmenter_path=str(tmp_path / "other_segmenter.keras"), verbose=0)


def test_tensorboard_pictures_and_an_opt_in_profiler_trace(tiny_builder, tmp_path):
    import tensorflow as tf
    config = configs.tiny()
    config.segmenter.epochs, config.segmenter.handle_preemption = 2, False
    config.segmenter.image_summaries_every = 2
    config.segmenter.profile_steps = "2,3"
    run_dir = tmp_path / "seg"
    train.train_segmenter(config, tiny_builder, str(run_dir), verbose=0)
    tags = {}
    event_dir = run_dir / "tensorboard"
    for name in os.listdir(event_dir):
        if not name.startswith("events"):
            continue
        for event in tf.compat.v1.train.summary_iterator(str(event_dir / name)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name, value.tensor))
    (step, plugin, tensor), = tags["validation/segmenter_masks"]  # epoch 2 only
    assert plugin == "images" and step == 12
    pictures = tf.make_ndarray(tensor)
    assert pictures[:2].tolist() == [b"32", b"32"] and len(pictures) == 2 + 4
    assert tf.io.decode_png(pictures[2]).shape == (32, 32, 3)
    traces = [os.path.join(r, f) for r, _, fs in os.walk(event_dir / "plugins" / "profile")
              for f in fs]
    assert any(t.endswith(".xplane.pb") for t in traces), traces
    with pytest.raises(ValueError, match="profile_steps"):
        config.segmenter.profile_steps = "5,2"
        configs.check_training_options(config.segmenter, "segmenter")
