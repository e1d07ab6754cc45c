"""The frontal-film check the export runs on its segmenter's outputs (cxr_tf.serving.anatomy),
on hand-drawn structure maps: a frontal film passes; blank, rotated, mirrored and lateral-like
ones fail with the reason that fits."""

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.serving import anatomy

S = 32


def frontal():
    p = np.zeros((S, S, 3), np.float32)
    p[6:26, 18:28, 0] = 1   # left lung: the image's right
    p[6:26, 4:14, 1] = 1    # right lung
    p[16:26, 12:20, 2] = 1  # heart, between them
    return p


def lateral_like():
    p = np.zeros((S, S, 3), np.float32)
    p[6:26, 8:24, 0] = p[6:26, 8:24, 1] = 1  # the lungs superimposed
    p[14:26, 4:14, 2] = 1
    return p


CASES = {
    "frontal": (frontal(), 0.4, ""),
    "blank": (np.zeros((S, S, 3), np.float32), 0.0, "covers 0.000 of the feature grid"),
    "rotated": (np.rot90(frontal()).copy(), 0.4, "one above the other"),
    "mirrored": (frontal()[:, ::-1].copy(), 0.4, "left lung is on the image's left"),
    "lateral": (lateral_like(), 0.4, "overlap"),
    "one lung": (np.where(np.arange(3) == 1, 0, frontal()), 0.3, "one lung not found"),
    "no heart": (np.where(np.arange(3) == 2, 0, frontal()), 0.3, "no heart"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_check_names_the_failed_rule(name):
    maps, coverage, reason = CASES[name]
    ok, why = anatomy.check(tf.constant(maps[None]), tf.constant([coverage]), 0.05)
    assert int(ok[0]) == (reason == "")
    assert reason in why.numpy()[0].decode()
    if reason:
        assert why.numpy()[0].decode()  # a failed check always says why


def test_check_runs_per_image_in_a_batch():
    maps = np.stack([CASES[n][0] for n in CASES])
    coverage = np.array([CASES[n][1] for n in CASES], np.float32)
    ok, why = anatomy.check(tf.constant(maps), tf.constant(coverage), 0.05)
    assert ok.numpy().tolist() == [int(CASES[n][2] == "") for n in CASES]
    for (_, _, reason), text in zip(CASES.values(), why.numpy()):
        assert reason in text.decode()
