"""ONNX QDQ export: the graph computes what the simulation computes (onnxruntime, OpenVINO), passes
onnx.checker, carries each layer's own bits, and every way it can fail says why."""
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lightning_ptq.calib import calibrate_ranges  # noqa: E402
from lightning_ptq.export import ExportError, to_onnx  # noqa: E402
from lightning_ptq.export.runtimes import RuntimeModel, output_differences  # noqa: E402
from lightning_ptq.quant import LayerOverride, QuantConfig, quantize, quantized_layers  # noqa: E402
from lightning_ptq.quant.layers import QuantConv2d  # noqa: E402
from lightning_ptq.quant.quantizer import QuantizerBase  # noqa: E402


class Net(nn.Module):
    """Conv + BN + SiLU, a strided conv, a depthwise conv, a residual add, a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU())
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.down(self.stem(x))
        y = y + self.dw(y)
        return {"logits": self.head(y.mean((2, 3))), "features": y}


def images(n=4, seed=0):
    torch.manual_seed(seed)
    return torch.rand(n, 3, 16, 16)


def calibrated(cfg: QuantConfig) -> nn.Module:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # a BN that is not the identity, so folding matters
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    q = quantize(net, cfg, example_input=images())
    calibrate_ranges(q, [images(8, s) for s in range(3)], progress=False)
    return q.eval()


def ort_session(path, optimize: bool):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


CONFIGS = {
    "w8a8": QuantConfig(w_bits=8, a_bits=8),
    "w4a4": QuantConfig(w_bits=4, a_bits=4),
    "w3a5": QuantConfig(w_bits=3, a_bits=5),  # widths without an ONNX type: 8-bit types + Clip
    "mixed": QuantConfig(w_bits=4, a_bits=4, overrides=(LayerOverride("down.*", w_bits=8, a_bits=8),
                                                         LayerOverride("head", float_=True))),
    "laq": QuantConfig(w_bits=4, a_bits=4, laq_patterns=["dw", "head"], laq_on="both"),
    "laq_shift": QuantConfig(w_bits=4, a_bits=4, laq_patterns=["dw", "head"], laq_on="weights",
                             laq_shift_exact=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_as_written_equals_the_simulation(name, tmp_path):
    q = calibrated(CONFIGS[name])
    report = to_onnx(q, images(), tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    x = images(3, seed=7)  # another batch size than the example: the batch is dynamic
    got = ort_session(report.path, optimize=False).run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = q(x)
    assert [o.name for o in ort_session(report.path, False).get_outputs()] == ["logits", "features"]
    for out, key in zip(got, ("logits", "features")):
        np.testing.assert_allclose(out, want[key].numpy(), atol=2e-5, rtol=1e-5)
    assert len(report.layers) == len(quantized_layers(q))


def layer_input_codes(q, x):
    codes = {}
    for name, layer in quantized_layers(q).items():
        if layer.input_quant.is_active:
            layer.register_forward_pre_hook(lambda m, inp, name=name: codes.__setitem__(name, m.input_quant.codes(inp[0])))
    with torch.no_grad():
        q(x)
    return codes


@pytest.mark.parametrize("name", ["w8a8", "w4a4"])
def test_optimized_runtime_codes_within_one_step(name, tmp_path):
    """onnxruntime fuses DQ -> Conv -> Q into integer kernels (int32 bias, its own rounding), so a
    code may move by one grid step; never by more."""
    q = calibrated(CONFIGS[name])
    to_onnx(q, images(), tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    want = layer_input_codes(q, images(8, seed=3))
    for layer in want:  # each layer's input codes as an extra output (in uint8: numpy has no uint4)
        model.graph.node.append(onnx.helper.make_node("Cast", [f"{layer}.input_codes"], [f"{layer}.probe"],
                                                      to=onnx.TensorProto.UINT8))
        model.graph.output.append(onnx.helper.make_tensor_value_info(f"{layer}.probe", onnx.TensorProto.UINT8, None))
    onnx.save(model, str(tmp_path / "probe.onnx"))
    got = ort_session(tmp_path / "probe.onnx", optimize=True).run([f"{n}.probe" for n in want],
                                                                   {"images": images(8, seed=3).numpy()})
    for (layer, ref), out in zip(want.items(), got):
        step = np.abs(out.astype(np.int64) - ref.numpy())
        assert step.max() <= 1, layer
        assert (step == 0).mean() >= 0.95, layer


def test_report_says_how_each_layer_went_in(tmp_path):
    counts = to_onnx(calibrated(CONFIGS["mixed"]), images(), tmp_path / "m.onnx").counts
    assert counts == {"int4 codes, DequantizeLinear per channel": 2, "int8 codes, DequantizeLinear per channel": 1}
    laq = to_onnx(calibrated(CONFIGS["laq"]), images(), tmp_path / "l.onnx")
    assert laq.counts["log-affine 4-bit, float values (k not shift-exact)"] == 2
    assert {layer.input for layer in laq.layers if layer.name in ("dw", "head")} == {
        "log-affine 4-bit rounding in float ops"}
    shift = to_onnx(calibrated(CONFIGS["laq_shift"]), images(), tmp_path / "s.onnx")
    assert shift.counts["log-affine int4 codes, levels s*2^shift (shift-exact)"] == 2
    types = {t.name: t.data_type for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert types["stem.0.weight_codes"] == onnx.TensorProto.INT4
    assert types["stem.0.input_zero_point"] == onnx.TensorProto.UINT4
    assert types["down.0.weight_codes"] == onnx.TensorProto.INT8
    assert "head.weight_codes" not in types  # the float layer has no Q/DQ
    codes = {t.name: t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert len(codes["stem.0.weight_codes"].raw_data) == 8 * 3 * 3 * 3 // 2  # int4 packed two per byte
    assert len(codes["down.0.weight_codes"].raw_data) == 16 * 8 * 3 * 3


def test_8bit_types_with_clip_and_openvino(tmp_path):
    """``int4_types=False`` carries 4-bit codes in 8-bit types (same numbers); OpenVINO runs it."""
    pytest.importorskip("openvino")
    q = calibrated(CONFIGS["w4a4"])
    report = to_onnx(q, images(), tmp_path / "m.onnx", opset=13, int4_types=False)
    assert set(report.counts) == {"4-bit codes in int8, DequantizeLinear per channel"}
    x = images(2, seed=5)
    for runtime in ("onnxruntime", "openvino"):
        model = RuntimeModel(report.path, q, x, runtime, threads=1, optimize=False)
        diffs = output_differences(model, q, [x])
        assert set(diffs) == {"['logits']", "['features']"}
        assert max(d["max_abs"] for d in diffs.values()) < 1e-3, runtime
        assert set(model(x)) == {"logits", "features"}


# -- bad input ----------------------------------------------------------------------------------
def test_uncalibrated_model(tmp_path):
    q = quantize(Net().eval(), QuantConfig(), example_input=images())
    with pytest.raises(ExportError, match=r"layer 'stem.0' was never calibrated .*calibrate\(fp_model, qmodel"):
        to_onnx(q, images(), tmp_path / "m.onnx")


def test_unknown_layer_and_quantizer_types(tmp_path):
    class MyConv(QuantConv2d):
        pass

    q = calibrated(CONFIGS["w8a8"])
    q.dw.__class__ = MyConv
    with pytest.raises(ExportError, match=r"layer 'dw' is a MyConv, which the ONNX exporter does not know"):
        to_onnx(q, images(), tmp_path / "m.onnx")

    class MyQuantizer(QuantizerBase):
        pass

    q = calibrated(CONFIGS["w8a8"])
    q.dw.input_quant = MyQuantizer(8)
    with pytest.raises(ExportError, match=r"layer 'dw': its input quantizer is a MyQuantizer.*known: UniformQuantizer"):
        to_onnx(q, images(), tmp_path / "m.onnx")


def test_bits_the_opset_cannot_carry(tmp_path):
    q = calibrated(CONFIGS["w4a4"])
    with pytest.raises(ExportError, match=r"4-bit weights, and opset=13 has no int4 / uint4 types .*opset=21"):
        to_onnx(q, images(), tmp_path / "m.onnx", opset=13)
    with pytest.raises(ExportError, match=r"opset=11 is too old: QDQ export needs opset >= 13"):
        to_onnx(q, images(), tmp_path / "m.onnx", opset=11)


def test_missing_onnx_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ExportError, match=r"needs onnxscript, which is not installed: pip install 'lightning_ptq\[deploy\]'"):
        to_onnx(calibrated(CONFIGS["w8a8"]), images(), tmp_path / "m.onnx")


def test_untraceable_forward_names_the_module(tmp_path):
    class Gate(nn.Module):
        def forward(self, x):
            if x.mean() > 0.5:  # data-dependent control flow: no static graph
                return x * 2
            return x

    class Gated(Net):
        def __init__(self):
            super().__init__()
            self.gate = Gate()

        def forward(self, x):
            y = self.gate(self.down(self.stem(x)))
            return self.head((y + self.dw(y)).mean((2, 3)))

    torch.manual_seed(0)
    q = quantize(Gated().eval(), QuantConfig(w_bits=8, a_bits=8), example_input=images())
    calibrate_ranges(q, [images(8)], progress=False)
    with pytest.raises(ExportError, match=r"could not trace Gated's forward; it failed inside module 'gate' .*"
                                          r"Export the submodule"):
        to_onnx(q, images(), tmp_path / "m.onnx")


def test_unwritable_path(tmp_path):
    q = calibrated(CONFIGS["w8a8"])
    with pytest.raises(ExportError, match=r"is a folder: give a file name"):
        to_onnx(q, images(), tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match=r"cannot write .*file/m.onnx.*choose a folder you can write to"):
        to_onnx(q, images(), blocker / "m.onnx")
    assert blocker.read_text() == "not a folder"
