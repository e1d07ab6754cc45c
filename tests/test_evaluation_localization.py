"""CAM boxes by the stated non-oracle rule, and IoU, on hand-made CAMs and boxes."""

import os

import cv2
import numpy as np
import pytest

from cxr_tf import labels
from cxr_tf.evaluation import localization as loc
from cxr_tf.models import classifier as classifier_lib

NODULE = labels.finding_index("Nodule")
MASS = labels.finding_index("Mass")


def test_single_hot_cell_gives_that_cell():
    cam = np.zeros((4, 4), np.float32)
    cam[1, 2] = 5.0  # cell (row 1, column 2) of a 4 x 4 grid over 128 px: x 64-96, y 32-64
    box, heat = loc.cam_to_box(cam, 128, threshold=0.5)
    assert heat.shape == (128, 128) and heat.max() == pytest.approx(1.0) and heat.min() == 0.0
    # Bilinear upsampling falls linearly from the cell centre to the neighbours' centres, so
    # half the maximum is reached half a cell from the centre: the cell itself (+-1 px).
    np.testing.assert_allclose(box, [64, 32, 32, 32], atol=1.5)


def test_box_is_the_component_holding_the_peak():
    cam = np.zeros((100, 100), np.float32)
    cam[10:20, 30:50] = 1.0    # peak component: x 30-49, y 10-19
    cam[60:80, 60:90] = 0.8    # larger but weaker component, not touching
    cam[15, 40] = 1.2          # the peak
    box, _ = loc.cam_to_box(cam, 100, threshold=0.5)
    np.testing.assert_array_equal(box, [30, 10, 20, 10])
    # A threshold above the weaker blob's level keeps the same component.
    box_high, _ = loc.cam_to_box(cam, 100, threshold=0.75)
    np.testing.assert_array_equal(box_high, [30, 10, 20, 10])
    # Diagonal neighbours belong to the component (8-connectivity).
    cam2 = np.zeros((10, 10), np.float32)
    cam2[2, 2] = cam2[3, 3] = 1.0
    np.testing.assert_array_equal(loc.cam_to_box(cam2, 10)[0], [2, 2, 2, 2])


def test_constant_cam_and_bad_arguments():
    box, heat = loc.cam_to_box(np.full((4, 4), 3.0), 64)
    assert box is None and not heat.any()
    with pytest.raises(ValueError, match="threshold"):
        loc.cam_to_box(np.zeros((4, 4)), 64, threshold=0)
    with pytest.raises(ValueError, match="NaN"):
        loc.cam_to_box(np.full((4, 4), np.nan), 64)
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        loc.upsample_cam(np.zeros((2, 4, 4)), 64)


