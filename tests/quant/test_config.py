import pytest

from lightning_ptq.quant import QuantConfig
from lightning_ptq.quant.config import LayerOverride


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, "4", True])
def test_bad_bit_width_names_value_and_range(bits):
    with pytest.raises(ValueError, match=r"w_bits=.* is not a supported bit width: use an integer from 2 to 8"):
        QuantConfig(w_bits=bits)
    with pytest.raises(ValueError, match=r"a_bits=.* from 2 to 8"):
        QuantConfig(a_bits=bits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"w_init": "max"}, r"w_init='max' is not allowed: choose one of minmax, percentile, mse"),
        ({"a_granularity": "per_row"}, r"a_granularity='per_row' is not allowed"),
        ({"percentile": 30}, r"percentile=30 must lie in \(50, 100\]"),
        ({"types": ["Conv3d"]}, r"types entry='Conv3d' is not allowed: choose one of Conv2d, Linear"),
        ({"include": []}, r"include=\(\) selects no layer"),
        ({"overrides": [{"pattern": "head.*", "w_bits": 12}]}, r"overrides\['head.\*'\].w_bits=12"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"quant.wbits is not a setting \(allowed: .*\); did you mean quant.w_bits\?"):
        QuantConfig.from_dict({"wbits": 4})


def test_layer_bits_overrides_last_match_wins():
    cfg = QuantConfig(
        w_bits=4, a_bits=4,
        overrides=[LayerOverride("stem.*", w_bits=8, a_bits=8), {"pattern": "head.out", "float_": True}],
    )
    assert cfg.layer_bits("stem.conv") == (8, 8)
    assert cfg.layer_bits("neck.conv") == (4, 4)
    assert cfg.layer_bits("head.out") is None


def test_at_head_stands_for_the_models_own_head_layers():
    from torch import nn

    class Net(nn.Module):
        head_patterns = ("predictor.*",)

    cfg = QuantConfig(laq_patterns=("@head", "stem.0"))
    assert cfg.for_model(Net()).laq_patterns == ("predictor.*", "stem.0")
    assert QuantConfig(laq_patterns=("neck.*",)).for_model(nn.Conv2d(1, 1, 1)).laq_patterns == ("neck.*",)
    with pytest.raises(ValueError, match=r"laq_patterns names @head \(the model's head\) but Conv2d has no head_patterns: "
                                         r"give the head's layer patterns instead"):
        cfg.for_model(nn.Conv2d(1, 1, 1))
