"""Training, checkpoints and evaluation of the image classifier.

The FP classifier is the user's checkpoint or the embedded default :class:`TinyResNet`, trained by
a Lightning run on the data's train split and cached under a key that hashes every setting that
changes it (as the detectors are: :mod:`lightning_ptq.detection.pretrain`): architecture, training
settings, number of classes, image size and the dataset (its ``meta.json``, or the list of train
files for data no generator wrote). An interrupted training resumes from its last epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from ..core.cached_training import train_or_load, train_settings
from ..core.checkpoint import CheckpointMismatchError, load_strict, read_checkpoint, state_dict_of
from ..core.io import atomic_torch_save, resume_checkpoint
from ..core.optim import adamw_warmup_cosine
from ..core.training import library_trainer, quiet_lightning
from .model import TinyResNet

FORMAT = "lightning_ptq.classifier/1"
TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 64, "lr": 3e-3, "weight_decay": 5e-4, "seed": 0}


class ClassifierModule(L.LightningModule):
    """Trains a :class:`TinyResNet` with cross entropy (AdamW, warm-up + cosine). With ``augment``
    each training image is randomly flipped and the batch rotated by a multiple of 90 degrees
    (the synthetic classes do not change under either). Logs ``val/acc`` and ``test/acc`` (top-1)
    per epoch."""

    def __init__(self, num_classes: int, model_kwargs: dict | None = None, lr: float = 3e-3,
                 weight_decay: float = 5e-4, warmup_fraction: float = 0.05, augment: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.model = TinyResNet(num_classes, **dict(model_kwargs or {}))
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.hparams.augment:
            flip = torch.rand(len(images), device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
            images = images.rot90(int(torch.randint(4, ())), dims=(2, 3))
        loss = F.cross_entropy(self.model(images), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.val_acc(self.model(images), labels)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images))

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.test_acc(self.model(images), labels)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, batch_size=len(images))

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.trainer.estimated_stepping_batches, self.hparams.lr,
                                   self.hparams.weight_decay, self.hparams.warmup_fraction)


def pretrained_classifier(datamodule, model_cfg: Mapping, cache_dir: str | os.PathLike,
                          trainer_kwargs: Mapping | None = None) -> TinyResNet:
    """The FP classifier for ``datamodule``'s classes, in eval mode.

    ``model_cfg``: ``checkpoint`` (a file, or None for the default), ``kwargs`` (architecture, see
    :class:`TinyResNet`), ``train`` (overrides of :data:`TRAIN_DEFAULTS`). The default is trained
    on the train split (validated on a ``val`` split when configured, then tested on ``test``
    when configured) and cached as ``cache_dir/classifier-<hash>.pt``. ``trainer_kwargs``:
    Lightning Trainer settings (accelerator, devices, precision, progress bar).
    """
    kwargs = _plain(model_cfg.get("kwargs") or {})  # also from a Hydra DictConfig with ListConfigs
    num_classes, image_size = datamodule.num_classes, datamodule.image_size
    if model_cfg.get("checkpoint"):
        return load_classifier(model_cfg["checkpoint"], kwargs, num_classes, image_size).eval()

    train = train_settings(_plain(model_cfg.get("train") or {}), TRAIN_DEFAULTS)
    path = Path(cache_dir) / f"classifier-{cache_key(kwargs, train, num_classes, image_size, datamodule)}.pt"
    return train_or_load(
        path, "classifier", train["epochs"],
        load=lambda p: load_classifier(p, kwargs, num_classes, image_size),
        train=lambda work_dir: train_classifier(datamodule, kwargs, train, work_dir, dict(trainer_kwargs or {})),
        save=lambda model, p, metrics: save_classifier(model, p, kwargs, datamodule.class_names, metrics, image_size),
        metric_prefixes=("val/", "test/"))


def _plain(value):
    """``value`` with every mapping a dict and every sequence (but strings) a list: what
    ``json.dumps`` and ``TinyResNet`` take, whether it came from YAML, Hydra or Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def cache_key(kwargs: dict, train: dict, num_classes: int, image_size: int, datamodule) -> str:
    """Short hash of everything that determines the trained weights: the settings and the data
    (its generator's ``meta.json``, else the sorted file names of the train split)."""
    digest = hashlib.sha256(json.dumps(
        {"kwargs": kwargs, "train": train, "num_classes": num_classes, "image_size": image_size},
        sort_keys=True).encode())
    meta = Path(datamodule.root) / "meta.json"
    if meta.is_file():
        digest.update(meta.read_bytes())
    else:
        train_dir = Path(datamodule.dataset("train").root)
        files = sorted(str(Path(p).relative_to(train_dir)) for p, _ in datamodule.dataset("train").samples)
        digest.update("\n".join(files).encode())
    return digest.hexdigest()[:12]


