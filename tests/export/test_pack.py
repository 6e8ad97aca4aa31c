import pytest
import torch
from torch import nn

from lightning_ptq.calib import calibrate_ranges
from lightning_ptq.export import export_packed, float_size_bytes, pack_codes, packed_size_bytes, unpack_codes, unpack_weight
from lightning_ptq.quant import QuantConfig, quantize, quantized_layers


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 1 << bits, (1001,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"codes outside \[0, 16\) cannot be packed in 4 bits"):
        pack_codes(torch.tensor([0, 16]), 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_exported_weights_equal_fake_quantized_weights_and_size_shrinks(bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 10)).eval()
    q = quantize(model, QuantConfig(w_bits=bits, a_bits=bits))
    calibrate_ranges(q, [torch.randn(4, 3, 8, 8)], progress=False)
    exported = export_packed(q)
    for name, layer in quantized_layers(q).items():
        torch.testing.assert_close(unpack_weight(exported["layers"][name]), layer.weight_quant(layer.weight))
    ratio = float_size_bytes(model) / packed_size_bytes(q)
    assert ratio > (32 / bits) * 0.8  # scales and biases cost a little


@pytest.mark.parametrize("laq_on", ["weights", "activations", "both"])
def test_log_affine_layers_export_and_decode_exactly(laq_on, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    q = quantize(model, QuantConfig(w_bits=4, a_bits=4, laq_patterns=("2",), laq_on=laq_on))
    calibrate_ranges(q, [torch.randn(4, 3, 8, 8)], progress=False)
    head = quantized_layers(q)["2"]
    assert type(head.weight_quant).__name__ == ("LogAffineQuantizer" if laq_on != "activations" else "UniformQuantizer")
    assert type(head.input_quant).__name__ == ("LogAffineQuantizer" if laq_on != "weights" else "UniformQuantizer")
    assert type(quantized_layers(q)["0"].weight_quant).__name__ == "UniformQuantizer"
    exported = export_packed(q)
    torch.save(exported, tmp_path / "packed.pt")
    loaded = torch.load(tmp_path / "packed.pt", weights_only=True)
    for name, layer in quantized_layers(q).items():
        torch.testing.assert_close(unpack_weight(loaded["layers"][name]), layer.weight_quant(layer.weight))
        codes = layer.input_quant.codes(torch.randn(2, layer.weight.shape[1], 5, 5) * 3)
        assert codes.min() >= 0 and codes.max() < 1 << layer.input_quant.bits
