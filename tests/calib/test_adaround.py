"""AdaRound inside block reconstruction: start at the float weight, end on the grid, lower block
error than rounding to nearest, scales untouched, log-affine quantizers left alone."""
import torch
from torch import nn

from lightning_ptq.calib import calibrate_ranges
from lightning_ptq.calib.adaround import AdaRoundBlock, AdaRoundWeight
from lightning_ptq.calib.recon import _capture, reconstruct
from lightning_ptq.quant import QuantConfig, quantize, quantized_layers


def _model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    g = torch.Generator().manual_seed(1)
    return model, [torch.randn(4, 3, 12, 12, generator=g) for _ in range(4)]


def _quantized(model, batches, **kw):
    q = quantize(model, QuantConfig(w_bits=3, a_bits=8, learnable=True, **kw))
    calibrate_ranges(q, batches, progress=False)
    return q


def test_rounding_starts_at_the_float_weight_and_hardens_onto_the_grid():
    model, batches = _model_and_batches()
    layer = quantized_layers(_quantized(model, batches, w_init="minmax"))["0"]  # min/max: nothing clipped
    ada = AdaRoundWeight(layer.weight_quant, layer.weight)
    w, step = layer.weight.detach(), layer.weight_quant.scale.detach().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(ada(w), w, atol=1e-5, rtol=1e-5)  # h(V) = the fractional part at the start
    hard = ada.hard_weight(w)
    torch.testing.assert_close(layer.weight_quant(hard), hard)  # exactly representable by the quantizer
    assert ((hard - w).abs() <= step + 1e-6).all()  # rounded down or up, never further


def test_adaround_fits_each_block_better_than_nearest_rounding_and_keeps_weight_scales():
    model, batches = _model_and_batches()
    plain, ada = _quantized(model, batches), _quantized(model, batches)
    scales = {n: layer.weight_quant.scale.detach().clone() for n, layer in quantized_layers(ada).items()}
    reconstruct(plain, batches, steps=150, lr=1e-3, blocks=["0", "2", "4"], drop_prob=0.0, progress=False)
    reconstruct(ada, batches, steps=150, lr=1e-3, blocks=["0", "2", "4"], drop_prob=0.0, adaround=True,
                progress=False)
    for name, layer in quantized_layers(ada).items():
        assert type(layer.weight_quant).__name__ == "FakeQuantizer"  # the original quantizer is back
        torch.testing.assert_close(layer.weight_quant.scale, scales[name])
        q = layer.weight_quant
        codes = layer.weight / q.scale.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)  # weights sit on the grid
    x = torch.cat(batches)
    ref = model(x)
    err = lambda m: (m(x) - ref).pow(2).mean().item()  # noqa: E731
    assert err(ada) < err(plain)


def test_log_affine_weights_are_not_rounded_by_adaround():
    model, batches = _model_and_batches()
    q = _quantized(model, batches, laq_patterns=("4",), laq_on="weights")
    block = AdaRoundBlock(q, steps=10)
    assert [type(layer.weight_quant).__name__ for layer in block.layers] == ["FakeQuantizer", "FakeQuantizer"]
    assert len(block.swap()) == 2 and block.regulariser(0).item() == 0.0  # warm-up: no regulariser yet
    assert block.regulariser(9).item() > 0
    block.finish()
    assert all(type(layer.weight_quant).__name__ in ("FakeQuantizer", "LogAffineQuantizer")
               for layer in quantized_layers(q).values())
