"""The integral keypoint model: shapes, bounds, settings errors, quantization, losses, checkpoints."""
import pytest
import torch
import torch.nn.functional as F

from lightning_ptq.calib import KeypointDistillLoss, calibrate_ranges
from lightning_ptq.keypoints import KeypointNet, NonFiniteLogitsError, keypoint_loss
from lightning_ptq.keypoints.model import check_finite
from lightning_ptq.keypoints.train import load_keypoint_model, save_keypoint_model
from lightning_ptq.detection import CheckpointMismatchError
from lightning_ptq.quant import ConfigError, QuantConfig, quantize, quantized_layers

K = 7


@pytest.mark.parametrize("grid, strided", [(8, 3), (16, 2), (32, 1)])
def test_output_shapes_and_stride_per_grid(grid, strided):
    model = KeypointNet(K, image_size=64, grid=grid).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out["coords"].shape == (2, K, 2)
    assert out["x_logits"].shape == (2, K, grid) and out["y_logits"].shape == (2, K, grid)
    assert model.stride == 64 / grid
    assert sum(block[0][0].stride[0] == 2 for block in model.backbone) == strided
    assert ((out["coords"] > 0) & (out["coords"] < 64)).all()


def test_cosine_logits_are_bounded_by_beta():
    torch.manual_seed(0)
    model = KeypointNet(K, beta=3.0).eval()
    out = model(torch.rand(4, 3, 64, 64) * 10)
    for key in ("x_logits", "y_logits"):
        assert out[key].abs().max() <= 3.0 + 1e-5
    assert model.fc.bias is None and KeypointNet(K, logits="linear").fc.bias is not None


def test_learnable_beta_gets_gradients():
    model = KeypointNet(K, beta=5.0, learn_beta=True)
    model(torch.rand(2, 3, 64, 64))["coords"].sum().backward()
    assert model.log_beta.grad is not None and model.beta.item() == pytest.approx(5.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=0.0), r"keypoint.beta=0.0 must be > 0"),
    (dict(beta=-2.0), r"keypoint.beta=-2.0 must be > 0"),
    (dict(grid=1), r"grid=1 is not possible for image_size=64: the grid must be at least 2x2 .* \[64, 32, 16, 8\]"),
    (dict(grid=12), r"grid=12 is not possible"),
    (dict(image_size=8, grid=1), r"grid=1 is not possible for image_size=8.*\[8, 4, 2\]"),
    (dict(logits="softmax"), r"logits='softmax' is unknown: choose one of cosine, linear"),
])
def test_bad_settings_name_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        KeypointNet(K, **kwargs)


def test_every_layer_is_quantized_and_the_cosine_uses_the_quantized_weight():
    torch.manual_seed(0)
    model = KeypointNet(K).eval()
    x = torch.rand(4, 3, 64, 64)
    qmodel = quantize(model, QuantConfig(w_bits=4, a_bits=8, learnable=False), example_input=x)
    calibrate_ranges(qmodel, [x], progress=False)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(quantized_layers(qmodel)) == sorted(convs) and "fc" in convs
    with torch.no_grad():
        dots = qmodel.fc(F.normalize(qmodel.head(qmodel.backbone(x)), dim=1))
        w_q = qmodel.fc.weight_quant(qmodel.fc.weight)
        expected = qmodel.beta * dots / w_q.flatten(1).norm(dim=1)[:, None, None]
        with_float_norm = qmodel.beta * dots / qmodel.fc.weight.flatten(1).norm(dim=1)[:, None, None]
        got = qmodel.cell_logits(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, with_float_norm, atol=1e-4)  # 4-bit weights change the norm


def test_keypoint_loss_is_l1_in_grid_cells_over_visible_points():
    coords = torch.tensor([[[10.0, 10.0], [0.0, 0.0]]])
    target = {"keypoints": torch.tensor([[[12.0, 6.0], [50.0, 50.0]]]), "visible": torch.tensor([[True, False]])}
    assert keypoint_loss(coords, target, stride=8.0).item() == pytest.approx((2 + 4) / 8)


def test_distillation_loss_is_zero_on_identical_outputs_and_positive_otherwise():
    torch.manual_seed(0)
    model = KeypointNet(K).eval()
    out = model(torch.rand(2, 3, 64, 64))
    loss = KeypointDistillLoss(stride=8.0)
    zero, parts = loss(out, out)
    assert zero.item() == pytest.approx(0.0, abs=1e-6) and set(parts) == {"coord_l1", "axis_kl"}
    other = {k: v + 0.5 * torch.randn_like(v) for k, v in out.items()}
    assert loss(other, out)[0].item() > 0.01
    with pytest.raises(ValueError, match="lambda_coord=-1 and lambda_dist=1.0 must be >= 0"):
        KeypointDistillLoss(8.0, lambda_coord=-1)


def test_nan_output_names_the_first_module_that_produced_it():
    model = KeypointNet(K).eval()
    with torch.no_grad():
        model.backbone[1][0][0].weight[0, 0, 0, 0] = float("nan")
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(NonFiniteLogitsError, match=r"first module with a non-finite output is 'backbone.1.0.0'"):
        check_finite(model, images, model(images))


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    model = KeypointNet(K, grid=16, beta=7.0).eval()
    kwargs = {"grid": 16, "beta": 7.0}
    path = save_keypoint_model(model, tmp_path / "kp.pt", kwargs, [f"p{i}" for i in range(K)])
    loaded = load_keypoint_model(path, K, 64, {}).eval()  # the stored settings win
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x)["coords"], model(x)["coords"])
    with pytest.raises(CheckpointMismatchError, match="trained with num_keypoints=7 but the data has num_keypoints=5"):
        load_keypoint_model(path, 5, 64, {})
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state_dict with the wrong settings
    with pytest.raises(CheckpointMismatchError, match="does not fit the keypoint model"):
        load_keypoint_model(tmp_path / "bare.pt", K, 64, {"widths": [8, 16, 32]})
