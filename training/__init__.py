"""SPADE training: data, discriminator, losses, the distributed loop and the `python -m training.train` CLI.

The generator and encoder come from `spade_deploy.networks`; a training checkpoint's `generator` entry is what
`spade_deploy.load_generator` and the exporters read.
"""
