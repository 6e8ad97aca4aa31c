"""The per-layer parameter file: what the search chose, applied later without searching again.

JSON, one entry per quantized layer of the searched model (its weight and input quantizers:
kind, bits, channel axis, parameter values) plus the layers the search left in float. Apply it
to the same float model quantized with the same :class:`~lightning_ptq.quant.QuantConfig`:
``apply_layer_params(quantize(model, cfg), "layer_params.json")`` rebuilds the searched model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..core import UserError
from ..core.io import atomic_write_json
from ..export.pack import quantizer_entry, quantizer_from_entry
from ..quant.swap import quantized_layers, set_submodule

FORMAT = "lightning_ptq.layer_params/1"


class LayerParamsError(UserError, ValueError):
    """A parameter file that does not fit the model (or is not one)."""


def _jsonable(entry: dict) -> dict:
    return {k: ({n: v.tolist() for n, v in entry[k].items()} if k == "params" else
                entry[k] if isinstance(entry[k], str) else entry[k].item()) for k in entry}


def layer_params(model: nn.Module, float_layers: list[str] = ()) -> dict:
    """The parameter file's content for ``model`` (quantized layers) and ``float_layers``."""
    return {
        "format": FORMAT,
        "layers": {name: {"weight": _jsonable(quantizer_entry(layer.weight_quant)),
                          "input": _jsonable(quantizer_entry(layer.input_quant))}
                   for name, layer in quantized_layers(model).items()},
        "float": list(float_layers),
    }


def save_layer_params(model: nn.Module, path: str | Path, float_layers: list[str] = ()) -> Path:
    return atomic_write_json(layer_params(model, float_layers), path)


def _quantizer(entry: dict, symmetric: bool, device: torch.device):
    tensors = {**entry, "bits": torch.tensor(entry["bits"]), "channel_axis": torch.tensor(entry["channel_axis"]),
               "params": {n: torch.tensor(v, dtype=torch.float32) for n, v in entry["params"].items()}}
    q = quantizer_from_entry(tensors, symmetric).to(device)
    q.mark_initialized()
    return q


def read_layer_params(path: str | Path) -> dict:
    try:
        params = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LayerParamsError(f"layer parameter file {str(path)!r} does not exist.") from None
    except ValueError as err:
        raise LayerParamsError(f"layer parameter file {str(path)!r} is not valid JSON ({err}).") from None
    if not isinstance(params, dict) or params.get("format") != FORMAT:
        raise LayerParamsError(f"{str(path)!r} is not a layer parameter file (format {FORMAT!r} expected).")
    return params


def apply_layer_params(model: nn.Module, params: dict | str | Path, strict: bool = False) -> nn.Module:
    """Give ``model``'s quantized layers the bits and ranges of ``params`` (a dict or a file), and
    swap its ``float`` layers back to float; in place, returns ``model``. With ``strict``, every
    quantized layer of ``model`` must be in the file (then no calibration is needed)."""
    if not isinstance(params, dict):
        params = read_layer_params(params)
    layers = quantized_layers(model)
    named = set(params["layers"]) | set(params["float"])
    unknown = sorted(named - set(layers))
    missing = [n for n in layers if n not in named] if strict else []
    if unknown or missing:
        raise LayerParamsError(
            f"the parameter file does not fit {type(model).__name__}: "
            + (f"it names layers {unknown} that are not quantized layers of the model" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"it lacks the quantized layers {missing}" if missing else "")
            + f" (the model's quantized layers are {list(layers)}); quantize the model with the configuration "
              f"the file was searched with."
        )
    for name, entry in params["layers"].items():
        layer = layers[name]
        new = {"weight": _quantizer(entry["weight"], True, layer.weight.device),
               "input": _quantizer(entry["input"], False, layer.weight.device)}
        for side, old in (("weight", layer.weight_quant), ("input", layer.input_quant)):
            if new[side].num_channels != old.num_channels:
                raise LayerParamsError(
                    f"layer {name!r}: the file's {side} quantizer has {new[side].num_channels} channels, "
                    f"the model's {old.num_channels}: the file belongs to another model or configuration."
                )
        layer.weight_quant, layer.input_quant = new["weight"], new["input"]
    for name in params["float"]:
        set_submodule(model, name, layers[name].to_float())
    return model
