"""Range calibration: observe activations on calibration batches and set every quantizer's range."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core import UserError
from ..core.tree import batch_inputs
from ..quant.observer import NonFiniteObservationError
from ..quant.swap import quantized_layers

ForwardFn = Callable[[nn.Module, object], object]


class EmptyCalibrationError(UserError, ValueError):
    """The calibration set produced no batch."""


class NonFiniteCalibrationError(UserError, FloatingPointError):
    """A calibration batch produced NaN or inf at a quantized layer's input."""


def default_forward(model: nn.Module, batch) -> object:
    return model(batch_inputs(batch))


@torch.no_grad()
def calibrate_ranges(
    qmodel: nn.Module,
    batches: Iterable,
    num_batches: int | None = None,
    forward_fn: ForwardFn = default_forward,
    progress: bool = True,
) -> int:
    """Initialise every quantizer of ``qmodel``: weights from the weights themselves, input
    activations from the values seen while running ``batches`` through the model.

    Returns the number of batches used. Raises :class:`EmptyCalibrationError` when there is none.
    """
    layers = quantized_layers(qmodel)
    if not layers:
        raise ValueError("calibrate_ranges: the model has no quantized layer; call quantize() first.")
    was_training = qmodel.training
    qmodel.eval()
    for layer in layers.values():
        layer.weight_quant.init_from(layer.weight)
        layer.input_quant.enable_observation()
    used = 0
    for batch in tqdm(batches, total=num_batches, desc="calibrating ranges", disable=not progress, leave=False):
        if num_batches is not None and used >= num_batches:
            break
        try:
            forward_fn(qmodel, batch)
        except NonFiniteObservationError as err:
            name = next(n for n, layer in layers.items() if layer.input_quant.observer is err.observer)
            raise NonFiniteCalibrationError(
                f"calibration batch {used} gives NaN or inf at the input of layer {name!r} while its "
                f"activation range is observed. Check the calibration images (NaN pixels, bad "
                f"normalisation) and the float model's weights."
            ) from err
        used += 1
    if used == 0:
        raise EmptyCalibrationError(
            "the calibration set is empty: no batch came out of it, so no activation range can be "
            "set. Check the calibration split (data.splits / the annotation file of the calib "
            "split) or pass a non-empty iterable of batches."
        )
    for layer in layers.values():
        layer.input_quant.observer.gather_ranks()  # several processes: every rank sets the same range
        layer.input_quant.finalize()
    qmodel.train(was_training)
    return used
