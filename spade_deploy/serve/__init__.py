"""Serving: the Triton model repository writer, the tritonserver launcher, and what a served model publishes.

Torch-free: `served_model`, `repository` and the python-backend models import numpy, onnx and onnxruntime only.
"""