def test_crop_geometry_matches_resize_then_centre_crop():
    # Stored 512 px, resized to 256, centre crop 224: offset 16 in the 256 frame, scale 2.
    g = loc.CropGeometry(512, 512, input_size=224, resize_size=256)
    np.testing.assert_allclose(g.to_stored([0, 0, 224, 224]), [32, 32, 448, 448])
    np.testing.assert_allclose(g.to_input([32, 32, 448, 448]), [0, 0, 224, 224])
    box = np.array([10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(g.to_input(g.to_stored(box)), box)
    same = loc.CropGeometry(64, 64, 64, 64)
    np.testing.assert_allclose(same.to_stored(box), box)


def test_localise_scores_every_true_box_against_one_cam_box_per_class():
    cams = np.zeros((4, 4, labels.NUM_FINDINGS), np.float32)
    cams[0, 0, NODULE] = 1.0  # nodule CAM box: cell (0, 0) = [0, 0, 16, 16] at 64 px
    g = loc.CropGeometry(128, 128, 64, 64)  # stored at 128: boxes scale by 2
    boxes = np.array([[0, 0, 32, 32],        # exactly the CAM box in the stored frame
                      [0, 0, 80, 80],        # a larger box of the same class: IoU 0.16
                      [64, 64, 32, 32],      # a mass where the (constant) mass CAM gives none
                      [0, 0, 0, 0]], float)  # padding
    records = loc.localise(cams, boxes, [NODULE, NODULE, MASS, -1], g, image_id="a.png")
    assert [r["class"] for r in records] == ["Nodule", "Nodule", "Mass"]
    assert records[0]["iou"] == pytest.approx(1.0, abs=0.1)
    assert records[1]["iou"] == pytest.approx(0.16, abs=0.03)
    assert records[2]["pred_box"] is None and records[2]["iou"] == 0.0
    s = loc.summarise(records)
    nodule = s["classes"][NODULE]
    assert nodule["n_boxes"] == 2
    assert nodule["hit_rate"] == {"0.1": 1.0, "0.25": 0.5, "0.5": 0.5}
    assert s["overall"]["n_boxes"] == 3 and s["overall"]["hit_rate"]["0.1"] == pytest.approx(2 / 3)
    assert s["classes"][0]["mean_iou"] is None  # a class without boxes
    # Whole-input reference box: [0, 0, 128, 128] in the stored frame; IoU = box area / 128^2.
    assert records[1]["iou_whole_input"] == pytest.approx(80 * 80 / 128 ** 2)
    assert s["whole_input_box"]["n_boxes"] == 3
    assert "no ground-truth box size" in s["box_rule"]
    with pytest.raises(ValueError, match="box labels"):
        loc.localise(cams, boxes, [NODULE], g)
    with pytest.raises(ValueError, match="not a class index"):
        loc.localise(cams, boxes[:1], [99], g)


class StubPredictor:
    """A Predictor whose CAMs are hand-made: hot at the centre of each image's first box."""
    input_size = 64
    resize_size = 64
    name = "stub"

    def __init__(self, boxes):
        self.boxes = boxes

    def model_inputs(self, images):
        return images

    def __call__(self, images):
        n = len(images)
        cams = np.zeros((n, 64, 64, labels.NUM_FINDINGS), np.float32)
        for i in range(n):
            x, y, w, h = (int(v) for v in self.boxes[i])
            cams[i, y:y + h, x:x + w, :] = 1.0
        return {classifier_lib.PROBABILITIES: np.full((n, labels.NUM_FINDINGS), 0.5),
                classifier_lib.CAMS: cams,
                classifier_lib.MASK_COVERAGE: np.ones(n),
                classifier_lib.GRID_MASK: np.ones((n, 64, 64, 1), np.float32)}


def test_evaluate_localisation_on_the_plain_interface(tmp_path):
    # Plain (image, boxes [x, y, w, h], box_labels) batches, as any data source can give them.
    boxes = np.array([[[8, 8, 16, 16], [0, 0, 0, 0]], [[30, 20, 20, 30], [0, 0, 32, 32]]], float)
    batch = {"image": np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32),
             "boxes": boxes, "box_labels": np.array([[MASS, -1], [NODULE, MASS]]),
             "image_id": np.array([b"a.png", b"b.png"])}
    summary, records = loc.evaluate_localisation(StubPredictor(boxes[:, 0]), [batch],
                                                 overlay_dir=str(tmp_path), max_overlays=2)
    assert [r["iou"] for r in records[:2]] == [1.0, 1.0]
    assert records[2]["iou"] == pytest.approx(metrics_iou([30, 20, 20, 30], [0, 0, 32, 32]))
    assert summary["overall"]["n_boxes"] == 3 and summary["n_images"] == 2
    assert len(summary["overlays"]) == 2
    for path in summary["overlays"]:
        image = cv2.imread(path)
        assert image is not None and image.shape[0] > 100
    assert os.path.basename(summary["overlays"][0]).startswith("000_a_Mass")


def metrics_iou(a, b):
    from cxr_tf.evaluation import metrics
    return metrics.box_iou(a, b)


def test_cells_outside_the_feature_mask_never_hold_the_peak():
    # A weighted model's masked cells have zero features: their CAM is the head bias (here 2.0),
    # above every in-mask value. Restricted to the mask, the in-mask peak wins.
    cam = np.full((4, 4), 2.0, np.float32)
    mask = np.zeros((4, 4), np.float32)
    mask[1:3, 1:3] = 1
    cam[1:3, 1:3] = [[-1.0, 0.5], [-2.0, -1.5]]
    restricted = loc.restrict_to_mask(cam, mask)
    assert restricted[0, 0] == -2.0 and restricted[1, 2] == 0.5
    box, _ = loc.cam_to_box(cam, 64, mask=mask)
    unmasked, _ = loc.cam_to_box(cam, 64)
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    assert 32 <= cx < 48 and 16 <= cy < 32, box  # centred in cell (1, 2), the in-mask peak
    assert unmasked[2] > 32  # without the mask the bias ring wins
    np.testing.assert_array_equal(loc.restrict_to_mask(cam, None), cam)
    np.testing.assert_array_equal(loc.restrict_to_mask(cam, np.zeros((4, 4))), cam)
    with pytest.raises(ValueError, match="mask shape"):
        loc.restrict_to_mask(cam, np.ones((2, 2)))


def test_grid_mask_is_recovered_from_cams_and_coverage():
    rng = np.random.default_rng(0)
    bias = rng.normal(size=labels.NUM_FINDINGS).astype(np.float32)
    cams = rng.normal(size=(4, 4, labels.NUM_FINDINGS)).astype(np.float32)
    mask = np.zeros((4, 4), np.float32)
    mask[1:4, 0:3] = 1  # 9 kept cells
    cams[mask == 0] = bias  # masked cells: exactly the bias vector
    np.testing.assert_array_equal(loc.grid_mask_from_cams(cams, 9 / 16), mask)
    np.testing.assert_array_equal(loc.grid_mask_from_cams(cams, 1.0), np.ones((4, 4)))
    assert loc.grid_mask_from_cams(cams, 3 / 16) is None  # no group of 13 identical cells


# ------------------------------------------------------------ what the mask keeps of the boxes

def test_grid_mask_rules_match_the_feature_weighting_layer():
    from cxr_tf.models import FeatureWeighting
    rng = np.random.default_rng(0)
    union = rng.random((2, 28, 28, 1)).astype(np.float32) ** 2
    features = np.ones((2, 7, 7, 4), np.float32)
    for threshold, dilation in [(0.5, 0), (0.25, 0), (0.5, 1), (0.4, 2)]:
        layer = FeatureWeighting(threshold, min_coverage=0.0, dilation=dilation)
        _, grid, _ = layer([features, np.repeat(union, 3, axis=-1)])
        for b in range(2):
            np.testing.assert_array_equal(
                np.asarray(grid)[b, ..., 0].astype(bool),
                loc.grid_mask_by_rule(union[b, ..., 0], 7, threshold, dilation))


def test_box_share_inside_hand_computed():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True  # left half
    assert loc.box_share_inside([0, 0, 4, 8], mask) == 1.0
    assert loc.box_share_inside([2, 0, 4, 4], mask) == 0.5
    assert loc.box_share_inside([3.5, 0, 1, 1], mask) == 0.5  # fractional pixels
    assert loc.box_share_inside([6, 6, 4, 4], mask) == 0.0
    assert loc.box_share_inside([-4, 0, 8, 8], mask) == 0.5  # half outside the frame
    assert np.isnan(loc.box_share_inside([0, 0, 0, 3], mask))


def test_mask_keeps_per_rule_on_hand_made_masks_and_boxes():
    # Model input 64 px, grid 2 x 2 (32 px cells); segmenter union at 16 px (8 px per cell):
    # the left 3 columns (37.5% of the left cells) and nothing else.
    union = np.zeros((16, 16), np.float32)
    union[:, :3] = 1.0
    geometry = loc.CropGeometry(128, 128, 64, 64)  # stored 128 px, no crop
    boxes = np.array([[0, 0, 24, 128],      # inside the pixel mask (24 px stored = 12 input)
                      [64, 0, 64, 64],      # right half: outside everything
                      [-1, -1, -1, -1]])    # padding
    box_labels = np.array([labels.finding_index("Effusion"),
                           labels.finding_index("Cardiomegaly"), -1])
    rules = {"paper": (0.5, 0), "cut_0.25": (0.25, 0), "dilate_1": (0.25, 1)}
    summary, records = loc.mask_keeps([union], [boxes], [box_labels], [geometry], grid=2,
                                               rules=rules, image_ids=["a.png"])
    assert len(records) == 2 and records[0]["image_id"] == "a.png"
    effusion, cardio = records
    assert effusion["pixel"] == 1.0
    assert effusion["paper"] == 0.0      # pooled 0.375 < 0.5: the whole column is dropped
    assert effusion["cut_0.25"] == 1.0   # 0.375 >= 0.25: kept
    assert cardio["pixel"] == cardio["paper"] == cardio["cut_0.25"] == 0.0
    assert cardio["dilate_1"] == 1.0     # grown by one cell: the whole 2 x 2 grid
    by_name = {c["name"]: c for c in summary["classes"]}
    assert by_name["Effusion"]["n_boxes"] == 1 and by_name["Effusion"]["cut_0.25"] == 1.0
    assert summary["overall"]["n_boxes"] == 2 and summary["overall"]["pixel"] == 0.5
