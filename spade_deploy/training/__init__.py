"""SPADE training: data, discriminator, losses, the distributed loop (its CLI: `spade_deploy.cli.train`).

The generator and encoder come from `spade_deploy.model.networks`; a training checkpoint's `generator` entry is what
`spade_deploy.load_generator` and the exporters read.
"""
