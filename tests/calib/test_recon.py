"""Block reconstruction: block discovery, call order, lower block error after fitting, QDrop,
frozen weights, resume after an interruption, bad settings."""
import pytest
import torch
from torch import nn

from lightning_ptq.calib import calibrate_ranges
from lightning_ptq.calib.recon import _call_order, _capture, find_blocks, qdrop_hooks, reconstruct
from lightning_ptq.detection import YOLO
from lightning_ptq.quant import ConfigError, QuantConfig, quantize


def _tiny_yolo():
    torch.manual_seed(0)
    return YOLO(num_classes=3, width_mult=0.125, depth_mult=0.33, image_size=64).eval()


def _quantized(fp, batches, bits=4):
    q = quantize(fp, QuantConfig(w_bits=bits, a_bits=bits))
    calibrate_ranges(q, batches, progress=False)
    return q


def _batches(n=4, size=64):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(2, 3, size, size, generator=g) for _ in range(n)]


def _block_error(fp, q, name, batches):
    """Error of block ``name`` of ``q`` against the same block of ``fp`` (a model without BN, so
    its modules are the float reference as they are), on the inputs ``q`` gives it."""
    samples = _capture(q, name, batches, lambda m, b: m(b), reference=fp)
    with torch.no_grad():
        return sum((q.get_submodule(name)(*args) - out).pow(2).mean().item() for args, out in samples)


def test_blocks_cover_every_quantized_layer_once_and_respect_max_layers():
    q = _quantized(_tiny_yolo(), _batches(1))
    blocks = find_blocks(q, max_layers=4)
    layers = {n for n, m in q.named_modules() if hasattr(m, "weight_quant")}
    covered = [n for n in layers if any(n == b or n.startswith(b + ".") for b in blocks)]
    assert sorted(covered) == sorted(layers)
    for b in blocks:
        inside = [n for n in layers if n == b or n.startswith(b + ".")]
        assert 1 <= len(inside) <= 4, (b, inside)
    assert "head" not in blocks and "stage3" not in blocks  # too big: split into children


def test_call_order_follows_the_forward_pass():
    q = _quantized(_tiny_yolo(), _batches(1))
    order = _call_order(q, ["head.cls.0", "stem", "top_down3"], _batches(1)[0], lambda m, b: m(b))
    assert order == ["stem", "top_down3", "head.cls.0"]


def _convnet():
    torch.manual_seed(0)
    block = lambda c_in, c_out: nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),  # noqa: E731
                                               nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())
    return nn.Sequential(block(3, 8), block(8, 8), nn.Conv2d(8, 4, 1)).eval()


def test_reconstruction_lowers_block_and_output_error_and_keeps_weights():
    fp, batches = _convnet(), _batches(4, size=16)
    q = _quantized(fp, batches, bits=2)
    weights = {n: p.clone() for n, p in q.named_parameters() if n.endswith("weight")}
    before = {name: _block_error(fp, q, name, batches) for name in ("0", "1")}
    with torch.no_grad():
        out_before = (q(batches[0]) - fp(batches[0])).pow(2).mean()
    losses = reconstruct(q, batches, steps=60, lr=3e-3, drop_prob=0.0, max_layers=2, progress=False)
    assert list(losses) == ["0", "1", "2"]
    assert _block_error(fp, q, "0", batches) < 0.85 * before["0"]  # measured: 0.77x
    with torch.no_grad():
        out_after = (q(batches[0]) - fp(batches[0])).pow(2).mean()
    assert out_after < 0.95 * out_before  # measured: 0.84x
    for n, p in q.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], msg=f"{n} changed: only quantizer parameters may")


def test_reconstruction_with_weight_lr_moves_the_weights_and_fits_the_block_closer():
    fp, batches = _convnet(), _batches(4, size=16)
    fp_state = {k: v.clone() for k, v in fp.state_dict().items()}
    errors = {}
    for weight_lr in (0.0, 0.01):
        q = _quantized(fp, batches, bits=2)
        weights = {n: p.clone() for n, p in q.named_parameters() if n.endswith("weight")}
        flags = {n: p.requires_grad for n, p in q.named_parameters()}
        reconstruct(q, batches, steps=60, lr=3e-3, weight_lr=weight_lr, drop_prob=0.0, max_layers=2,
                    progress=False, seed=0)
        moved = [n for n, p in q.named_parameters() if n in weights and not torch.equal(p, weights[n])]
        assert sorted(moved) == (sorted(weights) if weight_lr > 0 else []), moved
        assert {n: p.requires_grad for n, p in q.named_parameters()} == flags  # restored afterwards
        errors[weight_lr] = _block_error(fp, q, "0", batches)
    assert errors[0.01] < 0.9 * errors[0.0]  # measured: 0.77x
    for k, v in fp.state_dict().items():  # the float model (which the quantized one copied) is untouched
        torch.testing.assert_close(v, fp_state[k])


