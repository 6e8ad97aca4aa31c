"""benchmarks/profile_openvino.py profiles a graph at the settings deploy.py times with, and at the
plugin's default float precision when asked."""
import pytest
import torch
from torch import nn

from script_files import load_script

pytest.importorskip("openvino")


def _script():
    return load_script("benchmarks/profile_openvino.py")


@pytest.mark.parametrize("precision", ["f32", "default"])
def test_profile_times_a_graph_and_lists_its_convolution(tmp_path, precision):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 1)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    median_ms, kinds, nodes = _script().profile(str(path), threads=1, batch=2, size=16, calls=3, precision=precision)
    assert median_ms > 0
    assert sum(count for _, count, node_type, _ in kinds if node_type == "Convolution") == 2
    assert len(nodes) >= 2 and all(ms >= 0 for ms, *_ in nodes)


def test_profile_refuses_an_unknown_precision(tmp_path):
    with pytest.raises(ValueError, match="precision='bf16': choose f32 or default"):
        _script().profile(str(tmp_path / "net.onnx"), threads=1, batch=1, size=16, calls=1, precision="bf16")
