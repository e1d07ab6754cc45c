"""The work directory on a filesystem that is not the local disk.

TensorFlow's in-memory `ram://` filesystem stands in for `gs://` (both are reached only through
tf.io.gfile; neither supports os.* calls, flock or os.path.abspath): the whole chain (data
records, segmenter, classifier training with its checkpoints, resume, evaluation report and
TF Serving export) runs with WORK_DIR=ram://..., and nothing lands on the local disk's work dir.
`ram://` lives in this process only, so everything runs in-process.
"""

import json
import os
import uuid

import pytest


@pytest.fixture
def ram_like_gcs(monkeypatch):
    """Makes `ram://` behave as `gs://` does for TFDS, in the two things it lacks:

    - etils.epath (TFDS's path library) serves `gs://` with TensorFlow's gfile backend; taught
      the same for `ram://`.
    - TensorFlow's GCS filesystem renames a folder by renaming every object under it (TFDS
      renames its incomplete.* build folder when done); `ram://` renames the folder entry only
      and loses its files, so TFDS's folder renames go file by file here, as cxr_tf's own
      (files.rename) always do off the local disk.
    """
    from etils.epath import backend, gpath, register

    from cxr_tf import files

    tf_backend = backend.tf_backend
    plain_rename = type(tf_backend).rename

    def rename(self, path, dst):
        if str(path).startswith("ram://") and self.isdir(path):
            return files.rename(path, dst)
        return plain_rename(self, path, dst)

    monkeypatch.setattr(type(tf_backend), "rename", rename)
    monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + ("ram://",))
    monkeypatch.setattr(gpath, "_URI_SCHEMES", frozenset(gpath._URI_SCHEMES) | {"ram"})
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", tf_backend)
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)


def test_train_resume_evaluate_export_on_ram_filesystem(ram_like_gcs, tiny_config,
                                                        tiny_segmenter_path, tmp_path,
                                                        monkeypatch, caplog):
    import dataclasses

    import tensorflow as tf

    from cxr_tf import configs, layout, workflow

    monkeypatch.chdir(tmp_path)  # os.makedirs("ram://x") would make ./ram:/x here
    work = f"ram://cxr-{uuid.uuid4().hex[:8]}/run"
    seg = f"{work}-inputs/segmenter.keras"
    tf.io.gfile.makedirs(os.path.dirname(seg))
    tf.io.gfile.copy(tiny_segmenter_path, seg)

    one_epoch = dataclasses.replace(
        tiny_config, classifier=dataclasses.replace(tiny_config.classifier, epochs=1))
    builder = workflow.build_data(tiny_config, layout.data_dir(work))
    assert str(builder.data_dir).startswith("ram://")
    # The facade checks the options before any work, and the trainer it calls does not again.
    checks = []
    check = configs.check_training_options
    monkeypatch.setattr(configs, "check_training_options",
                        lambda *a, **k: checks.append(a[1:]) or check(*a, **k))
    best = workflow.train_classifier(one_epoch, work, segmenter=seg, builder=builder, verbose=0)
    assert checks == [("classifier",)]
    run_dir = layout.classifier_dir(work)
    assert best == layout.best_model(run_dir) and tf.io.gfile.exists(best)
    with tf.io.gfile.GFile(os.path.join(run_dir, layout.HISTORY)) as f:
        assert len(json.load(f)) == 1

    # A second run with more epochs resumes from the checkpoints on ram://.
    two_epochs = dataclasses.replace(
        tiny_config, classifier=dataclasses.replace(tiny_config.classifier, epochs=2))
    workflow.train_classifier(two_epochs, work, segmenter=seg, builder=builder, verbose=0)
    with tf.io.gfile.GFile(os.path.join(run_dir, layout.HISTORY)) as f:
        history = json.load(f)
    assert [r["epoch"] for r in history] == [1, 2]
    with tf.io.gfile.GFile(os.path.join(run_dir, layout.EXPERIMENT)) as f:
        assert len(json.load(f)["segments"]) == 2

    eval_dir = layout.eval_dir(work)
    report = workflow.evaluate(best, builder, two_epochs, eval_dir, n_resamples=20,
                               max_overlays=2, segmenter_path=seg)
    assert report["classification"]["n_images"] == builder.info.splits["test"].num_examples
    for name in (layout.REPORT_JSON, layout.REPORT_MD, layout.PREDICTIONS_CSV):
        assert tf.io.gfile.exists(os.path.join(eval_dir, name)), name

    version = workflow.export(best, layout.export_dir(work),
                              report_path=os.path.join(eval_dir, layout.REPORT_JSON),
                              warmup="if_available")
    assert version.startswith("ram://")
    loaded = tf.saved_model.load(version)
    assert "serving_default" in loaded.signatures
    assert not any(os.scandir(tmp_path)), "nothing may be written to the local disk"
    assert "on an object store, which has no lock" in caplog.text
