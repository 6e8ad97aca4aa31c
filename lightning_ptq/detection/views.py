"""The Detector a model is: itself when it implements the protocol, else a view of a stock
torchvision or Ultralytics detector that shares its modules (:mod:`.torchvision_detectors`,
:mod:`.ultralytics_yolo`)."""
from __future__ import annotations

import importlib.util

from torch import nn

from ..core.detector import check_detector, missing_detector_members
from .torchvision_detectors import WRAPPERS


def _ultralytics_detection_model(model: nn.Module) -> bool:
    if importlib.util.find_spec("ultralytics") is None:
        return False
    from ultralytics.nn.tasks import DetectionModel  # noqa: PLC0415 (optional dependency)

    return isinstance(model, DetectionModel)


def can_view(model: nn.Module) -> bool:
    """Whether :func:`detector_of` gives a Detector for ``model``."""
    return (not missing_detector_members(model) or isinstance(model, tuple(WRAPPERS))
            or _ultralytics_detection_model(model))


def detector_of(model: nn.Module, where: str = "the model") -> nn.Module:
    """``model`` itself when it implements the Detector protocol; a stock torchvision FCOS or
    RetinaNet, or an Ultralytics YOLO ``DetectionModel``, seen through its view (which shares its
    modules); otherwise a :class:`~lightning_ptq.core.detector.NotADetectorError` naming what is
    missing."""
    if not missing_detector_members(model):
        return model
    for cls, wrapper in WRAPPERS.items():
        if isinstance(model, cls):
            return wrapper(model)
    if _ultralytics_detection_model(model):
        from .ultralytics_yolo import UltralyticsYOLO  # noqa: PLC0415 (needs the optional dependency)

        return UltralyticsYOLO.wrap(model)
    check_detector(model, where)
    return model
