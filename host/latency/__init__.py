"""Compressed ONNX graph -> LUT keys -> predicted latency (see predict.py)."""


class LatencyError(RuntimeError):
    """A prediction that cannot be made; the message says which kernels and why."""
