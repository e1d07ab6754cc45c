"""Is this a frontal chest film? A check on the segmenter's own outputs, run inside the export.

CXR-IRNet's findings only mean something on a frontal (PA or AP) chest radiograph. The inline
segmenter already says where the lungs and the heart are, so the SavedModel checks, per image,
before it reports any positive finding:

  1. the lung-and-heart mask covers at least the model's minimum share of the feature grid
     (below it the features are not weighted at all: a blank image, a photo, another body part);
  2. both lungs are there (each at least MIN_LUNG_AREA of the segmenter's input);
  3. the lungs lie apart (centres at least MIN_LUNG_DISTANCE apart: on a lateral view they
     overlap), side by side (their centres further apart across than up and down: a film
     turned by 90 degrees fails) with the patient's left lung on the image's right (a mirrored
     film fails);
  4. the heart is there (at least MIN_HEART_AREA) and its centre lies between the lungs'.

An image that fails gets `anatomy_ok` 0, a `anatomy_reason` naming the first failed check, and no
positive decision (its probabilities are still returned, for inspection). Structures count where
the segmenter's probability is >= 0.5; centres are area-weighted, in [0, 1] image coordinates.
"""

import tensorflow as tf

MIN_LUNG_AREA = 0.02
MIN_HEART_AREA = 0.01
MIN_LUNG_DISTANCE = 0.12  # between the lungs' centres; about 0.35 on a frontal film
OK = ""


def check(structure_probs, coverage, min_coverage):
    """The checks above for a batch, as TensorFlow ops.

    Args:
      structure_probs: (B, S, S, 3) the segmenter's probabilities (left lung, right lung, heart).
      coverage: (B,) the mask coverage the classifier computed.
      min_coverage: the model's minimum coverage (a Python float).

    Returns:
      (ok (B,) int32, reason (B,) string: "" when ok, else the first failed check in words).
    """
    masks = tf.cast(tf.cast(structure_probs, tf.float32) >= 0.5, tf.float32)
    side = tf.cast(tf.shape(masks)[1], tf.float32)
    centres = (tf.range(tf.shape(masks)[1], dtype=tf.float32) + 0.5) / side
    area = tf.reduce_mean(masks, axis=[1, 2])                              # (B, 3)
    total = tf.maximum(tf.reduce_sum(masks, axis=[1, 2]), 1.0)
    cx = tf.reduce_sum(masks * centres[None, None, :, None], axis=[1, 2]) / total
    cy = tf.reduce_sum(masks * centres[None, :, None, None], axis=[1, 2]) / total
    left, right, heart = 0, 1, 2
    coverage = tf.cast(coverage, tf.float32)
    failures = [
        (coverage < min_coverage, tf.strings.join([
            "the lung-and-heart mask covers ", tf.strings.as_string(coverage, precision=3),
            f" of the feature grid, below the model's minimum {min_coverage:g}: probably not a "
            f"frontal chest X-ray (blank image, photo, other body part)"])),
        (tf.logical_or(area[:, left] < MIN_LUNG_AREA, area[:, right] < MIN_LUNG_AREA),
         "one lung not found: a frontal chest film shows both"),
        (tf.sqrt(tf.square(cx[:, left] - cx[:, right]) + tf.square(cy[:, left] - cy[:, right]))
         < MIN_LUNG_DISTANCE,
         "the two lungs overlap instead of lying apart: a lateral view?"),
        (tf.abs(cx[:, left] - cx[:, right]) < tf.abs(cy[:, left] - cy[:, right]),
         "the lungs lie one above the other, not side by side: a film turned by 90 degrees, "
         "or a lateral view"),
        (cx[:, left] <= cx[:, right],
         "the patient's left lung is on the image's left: a mirrored film, or not a PA/AP view"),
        (area[:, heart] < MIN_HEART_AREA, "no heart found between the lungs"),
        (tf.logical_not(tf.logical_and(cx[:, right] < cx[:, heart], cx[:, heart] < cx[:, left])),
         "the heart is not between the lungs"),
    ]
    batch = tf.shape(coverage)
    reason = tf.fill(batch, OK)
    for failed, text in reversed(failures):  # the first failed check wins
        reason = tf.where(failed, tf.broadcast_to(text, batch), reason)
    return tf.cast(tf.equal(reason, OK), tf.int32), reason
