"""Export pipeline: load -> fold -> ONNX -> parity -> (TensorRT engines) -> (Triton repository).

`python -m export.onnx CKPT --out DIR` and `python -m export.trt CKPT --out DIR` are the entry points.
"""
