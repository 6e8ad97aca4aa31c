"""One factory decides the quantizer class; one context manager switches quantizers off and back."""
import pytest
import torch
from torch import nn

from lightning_ptq.quant import (
    ConfigError, LogAffineQuantizer, QuantConfig, QuantizerSpec, UniformQuantizer, make_quantizer, quantization_disabled,
    quantize, quantized_layers, spec_of,
)


@pytest.mark.parametrize("spec, cls", [
    (QuantizerSpec("uniform", 4, symmetric=True, channel_axis=0, num_channels=3, init="minmax"), UniformQuantizer),
    (QuantizerSpec("uniform", 8, percentile=99.9, learnable=False, max_samples=100), UniformQuantizer),
    (QuantizerSpec("laq", 4, channel_axis=0, num_channels=5, shift_exact=True), LogAffineQuantizer),
])
def test_the_spec_builds_its_class_and_spec_of_gives_it_back(spec, cls):
    q = make_quantizer(spec)
    assert type(q) is cls and q.bits == spec.bits and q.num_channels == spec.num_channels
    assert spec_of(q) == (spec if cls is UniformQuantizer else
                          QuantizerSpec("laq", 4, channel_axis=0, num_channels=5, shift_exact=True))


def test_an_unknown_kind_is_named():
    with pytest.raises(ConfigError, match=r"quantizer kind='log' is unknown: choose one of uniform, laq"):
        make_quantizer(QuantizerSpec("log", 4))


def test_the_swapped_layers_get_their_quantizers_from_the_config():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    q = quantize(model, QuantConfig(w_bits=4, a_bits=8, laq_patterns=["1"], laq_on="weights", w_init="minmax"))
    first, second = quantized_layers(q).values()
    assert spec_of(first.weight_quant) == QuantizerSpec("uniform", 4, symmetric=True, channel_axis=0, num_channels=4,
                                                        init="minmax", percentile=first.weight_quant.percentile)
    assert isinstance(second.weight_quant, LogAffineQuantizer) and isinstance(second.input_quant, UniformQuantizer)
    assert spec_of(second.input_quant).max_samples == QuantConfig().act_samples


def test_quantization_disabled_passes_values_through_and_restores_each_state():
    torch.manual_seed(0)
    a, b = (make_quantizer(QuantizerSpec("uniform", 2)) for _ in range(2))
    x = torch.randn(100)
    for q in (a, b):
        q.init_from(x)
    b.disable()  # off before: stays off after
    with quantization_disabled([a, b]):
        torch.testing.assert_close(a(x), x)
    assert a.is_active and not b.is_active
    assert not torch.equal(a(x), x)
    model = nn.Sequential(a)
    with quantization_disabled(model):
        torch.testing.assert_close(model(x), x)
    assert a.is_active
