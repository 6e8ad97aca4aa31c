"""The detectors the job builds, and training, inference and mAP evaluation of any detector.

A detector is a :class:`~lightning_ptq.core.detector.Detector` (that module says what it offers):
``forward(images)`` returns raw outputs (every conv, head included, can be quantized while
everything after it stays float), ``postprocess``, ``adapter()``, ``head_patterns``,
``feature_modules`` and ``family``. The job builds it from ``model._target_`` (a class) with
``num_classes`` and ``image_size`` (when its constructor takes them) and ``model.kwargs``; to be
pretrained by the project it also needs ``compute_loss(images, targets) -> (loss, parts)``.

A quantized copy (:func:`lightning_ptq.quantize` deep-copies) keeps the methods and buffers, so
FP and quantized models go through the very same post-processing.
"""
from __future__ import annotations

import inspect
import json

import lightning as L
import torch
from hydra.utils import get_class
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from tqdm.auto import tqdm

from ..core.detector import check_detector
from ..core.errors import ConfigError
from ..core.optim import adamw_warmup_cosine
from .fcos import FCOSNet
from .yolo import YOLO

# The families this package defines (our checkpoints name them in their ``format``).
DETECTORS: dict[str, type[nn.Module]] = {"yolo": YOLO, "fcos": FCOSNet}
SIZE_ARGS = ("num_classes", "image_size")  # what the job passes from the data


def target_of(cls: type) -> str:
    """The ``model._target_`` that names ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def detector_class(target: str | type) -> type:
    """The class ``model._target_`` names (or ``target`` itself when it is one)."""
    if isinstance(target, type):
        return target
    try:
        return get_class(target)
    except (ImportError, ValueError, AttributeError) as err:
        raise ConfigError(f"model._target_={target!r} is not a class that can be imported "
                          f"({str(err).splitlines()[0]}): give the dotted path of your detector class, "
                          f"e.g. lightning_ptq.detection.YOLO or my_pkg.MyDetector.") from None


def _architecture_args(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls).parameters
    return {n: p for n, p in params.items() if n not in SIZE_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def architecture(cls: type, kwargs: dict) -> dict:
    """Every architecture argument of ``cls`` as it will be built: ``kwargs`` over the
    constructor's defaults (so that equal models have equal cache keys however they are spelled)."""
    args = {n: p.default for n, p in _architecture_args(cls).items() if p.default is not p.empty}
    return json.loads(json.dumps({**args, **kwargs}, default=str))


def build_detector(target: str | type, num_classes: int, image_size: int, kwargs: dict) -> nn.Module:
    """The detector class ``target`` names (random init), built for ``num_classes`` and
    ``image_size`` (passed when its constructor takes them) with the architecture settings
    ``kwargs`` (``model.kwargs``); it must implement the Detector protocol."""
    cls = detector_class(target)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(_architecture_args(cls))) if not takes_any else []
    if unknown:
        raise ConfigError(f"model.kwargs has unknown keys {unknown} for model._target_={target_of(cls)}: allowed "
                          f"are {sorted(_architecture_args(cls))}.")
    sizes = {k: v for k, v in zip(SIZE_ARGS, (num_classes, image_size)) if k in params or takes_any}
    model = cls(**sizes, **kwargs)
    check_detector(model, f"model._target_={target_of(cls)!r}")
    return model


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


def map_metric(sync: bool = True) -> MeanAveragePrecision:
    """COCO box mAP as torchmetrics computes it with the pycocotools backend; ``sync=False``: on
    this process's detections alone, even under DDP."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", sync_on_compute=sync)


def evaluate_detections(model: nn.Module, loader, conf_thr: float = 0.001, iou_thr: float = 0.6,
                        max_det: int = 100, progress: bool = True) -> dict[str, float]:
    """COCO mAP of ``model`` on ``loader`` (batches of images and target dicts), computed by
    torchmetrics (pycocotools backend): ``{"map", "map50", "map75", "map_small", ...}``. The
    loader is the whole set: under DDP nothing is gathered from the other processes (which may be
    evaluating another model, e.g. another candidate of the per-layer search)."""
    metric = map_metric(sync=False)
    for images, targets in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        preds = detect(model, images, conf_thr, iou_thr, max_det)
        metric.update([{k: v.cpu() for k, v in p.items()} for p in preds],
                      [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    result = metric.compute()
    names = {"map": "map", "map_50": "map50", "map_75": "map75", "map_small": "map_small",
             "map_medium": "map_medium", "map_large": "map_large", "mar_100": "mar100"}
    return {ours: float(result[theirs]) for theirs, ours in names.items()}


class DetectorModule(L.LightningModule):
    """Lightning wrapper that trains the detector class ``target`` names from scratch with its own
    loss (``compute_loss``; AdamW, warm-up + cosine, random flips) and reports validation mAP
    after each epoch."""

    def __init__(self, num_classes: int, image_size: int = 128, model_kwargs: dict | None = None,
                 lr: float = 2e-3, weight_decay: float = 5e-4, warmup_fraction: float = 0.05,
                 flip: bool = True, target: str = "lightning_ptq.detection.YOLO"):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_detector(target, num_classes, image_size, dict(model_kwargs or {}))
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
