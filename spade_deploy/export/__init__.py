"""Export: the exact rewrites of the model (fold, sparse, Winograd), the deployment graphs, ONNX writing and its
metadata, parity against eager PyTorch, ONNX Runtime sessions and TensorRT engines.

`metadata` and `runtime` are torch-free (the serving path reads exports with them); the rest imports torch.
"""
