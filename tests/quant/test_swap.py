import pytest
import torch
from torch import nn

from lightning_ptq.quant import (
    LayerPatternError, QuantConfig, QuantConv2d, QuantLinear, dequantize, fold_batchnorm,
    quantize, quantized_layers,
)
from lightning_ptq.calib import calibrate_ranges
from lightning_ptq.quant.fuse import FusedConv2d


class Block(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Block(3, 8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def _net():
    torch.manual_seed(0)
    net = Net()
    for bn in (net.stem.bn, net.body[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_bn_folding_is_equivalent():
    net = _net()
    x = torch.randn(4, 3, 12, 12)
    ref = net(x)
    pairs = fold_batchnorm(net, example_input=x)
    assert pairs == [("stem.conv", "stem.bn"), ("body.0", "body.1")]
    assert isinstance(net.stem.bn, nn.Identity)
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


def test_bn_folding_check_catches_wrong_order():
    class BnFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv(self.bn(x))  # BN before conv: must not be folded into conv

    m = BnFirst().eval()
    m.bn.running_mean.fill_(3.0)
    with pytest.raises(RuntimeError, match=r"BatchNorm folding changed the model output at conv -> bn \(max abs error .*\): the pair is not applied as conv -> bn in forward. Set fold_bn=false."):
        fold_batchnorm(m, example_input=torch.randn(2, 4, 3, 3))


def test_quantize_swaps_every_conv_and_linear_and_keeps_original():
    net = _net()
    q = quantize(net, QuantConfig(w_bits=4, a_bits=4))
    layers = quantized_layers(q)
    assert list(layers) == ["stem.conv", "body.0", "head"]
    assert isinstance(layers["stem.conv"], QuantConv2d) and isinstance(layers["head"], QuantLinear)
    assert isinstance(net.stem.bn, nn.BatchNorm2d)  # not in place: the float model is untouched


@pytest.mark.parametrize("fuse_act", [True, False])
def test_swap_shares_parameters_and_round_trips(fuse_act):
    net = _net()
    q = quantize(net, QuantConfig(fuse_act=fuse_act), inplace=False, example_input=torch.randn(2, 3, 8, 8))
    conv = q.stem.conv
    assert isinstance(conv, QuantConv2d)
    back = conv.to_float()
    assert type(back) is (FusedConv2d if fuse_act else nn.Conv2d)
    assert back.weight is conv.weight and back.bias is conv.bias
    if fuse_act:  # the activation moved into the unit; its old place does nothing
        assert isinstance(back.activation, nn.SiLU) and isinstance(q.stem.act, nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    ref = q(x)  # quantizers are not initialised yet: identical to the folded float model
    dequantize(q)
    assert not quantized_layers(q)
    torch.testing.assert_close(q(x), ref)


def test_state_dict_round_trip_into_fresh_swap():
    net = _net()
    x = torch.randn(4, 3, 8, 8)
    q = quantize(net, QuantConfig(w_bits=4, a_bits=4))
    calibrate_ranges(q, [x], progress=False)
    fresh = quantize(net, QuantConfig(w_bits=4, a_bits=4))
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))
    assert not torch.equal(q(x), net(x))  # quantization is active


def test_include_exclude_and_overrides():
    net = _net()
    cfg = QuantConfig(exclude=("head",), overrides=[{"pattern": "stem.*", "w_bits": 8, "a_bits": 8}])
    q = quantize(net, cfg)
    layers = quantized_layers(q)
    assert list(layers) == ["stem.conv", "body.0"]
    assert layers["stem.conv"].weight_quant.bits == 8 and layers["body.0"].weight_quant.bits == 4


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(LayerPatternError, match=r"layer pattern 'model.head.\*' matches no Conv2d/Linear layer of Net.*stem.conv"):
        quantize(_net(), QuantConfig(include=("model.head.*",)))


def test_quantizing_twice_is_an_error():
    q = quantize(_net())
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q)


@pytest.mark.parametrize("bits", [8, 4])
def test_calibrated_model_is_close_to_float(bits):
    net = _net()
    xs = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    q = quantize(net, QuantConfig(w_bits=bits, a_bits=bits))
    calibrate_ranges(q, xs, progress=False)
    ref = net(xs[0])
    rel = ((q(xs[0]) - ref).norm() / ref.norm()).item()
    assert rel < (0.02 if bits == 8 else 0.3)


def test_laq_pattern_matching_nothing_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(LayerPatternError, match=r"layer pattern 'head\.\*' matches no.*quant\.laq_patterns"):
        quantize(model, QuantConfig(laq_patterns=("head.*",)))


def test_bad_laq_target_is_named():
    with pytest.raises(ValueError, match=r"laq_on='bias' is not allowed: choose one of weights, activations, both"):
        QuantConfig(laq_patterns=("2",), laq_on="bias")
