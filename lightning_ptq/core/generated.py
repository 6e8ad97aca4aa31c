"""Writing a generated dataset so that nothing half-done or foreign is ever used or destroyed.

Each generator describes its output by a ``meta`` dict (generator name, version, every
parameter). :func:`write_generated_dataset` returns at once when ``root/meta.json`` records the
same dict; otherwise it writes every split into a temporary sibling folder and moves it into
place, so an interrupted run never leaves a dataset that looks complete. A non-empty ``root``
without a ``meta.json`` may hold someone's data: it is refused, never replaced.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

# write_split(out folder, split name, image count, first image id)
SplitWriter = Callable[[Path, str, int, int], None]


class NotAGeneratedDatasetError(UserError, FileExistsError):
    """``root`` holds files that no generator of this project wrote; they are not replaced."""


def write_generated_dataset(root: str | os.PathLike, meta: dict, splits: dict[str, int],
                            write_split: SplitWriter) -> Path:
    """Write ``splits`` (name -> image count) with ``write_split`` under ``root``, image ids
    unique across splits, then ``meta.json``; see the module docstring. Returns ``root``."""
    root = Path(root)
    if _read_meta(root) == meta:
        return root
    if root.is_dir() and any(root.iterdir()) and _read_meta(root) is None:
        raise NotAGeneratedDatasetError(
            f"Cannot generate the synthetic dataset in {root}: the folder is not empty and has no "
            f"meta.json from this generator, so it may hold your own data. Point data.root at an "
            f"empty or new folder, or set data.generate_default=false to use the data in it."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        log.info("Generating %s %s in %s", meta.get("generator"), splits, root)
        first_id = 1
        for split, count in splits.items():
            write_split(tmp, split, count, first_id)
            first_id += count
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _install(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_root(root: str | os.PathLike | None, default_root: str | os.PathLike | None,
                 generate_default: bool) -> tuple[Path, bool]:
    """``(folder, whether to generate the embedded default data there)``. ``root=None`` means the
    embedded default at ``default_root``, generated there on first use. A folder the user names is
    only ever read (a typo in it is an error, not a new dataset), unless ``generate_default=True``
    asks for the default data to be written there."""
    if root is None:
        if default_root is None:
            raise ValueError("data.root is not set and there is no default_root: set data.root=/path/to/your/data.")
        return Path(default_root), True
    return Path(root), bool(generate_default)


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _install(tmp: Path, root: Path) -> None:
    """Move the finished ``tmp`` folder to ``root``, replacing an older generated dataset."""
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.replace(root, old)
    os.replace(tmp, root)
    shutil.rmtree(old, ignore_errors=True)
