"""spade-deploy: train, export and serve SPADE (GauGAN) semantic image synthesis models."""
from spade_deploy.checkpoint import (CheckpointError, load_encoder, load_generator, save_encoder,
                                     save_generator)
from spade_deploy.config import EncoderConfig, GeneratorConfig, generator_preset
from spade_deploy.labels import to_semantic_input
from spade_deploy.networks import ConvEncoder, SPADEGenerator
from spade_deploy.sampling import encode_style, sample_z

__all__ = ["CheckpointError", "ConvEncoder", "EncoderConfig", "GeneratorConfig", "SPADEGenerator", "encode_style",
           "generator_preset", "load_encoder", "load_generator", "sample_z", "save_encoder", "save_generator",
           "to_semantic_input"]
