"""Lightning callback: quantize the user's own LightningModule, without changing its code."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..calib.observe import ForwardFn, calibrate_ranges, default_forward
from ..quant.config import QuantConfig
from ..quant.swap import quantize, quantized_layers


def calibration_source(trainer: L.Trainer, calib_dataloader: Iterable | None, owner: str) -> Iterable:
    """``calib_dataloader`` if given, else the datamodule's ``calib_dataloader()``, else its
    ``train_dataloader()``."""
    if calib_dataloader is not None:
        return calib_dataloader
    dm = trainer.datamodule
    for name in ("calib_dataloader", "train_dataloader"):
        if dm is not None and hasattr(dm, name):
            return getattr(dm, name)()
    raise ValueError(
        f"{owner} has no calibration data: pass calib_dataloader=... or use a LightningDataModule with a "
        f"calib_dataloader() or train_dataloader() method."
    )


class QuantizationCallback(Callback):
    """Swap the selected layers of ``pl_module`` for fake-quant layers and calibrate their ranges.

    * ``setup`` swaps the modules, before Lightning restores a checkpoint, so
      ``Trainer.fit(ckpt_path=...)`` resume and ``Trainer.test(ckpt_path=...)`` load the
      quantizer state (ranges, learned scales) into the swapped model.
    * At the start of fit / validate / test / predict, uncalibrated quantizers are calibrated on
      ``calib_dataloader`` (or the datamodule's ``calib_dataloader()``, else its
      ``train_dataloader()``): weights from themselves, activations from ``num_batches`` batches.

    Args:
        config: a :class:`QuantConfig` (or a dict of its fields).
        calib_dataloader: batches used to calibrate the activation ranges.
        num_batches: how many of them (``None``: all).
        submodule: attribute name of the network inside the LightningModule to quantize
            (``None``: the whole LightningModule).
        forward_fn: ``(module, batch) -> output``; default: ``module(<input tensor of the batch>)``.
    """

    def __init__(
        self,
        config: QuantConfig | dict[str, Any] | None = None,
        calib_dataloader: Iterable | None = None,
        num_batches: int | None = 8,
        submodule: str | None = None,
        forward_fn: ForwardFn = default_forward,
    ) -> None:
        self.config = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(dict(config or {}))
        if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
            raise ValueError(f"num_batches={num_batches!r} must be a positive integer or None (all batches).")
        self.calib_dataloader = calib_dataloader
        self.num_batches = num_batches
        self.submodule = submodule
        self.forward_fn = forward_fn

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        target = self.target(pl_module)
        if not quantized_layers(target):
            self.swap(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._calibrate_if_needed(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._calibrate_if_needed(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._calibrate_if_needed(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._calibrate_if_needed(trainer, pl_module)

    # -- overridable steps ---------------------------------------------------------------------
    def target(self, pl_module: L.LightningModule) -> nn.Module:
        if self.submodule is None:
            return pl_module
        if not hasattr(pl_module, self.submodule):
            raise AttributeError(
                f"submodule={self.submodule!r}: {type(pl_module).__name__} has no such attribute; "
                f"its children are {[n for n, _ in pl_module.named_children()]}."
            )
        return getattr(pl_module, self.submodule)

    def swap(self, pl_module: L.LightningModule) -> None:
        """Fold BN and swap the selected layers in place."""
        quantize(self.target(pl_module), self.config, inplace=True)

    def is_calibrated(self, pl_module: L.LightningModule) -> bool:
        return all(
            bool(q.initialized) for layer in quantized_layers(self.target(pl_module)).values() for q in layer.quantizers
        )

    def calibration_batches(self, trainer: L.Trainer) -> Iterable:
        return calibration_source(trainer, self.calib_dataloader, type(self).__name__)

    def calibrate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set every quantizer's range from the calibration batches."""
        batches = (trainer.strategy.batch_to_device(b, pl_module.device) for b in self.calibration_batches(trainer))
        calibrate_ranges(
            pl_module, batches, self.num_batches, lambda _, batch: self.forward_fn(self.target(pl_module), batch),
            progress=trainer.progress_bar_callback is not None,
        )

    def _calibrate_if_needed(self, trainer, pl_module) -> None:
        if not self.is_calibrated(pl_module):
            self.calibrate(trainer, pl_module)

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = QuantConfig.from_dict(state_dict["config"])
        if saved != self.config:
            raise ValueError(
                f"the checkpoint was quantized with {saved} but this QuantizationCallback has "
                f"{self.config}: use the same configuration to resume or test it."
            )
