"""Stock torchvision one-stage detectors (FCOS, RetinaNet, SSD / SSDlite) as :class:`~lightning_ptq.core.detector.Detector`.

torchvision's detectors resize, run the network, make anchors and then compute either the loss or
the detections, all in one ``forward``. The method needs the network alone (its convolutions are
what gets quantized) and its raw head outputs (what the filtered global loss compares), so
:func:`~lightning_ptq.detection.views.detector_of` wraps such a model in a :class:`TorchvisionDetector` that *shares* its parts
(the same ``transform``, ``backbone``, ``anchor_generator`` and ``head`` modules, under the same
names): quantizing the wrapper in place quantizes the user's model, and layer names read as in
the user's model (``backbone.body.layer1.0.conv1``, ``head.classification_head.cls_logits``).

* ``wrapper(images)`` -> the head's outputs as torchvision computes them (``cls_logits`` [B, A, C],
  ``bbox_regression`` [B, A, 4], FCOS also ``bbox_ctrness`` [B, A, 1]), after the model's own
  transform (normalisation, resizing) and backbone;
* ``wrapper.compute_loss(images, targets)`` is the model's own training loss (its forward in
  training mode), so the job can pretrain it (:mod:`.torchvision_zoo` builds such models);
* ``wrapper.adapter()`` decodes the boxes with the model's own box coder and anchor generator;
* ``wrapper.postprocess(...)`` runs the model's own ``postprocess_detections`` and
  ``transform.postprocess`` (with the thresholds it is given), so detections are torchvision's.

Anchors and sizes depend only on the input size; the wrapper keeps those of each input size it
has seen (keyed by the number of anchors, which the outputs carry), so the outputs stay plain
head tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.ssd import SSD

from ..core.detector import NotADetectorError
from .fcos import score_logits

PARTS = ("transform", "backbone", "anchor_generator", "head", "box_coder")


@dataclass
class Geometry:
    """What one input size gives: anchors [A, 4] (the same for every image of a batch), anchors
    per level, and the image sizes before and after the transform."""

    anchors: torch.Tensor
    per_level: list[int]
    original_sizes: list[tuple[int, int]]
    image_sizes: list[tuple[int, int]]


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


class TorchvisionDetector(nn.Module):
    """A stock torchvision one-stage detector seen as a Detector (see the module docstring).
    Subclasses say how scores and boxes come out of the head."""

    family = "torchvision"
    head_patterns = ("head.classification_head.*", "head.regression_head.*")
    output_keys: tuple[str, ...] = ("cls_logits", "bbox_regression")
    # the head's modules that the view's forward and head_patterns rely on (torchvision's names)
    head_modules: tuple[str, ...] = ("head.classification_head.conv", "head.classification_head.cls_logits",
                                     "head.regression_head.conv", "head.regression_head.bbox_reg")

    def __init__(self, model: nn.Module):
        super().__init__()
        missing = [p for p in PARTS if not hasattr(model, p)]
        if missing:
            raise NotADetectorError(
                f"{type(model).__name__} does not have the layout of torchvision's one-stage detectors: it lacks "
                f"{', '.join(missing)} (torchvision FCOS, RetinaNet and SSD have {', '.join(PARTS)}). Implement the "
                f"Detector protocol (lightning_ptq.core.detector) for it instead.")
        missing = [name for name in self.head_modules if not _has_submodule(model, name)]
        if missing:
            raise NotADetectorError(
                f"{type(model).__name__}'s head is not laid out as torchvision's {type(model).__name__} head: it lacks "
                f"the module(s) {', '.join(missing)} (expected: {', '.join(self.head_modules)}). A changed head "
                f"needs a Detector of its own (lightning_ptq.core.detector; README, 'Your own detector').")
        self.transform, self.backbone = model.transform, model.backbone
        self.anchor_generator, self.head = model.anchor_generator, model.head
        self.box_coder, self.topk_candidates = model.box_coder, model.topk_candidates
        classes = model.head.classification_head
        self.num_classes = getattr(classes, "num_classes", getattr(classes, "num_columns", None))  # SSD: num_columns
        self._owner = (model,)  # its own loss and detection code; not a second registration of its modules
        self._geometry: dict[int, Geometry] = {}

    @property
    def feature_modules(self) -> tuple[str, ...]:
        """The backbone's parts (the body and the FPN of torchvision's backbones)."""
        return tuple(f"backbone.{name}" for name, _ in self.backbone.named_children())

    def forward(self, images) -> dict[str, torch.Tensor]:
        """Head outputs of ``images`` (a [B, 3, H, W] tensor or a list of [3, H, W] tensors)."""
        images = list(images)
        original_sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        features = [features] if isinstance(features, torch.Tensor) else list(features.values())
        outputs = self.head(features)
        num_anchors = outputs["cls_logits"].shape[1]
        if num_anchors not in self._geometry:
            anchors = self.anchor_generator(image_list, features)[0]
            hw = [f.shape[-2] * f.shape[-1] for f in features]
            per_level = [n * (num_anchors // sum(hw)) for n in hw]  # RetinaNet: several anchors per location (SSD: unused)
            self._geometry[num_anchors] = Geometry(anchors, per_level, original_sizes, list(image_list.image_sizes))
        return {k: outputs[k] for k in self.output_keys}

    def geometry(self, outputs: dict[str, torch.Tensor]) -> Geometry:
        num_anchors = outputs["cls_logits"].shape[1]
        if num_anchors not in self._geometry:
            raise RuntimeError(f"no forward pass of {type(self).__name__} gave {num_anchors} anchors: run the wrapper "
                               f"on images of this size before decoding its outputs.")
        return self._geometry[num_anchors]

    def decode_boxes(self, box_regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """[B, A, 4] regression -> [B, A, 4] xyxy boxes in the transformed image's pixels."""
        raise NotImplementedError

    def score_logits(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, A, C] of the score the detector ranks boxes by."""
        raise NotImplementedError

    def adapter(self) -> "TorchvisionAdapter":
        return TorchvisionAdapter(self)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], conf_thr: float = 0.001, iou_thr: float = 0.6,
                    max_det: int = 100) -> list[dict[str, torch.Tensor]]:
        """torchvision's detections (its ``postprocess_detections`` and ``transform.postprocess``)
        with these thresholds, boxes in the input images' pixels. Every image of the batch must have
        the size of the forward pass that made ``outputs``."""
        geometry = self.geometry(outputs)
        batch = outputs["cls_logits"].shape[0]
        split = {k: list(v.float().split(geometry.per_level, dim=1)) for k, v in outputs.items()}
        anchors = [list(geometry.anchors.to(outputs["cls_logits"].device).split(geometry.per_level))] * batch
        settings = SimpleNamespace(score_thresh=conf_thr, nms_thresh=iou_thr, detections_per_img=max_det,
                                   topk_candidates=self.topk_candidates, box_coder=self.box_coder)
        image_sizes = geometry.image_sizes[:1] * batch
        detections = type(self._owner[0]).postprocess_detections(settings, split, anchors, image_sizes)
        return self.transform.postprocess(detections, image_sizes, geometry.original_sizes[:1] * batch)

    def compute_loss(self, images, targets: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's own training loss on ``images`` and ``targets`` (``boxes`` xyxy px, ``labels``):
        its forward in training mode (its modules keep the mode they are in)."""
        model = self._owner[0]
        mode, model.training = model.training, True  # torchvision's forward returns the losses then
        try:
            parts = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        finally:
            model.training = mode
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