def test_with_weight_tuning_every_block_is_fitted_to_the_untuned_float_network(monkeypatch):
    """Once a block's weights are tuned, the quantized model with quantizers off is no longer the
    float network; later blocks must still be fitted to the float network's outputs."""
    import lightning_ptq.calib.recon as recon

    fp, batches = _convnet(), _batches(2, size=16)
    q = _quantized(fp, batches, bits=2)
    with torch.no_grad():
        expected = fp[1](fp[0](batches[0]))  # the float output of block "1" (no BN to fold here)
    fit, targets = recon._fit_block, {}

    def recording_fit(block, groups, samples, *args):
        targets[next(n for n, m in q.named_children() if m is block)] = samples[0][1]
        return fit(block, groups, samples, *args)

    monkeypatch.setattr(recon, "_fit_block", recording_fit)
    reconstruct(q, batches, steps=30, lr=3e-3, weight_lr=0.2, drop_prob=0.0, max_layers=2, progress=False)
    torch.testing.assert_close(targets["1"], expected)


def test_qdrop_bypasses_activation_quantization_while_fitting_only():
    fp, batches = _convnet(), _batches(1, size=16)
    q = _quantized(fp, batches, bits=2)
    layer = q[0][0]
    x = batches[0]
    quantized = layer.input_quant(x)
    hooks = qdrop_hooks(q[0], drop_prob=0.5)
    mixed = layer.input_quant(x)
    for h in hooks:
        h.remove()
    from_float, from_quant = mixed.eq(x), mixed.eq(quantized)
    assert (from_float | from_quant).all()
    assert 0.4 < from_float[~from_quant].numel() / x.numel() < 0.6  # about half bypassed
    reconstruct(q, batches, steps=2, drop_prob=0.5, progress=False)
    assert all(not m._forward_hooks for m in q.modules())  # no random bypass left behind
    after = layer.input_quant  # its range was fitted: compare with its own plain rounding of x
    torch.testing.assert_close(after(x), after.quantize(x), rtol=0, atol=0)


def test_interrupted_reconstruction_resumes_after_the_last_finished_block(tmp_path, monkeypatch):
    fp, batches = _convnet(), _batches(2, size=16)
    q = _quantized(fp, batches)
    blocks = ["0", "1", "2"]
    import lightning_ptq.calib.recon as recon

    fit, calls = recon._fit_block, []

    def failing_fit(block, *args):
        calls.append(block)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(block, *args)

    monkeypatch.setattr(recon, "_fit_block", failing_fit)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(q, batches, steps=3, blocks=blocks, checkpoint_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "recon_state.pt", weights_only=True)
    assert list(saved["losses"]) == ["0"]

    monkeypatch.setattr(recon, "_fit_block", fit)
    fresh = _quantized(fp, batches)
    losses = reconstruct(fresh, batches, steps=3, blocks=blocks, checkpoint_dir=tmp_path, progress=False)
    assert list(losses) == ["0", "1", "2"] and calls == [q[0], q[1]]  # block "0" was not refitted
    assert losses["0"] == saved["losses"]["0"]
    scale = "0.0.weight_quant.scale"
    torch.testing.assert_close(fresh.state_dict()[scale], saved["state_dict"][scale])


@pytest.mark.parametrize("kwargs, match", [
    ({"drop_prob": 1.0}, r"drop_prob=1.0 must lie in \[0, 1\)"),
    ({"steps": 0}, r"steps=0 must be >= 1"),
    ({"blocks": ["nothing.here"]}, r"nothing"),
    ({"weight_lr": -0.1}, r"weight_lr=-0.1 must be >= 0"),
])
def test_bad_settings(kwargs, match):
    fp, batches = _convnet(), _batches(1, size=16)
    q = _quantized(fp, batches)
    with pytest.raises((ValueError, AttributeError), match=match):
        reconstruct(q, batches, progress=False, **kwargs)


