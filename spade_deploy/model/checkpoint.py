"""Loading and saving generators and encoders: our self-describing checkpoints and the official NVlabs/SPADE ones.

Our format is a dict `{"format": "spade-deploy", "format_version": 1, "generator": {"config", "state_dict"},
"encoder": {...}}` (training checkpoints add more keys beside these). Official checkpoints are bare state dicts
(`latest_net_G.pth`, `latest_net_E.pth`): the config is inferred from the tensors, completed from `opt.txt` beside the
file, a preset and explicit overrides, and any of those that the weights contradict is an error.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from spade_deploy.files import atomic_path
from spade_deploy.model.config import NUM_UPSAMPLINGS, PRESETS, EncoderConfig, GeneratorConfig, preset_fields
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator

FORMAT = "spade-deploy"
FORMAT_VERSION = 1
StateDict = Mapping[str, torch.Tensor]

# semantic_nc of the official presets, to recognise an official checkpoint that comes without opt.txt or a preset.
_PRESET_BY_SEMANTIC_NC = {151: "ade20k", 184: "coco", 36: "cityscapes"}
_PRESET_SIZE_FIELDS = ("crop_size", "aspect_ratio")  # what a preset only suggests: the weights of a VAE decide


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the requested configuration."""


# ----------------------------------------------------------------------------------------------------- saving

def save_generator(generator: SPADEGenerator, path: str | Path, *, half: bool = False) -> None:
    """Write a self-describing generator checkpoint atomically; `half` stores the floating-point tensors as float16
    (half the file; loading casts them back to float32, so the model is the float16-rounded one)."""
    entry = checkpoint_entry(generator)
    if half:
        entry["state_dict"] = {key: _to_half(key, value) for key, value in entry["state_dict"].items()}
    write_checkpoint({"generator": entry}, path)


def _to_half(key: str, value: torch.Tensor) -> torch.Tensor:
    if not value.is_floating_point():
        return value
    half = value.half()
    if not torch.isfinite(half).all():
        raise ValueError(f"{key} has values beyond float16's range (max |x| {float(value.abs().max()):.3g}); save "
                         f"it without half=True")
    return half


def save_encoder(encoder: ConvEncoder, path: str | Path) -> None:
    """Write a self-describing encoder checkpoint atomically."""
    write_checkpoint({"encoder": checkpoint_entry(encoder)}, path)


