"""The small ResNet: shapes, stages, exact BN folding, checkpoints and their errors."""
import pytest
import torch
from torch import nn

from lightning_ptq.classify import BasicBlock, TinyResNet, load_classifier, save_classifier
from lightning_ptq.detection import CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError
from lightning_ptq.quant import fold_batchnorm
from lightning_ptq.quant.fold import find_conv_bn_pairs


def trained_like(model):
    """Random BN statistics and affine parameters, so that folding has something to fold."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def test_stages_and_shapes():
    model = TinyResNet(10)
    assert [name for name, _ in model.named_children()] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert [name for name, _ in model.stem.named_children()] == ["conv", "bn", "act"]
    block = model.layer2[0]
    assert isinstance(block, BasicBlock)
    assert [name for name, _ in block.named_children()] == ["conv1", "conv2", "shortcut", "act"]
    assert [name for name, _ in block.conv2.named_children()] == ["conv", "bn"]
    assert isinstance(model.layer1[0].shortcut, nn.Identity) and block.shortcut.conv.stride == (2, 2)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    x = torch.rand(2, 3, 32, 32)
    for name, stage in model.named_children():
        x = stage(x)
        if name == "layer3":
            assert x.shape == (2, 64, 8, 8)
    assert x.shape == (2, 10)
    deeper = TinyResNet(12, widths=(8, 16), depths=(2, 2))
    assert len(deeper.layer2) == 2 and deeper(torch.rand(1, 3, 24, 24)).shape == (1, 12)


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (16, 32), "depths": (1, 1, 1)}, "same length"),
    ({"widths": (16, 0, 64)}, "positive ints"),
    ({"num_classes": 1}, "num_classes must be an int >= 2, got 1"),
])
def test_bad_architecture_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyResNet(**{"num_classes": 10, **kwargs})


def test_batchnorm_folds_exactly():
    model = trained_like(TinyResNet(10))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    pairs = fold_batchnorm(model, example_input=x)
    assert len(pairs) == 1 + 3 * 2 + 2  # stem, two convs per block, two strided shortcuts
    assert not find_conv_bn_pairs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip(tmp_path):
    kwargs = {"widths": [8, 16, 16], "depths": [1, 1, 1]}
    model = trained_like(TinyResNet(10, **kwargs))
    path = save_classifier(model, tmp_path / "m.pt", kwargs, [f"c{i}" for i in range(10)], {"test/acc": 0.9}, 32)
    loaded = load_classifier(path).eval()  # architecture from the file
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert load_classifier(path, num_classes=10, image_size=32).widths == (8, 16, 16)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "lightning_ptq.classifier/1" and payload["metrics"] == {"test/acc": 0.9}
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state_dict needs the kwargs
    assert load_classifier(tmp_path / "bare.pt", kwargs).num_classes == 10


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=str(tmp_path / "none.pt")):
        load_classifier(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError, match=rf"{tmp_path / 'bad.pt'} cannot be read"):
        load_classifier(tmp_path / "bad.pt")
    model = TinyResNet(10)
    path = save_classifier(model, tmp_path / "m.pt", {}, [str(i) for i in range(10)], image_size=32)
    with pytest.raises(CheckpointMismatchError, match=r"num_classes=10 but the data has num_classes=5"):
        load_classifier(path, num_classes=5)
    with pytest.raises(CheckpointMismatchError, match=r"image_size=32 but the data has image_size=64"):
        load_classifier(path, image_size=64)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch"):
        load_classifier(tmp_path / "bare.pt", {"widths": [8, 16, 32]})
