"""The export error, apart from the modules that need onnx, so it can be raised and caught
where onnx is not installed."""

INT4_OPSET = 21  # int4 / uint4 QuantizeLinear and DequantizeLinear (onnx >= 1.16, onnxruntime >= 1.20)


class ExportError(ValueError):
    """The model (or a setting) cannot be exported or run; the message says why and what to do."""
