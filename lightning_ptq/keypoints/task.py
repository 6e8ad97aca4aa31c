"""The keypoint task of the shared job (``model.name=keypoint``, recipes ``keypoint_*``): the
low-resolution integral keypoint model on COCO-keypoints data, NME / PCK / OKS AP on the test
split, FP vs quantized keypoints drawn on test crops."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..core.errors import ConfigError
from ..core.task import TaskBase, prepared_datamodule, training_settings
from ..pipeline import calibration_batches
from .model import check_keypoint_settings
from .report import keypoint_results_table, keypoint_table_rows, plot_keypoints
from .train import evaluate_keypoints, pretrained_keypoint_model

KEYPOINT_KEYS = ("grid", "logits", "beta", "learn_beta", "compensate")


def keypoint_model_kwargs(cfg: DictConfig) -> dict:
    """Architecture (``model.kwargs``) and method settings (the ``keypoint`` group) of the model,
    validated: beta > 0, a grid the three blocks can make, a known logit kind."""
    if cfg.get("keypoint") is None:
        raise ConfigError("model.name=keypoint needs the keypoint group: add keypoint=cosine_comp (or cosine, "
                          "plain), or use a keypoint_* recipe.")
    method = OmegaConf.to_container(cfg.keypoint, resolve=True)
    unknown = sorted(set(method) - set(KEYPOINT_KEYS))
    if unknown:
        raise ConfigError(f"keypoint has unknown keys {unknown}: allowed are {list(KEYPOINT_KEYS)}.")
    check_keypoint_settings(cfg.data.image_size, method["grid"], method["logits"], method["beta"])
    return {**OmegaConf.to_container(cfg.model.kwargs, resolve=True), **method}


def load_keypoint_data_and_model(cfg: DictConfig, kwargs: dict):
    """The keypoint data module (default data generated on first use) and the FP model with
    ``kwargs`` (shipped, trained and cached on first use, or the user's checkpoint), in eval mode."""
    datamodule = prepared_datamodule(cfg)
    model = pretrained_keypoint_model(
        datamodule, kwargs, OmegaConf.to_container(cfg.model.train, resolve=True), cfg.model.checkpoint,
        cache_dir=Path(cfg.cache_dir) / "models", trainer_kwargs=training_settings(cfg))
    datamodule.batch_size = cfg.calib.batch_size
    return datamodule, model.eval()


class KeypointTask(TaskBase):
    """Keypoint models (see :class:`~lightning_ptq.core.task.Task`); NME is lower-better and the
    per-layer search does not run on them."""

    name, metric, metric_label, maximize, searchable = "keypoint", "nme", "NME", False, False

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.kwargs = None

    def check(self) -> None:
        self.kwargs = keypoint_model_kwargs(self.cfg)

    def load(self):
        self.datamodule, fp_model = load_keypoint_data_and_model(self.cfg, self.kwargs or keypoint_model_kwargs(self.cfg))
        return self.datamodule, fp_model

    def evaluate(self, model) -> dict[str, float]:
        return evaluate_keypoints(model, self.datamodule.test_dataloader(), progress=self.cfg.trainer.enable_progress_bar,
                                  sigmas=self.cfg.eval.oks_sigmas)

    def calibration_sets(self, search):
        return calibration_batches(self.datamodule, self.cfg.calib.num_images, self.cfg.calib.get("image_seed")), None

    def extra_results(self, fp: dict, quant: dict) -> dict:
        return {
            "nme_ratio": quant["nme"] / fp["nme"],
            **{f"clipped_keypoints.{s}": self.datamodule.dataset(s).clipped for s in self.datamodule.splits},
            **{f"keypoint.{k}": v for k, v in OmegaConf.to_container(self.cfg.keypoint, resolve=True).items()},
        }

    def table(self, results: dict):
        return keypoint_results_table(results)

    def table_rows(self, results: dict):
        return keypoint_table_rows(results)

    @torch.no_grad()
    def figure(self, fp_model, qmodel, run_dir: Path, title: str):
        n = self.cfg.eval.num_vis_images
        images, target = next(iter(self.datamodule.test_dataloader()))
        images, truth = images[:n], target["keypoints"][:n]
        path = plot_keypoints(images, truth, fp_model(images)["coords"], qmodel(images)["coords"],
                              run_dir / "keypoints.png", title=title)
        return path, "keypoints"
