"""Load a script of the repository (examples/, benchmarks/) as a module, as a user runs it: those
folders are not packages."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """The module of ``REPO / relative_path``, e.g. ``load_script("examples/torchvision_lightning.py")``."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
