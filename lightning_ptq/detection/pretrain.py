"""The FP detector the main job starts from: the user's checkpoint, or the detector class
``model._target_`` names pretrained by a Lightning run on the data's train split and cached for
the next runs.

The cache key hashes everything that changes the result (the class and its architecture
arguments, training settings, number of classes, image size and the train annotation file), so
changing any of them retrains and nothing stale is reused. An interrupted pretraining resumes
from its last epoch.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from torch import nn
from torch.utils.data import DataLoader

from ..core.cached_training import train_or_load, train_settings
from ..core.errors import ConfigError
from ..core.io import resume_checkpoint
from ..core.training import library_trainer, quiet_lightning
from .coco import detection_collate
from .checkpoint import load_detector, save_detector
from .detector import DetectorModule, architecture, detector_class, target_of

TRAIN_DEFAULTS = {"epochs": 12, "batch_size": 32, "lr": 2e-3, "weight_decay": 5e-4, "val_every": 4, "seed": 0}


def pretrained_detector(datamodule, model_cfg: Mapping, cache_dir: str | Path,
                        trainer_kwargs: Mapping | None = None) -> nn.Module:
    """The FP detector for ``datamodule``'s classes and image size, in eval mode.

    ``model_cfg``: ``_target_`` (the detector class, e.g. :class:`~lightning_ptq.detection.YOLO`
    or ``my_pkg.MyDetector``), ``checkpoint`` (a file, or None to pretrain one),
    ``trust_checkpoint`` (a checkpoint that is a pickle, an Ultralytics ``.pt``, is read only then),
    ``kwargs`` (architecture arguments of the class), ``train`` (overrides of :data:`TRAIN_DEFAULTS`).
    ``trainer_kwargs``: Lightning Trainer settings (accelerator, devices, precision, progress bar).
    """
    if not model_cfg.get("_target_"):
        raise ConfigError("model._target_ is not set: name the detector class, e.g. lightning_ptq.detection.YOLO "
                          "or my_pkg.MyDetector (the detector configs in conf/model set it).")
    cls, kwargs = detector_class(model_cfg["_target_"]), dict(model_cfg.get("kwargs") or {})
    num_classes, image_size = datamodule.num_classes, datamodule.image_size
    if model_cfg.get("checkpoint"):
        if hasattr(cls, "from_checkpoint"):  # a class with formats of its own (Ultralytics .pt)
            return cls.from_checkpoint(model_cfg["checkpoint"], num_classes, image_size, kwargs,
                                       trust=bool(model_cfg.get("trust_checkpoint"))).eval()
        return load_detector(model_cfg["checkpoint"], num_classes, image_size, kwargs, cls).eval()
    if not callable(getattr(cls, "compute_loss", None)):
        raise ConfigError(f"model.checkpoint is not set and model._target_={target_of(cls)} has no "
                          f"compute_loss(images, targets) to pretrain it with: give model.checkpoint=/path/to/weights.pt "
                          f"(our checkpoint, a Lightning checkpoint holding the detector as 'model', or a state_dict).")

    train = train_settings(dict(model_cfg.get("train") or {}), TRAIN_DEFAULTS)
    path = Path(cache_dir) / f"{cls.family}-{cache_key(cls, kwargs, train, num_classes, image_size, datamodule)}.pt"
    return train_or_load(
        path, "pretrained detector", train["epochs"],
        load=lambda p: load_detector(p, num_classes, image_size, kwargs, cls),
        train=lambda work_dir: _pretrain(datamodule, cls, kwargs, train, work_dir, dict(trainer_kwargs or {})),
        save=lambda model, p, metrics: save_detector(model, p, kwargs, datamodule.class_names, metrics))


def cache_key(cls: type, kwargs: dict, train: dict, num_classes: int, image_size: int, datamodule) -> str:
    """Short hash of everything that determines the pretrained weights (how often validation
    runs does not): the class, its architecture as built (defaults filled in), the training
    settings, the data's classes, image size and train annotations."""
    train = {k: v for k, v in train.items() if k != "val_every"}
    digest = hashlib.sha256(json.dumps(
        {"target": target_of(cls), "kwargs": architecture(cls, kwargs), "train": train, "num_classes": num_classes,
         "image_size": image_size}, sort_keys=True).encode())
    digest.update(Path(datamodule.dataset("train").ann_file).read_bytes())
    return digest.hexdigest()[:12]


def _pretrain(datamodule, cls: type, kwargs: dict, train: dict, work_dir: Path,
              trainer_kwargs: dict) -> DetectorModule:
    L.seed_everything(train["seed"], verbose=False)
    module = DetectorModule(datamodule.num_classes, datamodule.image_size, kwargs,
                            lr=train["lr"], weight_decay=train["weight_decay"], target=target_of(cls))
    loader = DataLoader(datamodule.dataset("train"), batch_size=train["batch_size"], shuffle=True,
                        num_workers=datamodule.num_workers, collate_fn=detection_collate, drop_last=True,
                        persistent_workers=datamodule.num_workers > 0)
    has_val = "val" in datamodule.splits
    with quiet_lightning():
        trainer = library_trainer(
            "pretraining the detector",
            max_epochs=train["epochs"], default_root_dir=work_dir, logger=False,
            callbacks=[resume_checkpoint(work_dir, save_on_train_epoch_end=True)],
            check_val_every_n_epoch=train["val_every"], limit_val_batches=1.0 if has_val else 0,
            num_sanity_val_steps=0, **trainer_kwargs,
        )
        last = work_dir / "last.ckpt"
        trainer.fit(module, loader, datamodule.val_dataloader() if has_val else None,
                    ckpt_path=last if last.is_file() else None)
    return module
