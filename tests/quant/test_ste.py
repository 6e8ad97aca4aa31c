"""Fake-quant numerics against torch's own learnable fake-quant kernels (forward and gradients)."""
import pytest
import torch

from lightning_ptq.quant.ste import fake_quantize, qrange


def _lsq_factor(x, scale, q_max):
    return 1.0 / ((x.numel() // scale.numel()) * q_max) ** 0.5


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_per_tensor_matches_torch_learnable_fake_quant(bits, signed):
    torch.manual_seed(bits)
    q_min, q_max = qrange(bits, signed)
    x = torch.randn(4, 8, 5, 5) * 2
    scale = torch.tensor([0.37])
    zp = torch.tensor([0.0 if signed else float((q_max + 1) // 2)])
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours_s, ref_s = scale.clone().requires_grad_(), scale.clone().requires_grad_()
    ours_z, ref_z = zp.clone().requires_grad_(), zp.clone().requires_grad_()

    ours = fake_quantize(ours_x, ours_s, ours_z, q_min, q_max)
    ref = torch._fake_quantize_learnable_per_tensor_affine(
        ref_x, ref_s, ref_z, q_min, q_max, _lsq_factor(x, scale, q_max)
    )
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(ours_x.grad, ref_x.grad)
    torch.testing.assert_close(ours_s.grad, ref_s.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_z.grad, ref_z.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_matches_torch_learnable_fake_quant(bits):
    torch.manual_seed(bits)
    q_min, q_max = qrange(bits, signed=True)
    w = torch.randn(6, 3, 3, 3)
    scale = w.abs().amax(dim=(1, 2, 3)) / q_max * 0.8  # some values clip
    zp = torch.zeros(6)
    ours_w, ref_w = w.clone().requires_grad_(), w.clone().requires_grad_()
    ours_s, ref_s = scale.clone().requires_grad_(), scale.clone().requires_grad_()

    ours = fake_quantize(ours_w, ours_s, zp, q_min, q_max, channel_axis=0)
    ref = torch._fake_quantize_learnable_per_channel_affine(
        ref_w, ref_s, zp.clone(), 0, q_min, q_max, _lsq_factor(w, scale, q_max)
    )
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(ours_w.grad, ref_w.grad)
    torch.testing.assert_close(ours_s.grad, ref_s.grad, rtol=1e-4, atol=1e-5)


def test_fake_quantize_output_lies_on_grid():
    x = torch.linspace(-3, 3, 101)
    scale, zp = torch.tensor([0.25]), torch.tensor([0.0])
    out = fake_quantize(x, scale, zp, -8, 7)
    codes = out / 0.25
    torch.testing.assert_close(codes, codes.round())
    assert out.min() == -8 * 0.25 and out.max() == 7 * 0.25
