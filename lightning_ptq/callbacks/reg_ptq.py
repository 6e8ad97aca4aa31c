"""Lightning callback for regression-aware quantization: the detection head gets the learnable
log-affine quantizer (LAQ), the rest of the network the uniform one."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..core.errors import ConfigError
from ..quant.config import QuantConfig
from .quantization import QuantizationCallback

# Head layers per detector family, as fnmatch patterns on module names relative to the network.
HEAD_PATTERNS: dict[str, tuple[str, ...]] = {
    "yolo": ("head.*",),                                   # lightning_ptq.detection.YOLO
    "retinanet": ("head.classification_head.*", "head.regression_head.*"),  # torchvision RetinaNet
    "fcos": ("head.classification_head.*", "head.regression_head.*"),       # torchvision FCOS, models.FCOSNet
}


class RegPTQCallback(QuantizationCallback):
    """:class:`QuantizationCallback` that puts LAQ on the detection head.

    Args:
        family: detector family whose head patterns to use (see :data:`HEAD_PATTERNS`), or
            ``None`` with explicit ``head_patterns``.
        head_patterns: fnmatch patterns of the head layers, relative to the quantized network
            (``submodule``); override ``family``.
        laq_on: what LAQ quantizes in the head: ``weights``, ``activations`` or ``both``.
        config, calib_dataloader, num_batches, submodule, forward_fn: as for
            :class:`QuantizationCallback`.

    A pattern that matches no layer is an error naming it when the model is swapped.
    """

    def __init__(self, config: QuantConfig | dict[str, Any] | None = None, family: str | None = "yolo",
                 head_patterns: tuple[str, ...] | list[str] | None = None, laq_on: str = "weights", **kwargs) -> None:
        if head_patterns is None:
            if family not in HEAD_PATTERNS:
                raise ConfigError(
                    f"family={family!r} is unknown: choose one of {', '.join(HEAD_PATTERNS)}, or give "
                    f"head_patterns=[...] (fnmatch patterns of your head's layer names)."
                )
            head_patterns = HEAD_PATTERNS[family]
        base = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(dict(config or {}))
        super().__init__(replace(base, laq_patterns=tuple(head_patterns), laq_on=laq_on), **kwargs)
