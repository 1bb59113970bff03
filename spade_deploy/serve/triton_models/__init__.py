"""Python-backend model sources, copied into a Triton repository by `spade_deploy.serve.repository` (package data:
they import `triton_python_backend_utils`, which only the Triton stub process provides; never import them here)."""
