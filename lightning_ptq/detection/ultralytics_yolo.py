"""Ultralytics YOLO (v8, 11) detectors as :class:`~lightning_ptq.core.detector.Detector`.

Needs the ``ultralytics`` extra (``pip install 'lightning_ptq[ultralytics]'``); Ultralytics is
AGPL-3.0. An :class:`UltralyticsYOLO` holds an Ultralytics ``DetectionModel`` — built from
Ultralytics' own model yaml (``yolov8n.yaml``, ``yolo11n.yaml``: the scale letter picks n/s/m/l/x)
without downloading anything, or a user's own model (:meth:`UltralyticsYOLO.wrap`) — and shares its
layers under their own names (``model.0`` ... ``model.22``), so quantizing it quantizes the
user's model in place, by module swapping (no graph tracing).

* ``forward(images)`` runs the model's own forward to its ``Detect`` head and returns the head's
  raw outputs: ``{"boxes": [B, 4 * reg_max, A] DFL logits, "scores": [B, nc, A] class logits}``;
* the head's convolutions (``cv2``, box branch; ``cv3``, class branch) are quantized with the rest;
  its fixed DFL integral conv (``dfl``) and the decoding stay float, as post-processing
  (``float_patterns``), which Ultralytics' exporters do too;
* ``adapter()`` decodes boxes with the head's own DFL module, ``make_anchors`` and ``dist2bbox``;
  ``postprocess`` adds Ultralytics' ``non_max_suppression``;
* ``compute_loss`` is Ultralytics' ``v8DetectionLoss`` with its default gains, so the job can
  pretrain it on the embedded data.

A user's Ultralytics ``.pt`` is a pickle (it holds the model object): :meth:`from_checkpoint`
loads it only when the user says they trust the file.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import UserError
from ..core.checkpoint import PickledObjectsError
from ..core.errors import ConfigError


class UltralyticsMissingError(UserError, ImportError):
    """The ``ultralytics`` package is not installed."""


class UntrustedCheckpointError(UserError, ValueError):
    """A pickle checkpoint the user has not said they trust."""


def require_ultralytics() -> None:
    if importlib.util.find_spec("ultralytics") is None:
        raise UltralyticsMissingError(
            "Ultralytics YOLO models need the ultralytics package: pip install 'lightning_ptq[ultralytics]' "
            "(or pip install ultralytics; it is AGPL-3.0 licensed).")


@dataclass
class Geometry:
    anchors: torch.Tensor  # [2, A] anchor points, in strides
    strides: torch.Tensor  # [1, A]


class UltralyticsYOLO(nn.Module):
    """An Ultralytics YOLO ``DetectionModel`` as a Detector (see the module docstring).

    Args:
        num_classes: object classes.
        image_size: side of the square input images, a multiple of the largest stride (32).
        cfg: Ultralytics model yaml (``yolov8n.yaml``, ``yolo11n.yaml``, ...), or a dict of one.
    """

    family = "ultralytics"

    def __init__(self, num_classes: int, image_size: int = 128, cfg: str | dict = "yolov8n.yaml"):
        super().__init__()
        require_ultralytics()
        from ultralytics.nn.tasks import DetectionModel  # noqa: PLC0415 (optional dependency)

        if image_size % 32:
            raise ConfigError(f"image_size={image_size} must be a multiple of 32 (the largest stride of YOLO).")
        self._attach(DetectionModel(cfg, nc=num_classes, verbose=False))
        self.image_size = image_size

    @classmethod
    def wrap(cls, detection_model: nn.Module) -> "UltralyticsYOLO":
        """A view of a user's own ``DetectionModel`` (sharing its layers)."""
        require_ultralytics()
        view = cls.__new__(cls)
        nn.Module.__init__(view)
        view._attach(detection_model)
        view.image_size = None
        return view

    def _attach(self, detection_model: nn.Module) -> None:
        from ultralytics.nn.modules.head import Detect  # noqa: PLC0415 (optional dependency)

        head = detection_model.model[-1]
        if type(head) is not Detect:
            kind = type(head).__name__
            raise ConfigError(
                f"the Ultralytics model ends in a {kind} head: lightning_ptq quantizes Ultralytics detection models "
                f"(a Detect head: yolov8n.yaml, yolo11n.yaml, their s/m/l/x scales and your checkpoints of them), not "
                f"{'classification' if kind == 'Classify' else kind.lower()} models.")
        if getattr(head, "one2one_cv2", None) is not None:
            raise ConfigError("end-to-end (NMS-free) Ultralytics heads are not supported: use a v8 or 11 model.")
        self.model = detection_model.model  # the layers, under Ultralytics' names (state_dict keys model.N...)
        self._owner = (detection_model,)  # its forward (the layer routing) and loss; not a second registration
        self.num_classes = head.nc
        index = len(self.model) - 1
        self.head_patterns = (f"model.{index}.cv2.*", f"model.{index}.cv3.*")
        self.float_patterns = (f"model.{index}.dfl.*",)  # the fixed DFL integral conv: post-processing
        sources = head_sources(detection_model)
        self.feature_modules = tuple(f"model.{i}" for i in sources)
        self._geometry: dict[int, Geometry] = {}

    @property
    def detection_model(self) -> nn.Module:
        return self._owner[0]

    @property
    def head(self) -> nn.Module:
        return self.model[-1]

    def _raw(self, images: torch.Tensor) -> dict:
        """The model's forward with its head in training mode: the raw predictions, no decoding."""
        head, mode = self.head, self.head.training
        head.training = True  # Detect returns its raw dict then; its own layers keep their mode
        try:
            preds = self.detection_model(images)
        finally:
            head.training = mode
        if not isinstance(preds, dict):
            import ultralytics  # noqa: PLC0415 (optional dependency)

            raise UltralyticsMissingError(f"ultralytics {ultralytics.__version__} returns the head's outputs as a "
                                          f"{type(preds).__name__}; lightning_ptq reads the dict of 8.4 and later: "
                                          f"pip install 'ultralytics>=8.4'.")
        return preds

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        preds = self._raw(images)
        num_anchors = preds["boxes"].shape[-1]
        if num_anchors not in self._geometry:
            from ultralytics.utils.tal import make_anchors  # noqa: PLC0415 (optional dependency)

            anchors, strides = make_anchors(preds["feats"], self.head.stride, 0.5)
            self._geometry[num_anchors] = Geometry(anchors.transpose(0, 1), strides.transpose(0, 1))
        return {"boxes": preds["boxes"], "scores": preds["scores"]}

    def decode_boxes(self, boxes: torch.Tensor, xywh: bool = False) -> torch.Tensor:
        """DFL logits [B, 4 * reg_max, A] -> boxes [B, 4, A] in pixels, by the head's own DFL."""
        from ultralytics.utils.tal import dist2bbox  # noqa: PLC0415 (optional dependency)

        geometry = self._geometry.get(boxes.shape[-1])
        if geometry is None:
            raise RuntimeError(f"no forward pass gave {boxes.shape[-1]} anchors: run the model on images of this size "
                               f"before decoding its outputs.")
        anchors, strides = geometry.anchors.to(boxes.device), geometry.strides.to(boxes.device)
        return dist2bbox(self.head.dfl(boxes.float()), anchors.unsqueeze(0), xywh=xywh, dim=1) * strides

    def adapter(self) -> "UltralyticsAdapter":
        return UltralyticsAdapter(self)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], conf_thr: float = 0.001, iou_thr: float = 0.6,
                    max_det: int = 100) -> list[dict[str, torch.Tensor]]:
        """Ultralytics' decoding (as its Detect head does it in inference) and its NMS."""
        from ultralytics.utils.nms import non_max_suppression  # noqa: PLC0415 (optional dependency)

        decoded = torch.cat([self.decode_boxes(outputs["boxes"], xywh=True), outputs["scores"].float().sigmoid()], 1)
        kept = non_max_suppression(decoded, conf_thr, iou_thr, max_det=max_det, nc=self.num_classes)
        return [{"boxes": k[:, :4], "scores": k[:, 4], "labels": k[:, 5].long()} for k in kept]

    def compute_loss(self, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Ultralytics' detection loss (box, class, DFL with its default gains), per image, on
        targets of ``{"boxes" xyxy px, "labels"}``."""
        model = self.detection_model
        if getattr(model, "criterion", None) is None:
            from ultralytics.cfg import get_cfg  # noqa: PLC0415 (optional dependency)

            model.args = get_cfg()  # the default hyperparameters (box 7.5, cls 0.5, dfl 1.5)
            model.criterion = model.init_criterion()
        height, width = images.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=images.device)
        boxes = torch.cat([t["boxes"] for t in targets]).float()
        xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / scale
        batch = {"batch_idx": torch.cat([torch.full((len(t["boxes"]),), i, device=images.device)
                                         for i, t in enumerate(targets)]).float(),
                 "cls": torch.cat([t["labels"] for t in targets]).float().view(-1, 1), "bboxes": xywh}
        loss, items = model.criterion(self.detection_model(images), batch)  # loss: (box, cls, dfl) x batch size
        parts = items if isinstance(items, dict) else dict(zip(("box", "cls", "dfl"), items))
        return loss.sum() / len(images), {k: torch.as_tensor(v).detach() for k, v in parts.items()}

    @classmethod
    def from_checkpoint(cls, path: str | Path, num_classes: int, image_size: int, kwargs: dict,
                        trust: bool = False) -> "UltralyticsYOLO":
        """A detector from ``path``: our checkpoint or a state_dict of this architecture (read
        safely, as every checkpoint), or an Ultralytics ``.pt`` (a pickle: read only with
        ``trust=True``, its architecture and weights from the file)."""
        from .checkpoint import load_detector  # noqa: PLC0415 (checkpoint builds detectors of any class)

        try:
            return load_detector(path, num_classes, image_size, kwargs, cls)
        except PickledObjectsError:
            if not trust:
                raise UntrustedCheckpointError(
                    f"{path} holds pickled Python objects (an Ultralytics .pt holds the model object), and loading "
                    f"a pickle runs code stored in the file. If you trust it (you trained it, or it comes from "
                    f"Ultralytics), set model.trust_checkpoint=true; otherwise save its weights as a state_dict "
                    f"(torch.save(YOLO(path).model.state_dict(), 'weights.pt')) and give that, with model.kwargs.cfg "
                    f"set to its model yaml.") from None
        require_ultralytics()
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user trusts this file
        model = (checkpoint.get("ema") or checkpoint["model"]).float()
        if model.model[-1].nc != num_classes:
            raise ConfigError(f"{path} detects {model.model[-1].nc} classes but the data has {num_classes}: use a "
                              f"checkpoint trained on this data.")
        view = cls.wrap(model.eval())
        view.image_size = image_size
        return view


def head_sources(detection_model: nn.Module) -> list[int]:
    """The layers whose outputs the Detect head reads (the neck's outputs)."""
    return list(detection_model.model[-1].f)


class UltralyticsAdapter:
    """:class:`~lightning_ptq.calib.fgl.DetectorAdapter` of :class:`UltralyticsYOLO`: class logits
    [B, A, nc] and boxes [B, A, 4] xyxy px (float, differentiable)."""

    def __init__(self, detector: UltralyticsYOLO):
        self.detector = detector

    def __call__(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = self.detector.decode_boxes(outputs["boxes"]).transpose(1, 2)
        return outputs["scores"].float().transpose(1, 2), boxes
