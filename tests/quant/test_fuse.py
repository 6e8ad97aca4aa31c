import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from lightning_ptq.quant import QuantConfig, fold_batchnorm, quantize, quantized_layers
from lightning_ptq.quant.fuse import FusedConv2d, find_conv_act_units, fuse_activations


class Residual(nn.Module):
    """torchvision-style block: one ReLU module used twice, once after the add."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(y)))


def _seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                         nn.Conv2d(4, 2, 1)).eval()


def test_units_are_conv_then_activation_with_or_without_a_folded_bn():
    model = _seq()
    assert find_conv_act_units(model) == [("3", "4")]  # the BN still sits between 0 and 2
    fold_batchnorm(model)
    assert find_conv_act_units(model) == [("0", "2"), ("3", "4")]


def test_fusion_keeps_outputs_and_state_dict_keys():
    model = _seq()
    fold_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    ref, keys = model(x), list(model.state_dict())
    assert fuse_activations(model, x) == [("0", "2"), ("3", "4")]
    assert type(model[0]) is FusedConv2d and isinstance(model[0].activation, nn.SiLU)
    assert isinstance(model[2], nn.Identity) and isinstance(model[4], nn.Identity)
    torch.testing.assert_close(model(x), ref)
    assert list(model.state_dict()) == keys


def test_an_activation_called_twice_is_not_fused():
    block = Residual(4).eval()
    fold_batchnorm(block)
    x = torch.randn(2, 4, 6, 6)
    ref = block(x)
    assert find_conv_act_units(block) == [("conv1", "relu")]  # by registration order
    assert fuse_activations(block, x) == []  # but forward uses it after the add too
    torch.testing.assert_close(block(x), ref)


def test_without_an_example_input_quantize_fuses_nothing():
    block = Residual(4).eval()
    x = torch.randn(2, 4, 6, 6)
    ref = block(x)
    q = quantize(block, QuantConfig())  # the shared ReLU could not be told apart: no fusion
    assert isinstance(q.relu, nn.ReLU) and q.conv1._modules.get("activation") is None
    torch.testing.assert_close(q(x), ref)


def test_quantized_unit_applies_its_activation_and_dequantizes_back():
    model = _seq()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    q = quantize(model, QuantConfig(), example_input=x)  # quantizers uninitialised: float numerics
    assert list(quantized_layers(q)) == ["0", "3", "5"]
    assert isinstance(q[0].activation, nn.SiLU) and q[5]._modules.get("activation") is None
    torch.testing.assert_close(q(x), ref)


def test_an_activation_registered_after_a_conv_but_not_applied_to_it_is_not_fused():
    class Wrong(nn.Module):  # registers conv, act but applies the act before the conv
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.conv(self.act(x))

    x = torch.randn(1, 2, 4, 4)
    model = Wrong()
    reference = model(x)
    assert fuse_activations(model, x) == [] and isinstance(model.act, nn.ReLU)
    torch.testing.assert_close(model(x), reference)
    # torchvision's squeeze-excitation registers fc1, fc2, activation and applies the activation
    # between fc1 and fc2 (MobileNetV3, SSDlite): fc1 + activation is not a unit by child order,
    # fc2 + activation is one by child order but not in forward
    torch.manual_seed(0)
    se = nn.Sequential(nn.Conv2d(4, 8, 1), SqueezeExcitation(8, 4)).eval()
    x = torch.randn(2, 4, 5, 5)
    reference = se(x)
    assert ("1.fc2", "1.activation") in find_conv_act_units(se)
    assert ("1.fc2", "1.activation") not in fuse_activations(se, x)
    torch.testing.assert_close(se(x), reference)
