"""Lightning callbacks that quantize and calibrate a user's LightningModule (any network; detectors
with the regression-aware method) and search its per-layer parameters."""
from .layerwise_search import LayerwiseSearch, MetricNotLoggedError
from .quantization import QuantizationCallback
from .reg_ptq import RegPTQCallback

__all__ = ["LayerwiseSearch", "MetricNotLoggedError", "QuantizationCallback", "RegPTQCallback"]
