"""Export: the exact rewrites of the model (fold, sparse, Winograd), the deployment graphs, ONNX writing and its
metadata, the precision an export runs at (graph and runtime per CPU), parity against the float64 model, ONNX
Runtime and OpenVINO sessions and TensorRT engines.

`metadata`, `precision` and `runtime` are torch-free (the serving path reads exports with them), and `tensorrt`
imports torch and TensorRT only to build an engine (the repository writer reads engine metadata with it); the rest
imports torch.
"""