def train_classifier(datamodule, model_kwargs: dict, train: dict, work_dir: str | os.PathLike,
                     trainer_kwargs: dict | None = None) -> ClassifierModule:
    """Train a classifier from scratch on the train split (``train``: the full
    :data:`TRAIN_DEFAULTS` settings), validating on ``val`` and testing on ``test`` when those
    splits are configured; resumes from ``work_dir/last.ckpt`` when an earlier run was interrupted."""
    L.seed_everything(train["seed"], verbose=False)
    module = ClassifierModule(datamodule.num_classes, model_kwargs, lr=train["lr"], weight_decay=train["weight_decay"])
    dataset = datamodule.dataset("train")
    loader = DataLoader(dataset, batch_size=train["batch_size"], shuffle=True, num_workers=datamodule.num_workers,
                        drop_last=len(dataset) > train["batch_size"], persistent_workers=datamodule.num_workers > 0)
    has_val = "val" in datamodule.splits
    work_dir = Path(work_dir)
    with quiet_lightning():
        trainer = library_trainer(
            "pretraining the classifier",
            max_epochs=train["epochs"], default_root_dir=work_dir, logger=False,
            callbacks=[resume_checkpoint(work_dir, save_on_train_epoch_end=True)],
            limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0, **(trainer_kwargs or {}),
        )
        last = work_dir / "last.ckpt"
        trainer.fit(module, loader, datamodule.loader("val") if has_val else None,
                    ckpt_path=last if last.is_file() else None)
        if "test" in datamodule.splits:
            trainer.test(module, datamodule.loader("test"), verbose=False)
    return module


def save_classifier(model: TinyResNet, path: str | os.PathLike, kwargs: dict, class_names: list[str],
                    metrics: dict | None = None, image_size: int | None = None) -> Path:
    """Write ``model`` with what is needed to rebuild it (``kwargs``: its :class:`TinyResNet`
    arguments; ``image_size``: what it was trained at); atomic (a crash leaves no half file)."""
    return atomic_torch_save({
        "format": FORMAT, "model_kwargs": dict(kwargs), "num_classes": model.num_classes,
        "image_size": image_size, "class_names": list(class_names), "state_dict": model.state_dict(),
        "metrics": dict(metrics or {}),
    }, path)


def load_classifier(path: str | os.PathLike, kwargs: dict | None = None, num_classes: int | None = None,
                    image_size: int | None = None) -> TinyResNet:
    """Build a :class:`TinyResNet` and load ``path`` (``weights_only``) into it.

    Our own checkpoints carry their architecture (it wins over ``kwargs``), class count and image
    size; a class count or image size that disagrees with the given one is an error. Other files
    (a bare state_dict or a Lightning checkpoint of :class:`ClassifierModule`) are built with
    ``kwargs`` and ``num_classes`` (default: the rows of the head's weight). Weights that do not
    fit are :class:`~lightning_ptq.detection.CheckpointMismatchError` naming the difference."""
    path = Path(path)
    payload = read_checkpoint(path)
    kwargs = dict(kwargs or {})
    if payload.get("format") == FORMAT:
        kwargs = payload["model_kwargs"]
        for key, ours, data in (("num_classes", payload["num_classes"], num_classes),
                                ("image_size", payload["image_size"], image_size)):
            if data is not None and ours is not None and ours != data:
                raise CheckpointMismatchError(
                    f"Checkpoint {path} was trained with {key}={ours} but the data has {key}={data}. Use a "
                    f"checkpoint trained on this data, or set model.checkpoint=null to train one.")
        num_classes = payload["num_classes"]
    elif "format" in payload:
        raise CheckpointMismatchError(
            f"Checkpoint {path} has format {payload['format']!r}, not a classifier ({FORMAT!r}).")
    state = state_dict_of(payload, path)  # ours, a bare state_dict or a ClassifierModule Lightning checkpoint
    if num_classes is None:
        head = [v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.ndim == 2]
        if len(head) != 1:
            raise CheckpointMismatchError(
                f"Checkpoint {path} has no single linear head weight (head.*.weight) to read the class "
                f"count from; pass num_classes.")
        num_classes = int(head[0].shape[0])
    try:
        model = TinyResNet(num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointMismatchError(
            f"Checkpoint {path}: cannot build TinyResNet({num_classes}, **{kwargs}): {err}") from err
    load_strict(model, state, path, f"the classifier (num_classes={num_classes}, kwargs={kwargs})",
                "Set model.kwargs and the data to what it was trained with, or model.checkpoint=null to train one.")
    return model


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` over ``loader``'s ``(images, labels)`` batches, in eval mode
    (the model's training mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    try:
        for images, labels in loader:
            logits = model(images.to(device))
            correct += int((logits.argmax(1).cpu() == labels).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no images.")
    return correct / total
