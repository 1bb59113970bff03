"""Triton python-backend model `spade`: the user-facing pipeline (label map (+ instances) (+ style or seed) -> image).

spade_deploy.serve.repository copies this file to `spade/1/model.py` in both variants. It calls `spade_encoder` and
`spade_generator` through BLS (business-logic scripting) instead of running their graphs itself, because
- the same file then serves the GPU variant, whose generator is a TensorRT/ONNX Runtime model in another backend;
- direct generator calls and pipeline calls share the generator's dynamic batcher, instances and one copy of the
  weights;
- a conditional step (encode a style, or sample from a seed) cannot be written as an ensemble.

Latent of a VAE model, per item i (the library's own functions, so a served seed reproduces a local one):
- style given, no seed: z_i = mu_i of the encoder (deterministic);
- style and seed:       z_i = sample_posterior(mu_i, logvar_i, seed_i), as `encode_style(..., seed=seed_i)`;
- seed only:            z_i = sample_latent(1, z_dim, seed_i), as `sample_z(1, z_dim, seed_i)`;
- neither:              as seed only, with a fresh random seed per item
(`spade_deploy.model.sampling.style_or_seed_latent`, which the studio's in-process backends use too).
A request whose estimated memory exceeds the repository's `max_request_memory` (its label maps, its style images) is
refused before any call, and a dynamic batch of accepted requests goes to the generator in runs within that budget.
No torch here (spade_deploy.model.sampling draws with numpy): the stub process stays small and starts fast. Once
loaded, the instance beats for the supervisor (`spade_deploy.serve.heartbeat`).
"""
import secrets

import numpy as np
import triton_python_backend_utils as pb_utils

from spade_deploy.model import io_spec
from spade_deploy.model.sampling import style_or_seed_latent
from spade_deploy.serve.served_model import check_request, runs_within_budget
from spade_deploy.serve.triton_models.base import BeatingModel, error_response


class TritonPythonModel(BeatingModel):
    def load(self, config, args):
        self.image_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, io_spec.IMAGE)["data_type"])

    def run(self, requests):
        responses = [None] * len(requests)
        accepted = []  # (request index, generator inputs)
        for index, request in enumerate(requests):
            arrays = {}
            for name in self.model.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:  # style and seed are optional
                    arrays[name] = tensor.as_numpy()
            try:
                check_request(arrays, self.model)
                feed = {name: arrays[name] for name in (io_spec.LABEL, io_spec.INSTANCE) if name in arrays}
                if self.model.config.use_vae:
                    feed[io_spec.Z] = self._latents(arrays)
            except ValueError as error:
                responses[index] = error_response(str(error), pb_utils.TritonError.INVALID_ARG)
                continue
            except StageError as error:
                responses[index] = error_response(str(error), pb_utils.TritonError.INTERNAL)
                continue
            accepted.append((index, feed))
        for run in runs_within_budget(accepted, self.model):
            self._generate(run, responses)
        return responses

    def _generate(self, run, responses):
        """One generator call for these accepted requests (the dynamic batcher gathered them)."""
        batch = {name: np.concatenate([feed[name] for _, feed in run]) for name in run[0][1]}
        try:
            (images,) = _infer(io_spec.GENERATOR_MODEL, batch, [io_spec.IMAGE])
        except StageError as error:
            for index, _ in run:
                responses[index] = error_response(str(error), pb_utils.TritonError.INTERNAL)
            return
        start = 0
        for index, feed in run:
            stop = start + len(feed[io_spec.LABEL])
            responses[index] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(io_spec.IMAGE, images[start:stop].astype(self.image_dtype, copy=False))])
            start = stop

    def _latents(self, arrays):
        """`[n, z_dim]` float32 latents of one request (see the module docstring)."""
        count = len(arrays[io_spec.LABEL])  # Triton has checked that every input has this batch size
        seeds = ([int(seed) for seed in arrays[io_spec.SEED][:, 0]] if io_spec.SEED in arrays else [None] * count)
        if io_spec.STYLE not in arrays:
            encoded = [None] * count
            seeds = [secrets.randbits(63) if seed is None else seed for seed in seeds]
        else:
            mu, logvar = _infer(io_spec.ENCODER_MODEL, {io_spec.STYLE: arrays[io_spec.STYLE]},
                                [io_spec.MU, io_spec.LOGVAR])
            encoded = [(mu[i:i + 1], logvar[i:i + 1]) for i in range(count)]
        return np.concatenate([style_or_seed_latent(self.model.config.z_dim, seed, style)
                               for seed, style in zip(seeds, encoded)])


class StageError(RuntimeError):
    """The encoder or generator model answered with an error (or is not loaded)."""


def _infer(model_name, inputs, output_names):
    """A BLS request to another model of this server; outputs as numpy arrays in host memory."""
    request = pb_utils.InferenceRequest(
        model_name=model_name, requested_output_names=output_names,
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
    response = request.exec()
    if response.has_error():
        raise StageError(f"{model_name}: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names]
