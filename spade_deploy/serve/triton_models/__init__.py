"""Python-backend model sources: `onnx_model.py` and `pipeline.py` are copied into a Triton repository by
`spade_deploy.serve.repository` (package data), and import what they share, `base.py`, from the installed package.
All import `triton_python_backend_utils`, which only the Triton stub process provides: never import them here."""
