"""Policy -> pruned + quantized model; distillation; ONNX export."""
