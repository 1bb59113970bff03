"""Triton python-backend model of the CPU variant: one exported ONNX graph (`spade_generator` or `spade_encoder`)
run in ONNX Runtime, or in OpenVINO at bf16 for a bf16 export (the `precision` parameter), as it runs in-process.
spade_deploy.serve.repository copies this file to `<model>/1/model.py` beside `model.onnx`.

Inputs, outputs and their dtypes come from this model's config.pbtxt (written from spade_deploy.model.io_spec); the
model description (`spade_model` parameter) gives the label range to check, and `max_request_memory` the memory one
run may use. One response per request: a bad request (or one above the memory budget) gets an error response and the
instance keeps serving. Once loaded, the instance beats for the supervisor (`spade_deploy.serve.heartbeat`).
"""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from spade_deploy.export.precision import FP32, runtime_for, runtime_name
from spade_deploy.export.runtime import open_session
from spade_deploy.serve.served_model import INTRA_OP_THREADS, PRECISION, check_request, runs_within_budget
from spade_deploy.serve.triton_models.base import BeatingModel, error_response


class TritonPythonModel(BeatingModel):
    def load(self, config, args):
        threads = int(config["parameters"][INTRA_OP_THREADS]["string_value"])
        precision = config["parameters"].get(PRECISION, {}).get("string_value", FP32)
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session, computed = open_session(path, precision, threads=threads)
        self.runtime = runtime_name(runtime_for(precision))
        if computed != precision:
            pb_utils.Logger.log_warn(f"{config['name']}: a {precision} export, which OpenVINO runs at {computed} on "
                                     f"this CPU (no {precision} hardware)")
        self.outputs = {spec["name"]: pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, spec["name"])["data_type"]) for spec in config["output"]}

    def run(self, requests):
        responses = [None] * len(requests)
        # Requests run as one ONNX batch when their items have the same shapes (styles may differ in size) and the
        # batch stays within the memory budget (each request alone does: check_request).
        groups = {}
        for index, request in enumerate(requests):
            arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.model.inputs}
            try:
                check_request(arrays, self.model)
            except ValueError as error:
                responses[index] = error_response(str(error), pb_utils.TritonError.INVALID_ARG)
                continue
            key = tuple((name, array.shape[1:]) for name, array in arrays.items())
            groups.setdefault(key, []).append((index, arrays))
        for members in (run for group in groups.values() for run in runs_within_budget(group, self.model)):
            feed = {name: np.concatenate([arrays[name] for _, arrays in members]) for name in self.model.inputs}
            try:
                results = self.session.run(list(self.outputs), feed)
            except Exception as error:  # the runtime failed on this batch: answer it, keep the instance alive
                for index, _ in members:
                    responses[index] = error_response(f"{self.runtime} failed: {error}", pb_utils.TritonError.INTERNAL)
                continue
            start = 0
            for index, arrays in members:
                stop = start + len(arrays[self.model.inputs[0]])
                responses[index] = pb_utils.InferenceResponse([
                    pb_utils.Tensor(name, result[start:stop].astype(dtype, copy=False))
                    for (name, dtype), result in zip(self.outputs.items(), results)])
                start = stop
        return responses

    def finalize(self):
        super().finalize()
        self.session = None