class TorchvisionFCOS(TorchvisionDetector):
    """torchvision :class:`~torchvision.models.detection.FCOS` as a Detector."""

    family = "torchvision_fcos"
    output_keys = ("cls_logits", "bbox_regression", "bbox_ctrness")
    head_modules = (*TorchvisionDetector.head_modules, "head.regression_head.bbox_ctrness")

    def decode_boxes(self, box_regression, anchors):
        return self.box_coder.decode(box_regression, anchors.expand(box_regression.shape[0], -1, -1))

    def score_logits(self, outputs):
        return score_logits(outputs["cls_logits"].float(), outputs["bbox_ctrness"].float())


class TorchvisionRetinaNet(TorchvisionDetector):
    """torchvision :class:`~torchvision.models.detection.RetinaNet` as a Detector."""

    family = "torchvision_retinanet"

    def decode_boxes(self, box_regression, anchors):
        flat = self.box_coder.decode_single(box_regression.reshape(-1, 4), anchors.repeat(box_regression.shape[0], 1))
        return flat.view_as(box_regression)

    def score_logits(self, outputs):
        return outputs["cls_logits"].float()


class TorchvisionSSD(TorchvisionRetinaNet):
    """torchvision :class:`~torchvision.models.detection.SSD` (and SSDlite) as a Detector: boxes
    decode as RetinaNet's (a ``BoxCoder``); its classes are a softmax with a background class 0, so
    the ranking-score logits are the logits of the foreground classes' softmax probabilities."""

    family = "torchvision_ssd"
    head_modules = ("head.classification_head.module_list", "head.regression_head.module_list")

    def score_logits(self, outputs):
        return torch.logit(outputs["cls_logits"].float().softmax(-1)[..., 1:], eps=1e-6)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], conf_thr: float = 0.001, iou_thr: float = 0.6,
                    max_det: int = 100) -> list[dict[str, torch.Tensor]]:
        """torchvision's SSD detections (its ``postprocess_detections``, all levels together)."""
        geometry = self.geometry(outputs)
        batch = outputs["cls_logits"].shape[0]
        settings = SimpleNamespace(score_thresh=conf_thr, nms_thresh=iou_thr, detections_per_img=max_det,
                                   topk_candidates=self.topk_candidates, box_coder=self.box_coder)
        anchors = [geometry.anchors.to(outputs["cls_logits"].device)] * batch
        image_sizes = geometry.image_sizes[:1] * batch
        detections = type(self._owner[0]).postprocess_detections(
            settings, {k: v.float() for k, v in outputs.items()}, anchors, image_sizes)
        return self.transform.postprocess(detections, image_sizes, geometry.original_sizes[:1] * batch)


class TorchvisionAdapter:
    """:class:`~lightning_ptq.calib.fgl.DetectorAdapter` of a :class:`TorchvisionDetector`: its
    ranking-score logits and boxes decoded by the model's own box coder, float and differentiable."""

    def __init__(self, detector: TorchvisionDetector):
        self.detector = detector  # read at call time: anchors follow the model to its device

    def __call__(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.detector
        anchors = d.geometry(outputs).anchors.to(outputs["bbox_regression"].device)
        return d.score_logits(outputs), d.decode_boxes(outputs["bbox_regression"].float(), anchors)


WRAPPERS: dict[type, type[TorchvisionDetector]] = {FCOS: TorchvisionFCOS, RetinaNet: TorchvisionRetinaNet, SSD: TorchvisionSSD}
