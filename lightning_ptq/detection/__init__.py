"""Detectors in the shared job: the :class:`DetectionTask` (COCO data, the YOLO-style and FCOS
families, mAP)."""
from .task import DetectionTask, eval_kwargs, load_data_and_model

__all__ = ["DetectionTask", "eval_kwargs", "load_data_and_model"]
