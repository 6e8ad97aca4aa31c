"""Lightning callbacks that quantize a user's LightningModule and search its per-layer parameters."""
from .layerwise_search import LayerwiseSearch, MetricNotLoggedError
from .quantization import QuantizationCallback
from .reg_ptq import HEAD_PATTERNS, RegPTQCallback

__all__ = ["HEAD_PATTERNS", "LayerwiseSearch", "MetricNotLoggedError", "QuantizationCallback", "RegPTQCallback"]
