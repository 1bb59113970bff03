"""Serving: the Triton model repository writer, the tritonserver launcher, and what a served model publishes.

Torch-free: `served_model`, `repository` and the python-backend models import numpy, onnx, onnxruntime (OpenVINO
for bf16 exports), tritonclient's protobuf model config and, in the Triton stub, `triton_python_backend_utils`.
"""
