"""Procedural GauGAN-style landscapes: a photo-like image and its semantic label map from one integer seed.

No landscape dataset can be downloaded here, yet a SPADE generator needs pairs whose classes look different *and*
carry texture (a flat colour per class teaches it nothing). So each scene is laid out from fractal noise (horizon,
mountain ridges, clouds, hills, lakes, trees) and every class is painted with its own noise texture, shading and
per-image colour jitter. Labels and image are painted together, mask by mask, so they agree pixel for pixel.

numpy and Pillow only: this module must stay importable and fast without torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from spade_deploy.files import atomic_path
from spade_deploy.model.images import save_png


@dataclass(frozen=True)
class LandscapeClass:
    name: str
    colour: tuple[int, int, int]  # label-preview colour (GauGAN-like palette), not the photo colour


CLASSES: tuple[LandscapeClass, ...] = (
    LandscapeClass("sky", (0, 160, 255)),
    LandscapeClass("cloud", (215, 215, 255)),
    LandscapeClass("mountain", (150, 90, 40)),
    LandscapeClass("rock", (110, 110, 125)),
    LandscapeClass("snow", (170, 255, 255)),
    LandscapeClass("grass", (60, 200, 40)),
    LandscapeClass("tree", (0, 100, 30)),
    LandscapeClass("water", (0, 40, 200)),
    LandscapeClass("sand", (240, 210, 110)),
    LandscapeClass("flower", (255, 60, 180)),
)
SKY, CLOUD, MOUNTAIN, ROCK, SNOW, GRASS, TREE, WATER, SAND, FLOWER = range(len(CLASSES))
# The generator trained on this dataset by our own training stack, shipped in the package (see MODEL_CARD.md).
MODEL_FILE = Path(__file__).with_name("landscapes_generator.pth")
# The dataset seed of the held-out maps (the demo's, the studio's examples, the evaluation's); training used seed 0.
VALIDATION_SEED = 1
# The segmentation network of `spade-deploy evaluate`, trained on this dataset's real images (see MODEL_CARD.md).
SEGMENTER_FILE = Path(__file__).with_name("landscapes_segmenter.onnx")

Colour = tuple[float, float, float]


def _value_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """A random grid upsampled to `[h, w]` with smoothstep-weighted bilinear interpolation (separable: rows, then
    columns); a random phase per axis hides the grid alignment."""
    cells_y, cells_x = max(1, min(cells_y, h)), max(1, min(cells_x, w))
    grid = rng.random((cells_y + 2, cells_x + 2), dtype=np.float32)  # +2: the phase may push past the last cell

    def axis(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.arange(n, dtype=np.float32) * np.float32(cells / n) + np.float32(rng.random())
        i = t.astype(np.int64)
        f = t - i
        return i, f * f * (3 - 2 * f)

    iy, fy = axis(h, cells_y)
    ix, fx = axis(w, cells_x)
    rows = grid[iy] * (1 - fy[:, None]) + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _fractal(rng: np.random.Generator, size: int, cells_y: int, cells_x: int, octaves: int,
             gain: float = 0.5) -> np.ndarray:
    """Octaves of value noise (cells doubling, amplitude times `gain`), standardised to mean 0 and std 1 so that
    thresholds mean the same coverage at every size. Unequal cells stretch the features (wide clouds, gullies)."""
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        total += gain ** octave * _value_noise(rng, size, size, cells_y << octave, cells_x << octave)
    return (total - total.mean()) / (total.std() + 1e-6)


def _noise_1d(rng: np.random.Generator, n: int, cells: int, octaves: int, gain: float = 0.5,
              smooth: bool = True) -> np.ndarray:
    """1-D fractal noise rescaled to [0, 1]; `smooth=False` keeps linear kinks, which read as sharp rocky ridges."""
    x = np.arange(n) / n
    total = np.zeros(n)
    for octave in range(octaves):
        k = min(cells << octave, n)
        t = x * k + rng.random()
        i = t.astype(np.int64)
        f = t - i
        f = f * f * (3 - 2 * f) if smooth else f
        p = rng.random(k + 2)
        total += gain ** octave * (p[i] * (1 - f) + p[i + 1] * f)
    return (total - total.min()) / (np.ptp(total) + 1e-9)


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> np.ndarray:
    """Per-image colour variation: a shared brightness factor and a smaller per-channel (hue) factor."""
    scale = rng.uniform(1 - amount, 1 + amount) * rng.uniform(1 - amount / 2, 1 + amount / 2, size=3)
    return np.clip(np.asarray(colour, np.float32) * scale, 0, 255).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    return a + (b - a) * t


class _Canvas:
    """Labels and image under construction; `paint` is the only writer, which keeps the two in agreement."""

    def __init__(self, seed: int, size: int) -> None:
        self.rng = rng = np.random.default_rng(seed)
        self.size = size
        self.ys = np.arange(size, dtype=np.float32)[:, None]  # column of row indices, broadcasts against xs
        self.xs = np.arange(size, dtype=np.float32)[None, :]
        self.labels = np.zeros((size, size), np.uint8)
        self.image = np.zeros((size, size, 3), np.float32)
        self.horizon = int(size * rng.uniform(0.45, 0.68))
        self.light = rng.choice([-1.0, 1.0])  # sun on the left or the right: which slopes are lit
        self.grain = rng.standard_normal((size, size)).astype(np.float32)  # per-pixel grain shared by all classes
        self.detail = _fractal(rng, size, size // 6, size // 6, 2)  # fine texture shared by all classes
        self.patches = _fractal(rng, size, 4, 2, 3)  # meadow patches, shared by every hill
        self.haze = np.zeros(3, np.float32)  # the sky colour at the horizon: distance fades towards it

    def paint(self, mask: np.ndarray, cls: int, texture: np.ndarray,
              box: tuple[slice, slice] = (slice(None), slice(None))) -> None:
        """Give class `cls` to the pixels of `mask` and paint them from `texture` (both broadcast over `box`)."""
        labels, image = self.labels[box], self.image[box]
        mask = np.broadcast_to(mask, labels.shape)
        labels[mask] = cls
        image[mask] = np.broadcast_to(texture, image.shape)[mask]


def _sky(c: _Canvas) -> None:
    rng, h = c.rng, c.horizon
    mood = rng.choice(3, p=[0.55, 0.2, 0.25])  # clear day, hazy, evening
    top, low = [((35, 95, 195), (165, 200, 235)), ((115, 145, 185), (200, 208, 215)),
                ((50, 60, 135), (245, 165, 105))][mood]
    top, c.haze = _jitter(rng, top, 0.12), _jitter(rng, low, 0.06)
    t = np.clip(c.ys / h, 0, 1) ** rng.uniform(1.2, 2.5)
    sky = _mix(top, c.haze, t[..., None]) * (1 + 0.03 * _fractal(rng, c.size, 2, 2, 2))[..., None]
    if mood == 2:  # a low sun's glow near the horizon
        d2 = ((c.xs - rng.uniform(0.1, 0.9) * c.size) ** 2 + (c.ys - h) ** 2) / (0.3 * c.size) ** 2
        sky = sky + (np.exp(-d2) * 60)[..., None] * np.array([1.0, 0.75, 0.45], np.float32)
    c.paint(np.ones_like(c.labels, bool), SKY, sky)
    if rng.random() < 0.85:  # clouds: wide fractal blobs, thinning out towards the horizon
        n = _fractal(rng, c.size, 5, 2, 5) - 3 * np.clip((c.ys / h - 0.55) / 0.45, 0, 1) ** 2
        threshold = rng.uniform(0.2, 1.4)
        density = np.clip((n - threshold) / 0.8, 0, 1)
        up = max(1, c.size // 40)
        above = np.concatenate([n[:up], n[:-up]])
        lit = np.clip(0.8 + 0.5 * (n - above) - 0.2 * density, 0.45, 1.1)  # tops (denser than above) lit, bases grey
        bright, shadow = ((255, 215, 185), (120, 100, 135)) if mood == 2 else ((248, 248, 252), (150, 160, 178))
        colour = _mix(_jitter(rng, shadow, 0.08), _jitter(rng, bright, 0.03), lit[..., None])
        c.paint((n > threshold) & (c.ys < h), CLOUD, _mix(c.image, colour, (0.45 + 0.55 * density)[..., None]))


def _mountains(c: _Canvas) -> None:
    rng, s, h = c.rng, c.size, c.horizon
    ranges = rng.choice(3, p=[0.1, 0.4, 0.5])
    base = _jitter(rng, [(118, 98, 76), (96, 102, 70), (128, 92, 70), (100, 96, 96)][rng.integers(4)], 0.1)
    for far in [True, False][:ranges]:  # one range is a tall far one
        height = min(s * (rng.uniform(0.18, 0.42) if far else rng.uniform(0.1, 0.25)), h - 0.06 * s)
        shape = 0.55 * (1 - np.abs(2 * _noise_1d(rng, s, 2, 1) - 1)) + 0.45 * _noise_1d(rng, s, 4, 6, 0.55, False)
        shape = (shape - shape.min()) / np.ptp(shape)
        ridge = h - height * (0.1 + 0.9 * shape if far else 1.25 * shape - 0.25)  # near range dips into gaps
        mask = (c.ys >= ridge) & (c.ys < h)
        depth = np.clip((c.ys - ridge) / np.maximum(h - ridge, 1), 0, 1)  # 0 at the ridge, 1 at the foot
        # Lighting from a height field: the ridge's elevation sinking towards the foot, plus spurs and gullies;
        # its slope along x says whether a face turns towards the sun.
        gullies = _fractal(rng, s, 2, 8, 4)
        elevation = (h - ridge) * (1 - depth) + 0.2 * height * gullies
        relief = c.light * np.gradient(elevation, axis=1) * 1.5
        shade = (1 + 0.35 * np.tanh(relief) - 0.1 * depth)[..., None]
        haze = ((rng.uniform(0.3, 0.45) if far else rng.uniform(0.04, 0.15)) + 0.25 * depth ** 2)[..., None]
        texture = (1 + 0.08 * c.detail + 0.04 * c.grain)[..., None]
        c.paint(mask, MOUNTAIN, _mix(base * (1.0 if far else 0.9) * shade * texture, c.haze, haze))
        if rng.random() < 0.5:  # grey rock outcrops with harder shading
            rocky = mask & (_fractal(rng, s, 5, 5, 3) > rng.uniform(0.7, 1.3)) & (depth > 0.15)
            rock = _jitter(rng, (82, 82, 86), 0.1) * (1 + 0.5 * np.tanh(relief) + 0.25 * c.detail)[..., None]
            c.paint(rocky, ROCK, _mix(rock * texture, c.haze, haze))
        snow_line = h - height * rng.uniform(0.3, 0.75)
        if height > 0.12 * s and rng.random() < (0.6 if far else 0.35):  # snow caps, running down the gullies
            snowy = mask & (c.ys < snow_line + height * 0.25 * gullies)
            light = np.clip(0.55 + 0.6 * np.tanh(1.5 * relief), 0, 1)[..., None]
            snow = _mix(_jitter(rng, (130, 150, 190), 0.08), _jitter(rng, (248, 249, 252), 0.02), light)
            c.paint(snowy, SNOW, _mix(snow * texture, c.haze, haze * 0.6))


def _grass(c: _Canvas, tone: np.ndarray, crest: np.ndarray) -> np.ndarray:
    """Grass texture for a hill whose crest is `crest[x]`: lit crest, darker lower down, hazy near the horizon."""
    below = np.clip((c.ys - crest) / (0.35 * c.size), 0, 1)
    distance = np.clip(1 - (c.ys - c.horizon) / (0.3 * c.size), 0, 1)  # 1 at the horizon, 0 nearby
    blades = c.detail + 0.8 * c.grain * (1 - 0.6 * distance)  # coarser grain in front
    bright = 1.12 - 0.3 * below + 0.1 * c.patches + 0.07 * blades
    return _mix(tone * bright[..., None], c.haze, (0.4 * distance)[..., None])


def _ground(c: _Canvas) -> None:
    rng, s, h = c.rng, c.size, c.horizon
    tone = _jitter(rng, [(72, 118, 42), (108, 132, 52), (135, 130, 72), (52, 96, 40)][rng.integers(4)], 0.1)
    if rng.random() < 0.45:  # a distant tree line on the horizon
        tops = s * rng.uniform(0.012, 0.035) * (0.3 + 0.7 * _noise_1d(rng, s, s // 5, 2))
        trees = _jitter(rng, (38, 62, 34), 0.1) * (1 + 0.15 * c.detail)[..., None]
        c.paint((c.ys >= h - 1 - tops) & (c.ys <= h), TREE, _mix(trees, c.haze, 0.45))
    water = rng.random() < 0.5
    below = c.ys >= h
    fore = h + (s - h) * rng.uniform(0.4, 0.8) - s * rng.uniform(0.03, 0.15) * _noise_1d(rng, s, 2, 3)
    fore = np.maximum(fore, h + 2)
    if water:  # a lake: the scene above the horizon mirrored, rippled, darkened and tinted
        rows = c.ys - h
        ripple = _fractal(rng, s, s // 3, 3, 2)
        src_y = np.clip(h - 1 - rows + 0.5 * ripple * (1 + rows / s * 8), 0, h - 1).astype(np.int64)
        src_x = np.clip(c.xs + ripple * (0.5 + rows / s * 6), 0, s - 1).astype(np.int64)
        reflect = np.clip(0.75 - 0.5 * rows / s, 0.3, 0.8)[..., None]
        deep = _jitter(rng, (25, 55, 70), 0.15)
        surface = _mix(deep, c.image[src_y, src_x] * 0.85, reflect) * (1 + 0.08 * ripple)[..., None]
        c.paint(below, WATER, surface)
    else:
        c.paint(below, GRASS, _grass(c, tone, np.full(s, float(h))))
        mid = h + (s - h) * rng.uniform(0.1, 0.4) - s * rng.uniform(0.02, 0.08) * _noise_1d(rng, s, 2, 3)
        c.paint(c.ys >= mid, GRASS, _grass(c, tone * 0.95, mid))
    beach = 0.0
    if water and rng.random() < 0.55:  # a sand beach between the lake and the foreground hill
        beach = s * rng.uniform(0.02, 0.07) * np.clip(1.6 * _noise_1d(rng, s, 3, 2) - 0.2, 0.25, 1)
        wet = np.clip((c.ys - fore) / np.maximum(beach, 1), 0, 1)[..., None]
        sand = _jitter(rng, (205, 185, 140), 0.08) * (0.8 + 0.2 * wet + (0.05 * c.detail + 0.06 * c.grain)[..., None])
        c.paint(c.ys >= fore, SAND, sand)
    ground = c.ys >= fore + beach
    c.paint(ground, GRASS, _grass(c, tone, fore + beach))
    if rng.random() < 0.4:  # a flower field: the grass texture dotted with one or two flower colours
        field = ground & (_fractal(rng, s, 3, 2, 3) > rng.uniform(-0.3, 0.6)) & (c.ys > fore + 0.1 * (s - fore))
        palette = np.array([(230, 50, 50), (250, 210, 60), (165, 90, 205), (245, 245, 245), (250, 140, 40)])
        colours = palette[rng.choice(len(palette), 2)].astype(np.float32)
        depth = np.clip((c.ys - h) / (s - h), 0, 1)
        pick = rng.random((s, s))
        dots = (pick < 0.05 + 0.15 * depth)[..., None]
        petal = np.where((pick < 0.025 + 0.07 * depth)[..., None], colours[0], colours[1])
        petal = petal * (0.85 + 0.1 * c.grain)[..., None]
        c.paint(field, FLOWER, np.where(dots, petal, _grass(c, tone * 1.05, fore + beach)))
    for _ in range(rng.integers(0, 4) if rng.random() < 0.4 else 0):  # boulders on the grass
        _boulder(c)
    _trees(c)


def _boulder(c: _Canvas) -> None:
    rng, s = c.rng, c.size
    y0, x0 = rng.integers(c.horizon + 1, s), rng.integers(0, s)
    if c.labels[y0, x0] not in (GRASS, FLOWER):
        return
    rx = max(2.0, s * rng.uniform(0.02, 0.06) * (y0 - c.horizon) / (s - c.horizon) * 1.5)
    ry = rx * rng.uniform(0.5, 0.8)
    u, v = (c.xs - x0) / rx, (c.ys - y0) / ry
    mask = (u * u + v * v <= 1) & (v <= 0.3)
    shade = 1 + 0.35 * c.light * u - 0.35 * v + 0.12 * c.detail
    c.paint(mask, ROCK, _jitter(rng, (120, 115, 108), 0.12) * shade[..., None])


def _trees(c: _Canvas) -> None:
    """Clusters of conifers or round-crowned trees standing on grass, far ones drawn first."""
    rng, s, h = c.rng, c.size, c.horizon
    trees = []
    for _ in range(rng.choice(5, p=[0.15, 0.25, 0.25, 0.2, 0.15])):
        cy, cx = rng.integers(h + 1, s), rng.integers(0, s)
        conifer, tone = rng.random() < 0.5, _jitter(rng, (40, 72, 34) if rng.random() < 0.5 else (62, 88, 38), 0.12)
        for _ in range(rng.integers(1, 8)):
            y = int(np.clip(cy + rng.normal(0, 0.03 * s), h + 1, s - 1))
            x = int(np.clip(cx + rng.normal(0, 0.08 * s), 0, s - 1))
            if c.labels[y, x] in (GRASS, FLOWER):
                height = s * (0.04 + 0.22 * ((y - h) / (s - h)) ** 1.3) * rng.uniform(0.7, 1.3)
                trees.append((y, x, height, conifer, tone))
    for y, x, height, conifer, tone in sorted(trees, key=lambda t: t[0]):
        top, half = int(y - height), int(height * 0.35) + 1  # a bounding box keeps each tree cheap
        box = slice(max(top, 0), y + 1), slice(max(x - half, 0), x + half + 1)
        v = (c.ys[box[0]] - (y - height)) / height  # 0 at the top, 1 at the foot
        u = (c.xs[:, box[1]] - x) / height
        trunk = (np.abs(u) < 0.04) & (v > 0.8)
        if conifer:  # tiers of jagged triangles
            crown = (np.abs(u) < 0.28 * v * (0.7 + 0.3 * ((v * 5) % 1))) & (v < 0.9)
        else:  # three overlapping round blobs
            crown = (u ** 2 + (v - 0.4) ** 2 < 0.09) | ((u - 0.15) ** 2 + (v - 0.58) ** 2 < 0.04) | (
                (u + 0.15) ** 2 + (v - 0.58) ** 2 < 0.04)
        shade = 1.15 - 0.55 * v + 0.5 * c.light * u + 0.2 * c.detail[box] + 0.08 * c.grain[box]
        colour = np.where(trunk[..., None] & ~crown[..., None], np.float32([62, 46, 32]), tone * shade[..., None])
        haze = 0.4 * np.clip(1 - (y - h) / (0.3 * s), 0, 1)
        c.paint(crown | trunk, TREE, _mix(colour, c.haze, haze), box)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def bundled_model() -> Path:
    """The bundled landscape generator checkpoint, or a `ValueError` saying how to get one."""
    return _bundled(MODEL_FILE, "--checkpoint")


def bundled_segmenter() -> Path:
    """The bundled landscape segmenter (ONNX), or a `ValueError` saying how to get one."""
    return _bundled(SEGMENTER_FILE, "--segmenter")


def _bundled(path: Path, option: str) -> Path:
    if not path.is_file():
        raise ValueError(f"the bundled file {path} is missing from this installation; reinstall spade-deploy, or "
                         f"pass {option}")
    return path


def render(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(labels uint8 [size, size], image uint8 [size, size, 3])` of one landscape; the same for the same
    `(seed, size)`, as all randomness comes from `np.random.default_rng(seed)`."""
    if not _is_int(size) or size < 16:
        raise ValueError(f"size must be an integer of at least 16, got {size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    canvas = _Canvas(int(seed), int(size))
    _sky(canvas)
    _mountains(canvas)
    _ground(canvas)
    return canvas.labels, np.clip(canvas.image + 1.5 * canvas.grain[..., None], 0, 255).astype(np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map -> uint8 `[H, W, 3]` preview in the class-table colours."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"labels must be class indices in 0..{len(CLASSES) - 1}, got values "
                         f"{labels.min()}..{labels.max()}")
    return np.array([cls.colour for cls in CLASSES], np.uint8)[labels.astype(np.int64)]


def sample_seed(dataset_seed: int, index: int) -> int:
    """The `render` seed of sample `index` of the dataset with seed `dataset_seed`: datasets of different seeds are
    disjoint while they hold at most 1_000_003 samples."""
    return dataset_seed * 1_000_003 + index


def write_dataset(out: str | Path, count: int, size: int, seed: int, progress: bool = True) -> None:
    """Write `out/images/{i:05d}.png` (RGB), `out/labels/{i:05d}.png` (8-bit, value = class index) and
    `out/classes.json`. Sample i is `render(sample_seed(seed, i), size)`: the same seed gives the same files."""
    if not _is_int(count) or count < 1:
        raise ValueError(f"count must be an integer of at least 1, got {count!r}")
    if not _is_int(size) or size < 32 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least 32, got {size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    held = [path for folder in ("images", "labels") if (out / folder).is_dir() for path in (out / folder).iterdir()]
    if held:
        raise ValueError(f"{out} already holds a dataset ({len(held)} files in images/ and labels/), which this one "
                         f"would mix with; choose a new or empty folder, or remove it first")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    table = [{"index": i, "name": cls.name, "colour": list(cls.colour)} for i, cls in enumerate(CLASSES)]
    with atomic_path(out / "classes.json") as temporary:
        temporary.write_text(json.dumps(table, indent=2) + "\n")
    indices = range(count)
    if progress:
        from tqdm import tqdm  # lazily: only the progress bar needs it
        indices = tqdm(indices, desc="landscapes", unit="img")
    for i in indices:
        labels, image = render(sample_seed(seed, i), size)
        key = f"{i:05d}"
        save_png(Image.fromarray(image), out / "images" / f"{key}.png")
        save_png(Image.fromarray(labels), out / "labels" / f"{key}.png")  # 8-bit grey: value = class index
