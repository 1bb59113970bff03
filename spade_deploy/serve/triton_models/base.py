"""What our python-backend models share (imported by the model files a repository holds, inside the Triton stub
process, which provides `triton_python_backend_utils`): the served model's description from its config, a heartbeat
for the supervisor once the model is loaded (`spade_deploy.serve.heartbeat`), marked busy around each execution, and
error responses."""
import json

import triton_python_backend_utils as pb_utils

from spade_deploy.serve.heartbeat import Heartbeat
from spade_deploy.serve.served_model import ServedModel


class BeatingModel:
    """A python-backend model that beats once `load` has run; subclasses define `load(config, args)` and
    `run(requests) -> responses`."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model = ServedModel.from_model_config(config)
        self.load(config, args)
        self.heartbeat = Heartbeat()

    def execute(self, requests):
        with self.heartbeat.busy():
            return self.run(requests)

    def finalize(self):
        self.heartbeat.stop()


def error_response(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
