"""What a detector must offer for the whole method (the job, the Python API and the callbacks).

A :class:`Detector` is an ``nn.Module`` whose ``forward`` ends at the raw head outputs, so every
convolution up to the head's last one can be quantized while decoding, sigmoid / softmax and NMS
stay float, as post-processing. Next to ``forward`` it names what the method reads:

* ``postprocess(outputs, conf_thr, iou_thr, max_det)``: raw outputs -> per image
  ``{"boxes" [N, 4] xyxy px, "scores" [N], "labels" [N]}`` (how it is evaluated);
* ``adapter()``: the filtered global loss's view of the raw outputs, ``outputs -> (class logits
  [B, A, C], boxes [B, A, 4] xyxy px)``, differentiable
  (:class:`~lightning_ptq.calib.fgl.DetectorAdapter`);
* ``head_patterns``: fnmatch patterns of the head's layers (they get the log-affine quantizer);
* ``feature_modules``: modules whose outputs feature matching compares (backbone stages, neck);
* ``family``: a short name (file names of checkpoints, tables).

The embedded YOLO and FCOS implement it, :func:`lightning_ptq.detection.detector_of` views stock
torchvision (FCOS, RetinaNet, SSD) and Ultralytics YOLO detectors as one (an optional
``float_patterns`` names layers that stay float, such as Ultralytics' DFL conv); a user's own class implements it to run through the
job (``model._target_=my_pkg.MyDetector``) or the callbacks.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .errors import UserError

MEMBERS = ("forward", "postprocess", "adapter", "head_patterns", "feature_modules", "family")

EXAMPLE = "README, 'Your own detector' (a whole one: tests/app/test_user_detector.py)"


class NotADetectorError(UserError, TypeError):
    """A model that the method needs as a detector lacks members of :class:`Detector`."""


@runtime_checkable
class Detector(Protocol):
    """See the module docstring."""

    family: str
    head_patterns: tuple[str, ...]
    feature_modules: tuple[str, ...]

    def forward(self, images) -> Any:
        """Raw head outputs (tensors of fixed shapes) of ``images`` [B, 3, H, W]."""

    def postprocess(self, outputs, conf_thr: float, iou_thr: float, max_det: int) -> list[dict]:
        """Per image ``{"boxes", "scores", "labels"}`` from the raw outputs."""

    def adapter(self):
        """``outputs -> (class logits [B, A, C], boxes [B, A, 4])`` for the filtered global loss."""


def missing_detector_members(obj: object) -> list[str]:
    """The :class:`Detector` members that ``obj`` lacks (empty when it implements the protocol)."""
    return [m for m in MEMBERS if not hasattr(obj, m)]


def check_detector(obj: object, where: str) -> None:
    """:class:`NotADetectorError` naming what ``obj`` lacks, ``where`` saying where it came from
    (e.g. ``model._target_='my_pkg.Net'``)."""
    missing = missing_detector_members(obj)
    if missing:
        raise NotADetectorError(
            f"{where} ({type(obj).__name__}) is not a detector lightning_ptq can calibrate: it lacks "
            f"{', '.join(missing)} (the Detector protocol, lightning_ptq.core.detector). forward must return the "
            f"raw head outputs; postprocess(outputs, conf_thr, iou_thr, max_det) the detections; adapter() the "
            f"(class logits, boxes) view the filtered global loss reads; head_patterns and feature_modules name "
            f"layers; family is a short name. See {EXAMPLE}; stock torchvision FCOS, RetinaNet and SSD and "
            f"Ultralytics YOLO DetectionModels are viewed as detectors by lightning_ptq.detection.detector_of(model)."
        )
