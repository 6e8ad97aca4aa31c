"""Export of calibrated models: bit-packed integer weights and their size; an ONNX QDQ graph that
onnxruntime and OpenVINO run (the ``deploy`` extra)."""
from .config import ExportConfig
from .errors import ExportError
from .onnx import ExportReport, to_onnx
from .pack import export_packed, float_size_bytes, pack_codes, packed_size_bytes, unpack_codes, unpack_weight

__all__ = [
    "ExportConfig", "ExportError", "ExportReport", "export_packed", "float_size_bytes", "pack_codes", "packed_size_bytes", "to_onnx",
    "unpack_codes", "unpack_weight",
]
