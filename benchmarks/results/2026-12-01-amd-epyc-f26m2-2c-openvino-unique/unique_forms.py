"""ONNX Unique in ONNX Runtime and OpenVINO (CPU, 2 threads): of rows (axis 0, 9 int64 columns, as the sparse graph
used it) and of a 1-D int64 key, sorted and not, on P rows drawn from U distinct patterns of 9 labels below 152
(ADE20K's 151 and the sentinel); mean ms over 5 calls after one. And what OpenVINO's CPU plugin makes of int64: two
keys 2**32 apart, given to its Unique.

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-openvino-unique/unique_forms.py
"""
from __future__ import annotations

import json
import time


def main() -> None:
    import numpy as np
    import onnx
    import onnx.helper as helper
    import onnxruntime
    import openvino

    from spade_deploy.bench.machine import describe_machine

    def model(axis: int | None, sorted_: int, rank: int) -> bytes:
        attributes = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
        node = helper.make_node("Unique", ["x"], ["y", "indices", "inverse", "counts"], **attributes)
        shape = ["P", 9][:rank]
        graph = helper.make_graph([node], "unique", [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, shape)],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None),
                                   helper.make_tensor_value_info("inverse", onnx.TensorProto.INT64, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    core = openvino.Core()

    def runners(serialized: bytes):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
        compiled = core.compile_model(core.read_model(serialized, b""), "CPU", {"INFERENCE_NUM_THREADS": 2})
        return {"onnxruntime": lambda x: session.run(None, {"x": x}), "openvino": lambda x: compiled({"x": x})}

    def mean_ms(run, x) -> float:
        run(x)
        began = time.perf_counter()
        for _ in range(5):
            run(x)
        return (time.perf_counter() - began) / 5 * 1e3

    forms = {"rows, sorted": (0, 1, 2), "rows, unsorted": (0, 0, 2), "1-D, sorted": (None, 1, 1),
             "1-D, unsorted": (None, 0, 1)}
    compiled_forms = {name: runners(model(*form)) for name, form in forms.items()}
    rng = np.random.default_rng(0)
    rows = []
    for count, distinct in ((13_000, 700), (11_000, 3_000), (40_000, 3_000)):
        patterns = rng.integers(0, 152, (distinct, 9))
        data = patterns[rng.integers(0, distinct, count)]
        key = ((data[:, 0] * 152 + data[:, 1]) * 152 + data[:, 2]) * 152 + data[:, 3]  # below 2**31
        for name, (axis, _, _) in forms.items():
            x = data if axis == 0 else key
            for runtime, run in compiled_forms[name].items():
                rows.append({"rows": count, "distinct": distinct, "form": name, "runtime": runtime,
                             "ms": round(mean_ms(run, x), 3)})
    key = np.array([123_456_789_012, 123_456_789_012 + 2**32], dtype=np.int64)
    inverse = {runtime: np.asarray(run(key)[1]).tolist() for runtime, run in runners(model(None, 0, 1)).items()}
    print(json.dumps({"machine": describe_machine(2), "timings": rows,
                      "keys 2**32 apart, index of each among the distinct": inverse}, indent=1))


if __name__ == "__main__":
    main()
