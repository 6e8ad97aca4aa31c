"""Atomic writes: a result or checkpoint on disk is always either the old or the new one, never
half-written (write to a temporary file in the same folder, then ``os.replace``); and the
checkpoint an interrupted Lightning run resumes from."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_json(obj, path: str | Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    return atomic_write(path, write)


def atomic_torch_save(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def resume_checkpoint(dirpath: str | Path, **when) -> ModelCheckpoint:
    """A callback that keeps one ``dirpath/last.ckpt``, rewritten whenever ``when`` says
    (``save_on_train_epoch_end=True``, ``every_n_train_steps=N``, ...), for ``fit(ckpt_path=...)``.

    Not ``ModelCheckpoint(save_top_k=0, save_last=True)``: Lightning 2.6 writes ``last.ckpt``
    only next to a top-k checkpoint, so that never writes it before the run ends."""
    return ModelCheckpoint(dirpath=dirpath, filename="last", save_top_k=1, enable_version_counter=False, **when)
