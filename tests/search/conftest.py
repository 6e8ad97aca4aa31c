import pytest

from lightning_ptq.calib.observe import calibrate_ranges
from lightning_ptq.quant import QuantConfig, quantize


@pytest.fixture
def quantized():
    """``quantized(model, calib, w_bits, a_bits)``: min/max W/A quantized and calibrated."""
    def make(model, calib, w_bits=2, a_bits=3):
        q = quantize(model, QuantConfig(w_bits=w_bits, a_bits=a_bits, w_init="minmax", a_init="minmax",
                                        learnable=False))
        calibrate_ranges(q, calib, progress=False)
        return q
    return make
