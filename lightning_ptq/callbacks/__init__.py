"""Lightning callbacks that quantize a user's LightningModule."""
from .quantization import QuantizationCallback
from .reg_ptq import HEAD_PATTERNS, RegPTQCallback

__all__ = ["HEAD_PATTERNS", "QuantizationCallback", "RegPTQCallback"]
