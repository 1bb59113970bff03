"""The model: configs, networks, checkpoints, label maps, images, latents and the I/O contract.

Torch-free modules (the client and the served models use them): `config`, `io_spec`, `labels`, `images`,
`sampling`. The rest (`networks`, `checkpoint`, `tensors`, `synthetic`) imports torch.
"""
