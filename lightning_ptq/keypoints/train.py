"""Training, checkpoints and evaluation of the keypoint model.

The FP model the keypoint job starts from is the user's checkpoint or the embedded default,
trained by a Lightning run on the data's train split and cached under a key that hashes every
setting that changes it (as the detectors are: :mod:`lightning_ptq.detection.pretrain`).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.cached_training import train_or_load, train_settings
from ..core.checkpoint import CheckpointMismatchError, read_checkpoint, state_dict_of
from ..core.io import atomic_torch_save, resume_checkpoint
from ..core.optim import adamw_warmup_cosine
from ..core.training import library_trainer, quiet_lightning
from .metrics import KeypointEvaluator, nme
from .model import KeypointNet, check_finite, keypoint_loss

FORMAT = "lightning_ptq.keypoint/1"
TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 32, "lr": 3e-3, "weight_decay": 5e-4, "seed": 0}


class KeypointModule(L.LightningModule):
    """Trains a :class:`KeypointNet` on its coordinate loss (AdamW, warm-up + cosine) and reports
    the validation NME three times during training."""

    def __init__(self, num_keypoints: int, image_size: int = 64, model_kwargs: dict | None = None,
                 lr: float = 3e-3, weight_decay: float = 5e-4, warmup_fraction: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.model = KeypointNet(num_keypoints, image_size=image_size, **dict(model_kwargs or {}))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, target = batch
        out = self.model(images)
        check_finite(self.model, images, out)
        loss = keypoint_loss(out["coords"], target, self.model.stride)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, target = batch
        coords = self.model(images)["coords"]
        self.log("val/nme", nme(coords, target["keypoints"], target["visible"], target["norm"]),
                 prog_bar=True, batch_size=len(images))

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.trainer.estimated_stepping_batches, self.hparams.lr,
                                   self.hparams.weight_decay, self.hparams.warmup_fraction)


def pretrained_keypoint_model(datamodule, model_kwargs: Mapping, train: Mapping | None = None,
                              checkpoint: str | os.PathLike | None = None, cache_dir: str | os.PathLike = ".",
                              trainer_kwargs: Mapping | None = None) -> KeypointNet:
    """The FP keypoint model for ``datamodule``'s keypoints and crop size, in eval mode: loaded from
    ``checkpoint``, or trained with ``train`` (overrides of :data:`TRAIN_DEFAULTS`) and cached."""
    num_keypoints, image_size = datamodule.num_keypoints, datamodule.image_size
    model_kwargs = dict(model_kwargs)
    if checkpoint:
        return load_keypoint_model(checkpoint, num_keypoints, image_size, model_kwargs).eval()
    train = train_settings(dict(train or {}), TRAIN_DEFAULTS)
    digest = hashlib.sha256(json.dumps(
        {"kwargs": model_kwargs, "train": train, "k": num_keypoints, "size": image_size}, sort_keys=True).encode())
    digest.update(Path(datamodule.dataset("train").ann_file).read_bytes())
    path = Path(cache_dir) / f"keypoint-{digest.hexdigest()[:12]}.pt"
    return train_or_load(
        path, "keypoint model", train["epochs"],
        load=lambda p: load_keypoint_model(p, num_keypoints, image_size, model_kwargs),
        train=lambda work_dir: train_keypoint_model(datamodule, model_kwargs, train, work_dir,
                                                    dict(trainer_kwargs or {})),
        save=lambda model, p, metrics: save_keypoint_model(model, p, model_kwargs, datamodule.keypoint_names, metrics))


def train_keypoint_model(datamodule, model_kwargs: dict, train: dict, work_dir: str | os.PathLike,
                         trainer_kwargs: dict | None = None) -> KeypointModule:
    """Train a keypoint model from scratch on the train split (validating on val); resumes from
    ``work_dir/last.ckpt`` when an earlier run was interrupted."""
    L.seed_everything(train["seed"], verbose=False)
    module = KeypointModule(datamodule.num_keypoints, datamodule.image_size, model_kwargs,
                            lr=train["lr"], weight_decay=train["weight_decay"])
    datamodule.batch_size = train["batch_size"]
    work_dir = Path(work_dir)
    with quiet_lightning():
        trainer = library_trainer(
            "pretraining the keypoint model",
            max_epochs=train["epochs"], default_root_dir=work_dir, logger=False,
            callbacks=[resume_checkpoint(work_dir, save_on_train_epoch_end=True)],
            num_sanity_val_steps=0, check_val_every_n_epoch=max(1, train["epochs"] // 3), **(trainer_kwargs or {}),
        )
        last = work_dir / "last.ckpt"
        trainer.fit(module, datamodule.train_dataloader(), datamodule.val_dataloader(),
                    ckpt_path=last if last.is_file() else None)
    return module


def save_keypoint_model(model: KeypointNet, path: str | os.PathLike, model_kwargs: dict,
                        keypoint_names: list[str], metrics: dict | None = None) -> Path:
    """Write ``model`` with what is needed to rebuild it; atomic."""
    return atomic_torch_save({
        "format": FORMAT, "model_kwargs": dict(model_kwargs), "num_keypoints": model.num_keypoints,
        "image_size": model.image_size, "keypoint_names": list(keypoint_names),
        "state_dict": model.state_dict(), "metrics": dict(metrics or {}),
    }, path)


def load_keypoint_model(path: str | os.PathLike, num_keypoints: int, image_size: int,
                        model_kwargs: dict) -> KeypointNet:
    """Build a :class:`KeypointNet` and load ``path`` (``weights_only``) into it. Settings stored
    in our own checkpoints win over ``model_kwargs``; a keypoint count or crop size that
    disagrees with the data, or weights that do not fit, are errors naming the difference."""
    path = Path(path)
    payload = read_checkpoint(path)
    if payload.get("format") == FORMAT:
        model_kwargs = payload["model_kwargs"]
        for key, ours, data in (("num_keypoints", payload["num_keypoints"], num_keypoints),
                                ("image_size", payload["image_size"], image_size)):
            if ours != data:
                raise CheckpointMismatchError(
                    f"Checkpoint {path} was trained with {key}={ours} but the data has {key}={data}. Use a "
                    f"checkpoint trained on this data, or set model.checkpoint=null to train one.")
    elif "format" in payload:
        raise CheckpointMismatchError(
            f"Checkpoint {path} has format {payload['format']!r}, not a keypoint model ({FORMAT!r}).")
    state = state_dict_of(payload, path)  # ours, a bare state_dict or a KeypointModule Lightning checkpoint
    model = KeypointNet(num_keypoints, image_size=image_size, **model_kwargs)
    try:
        result = model.load_state_dict(state, strict=False)
        problem = f"missing or unexpected weights {[*result.missing_keys, *result.unexpected_keys][:4]}"
        fits = not result.missing_keys and not result.unexpected_keys
    except RuntimeError as err:  # wrongly shaped weights
        problem, fits = str(err).strip().splitlines()[-1].strip(), False
    if not fits:
        raise CheckpointMismatchError(
            f"Checkpoint {path} does not fit the keypoint model (num_keypoints={num_keypoints}, "
            f"kwargs={model_kwargs}): {problem}. Set model.kwargs and keypoint.* to what it was "
            f"trained with, or model.checkpoint=null to train one.")
    return model


@torch.no_grad()
def evaluate_keypoints(model: nn.Module, loader, progress: bool = True, sigmas=None) -> dict[str, float]:
    """NME, PCK@0.05 and COCO OKS AP of ``model`` on ``loader`` (a keypoint split's loader);
    ``sigmas``: the per-keypoint OKS falloffs (default 0.05 each, see ``metrics``)."""
    was_training = model.training
    model.eval()
    evaluator = KeypointEvaluator(loader.dataset, sigmas)
    for images, target in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        out = model(images)
        check_finite(model, images, out)
        evaluator.update(out["coords"], target)
    model.train(was_training)
    return evaluator.compute()
