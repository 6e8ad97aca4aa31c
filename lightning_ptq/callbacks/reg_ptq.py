"""Lightning callback for regression-aware quantization of a detector (Reg-PTQ), with the settings
of the ``yolo_w4a4`` recipe: the learnable log-affine quantizer on the head's weights, the
uniform one elsewhere, scales and weights calibrated under the filtered global loss read through
the detector's adapter."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L
from torch import nn

from ..calib import CalibConfig, FGLConfig, FilteredGlobalLoss
from ..core.detector import NotADetectorError
from ..detection.views import can_view, detector_of
from ..quant.config import HEAD, QuantConfig
from .quantization import QuantizationCallback

# The yolo_w4a4 recipe (conf/recipe/yolo_w4a4.yaml) where it differs from the job's defaults.
RECIPE_QUANT = {"laq_patterns": [HEAD], "laq_on": "weights"}
RECIPE_CALIB = {"weight_lr": 0.05}


class RegPTQCallback(QuantizationCallback):
    """:class:`QuantizationCallback` for detectors, with the regression-aware method.

    The detector is ``submodule`` (or, without it, the one child of the LightningModule that is a
    detector): a module implementing the Detector protocol (:mod:`lightning_ptq.core.detector`)
    or a stock torchvision FCOS / RetinaNet / SSD or Ultralytics YOLO ``DetectionModel``, which
    :func:`~lightning_ptq.detection.detector_of` views as one (sharing its modules). It is
    quantized with the log-affine quantizer on its head's layers (its ``head_patterns``, or
    ``head_patterns``), run to its raw head outputs on the calibration batches and calibrated
    under the filtered global loss through its ``adapter()``.

    Args:
        config: a :class:`QuantConfig` or a dict of its fields; a dict starts from the recipe's
            (W4A4, ``laq_patterns=['@head']``, ``laq_on='weights'``).
        calib: a :class:`~lightning_ptq.CalibConfig` or a dict of its fields; a dict starts from
            the recipe's (200 steps, ``weight_lr=0.05``; the FCOS recipes use ``weight_lr=0``).
        head_patterns: fnmatch patterns of the head layers, relative to the detector, instead of
            its own ``head_patterns``.
        fgl: the filtered global loss's settings (:class:`~lightning_ptq.calib.FGLConfig` or a dict).
        calib_dataloader, num_images, submodule, forward_fn, resume: as for
            :class:`QuantizationCallback`.
    """

    def __init__(self, config: QuantConfig | dict[str, Any] | None = None,
                 calib: CalibConfig | dict[str, Any] | None = None,
                 head_patterns: tuple[str, ...] | list[str] | None = None,
                 fgl: FGLConfig | dict[str, Any] | None = None, **kwargs) -> None:
        if not isinstance(config, QuantConfig):
            config = QuantConfig.from_dict({**RECIPE_QUANT, **dict(config or {})})
        if head_patterns is not None:
            config = replace(config, laq_patterns=tuple(head_patterns))
        if not isinstance(calib, CalibConfig):
            calib = CalibConfig.from_dict({**RECIPE_CALIB, **dict(calib or {})})
        super().__init__(config, calib, **kwargs)
        self.head_patterns = head_patterns
        self.fgl = fgl if isinstance(fgl, FGLConfig) else FGLConfig.from_dict(dict(fgl or {}))
        self._detector: tuple[nn.Module, nn.Module] | None = None  # (target, its Detector view)
        self._found: str | None = None

    def target(self, pl_module: L.LightningModule) -> nn.Module:
        if self.submodule is not None:
            return super().target(pl_module)
        if can_view(pl_module):
            return pl_module
        if self._found is None:
            found = [n for n, child in pl_module.named_children() if can_view(child)]
            if len(found) != 1:
                raise NotADetectorError(
                    f"RegPTQCallback: {'no' if not found else 'more than one'} child of {type(pl_module).__name__} is "
                    f"a detector ({found or [n for n, _ in pl_module.named_children()]}): pass submodule='<attribute>' "
                    f"naming the detector, a module that implements the Detector protocol (lightning_ptq.core.detector; "
                    f"README, 'Your own detector'), a stock torchvision FCOS / RetinaNet / SSD or an Ultralytics "
                    f"YOLO DetectionModel.")
            self._found = found[0]
        return getattr(pl_module, self._found)

    def network(self, pl_module: L.LightningModule) -> nn.Module:
        target = self.target(pl_module)
        if self._detector is None or self._detector[0] is not target:  # one view per target, made once
            where = f"RegPTQCallback(submodule={self.submodule!r})" if self.submodule else "RegPTQCallback's detector"
            self._detector = (target, detector_of(target, where))
        return self._detector[1]

    def calibration_loss(self, network: nn.Module):
        return FilteredGlobalLoss(network.adapter(), self.fgl)

    def _pattern_arguments(self) -> str:
        return ("head_patterns=[...] (fnmatch patterns of the head's layers), config=QuantConfig(include=..., "
                "exclude=..., overrides=...)")

