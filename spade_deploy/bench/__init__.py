"""Benchmarks of every runtime and of the served model (`spade-deploy bench`; results under benchmarks/results/).

- `machine`: what the numbers were measured on, and the process's resident memory;
- `runtimes`: the registry of in-process runtimes (eager PyTorch, folded PyTorch, ONNX Runtime, OpenVINO, …);
- `inprocess`: warm-up + timed stage per runtime and batch, exactness against eager, same-run ratios;
- `served`: a gRPC load generator against a real Triton server, with the server's own statistics;
- `perf_analyzer`: Triton's perf_analyzer against the same server, for a cross-check;
- `report`: JSON, the markdown summary and the PNG charts of a results folder.
"""