def test_empty_calibration_set_is_an_error():
    fp = _convnet()
    q = _quantized(fp, _batches(1, size=16))
    with pytest.raises(ValueError, match="calibration set is empty"):
        reconstruct(q, [], progress=False)


def test_find_blocks_rejects_max_layers_below_one():
    with pytest.raises(ValueError, match="max_layers=0 must be >= 1"):
        find_blocks(nn.Conv2d(1, 1, 1), max_layers=0)


def test_global_calibration_with_qdrop_learns_and_leaves_no_hook_behind():
    from lightning_ptq.calib import CalibConfig, calibrate
    fp, batches = _convnet(), _batches(2, size=16)
    q = _quantized(fp, batches, bits=2)
    before = q[0][0].input_quant.scale.clone()
    calibrate(fp, q, batches, CalibConfig(steps=4, lr=1e-2, drop_prob=0.5),
              trainer_kwargs=dict(enable_progress_bar=False, accelerator="cpu"))
    assert not torch.equal(q[0][0].input_quant.scale, before)
    assert all(not m._forward_hooks for m in q.modules())
    with pytest.raises(ConfigError, match=r"calib.drop_prob=1.5 must lie in \[0, 1\)"):
        CalibConfig(steps=1, drop_prob=1.5)


class _ExtendsItsInput(nn.Module):
    """Like torchvision's LastLevelP6P7: appends to the list it is given and returns it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, features: list):
        features.append(self.conv(features[-1]))
        return features


class _Pyramid(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.extra = nn.Conv2d(3, 4, 3, padding=1), _ExtendsItsInput()

    def forward(self, x):
        return self.extra([self.stem(x)])


def test_block_that_extends_its_input_list_in_place_is_fitted_on_what_it_was_given():
    torch.manual_seed(0)
    fp, batches = _Pyramid().eval(), _batches(2, size=16)
    q = _quantized(fp, batches, bits=2)
    before = q.extra.conv.weight_quant.scale.clone()
    losses = reconstruct(q, batches, steps=5, lr=1e-2, blocks=["stem", "extra"], drop_prob=0.0, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert not torch.equal(q.extra.conv.weight_quant.scale, before)


class _ConvThenSiblingBN(nn.Module):
    """Like torchvision's ResNet stem: conv1 and bn1 are siblings, so a block "conv1" holds a
    conv whose BN is folded into it by quantize()."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-1, 1)
            self.bn1.running_var.uniform_(0.5, 2)
            self.bn1.weight.uniform_(0.5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn1(self.conv1(x))))


def test_a_block_with_a_folded_bn_is_fitted_to_the_folded_float_output():
    torch.manual_seed(0)
    fp, batches = _ConvThenSiblingBN().eval(), _batches(2, size=16)
    q = _quantized(fp, batches, bits=4)
    samples = _capture(q, "conv1", batches, lambda m, b: m(b))
    (args, target), _ = samples
    with torch.no_grad():  # BN included: the float model's own conv1 output would lack it
        torch.testing.assert_close(target, fp.bn1(fp.conv1(batches[0])), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(args[0], batches[0])
    assert q.conv1.input_quant.is_active  # quantization switched back on after the float pass


def test_calibration_settings_are_checked_once_when_built_and_unknown_keys_are_named():
    from lightning_ptq.calib import CalibConfig, ReconConfig

    assert CalibConfig(recon={"steps": 5}).recon == ReconConfig(steps=5)
    with pytest.raises(ConfigError, match=r"calib.recon.max_layers=0 must be a positive integer"):
        ReconConfig(max_layers=0)
    with pytest.raises(ConfigError, match=r"calib.stesp is not a setting \(allowed: steps, lr, init_batches, "
                                          r"drop_prob, weight_lr, recon, holdout, keep_better\); did you mean calib.steps\?"):
        CalibConfig.from_dict({"stesp": 3})
    with pytest.raises(ConfigError, match=r"calib.recon.setps is not a setting .*did you mean calib.recon.steps\?"):
        CalibConfig(recon={"setps": 3})
    with pytest.raises(TypeError, match=r"config must be a CalibConfig, got dict"):
        from lightning_ptq.calib import calibrate
        calibrate(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), [torch.rand(1, 3, 4, 4)], {"steps": 3})
