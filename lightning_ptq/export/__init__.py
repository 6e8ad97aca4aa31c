"""Export of calibrated models: bit-packed integer weights and their size."""
from .pack import export_packed, float_size_bytes, pack_codes, packed_size_bytes, unpack_codes, unpack_weight

__all__ = ["export_packed", "float_size_bytes", "pack_codes", "packed_size_bytes", "unpack_codes", "unpack_weight"]
