"""The detector families, and training, inference and mAP evaluation of any of them.

A detector here is an ``nn.Module`` whose ``forward(images)`` returns raw outputs (logits: every
conv, head included, can be quantized while everything after it stays float) and which has

* ``postprocess(outputs, conf_thr, iou_thr, max_det)`` -> per image ``{"boxes", "scores", "labels"}``;
* ``adapter()`` -> its :class:`~lightning_ptq.calib.fgl.DetectorAdapter` (for the FGL loss);
* ``compute_loss(images, targets)`` -> ``(loss, parts)``, its own training loss;
* ``num_classes``, ``image_size`` and ``family`` (a key of :data:`DETECTORS`).

A quantized copy (:func:`lightning_ptq.quantize` deep-copies) keeps the methods and buffers, so
FP and quantized models go through the very same post-processing.
"""
from __future__ import annotations

import inspect

import lightning as L
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from tqdm.auto import tqdm

from ..core.errors import ConfigError
from ..core.optim import adamw_warmup_cosine
from .fcos import FCOSNet
from .yolo import YOLO

DETECTORS: dict[str, type[nn.Module]] = {"yolo": YOLO, "fcos": FCOSNet}


def build_detector(name: str, num_classes: int, image_size: int, kwargs: dict) -> nn.Module:
    """The ``name`` family's network (random init) for ``num_classes`` and ``image_size``, with
    the architecture settings ``kwargs`` (``model.kwargs``)."""
    if name not in DETECTORS:
        raise ConfigError(f"model.name={name!r} is unknown: choose one of {', '.join(DETECTORS)}.")
    cls = DETECTORS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("num_classes", "image_size")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model.kwargs has unknown keys {unknown} for model.name={name}: allowed are {allowed}.")
    return cls(num_classes, image_size=image_size, **kwargs)


@torch.no_grad()
def detect(model: nn.Module, images: torch.Tensor, conf_thr: float = 0.001, iou_thr: float = 0.6,
           max_det: int = 100) -> list[dict[str, torch.Tensor]]:
    """Detections of ``model`` on ``images`` [B, 3, H, W]: per image boxes (xyxy px), scores, labels."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = model(images.to(device))
    model.train(was_training)
    return model.postprocess(outputs, conf_thr=conf_thr, iou_thr=iou_thr, max_det=max_det)


def map_metric() -> MeanAveragePrecision:
    """COCO box mAP as torchmetrics computes it with the pycocotools backend."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")


def evaluate_detections(model: nn.Module, loader, conf_thr: float = 0.001, iou_thr: float = 0.6,
                        max_det: int = 100, progress: bool = True) -> dict[str, float]:
    """COCO mAP of ``model`` on ``loader`` (batches of images and target dicts), computed by
    torchmetrics (pycocotools backend): ``{"map", "map50", "map75", "map_small", ...}``."""
    metric = map_metric()
    for images, targets in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        preds = detect(model, images, conf_thr, iou_thr, max_det)
        metric.update([{k: v.cpu() for k, v in p.items()} for p in preds],
                      [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    result = metric.compute()
    names = {"map": "map", "map_50": "map50", "map_75": "map75", "map_small": "map_small",
             "map_medium": "map_medium", "map_large": "map_large", "mar_100": "mar100"}
    return {ours: float(result[theirs]) for theirs, ours in names.items()}


class DetectorModule(L.LightningModule):
    """Lightning wrapper that trains a detector of family ``name`` (see :data:`DETECTORS`) from
    scratch with its own loss (AdamW, warm-up + cosine, random flips) and reports validation mAP
    after each epoch."""

    def __init__(self, num_classes: int, image_size: int = 128, model_kwargs: dict | None = None,
                 lr: float = 2e-3, weight_decay: float = 5e-4, warmup_fraction: float = 0.05,
                 flip: bool = True, name: str = "yolo"):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_detector(name, num_classes, image_size, dict(model_kwargs or {}))
        self.val_map = map_metric()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.hparams.flip:
            images, targets = random_flips(images, targets)
        loss, parts = self.model.compute_loss(images, targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        preds = detect(self.model, images)
        self.val_map.update(preds, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()
        self.log_dict({"val/map": result["map"], "val/map50": result["map_50"]}, prog_bar=True)
        self.val_map.reset()

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.trainer.estimated_stepping_batches, self.hparams.lr,
                                   self.hparams.weight_decay, self.hparams.warmup_fraction)


def random_flips(images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    """Flip each image horizontally and/or vertically with probability 1/2, boxes with it."""
    size_w, size_h = images.shape[-1], images.shape[-2]
    images, out = images.clone(), []
    for i, target in enumerate(targets):
        boxes = target["boxes"].clone()
        if torch.rand(()) < 0.5:
            images[i] = images[i].flip(-1)
            boxes[:, [0, 2]] = size_w - boxes[:, [2, 0]]
        if torch.rand(()) < 0.5:
            images[i] = images[i].flip(-2)
            boxes[:, [1, 3]] = size_h - boxes[:, [3, 1]]
        out.append({**target, "boxes": boxes})
    return images, out
