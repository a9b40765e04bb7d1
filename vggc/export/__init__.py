"""Export stage: ONNX (FP32/FP16), TensorRT engines, Triton repositories."""
