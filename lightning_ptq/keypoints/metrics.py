"""Keypoint metrics: NME and PCK (pure torch) and an evaluator that adds COCO OKS AP.

With ``pred`` and ``gt`` [B, K, 2], ``visible`` [B, K] and ``norm`` [B] (``sqrt(w * h)`` of the
object's box, in the same pixels as the points), the normalised error of a visible keypoint is
``e[b, k] = ||pred[b, k] - gt[b, k]||_2 / norm[b]`` and, over all visible keypoints (b, k)::

    NME = mean e[b, k]            PCK@thr = mean [e[b, k] < thr]

OKS AP is COCO's keypoint AP (pycocotools ``COCOeval(iouType="keypoints")``, mean over OKS
thresholds 0.50:0.95, and at 0.50 and 0.75) in original image pixels. Its per-keypoint falloffs
``sigmas`` default to 0.05 for every keypoint: the synthetic landmarks (tips and disc centres)
are all equally well defined, so one value, and 0.05 lies inside COCO's person range (0.025 for
the eyes to 0.107 for the hips). Give COCO's own sigmas for person data.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

DEFAULT_SIGMA = 0.05


def normalised_errors(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``e[b, k]`` of the module docstring for the visible keypoints: float32 [number visible]."""
    distance = torch.linalg.vector_norm(pred.float() - gt.float(), dim=-1) / norm.float().reshape(-1, 1)
    return distance[visible.bool()]


def nme(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, norm: torch.Tensor) -> float:
    """Normalised mean error over the visible keypoints (module docstring); nan when none is."""
    return normalised_errors(pred, gt, visible, norm).mean().item()


def pck(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, norm: torch.Tensor, thr: float = 0.05) -> float:
    """Fraction of the visible keypoints with normalised error below ``thr``; nan when none is."""
    return (normalised_errors(pred, gt, visible, norm) < thr).float().mean().item()


def axis_line_fit(x: torch.Tensor, y: torch.Tensor, visible: torch.Tensor,
                  centre: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis, the least-squares line ``y - centre = slope * (x - centre) + offset`` over the
    visible keypoints of ``x``, ``y`` [..., K, 2]; returns ``(slope [2], offset [2])``.

    With ``x`` the true points and ``y`` the predictions, a slope below 1 is a pull toward
    ``centre`` (the soft-argmax bias); with ``x`` the predictions and ``y`` the true points, it is
    the best linear correction of the predictions, ``centre + slope * (pred - centre) + offset``."""
    vis = visible.bool()
    xs, ys = x[vis].double() - centre, y[vis].double() - centre  # [M, 2]
    if len(xs) < 2:
        raise ValueError(f"axis_line_fit needs at least 2 visible keypoints, got {len(xs)}.")
    fits = [torch.linalg.lstsq(torch.stack([xs[:, a], torch.ones_like(xs[:, a])], 1), ys[:, a:a + 1]).solution
            for a in range(2)]
    return torch.stack([f[0, 0] for f in fits]).float(), torch.stack([f[1, 0] for f in fits]).float()


class KeypointEvaluator:
    """Accumulates predictions of a :class:`~lightning_ptq.keypoints.coco_keypoints.KeypointDataset`
    (or any dataset with ``coco``, ``category_id`` and ``keypoint_names``) and scores them.

    :meth:`update` takes crop-pixel predictions [B, K, 2] and the batch's targets (as made by
    ``keypoint_collate``); NME and PCK are measured against the target keypoints (the ratio to
    ``norm`` is the same in crop and original pixels), OKS AP on the original annotations of the
    images seen, after mapping the predictions back with ``target["crop"]``.
    """

    def __init__(self, dataset, sigmas: Sequence[float] | None = None, pck_thr: float = 0.05):
        names = list(dataset.keypoint_names)
        sigmas = [DEFAULT_SIGMA] * len(names) if sigmas is None else list(sigmas)
        if len(sigmas) != len(names):
            raise ValueError(f"Got {len(sigmas)} OKS sigmas for the {len(names)} keypoints {names}; "
                             f"give one sigma per keypoint.")
        self.dataset, self.sigmas, self.pck_thr = dataset, np.array(sigmas, dtype=np.float64), pck_thr
        self.reset()

    def reset(self) -> None:
        self._error_sum, self._hits, self._count = 0.0, 0, 0
        self._results: list[dict] = []

    def update(self, pred: torch.Tensor, targets: dict, scores: torch.Tensor | None = None) -> None:
        """Add a batch: ``pred`` float [B, K, 2] in crop pixels, ``targets`` a collated target
        dict, ``scores`` [B] the confidence of each prediction (default 1), used to rank them."""
        pred = pred.detach().float().cpu()
        targets = {key: value.detach().cpu() for key, value in targets.items()}
        errors = normalised_errors(pred, targets["keypoints"], targets["visible"], targets["norm"])
        self._error_sum += errors.sum().item()
        self._hits += int((errors < self.pck_thr).sum())
        self._count += errors.numel()
        crop = targets["crop"].float()
        original = pred * crop[:, None, 2:] + crop[:, None, :2]
        scores = torch.ones(len(pred)) if scores is None else scores.detach().float().cpu()
        for points, image_id, score in zip(original.tolist(), targets["image_id"].tolist(), scores.tolist()):
            self._results.append({"image_id": image_id, "category_id": self.dataset.category_id, "score": score,
                                  "keypoints": [v for x, y in points for v in (x, y, 1)]})

    def compute(self) -> dict[str, float]:
        """``{"nme", "pck", "oks_ap", "oks_ap50", "oks_ap75"}`` over everything since :meth:`reset`."""
        if not self._results:
            raise RuntimeError("KeypointEvaluator.compute() has no predictions: call update() first.")
        gt = self.dataset.coco
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
            evaluation = COCOeval(gt, gt.loadRes([dict(r) for r in self._results]), iouType="keypoints")
            evaluation.params.kpt_oks_sigmas = self.sigmas
            evaluation.params.imgIds = sorted({r["image_id"] for r in self._results})
            evaluation.params.catIds = [self.dataset.category_id]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        count = self._count or float("nan")
        return {"nme": self._error_sum / count, "pck": self._hits / count, "oks_ap": float(evaluation.stats[0]),
                "oks_ap50": float(evaluation.stats[1]), "oks_ap75": float(evaluation.stats[2])}
