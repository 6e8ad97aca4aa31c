"""Lightning callbacks that quantize a user's LightningModule."""
from .quantization import QuantizationCallback

__all__ = ["QuantizationCallback"]
