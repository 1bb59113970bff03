"""What the page shows of a model: its classes (name, colour, value in the model's label PNGs) and example maps.

A model does not carry class names, so they come from what we know: a `custom`-preset model with the landscape
dataset's 10 classes (no don't-care, no instance edges: the bundled model, or one trained on
`spade-deploy landscapes` data) gets the landscape names and colours and the demo's held-out maps as examples; any
other model gets "class N" with the preview colours of `spade_deploy.model.labels.colorize`, and no examples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spade_deploy.data import landscapes
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.labels import colorize, labels_to_raw

EXAMPLE_COUNT = 6  # held-out landscape maps offered as starting points


@dataclass(frozen=True)
class ModelClass:
    index: int  # class index: the generator's one-hot channel
    name: str
    colour: tuple[int, int, int]  # label-preview colour on the canvas
    raw: int  # the value this class has in the model's label PNGs (its preset's encoding)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def is_landscape_model(config: GeneratorConfig) -> bool:
    return (config.preset == "custom" and config.label_nc == len(landscapes.CLASSES)
            and not config.contain_dontcare_label and not config.use_instance)


def model_classes(config: GeneratorConfig) -> list[ModelClass]:
    """Every class index the model takes, don't-care included, in index order."""
    indices = np.arange(config.num_label_channels)
    raw = labels_to_raw(indices, config)
    if is_landscape_model(config):
        return [ModelClass(int(index), cls.name, cls.colour, int(value))
                for index, cls, value in zip(indices, landscapes.CLASSES, raw)]
    colours = colorize(indices, config)
    return [ModelClass(int(index), "don't care" if config.contain_dontcare_label and index == config.label_nc
                       else f"class {index}", tuple(int(channel) for channel in colour), int(value))
            for index, colour, value in zip(indices, colours, raw)]


def example_maps(config: GeneratorConfig, height: int, width: int) -> list[tuple[str, np.ndarray]]:
    """(name, class indices `[H, W]` uint8) of the demo's held-out maps at the model's size, for landscape models
    of a square size; none for other models, whose classes these maps do not mean."""
    if not is_landscape_model(config) or height != width:
        return []
    return [(f"held-out map {index}",
             landscapes.render(landscapes.sample_seed(landscapes.VALIDATION_SEED, index), height)[0])
            for index in range(EXAMPLE_COUNT)]
