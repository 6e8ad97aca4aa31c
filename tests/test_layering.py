"""Imports only go down: each part of the package imports only parts of a lower layer (and
itself). A new module or an upward import fails here with the edge that broke the rule."""
import ast
from pathlib import Path

import lightning_ptq

ROOT = Path(lightning_ptq.__file__).parent
LAYERS = [
    {"core", "report"},                                   # errors, io, tree, training, data bases, drawing; tables
    {"quant"},                                            # quantizers, observer, layers, swap
    {"calib", "export"},                                  # calibration; packing, ONNX, runtimes, integer executor
    {"search"},                                           # the per-layer search
    {"pipeline"},                                         # the job's steps
    {"detection", "keypoints", "classify"},               # the tasks: model, data, training, task
    {"job", "hydra_setup", "collect", "callbacks", "__init__"},  # the job, its configs, the collector, the
                                                          # Lightning callbacks (detectors: from detection), the Python API
    {"__main__"},                                         # the command line
]


def _part(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def _imported_parts(path: Path) -> set[str]:
    package = list(path.relative_to(ROOT).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if node.module and node.module.startswith("lightning_ptq."):
                found.add(node.module.split(".")[1])
            continue
        base = package[:len(package) - (node.level - 1)]
        names = [*base, *(node.module or "").split(".")] if node.module else [*base, node.names[0].name]
        found.add([n for n in names if n][0])
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in ROOT.rglob("*.py")}
    assert parts <= set().union(*LAYERS), f"parts without a layer: {sorted(parts - set().union(*LAYERS))}"


def test_imports_only_go_down():
    layer = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _part(path)
        for target in _imported_parts(path) - {source}:
            if layer.get(target, -1) >= layer[source]:
                upward.append(f"{path.relative_to(ROOT)} imports {target} (layer {layer.get(target)} >= {layer[source]})")
    assert not upward, "\n".join(upward)
