"""Accuracy-driven per-layer quantization parameters: class-balanced calibration / validation
sets, per-layer sensitivity, the search, its parameter file and its report."""
from .balanced import PoolTooSmallError, balanced_split, random_split
from .config import SearchConfig, SearchJobConfig
from .evaluator import FunctionEvaluator, StagedEvaluator, accuracy
from .layerwise import LayerRecord, SearchResult, search_layers
from .params import LayerParamsError, apply_layer_params, layer_params, read_layer_params, save_layer_params

__all__ = [
    "FunctionEvaluator", "LayerParamsError", "LayerRecord", "PoolTooSmallError", "SearchConfig", "SearchJobConfig",
    "SearchResult", "StagedEvaluator", "accuracy", "apply_layer_params", "balanced_split", "layer_params", "random_split",
    "read_layer_params", "save_layer_params", "search_layers",
]