def write_checkpoint(entries: dict[str, Any], path: str | Path) -> None:
    """`torch.save` our format (entries plus the format header), atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **entries}, file)


def checkpoint_entry(module: nn.Module) -> dict[str, Any]:
    """`{"config", "state_dict"}` of a network with a `config` (`to_dict()`): what `load_generator` /
    `load_encoder` read back (training also stores its discriminator this way)."""
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    return {"config": module.config.to_dict(), "state_dict": state}


# ----------------------------------------------------------------------------------------------------- loading

def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with errors that say what is wrong with the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a checkpoint file (.pth)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_load_failure(error)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict or state dict")
    if payload.get("format") == FORMAT and payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['format_version']}; this spade-deploy reads up "
                              f"to version {FORMAT_VERSION}: upgrade spade-deploy")
    return payload


def _load_failure(error: Exception) -> str:
    """What is wrong with the file, in PyTorch's words, without its advice to retry with `weights_only=False`: that
    would run whatever code the file carries, which we never do."""
    message = str(error)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", message):
        return (f"it holds a Python object ({found.group(1)}), and checkpoints are read as tensors and plain data "
                f"only; save the state dict (tensors) instead")
    if found := re.search(r"Unsupported operand \d+", message):
        return (f"its bytes are not the pickle data torch.save writes ({found.group(0)}); the file is damaged or not "
                f"a checkpoint")
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and "weights_only" not in line and "weights only" not in line.lower()]
    if isinstance(error, (KeyError, pickle.UnpicklingError, EOFError)):  # a text file: KeyError: 101 ('e')
        return (f"it is not a file torch.save writes ({type(error).__name__}: {lines[0] if lines else 'no detail'}); "
                f"the file is damaged or not a checkpoint")
    return f"{type(error).__name__}: {lines[0] if lines else 'no detail'}"


def load_generator(path: str | Path, *, preset: str | None = None, **overrides: Any) -> SPADEGenerator:
    """An eval-mode generator from our checkpoint or an official `*_net_G.pth` (config at `.config`)."""
    path = Path(path)
    payload = read_checkpoint(path)
    if payload.get("format") == FORMAT:
        entry = _our_entry(payload, "generator", path)
        config = _apply(GeneratorConfig.from_dict(entry["config"]), preset, overrides, path)
        state = entry["state_dict"]
    else:
        state = _official_state(payload, "generator", path)
        config = infer_generator_config(state, preset=preset, opt=read_opt_txt(path.parent), **overrides)
    generator = SPADEGenerator(config)
    load_state(generator, state, path)
    return generator.eval()


def load_encoder(path: str | Path, *, preset: str | None = None, **overrides: Any) -> ConvEncoder:
    """An eval-mode style encoder from our checkpoint or an official `*_net_E.pth` (config at `.config`). `preset` is
    taken for symmetry with `load_generator` (an encoder has no label layout): it is only checked to be known."""
    if preset is not None:
        preset_fields(preset)  # a ValueError naming the presets
    path = Path(path)
    payload = read_checkpoint(path)
    if payload.get("format") == FORMAT:
        entry = _our_entry(payload, "encoder", path)
        config = EncoderConfig.from_dict(entry["config"]).replace(**overrides)
        state = entry["state_dict"]
    else:
        state = _official_state(payload, "encoder", path)
        config = infer_encoder_config(state, **overrides)
    encoder = ConvEncoder(config)
    load_state(encoder, state, path)
    return encoder.eval()


def _apply(config: GeneratorConfig, preset: str | None, overrides: dict[str, Any], path: Path) -> GeneratorConfig:
    """Our checkpoints carry their config; a preset or overrides may only change what the weights leave open. A
    preset that contradicts the stored config is an error naming the fields (it is meant for official checkpoints
    without opt.txt), not a list of shape mismatches; its size fields, only a suggestion, give way to the stored
    ones."""
    fields = {name: value for name, value in (preset_fields(preset) if preset else {}).items()
              if name not in _PRESET_SIZE_FIELDS}
    contradicted = [f"{name} {getattr(config, name)!r}, the preset's {value!r}" for name, value in fields.items()
                    if getattr(config, name) != value]
    if contradicted:
        raise CheckpointError(f"{path} is a spade-deploy checkpoint, which carries its own config, and preset "
                              f"{preset!r} contradicts it ({'; '.join(contradicted)}): a preset is for official "
                              f"checkpoints without opt.txt; leave it out")
    fields = fields | {"preset": preset} if preset else {}
    return config.replace(**(fields | overrides)) if fields or overrides else config


def _our_entry(payload: dict[str, Any], kind: str, path: Path) -> dict[str, Any]:
    if kind not in payload:
        present = [key for key in ("generator", "encoder") if key in payload]
        hint = f"; it holds {present}" if present else ""
        raise CheckpointError(f"{path} is a spade-deploy checkpoint that holds no {kind}{hint}")
    return payload[kind]


def _official_state(payload: dict[str, Any], kind: str, path: Path) -> dict[str, torch.Tensor]:
    if not payload or not all(isinstance(value, torch.Tensor) for value in payload.values()):
        raise CheckpointError(f"{path} is neither a spade-deploy checkpoint nor a state dict of tensors "
                              f"(keys: {sorted(payload)[:8]})")
    looks_like = "encoder" if "layer1.0.weight_orig" in payload or "layer1.0.weight" in payload else (
        "generator" if "head_0.conv_0.weight_orig" in payload or "head_0.conv_0.weight" in payload else None)
    if looks_like is None:
        raise CheckpointError(f"{path} is a state dict, but not of a SPADE generator or encoder "
                              f"(no head_0.* or layer1.* keys; first keys: {sorted(payload)[:8]})")
    if looks_like != kind:
        loader = "load_encoder" if looks_like == "encoder" else "load_generator"
        raise CheckpointError(f"{path} is a SPADE {looks_like} state dict, not a {kind}; use {loader}")
    return payload


def load_state(module: nn.Module, state: StateDict, path: Path | str) -> None:
    """Strict `load_state_dict` that lists missing/unexpected keys and shape mismatches in one error."""
    expected = module.state_dict()
    # The official SyncBN never counts batches; tolerate checkpoints that omit the counter.
    missing = sorted(key for key in expected if key not in state and not key.endswith("num_batches_tracked"))
    unexpected = sorted(key for key in state if key not in expected)
    mismatched = [f"{key}: expected {list(expected[key].shape)}, found {list(state[key].shape)}"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        config = getattr(module, "config", None)
        raise CheckpointError(f"{path} does not fit {type(module).__name__}({config}):\n  " + "\n  ".join(problems))
    module.load_state_dict(dict(state), strict=False)


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------- official config inference

def read_opt_txt(directory: Path) -> dict[str, str]:
    """The `name: value` lines of an official `opt.txt` in `directory` (empty if there is none)."""
    path = directory / "opt.txt"
    if not path.is_file():
        return {}
    options = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"\s*([A-Za-z_][\w]*)\s*:\s*(\S*)", line)
        if match:
            options[match.group(1)] = match.group(2)
    return options


def _generator_fields_from_opt(opt: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if opt.get("dataset_mode") in PRESETS:
        fields.update(preset_fields(opt["dataset_mode"]), preset=opt["dataset_mode"])
    for name, cast in (("label_nc", int), ("ngf", int), ("z_dim", int), ("crop_size", int),
                       ("aspect_ratio", float), ("num_upsampling_layers", str)):
        if name in opt:
            fields[name] = cast(opt[name])
    for name, target in (("contain_dontcare_label", "contain_dontcare_label"), ("use_vae", "use_vae")):
        if name in opt:
            fields[target] = opt[name] == "True"
    if "no_instance" in opt:
        fields["use_instance"] = opt["no_instance"] != "True"
    norm_g = opt.get("norm_G", "")
    if norm_g:
        fields["spectral"] = "spectral" in norm_g
        fields["norm"] = "syncbatch" if "syncbatch" in norm_g else "instance" if "instance" in norm_g else "batch"
        kernel = re.search(r"(\d+)x\d+$", norm_g)
        if kernel:
            fields["spade_kernel"] = int(kernel.group(1))
    return fields


def infer_generator_config(state: StateDict, *, preset: str | None = None, opt: dict[str, str] | None = None,
                           **overrides: Any) -> GeneratorConfig:
    """The config of an official generator state dict. Weights decide what they determine; `preset`, then `opt.txt`
    options, then `overrides` decide the rest, and contradicting the weights is a `CheckpointError`."""
    given: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    if preset is not None:
        layout = preset_fields(preset)
        # The preset's size is a default: a VAE's weights fix its latent grid, and so its size.
        defaults.update((name, layout.pop(name)) for name in _PRESET_SIZE_FIELDS if name in layout)
        given.update(layout, preset=preset)
    given.update(_generator_fields_from_opt(opt or {}))
    given.update(overrides)

    # These tensors decide the config; without them there is nothing to build, so say which are absent.
    absent = [key for key in ("fc.weight", "head_0.norm_0.mlp_shared.0.weight") if key not in state]
    if absent:
        raise CheckpointError(f"the generator state dict lacks {absent}, which determine its configuration")
    conv0 = state.get("head_0.conv_0.weight_orig", state.get("head_0.conv_0.weight"))
    shared = state["head_0.norm_0.mlp_shared.0.weight"]  # [hidden, semantic_nc, k, k]
    fc = state["fc.weight"]
    semantic_nc = shared.shape[1]
    inferred: dict[str, Any] = dict(
        ngf=conv0.shape[0] // 16,
        spectral="head_0.conv_0.weight_orig" in state,
        spade_hidden=shared.shape[0],
        spade_kernel=shared.shape[2],
        use_vae=fc.dim() == 2,
    )
    if inferred["use_vae"]:
        inferred["z_dim"] = fc.shape[1]
    has_stats = "head_0.norm_0.param_free_norm.running_mean" in state
    if not has_stats:
        inferred["norm"] = "instance"
    elif given.get("norm") == "instance":
        raise CheckpointError("norm='instance' contradicts the weights: they hold batch-norm running statistics")

    has_up4 = any(key.startswith("up_4.") for key in state)
    mode = given.get("num_upsampling_layers")
    if has_up4:
        if mode not in (None, "most"):
            raise CheckpointError(f"num_upsampling_layers={mode!r} contradicts the weights: they have the up_4 block "
                                  f"of 'most'")
        inferred["num_upsampling_layers"] = "most"
    elif mode == "most":
        raise CheckpointError("num_upsampling_layers='most' contradicts the weights: they have no up_4 block")

    for name, value in inferred.items():
        if name in given and given[name] != value:
            raise CheckpointError(f"{name}={given[name]!r} contradicts the weights, which give {name}={value!r}")

    if "label_nc" not in given and "preset" not in given and semantic_nc in _PRESET_BY_SEMANTIC_NC:
        guess = _PRESET_BY_SEMANTIC_NC[semantic_nc]
        warnings.warn(f"no preset or opt.txt given; {semantic_nc} input channels match the official {guess!r} "
                      f"preset, so its label layout is assumed (pass preset= to choose)", stacklevel=3)
        defaults.update(preset_fields(guess), preset=guess)
    fields = {**defaults, **given, **inferred}

    extra = int(fields.get("contain_dontcare_label", False)) + int(fields.get("use_instance", False))
    if "label_nc" in given:
        if given["label_nc"] + extra != semantic_nc:
            raise CheckpointError(
                f"label_nc={given['label_nc']} + contain_dontcare_label={fields.get('contain_dontcare_label', False)}"
                f" + use_instance={fields.get('use_instance', False)} gives {given['label_nc'] + extra} input "
                f"channels, but the weights take {semantic_nc}")
    else:
        fields["label_nc"] = semantic_nc - extra
        if fields["label_nc"] < 1:
            raise CheckpointError(f"the weights take {semantic_nc} input channels, too few for "
                                  f"contain_dontcare_label/use_instance as configured")

    if inferred["use_vae"]:
        fields.update(_vae_grid(fc.shape[0] // (16 * inferred["ngf"]), given, fields))
    return GeneratorConfig(**fields)


def _vae_grid(cells: int, given: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """crop_size / aspect_ratio / upsampling of a VAE generator whose fc produces `cells` latent positions."""
    pairs = [(cells // width, width) for width in range(1, cells + 1) if cells % width == 0]  # (sh, sw)
    if "aspect_ratio" in given:
        pairs = [(h, w) for h, w in pairs if round(w / given["aspect_ratio"]) == h]
    else:  # the default aspect ratio (a preset's) where the grid allows it, else the grid closest to square
        pairs = ([(h, w) for h, w in pairs if round(w / fields.get("aspect_ratio", 1.0)) == h]
                 or sorted((p for p in pairs if p[1] >= p[0]), key=lambda p: p[1] / p[0]))[:1]
    if not pairs:
        raise CheckpointError(f"aspect_ratio={given['aspect_ratio']} contradicts the weights: the VAE fc has "
                              f"{cells} latent positions, which no grid of that aspect ratio has")
    sh, sw = pairs[0]
    aspect = given.get("aspect_ratio", sw / sh)
    if "crop_size" in given and "num_upsampling_layers" not in given:
        ratio = given["crop_size"] / sw
        modes = [m for m, n in NUM_UPSAMPLINGS.items() if 2 ** n == ratio and m != "most"]
        if fields.get("num_upsampling_layers") == "most":
            modes = ["most"] if ratio == 2 ** NUM_UPSAMPLINGS["most"] else []
        if not modes:
            raise CheckpointError(f"crop_size={given['crop_size']} contradicts the weights: the VAE latent grid is "
                                  f"{sh}x{sw}, so the output width is {sw} times 32, 64 or 128")
        return {"crop_size": given["crop_size"], "aspect_ratio": aspect, "num_upsampling_layers": modes[0]}
    mode = fields.get("num_upsampling_layers", "normal")
    crop = sw * 2 ** NUM_UPSAMPLINGS[mode]
    if "crop_size" in given and given["crop_size"] != crop:
        raise CheckpointError(f"crop_size={given['crop_size']} with num_upsampling_layers={mode!r} contradicts the "
                              f"weights: the VAE latent grid is {sh}x{sw}, giving width {crop}")
    return {"crop_size": crop, "aspect_ratio": aspect, "num_upsampling_layers": mode}


def infer_encoder_config(state: StateDict, **overrides: Any) -> EncoderConfig:
    """The config of an official encoder state dict (width and depth from the tensors)."""
    spectral = "layer1.0.weight_orig" in state
    first = state["layer1.0.weight_orig" if spectral else "layer1.0.weight"]
    inferred = dict(ngf=first.shape[0], num_layers=6 if any(k.startswith("layer6.") for k in state) else 5,
                    spectral=spectral)
    # The tensors fix every field; opt.txt adds nothing (its crop_size rule for layer6 is what the weights show).
    given: dict[str, Any] = dict(overrides)
    for name, value in inferred.items():
        if name in given and given[name] != value:
            raise CheckpointError(f"encoder {name}={given[name]!r} contradicts the weights, which give {value!r}")
    return EncoderConfig(**{**given, **inferred})
