"""NME and PCK against hand-computed numbers; OKS AP through pycocotools: 1 for perfect
predictions, lower for noisy ones; bad sigmas."""
import math

import pytest
import torch

from lightning_ptq.keypoints.coco_keypoints import KeypointDataset, keypoint_collate
from lightning_ptq.keypoints.metrics import KeypointEvaluator, axis_line_fit, nme, pck
from lightning_ptq.keypoints.synthetic import generate_keypoint_dataset

# two samples, two keypoints; errors 5 and 1 px (norm 10), 10 px (norm 20) and an invisible 100 px
GT = torch.zeros(2, 2, 2)
PRED = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [60.0, 80.0]]])
VISIBLE = torch.tensor([[True, True], [True, False]])
NORM = torch.tensor([10.0, 20.0])


def test_nme_and_pck_match_hand_computed_values():
    # normalised errors of the visible keypoints: 0.5, 0.1, 0.5
    assert nme(PRED, GT, VISIBLE, NORM) == pytest.approx(1.1 / 3)
    assert pck(PRED, GT, VISIBLE, NORM, thr=0.2) == pytest.approx(1 / 3)
    assert pck(PRED, GT, VISIBLE, NORM, thr=0.6) == 1.0
    assert pck(PRED, GT, VISIBLE, NORM) == 0.0  # thr 0.05
    assert nme(GT, GT, VISIBLE, NORM) == 0.0
    assert math.isnan(nme(PRED, GT, torch.zeros(2, 2, dtype=torch.bool), NORM))


@pytest.fixture(scope="module")
def val_dataset(tmp_path_factory):
    root = generate_keypoint_dataset(tmp_path_factory.mktemp("keypoints") / "data", splits={"val": 8})
    return KeypointDataset(root / "images", root / "annotations/person_keypoints_val.json")


def batches(dataset, size=4):
    return [keypoint_collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
            for start in range(0, len(dataset), size)]


def test_perfect_predictions_score_one_and_noisy_ones_clearly_lower(val_dataset, capsys):
    evaluator = KeypointEvaluator(val_dataset)
    for _, targets in batches(val_dataset):
        evaluator.update(targets["keypoints"], targets)
    perfect = evaluator.compute()
    assert perfect["nme"] == 0.0 and perfect["pck"] == 1.0
    assert perfect["oks_ap"] == perfect["oks_ap50"] == perfect["oks_ap75"] == pytest.approx(1.0)
    assert capsys.readouterr().out == "", "pycocotools printing is silenced"

    evaluator.reset()
    generator = torch.Generator().manual_seed(0)
    noisy_pred, noisy_targets = [], []
    for _, targets in batches(val_dataset):
        pred = targets["keypoints"] + 2.0 * torch.randn(targets["keypoints"].shape, generator=generator)
        evaluator.update(pred, targets, scores=torch.rand(len(pred), generator=generator))
        noisy_pred.append(pred)
        noisy_targets.append(targets)
    noisy = evaluator.compute()
    assert noisy["oks_ap"] < 0.7 and noisy["oks_ap75"] < noisy["oks_ap50"]
    everything = {key: torch.cat([t[key] for t in noisy_targets]) for key in ("keypoints", "visible", "norm")}
    args = (torch.cat(noisy_pred), everything["keypoints"], everything["visible"], everything["norm"])
    assert noisy["nme"] == pytest.approx(nme(*args), rel=1e-5) and noisy["nme"] > 0.02
    assert noisy["pck"] == pytest.approx(pck(*args), rel=1e-5) and noisy["pck"] < 1.0


def test_predictions_are_mapped_back_to_the_original_annotations(val_dataset):
    evaluator = KeypointEvaluator(val_dataset)
    _, targets = batches(val_dataset)[0]  # only the images seen are evaluated
    evaluator.update(targets["keypoints"], targets)
    assert evaluator.compute()["oks_ap"] == pytest.approx(1.0)
    [result] = [r for r in evaluator._results if r["image_id"] == int(targets["image_id"][0])]
    original = val_dataset.coco.anns[int(targets["ann_id"][0])]["keypoints"]
    assert result["keypoints"][0::3] == pytest.approx(original[0::3], abs=1e-3)
    assert result["keypoints"][1::3] == pytest.approx(original[1::3], abs=1e-3)


def test_sigma_count_must_match_the_keypoints(val_dataset):
    with pytest.raises(ValueError, match=r"Got 3 OKS sigmas for the 7 keypoints \['head'"):
        KeypointEvaluator(val_dataset, sigmas=[0.05] * 3)
    with pytest.raises(RuntimeError, match="call update"):
        KeypointEvaluator(val_dataset, sigmas=[0.1] * 7).compute()


def test_axis_line_fit_recovers_a_known_pull_and_the_correction_that_undoes_it():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(200, 5, 2, generator=g) * 64
    slope, offset = torch.tensor([0.8, 0.9]), torch.tensor([0.5, -0.25])
    pred = 32 + slope * (gt - 32) + offset
    visible = torch.ones(200, 5, dtype=torch.bool)
    visible[::3, 1] = False
    pred[~visible] = 0.0  # hidden points must not enter the fit
    fit_slope, fit_offset = axis_line_fit(gt, pred, visible, 32.0)
    torch.testing.assert_close(fit_slope, slope, atol=1e-5, rtol=0)
    torch.testing.assert_close(fit_offset, offset, atol=1e-4, rtol=0)
    back_slope, back_offset = axis_line_fit(pred, gt, visible, 32.0)  # the correction of the predictions
    torch.testing.assert_close(back_slope, 1 / slope, atol=1e-5, rtol=0)
    corrected = 32 + back_slope * (pred - 32) + back_offset
    torch.testing.assert_close(corrected[visible], gt[visible], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="at least 2 visible keypoints, got 0"):
        axis_line_fit(gt, pred, torch.zeros_like(visible), 32.0)
