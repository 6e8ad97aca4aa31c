import math

import pytest
import torch
from torch import nn

from lightning_ptq.calib import calibrate_ranges
from lightning_ptq.export.errors import ExportError
from lightning_ptq.export.fixed_point import INT16_MAX
from lightning_ptq.export.integer import HEADROOM, IntegerLayer, compare_layers, to_integer
from lightning_ptq.quant import QuantConfig, quantize, quantized_layers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread (on busy shared cores, idle OpenMP threads cost seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """Every layer kind of the YOLO detector and more: padded 3x3 convs with fused ReLU / SiLU, a
    stride-2 conv, a dilated depthwise conv, a grouped 1x1 conv, a residual add, a Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_act = nn.ReLU()
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.down_act = nn.SiLU(inplace=True)
        self.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
        self.mix = nn.Conv2d(16, 8, 1, groups=4)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.down_act(self.down(self.stem_act(self.stem(x))))
        y = self.mix(self.dw(y) + y)
        return {"logits": self.fc(y.mean((2, 3))), "features": y}

    def describe(self) -> str:  # a method the evaluation code would call on the model
        return "tiny"


def _batches(n=2):
    torch.manual_seed(1)
    return [torch.randn(4, 3, 16, 16) for _ in range(n)]


def _quantized(bits=4, **cfg):
    torch.manual_seed(0)
    batches = _batches()
    q = quantize(Net().eval(), QuantConfig(w_bits=bits, a_bits=bits, **cfg), example_input=batches[0])
    calibrate_ranges(q, batches, progress=False)
    return q, batches


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_integer_layers_match_the_simulation_to_one_output_step(bits, monkeypatch):
    q, batches = _quantized(bits)
    assert type(q.stem).__name__ == "QuantConv2d" and q.stem.activation is not None  # ReLU fused
    # on the calibration batches themselves no value goes beyond the maximum: the finest output
    # grid (no headroom) checks the arithmetic most closely
    int_model = to_integer(q, batches, headroom=1.0)
    assert [r["kind"] for r in int_model.report] == ["integer"] * 5
    assert all(isinstance(m, IntegerLayer) for m in int_model.integer_layers().values())

    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append((a.dtype, b.dtype)) or int_mm(a, b))
    shares = compare_layers(int_model, q, batches)
    assert set(shares) == {"stem", "down", "dw", "mix", "fc"}
    assert min(shares.values()) >= 0.999, shares
    assert calls and all(c == (torch.int8, torch.int8) for c in calls)  # the ungrouped layers ran int8 x int8

    with torch.no_grad():
        sim, out = q(batches[0]), int_model(batches[0])
    assert out.keys() == sim.keys()
    for key in sim:  # end to end: a few codes of later layers flip at their rounding boundaries
        err = (out[key] - sim[key]).abs()
        scale = sim[key].abs().max()
        assert err.max() <= 0.05 * scale and err.mean() <= 1e-3 * scale, key


def test_the_output_grid_has_headroom_for_values_beyond_the_calibration_batches():
    q, batches = _quantized(8)
    louder = [2.5 * b for b in batches]  # pre-activations beyond the calibration maximum
    saturated = min(compare_layers(to_integer(q, batches, headroom=1.0), q, louder).values())
    assert saturated < 0.99  # measured 0.94: clipped at int16
    int_model = to_integer(q, batches)
    assert min(compare_layers(int_model, q, louder).values()) >= 0.999  # measured 1.0
    with torch.no_grad():
        sim, out = q(louder[0]), int_model(louder[0])
    for key in sim:
        assert (out[key] - sim[key]).abs().mean() <= 1e-3 * sim[key].abs().max(), key


def test_compare_layers_sees_an_integer_error():
    q, batches = _quantized(8)
    int_model = to_integer(q, batches)
    layer = int_model.integer_layers()["down"]
    layer.multiplier.copy_(layer.multiplier * 101 // 100)  # a 1% wrong rescale
    shares = compare_layers(int_model, q, batches)
    assert shares["down"] < 0.9 and shares["stem"] == 1.0


def test_integer_weights_are_integer_codes_and_state_has_no_float_weight():
    q, batches = _quantized(4)
    int_model = to_integer(q, batches)
    layer = int_model.integer_layers()["stem"]
    assert layer.w_t.dtype == torch.int8 and layer.w_t.min() >= -8 and layer.w_t.max() <= 7
    for buf in ("bias_acc", "correction", "multiplier", "shift", "p"):
        assert getattr(layer, buf).dtype == torch.int64
    sim_w = q.stem.weight_quant(q.stem.weight)
    s_w = q.stem.weight_quant.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(layer.w_t[0].t().reshape_as(sim_w).float() * s_w, sim_w)
    assert not any(k.endswith("stem.weight") for k in int_model.state_dict())


def test_report_names_kinds_bits_and_output_scales():
    q, batches = _quantized(4, overrides=[{"pattern": "fc", "w_bits": 8, "a_bits": 2}])
    q.mix.input_quant.disable()
    pre = {}
    hook = q.dw.register_forward_hook(lambda m, i, o: pre.__setitem__("dw", max(pre.get("dw", 0), o.abs().max().item())))
    int_model = to_integer(q, batches)
    hook.remove()
    report = {r["name"]: r for r in int_model.report}
    assert list(report) == list(quantized_layers(q))
    assert all(set(r) == {"name", "kind", "w_bits", "a_bits", "out_scale"} for r in int_model.report)
    assert report["fc"]["w_bits"] == 8 and report["fc"]["a_bits"] == 2 and report["fc"]["kind"] == "integer"
    assert report["mix"]["kind"] == "float: input quantizer disabled" and report["mix"]["out_scale"] is None
    assert report["mix"]["a_bits"] is None and report["mix"]["w_bits"] == 4
    assert report["dw"]["out_scale"] == pytest.approx(HEADROOM * pre["dw"] / INT16_MAX)
    assert "mix" not in compare_layers(int_model, q, batches)
    with torch.no_grad():  # the float layer is the simulation's own
        torch.testing.assert_close(int_model.mix(torch.ones(1, 16, 4, 4)), q.mix(torch.ones(1, 16, 4, 4)))
    assert int_model.describe() == "tiny"  # the model's own methods are there for evaluation code


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_shift_exact_laq_weights_run_as_shifts_and_match(bits):
    q, batches = _quantized(bits, laq_patterns=("mix", "down"), laq_on="weights", laq_shift_exact=True)
    assert q.mix.weight_quant.shift_steps() is not None
    int_model = to_integer(q, batches)
    kinds = {r["name"]: r["kind"] for r in int_model.report}
    assert kinds["mix"] == kinds["down"] == "integer, LAQ shifts" and kinds["stem"] == "integer"
    shares = compare_layers(int_model, q, batches)
    assert min(shares.values()) >= 0.999, shares
    layer = int_model.integer_layers()["down"]
    assert layer.masks.dtype == torch.int8 and layer.masks.abs().max() == 1  # products are shifted sums
    with torch.no_grad():
        err = (int_model(batches[0])["logits"] - q(batches[0])["logits"]).abs().max()
    assert err <= 0.05 * q(batches[0])["logits"].abs().max()


def test_general_k_laq_weights_and_laq_inputs_stay_float():
    q, batches = _quantized(4, laq_patterns=("mix",), laq_on="weights")
    q.mix.weight_quant.log2_k.data.fill_(math.log2(1 / 2.5))  # 2.5 levels per octave: not shifts
    assert q.mix.weight_quant.shift_steps() is None
    int_model = to_integer(q, batches)
    kinds = {r["name"]: r["kind"] for r in int_model.report}
    assert kinds["mix"] == "float: general-k LAQ weights (levels are not powers of two)"
    assert kinds["fc"] == "integer" and not isinstance(int_model.mix, IntegerLayer)
    assert min(compare_layers(int_model, q, batches).values()) >= 0.999

    q, batches = _quantized(4, laq_patterns=("mix",), laq_on="activations")
    kinds = {r["name"]: r["kind"] for r in to_integer(q, batches).report}
    assert kinds["mix"].startswith("float: LAQ input quantizer")

    q, batches = _quantized(4, a_granularity="per_channel")
    kinds = {r["name"]: r["kind"] for r in to_integer(q, batches).report}
    assert kinds["stem"] == "float: per-channel input scales"


def test_learned_scales_that_crossed_zero_use_the_simulations_step():
    q, batches = _quantized(8)
    with torch.no_grad():  # LSQ can drive a scale through zero; the grid step is |scale|
        q.down.weight_quant.scale[::3] *= -1
        q.mix.input_quant.scale.neg_()
    int_model = to_integer(q, batches)
    assert [r["kind"] for r in int_model.report] == ["integer"] * 5
    assert min(compare_layers(int_model, q, batches).values()) >= 0.999


def test_per_tensor_weights_and_uncalibrated_model():
    q, batches = _quantized(4, w_granularity="per_tensor")
    int_model = to_integer(q, batches)
    assert min(compare_layers(int_model, q, batches).values()) >= 0.999
    fresh = quantize(Net().eval(), QuantConfig())
    with pytest.raises(ExportError, match="never calibrated"):
        to_integer(fresh, batches)


class CosineHead(nn.Module):
    """Reads its layer's weights besides calling it, as the keypoint model's cosine logits do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        weight = self.fc.weight_quant(self.fc.weight) if hasattr(self.fc, "weight_quant") else self.fc.weight
        return self.fc(torch.relu(self.conv(x))) / weight.flatten(1).norm(dim=1)[None, :, None, None]


def test_a_model_reading_layer_weights_runs_integer():
    torch.manual_seed(0)
    q = quantize(CosineHead().eval(), QuantConfig(w_bits=8, a_bits=8), example_input=_batches()[0])
    calibrate_ranges(q, _batches(), progress=False)
    model = to_integer(q, _batches())
    assert [r["kind"] for r in model.report] == ["integer", "integer"]
    shares = compare_layers(model, q, _batches())
    assert min(shares.values()) >= 0.999
    with torch.no_grad():
        want, got = q(_batches()[0]), model(_batches()[0])
    assert (got - want).abs().max() < 0.05 * want.abs().max()
