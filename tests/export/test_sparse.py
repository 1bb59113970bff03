"""The boundary-sparse graph, with each way of finding its distinct windows and with and without Winograd convs,
computes the dense folded graph's (and the eager generator's) function exactly (max |Δ| ≤ 1e-4) on label maps that
stress its bookkeeping: many regions, one region, regions on every border, 1-pixel-wide regions, and batches mixing
them (no neighbour may leak across images); in ONNX Runtime and in OpenVINO too."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.export.fold import FoldedGenerator, upsample_last
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.export.graphs import generator_graph
from spade_deploy.export.onnx import OPSET, export_generator_onnx
from spade_deploy.export.precision import FP32
from spade_deploy.export.runtime import OnnxGenerator, OpenVinoSession, make_session, openvino_unavailable
from spade_deploy.export.sparse import (DENSE_BELOW_BF16, EVERY_ROW, KEYS, ROWS, Level, PointwiseConv, SparseResBlock,
                                        TapSumConv, distinct_rows, sparse_generator, times, winograd_tile)
from spade_deploy.model.synthetic import random_generator, synthetic_instance_map, synthetic_label_map
from spade_deploy.export.winograd import WinogradConv3x3
from tests.export.test_fold import VARIANTS

TOLERANCE = 1e-4
SPARSE_VARIANTS = [(name, config) for name, config in VARIANTS if config.spade_kernel == 3]


def label_maps(config: GeneratorConfig) -> dict[str, np.ndarray]:
    """[H, W] class maps of the shapes the sparse bookkeeping must get right."""
    height, width = config.image_size
    classes = config.num_label_channels
    ys, xs = np.mgrid[0:height, 0:width]
    one_pixel = np.zeros((height, width), np.int64)
    one_pixel[:, ::7] = 1 % classes  # 1-pixel-wide vertical lines
    one_pixel[::5, :] = 2 % classes  # and horizontal ones
    one_pixel[height // 2, width // 3] = (classes - 1)  # a single-pixel region
    return {
        "many-regions": synthetic_label_map(height, width, num_regions=30, num_classes=classes, seed=1),
        "one-region": np.full((height, width), classes - 1, np.int64),
        "every-border": ((ys < height // 2).astype(np.int64) * 2 + (xs < width // 2)) % classes,
        "one-pixel-wide": one_pixel,
    }


@pytest.fixture(scope="module", params=SPARSE_VARIANTS, ids=[name for name, _ in SPARSE_VARIANTS])
def models(request):
    """(eager, dense folded, [all-blocks-sparse as in the `sparse`, `sparse-tensorrt` and `sparse-bf16` graph, dense
    folded with batch norm as a step]) for one variant."""
    config = request.param[1]
    generator = random_generator(config, seed=9)
    # Every block sparse, down to the 1x1 latent grid; Winograd main convs wherever the block size is even.
    sparse = [sparse_generator(generator, dense_below=1),
              sparse_generator(generator, dense_below=1, deduplicate=EVERY_ROW, winograd_up_to=0)]
    assert all(isinstance(block, SparseResBlock) for graph in sparse for block in graph.blocks)
    assert all(isinstance(graph.conv_img, TapSumConv) for graph in sparse)
    # Blocks after an upsampling take their input before it (the variants include ones without a learned shortcut)
    assert all(block.upsamples == up for graph in sparse for block, up in zip(graph.blocks, graph.ups))
    # Winograd convs leave their biases to the next op that takes them in for free: conv_0's to mod_1, conv_1's to
    # a learned shortcut
    for block in sparse[0].blocks:
        if isinstance(block.conv_0, WinogradConv3x3):
            assert block.conv_0.bias is None and (block.conv_1.bias is None) == block.learned_shortcut
    winograd = [[isinstance(block.conv_0, WinogradConv3x3) for block in graph.blocks] for graph in sparse]
    assert any(winograd[0]) and not any(winograd[1])
    # Crops of 64 and 128 px have blocks of 32 px and more: there 4x4 Winograd tiles, below them 2x2.
    assert {block.conv_0.tile for block in sparse[0].blocks if isinstance(block.conv_0, WinogradConv3x3)} == {2, 4}
    # The same function with batch norm as a step of its own before each modulation (with Winograd convs, which leave
    # it conv_0's bias; with direct ones and int32 keys, as the bf16 graph), sparse and dense
    normalized = [sparse_generator(generator, dense_below=1, normalize_first=True),
                  sparse_generator(generator, dense_below=1, deduplicate=KEYS, normalize_first=True, winograd_up_to=0),
                  FoldedGenerator(generator, normalize_first=True).eval()]
    return generator, FoldedGenerator(generator).eval(), sparse + normalized


@pytest.mark.parametrize("kind", ["many-regions", "one-region", "every-border", "one-pixel-wide", "mixed-batch"])
def test_sparse_matches_dense_and_eager(models, kind):
    generator, dense, others = models
    config = generator.config
    maps = label_maps(config)
    labels = np.stack([maps["one-region"], maps["many-regions"], maps["one-pixel-wide"]]) if kind == "mixed-batch" \
        else maps[kind][None]
    instances = np.stack([synthetic_instance_map(item, seed=index) for index, item in enumerate(labels)]) \
        if config.use_instance else None
    z = torch.randn(len(labels), config.z_dim, generator=torch.Generator().manual_seed(4)) if config.use_vae else None
    with torch.no_grad():
        eager = generator(to_semantic_input(labels, instances, config), z)
        inputs = (torch.from_numpy(labels), None if instances is None else torch.from_numpy(instances), z)
        dense_out = dense(*inputs)
        for graph in others:
            sparse_out = graph(*inputs)
            assert (sparse_out - dense_out).abs().max() <= TOLERANCE
            assert (sparse_out - eager).abs().max() <= TOLERANCE


def test_windows_are_deduplicated():
    """Along boundaries the same 3x3 label windows repeat: one table row per distinct window, far fewer than the
    pixels near a boundary, found alike by Unique of rows and of keys; with EVERY_ROW every such pixel keeps its own
    row."""
    labels = torch.from_numpy(synthetic_label_map(128, 128, num_regions=16, num_classes=10, seed=3))[None]
    rows, keys, every = (Level(labels, None, 10, deduplicate) for deduplicate in (ROWS, KEYS, EVERY_ROW))
    assert len(torch.unique(every.window_label_rows, dim=0)) == len(rows.window_label_rows) == \
        len(keys.window_label_rows)
    assert len(rows.window_label_rows) * 3 < len(every.window_label_rows)
    assert len(rows.b5_rows) == len(keys.b5_rows) < len(every.b5_rows)


def test_unknown_deduplication_is_refused_when_the_graph_is_built():
    generator = random_generator(SPARSE_VARIANTS[0][1], seed=2)
    with pytest.raises(ValueError, match=r"deduplicate must be one of \['rows', 'keys', 'every-row'\], got 'hash'"):
        sparse_generator(generator, dense_below=1, deduplicate="hash")


@pytest.mark.parametrize("bases", [[152] * 9, [152] * 9 + [2] * 9, [None] * 9, [2] * 9])
def test_distinct_rows_by_keys(bases):
    """Keys built column by column (a bound per column, or the data's) find the rows' distinct rows; bases too small
    for the data (here 2 for values up to 3) make equal keys of different rows, and then every row is kept."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 4 if bases == [2] * 9 else 152, (300, len(bases)), generator=generator)
    patterns[:, 9:] %= 2  # edge flags
    rows = patterns[torch.randint(0, 300, (5000,), generator=generator)]
    distinct, inverse = distinct_rows(rows, bases, KEYS)
    assert torch.equal(distinct[inverse], rows)
    assert len(distinct) == (5000 if bases == [2] * 9 else len(torch.unique(rows, dim=0)))
    with pytest.raises(ValueError, match=r"deduplicate must be one of \['rows', 'keys', 'every-row'\], got 'hash'"):
        distinct_rows(rows, bases, "hash")


class DistinctRows(torch.nn.Module):
    def __init__(self, bases: list[int | None]) -> None:
        super().__init__()
        self.bases = bases

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return distinct_rows(rows, self.bases, KEYS)


def test_distinct_rows_by_keys_in_onnx(tmp_path):
    """Exported, the keys find the distinct rows, and keep every row where the keys are not exact (bases too small
    for the data), in ONNX Runtime and in OpenVINO: the number of rows kept is decided when the graph runs."""
    path = tmp_path / "distinct.onnx"
    example = torch.randint(0, 4, (50, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(DistinctRows([2] * 9), (example,), str(path), input_names=["rows"],
                          output_names=["distinct", "inverse"], dynamic_axes={"rows": {0: "rows"}}, opset_version=OPSET,
                          dynamo=False)
    generator = torch.Generator().manual_seed(1)
    in_range = torch.randint(0, 2, (40, 9), generator=generator)[torch.randint(0, 40, (3000,), generator=generator)]
    colliding = torch.randint(0, 4, (300, 9), generator=generator)[torch.randint(0, 300, (4000,), generator=generator)]
    sessions = [make_session(path, threads=1)]
    if not openvino_unavailable():
        sessions.append(OpenVinoSession(path, precision=FP32, threads=1))
    for rows, expected in ((in_range, len(torch.unique(in_range, dim=0))), (colliding, 4000)):
        for session in sessions:
            distinct, inverse = session.run(["distinct", "inverse"], {"rows": rows.numpy()})
            assert len(distinct) == expected and np.array_equal(distinct[inverse], rows.numpy())


def test_sparse_onnx_runs_the_sparse_ops_in_onnx_runtime(tmp_path):
    """The default CPU export is the sparse graph; it and the TensorRT-buildable variant (no Unique) run in ONNX
    Runtime exactly."""
    config = SPARSE_VARIANTS[0][1]
    generator = random_generator(config, seed=2)
    labels = np.stack([label_maps(config.replace(crop_size=128))[kind] for kind in ("many-regions", "one-region")])
    instances = np.stack([synthetic_instance_map(item) for item in labels])
    with torch.no_grad():
        eager = generator(to_semantic_input(labels, instances, config)).numpy()
    for graph, unique_op in (("sparse", True), ("sparse-tensorrt", False)):
        path = export_generator_onnx(generator, tmp_path / f"{graph}.onnx", height=128, width=128, graph=graph)
        ops = {node.op_type for node in onnx.load(str(path)).graph.node}
        assert {"NonZero", "Gather", "MatMul", "CumSum"} <= ops
        assert ("Unique" in ops) == unique_op
        _, image_float = OnnxGenerator(path)(labels, instances)
        assert np.abs(image_float - eager).max() <= TOLERANCE


def test_the_bf16_graph_is_sparse_from_32_px_with_int32_keys():
    generator = random_generator(SPARSE_VARIANTS[0][1], seed=2)
    core = generator_graph(generator, graph="sparse-bf16", height=256, width=256).core
    sizes = [256 // factor for factor in core.factors]
    assert [isinstance(block, SparseResBlock) for block in core.blocks] == [size >= DENSE_BELOW_BF16 for size in sizes]
    assert {block.deduplicate for block in core.blocks if isinstance(block, SparseResBlock)} == {KEYS}
    assert 16 in sizes and DENSE_BELOW_BF16 == 32


def test_the_bf16_graph_runs_exactly_in_openvino(tmp_path):
    """The bf16 graph (`sparse-bf16`: distinct windows by int32 keys, 1-D Unique only) in OpenVINO pinned to f32
    computes the eager function, on regions and on label noise (almost every 3x3 window distinct, keys of B5 rows
    beyond 2**31), for a batch given image by image to the graph compiled for one."""
    if openvino_unavailable():
        pytest.skip(openvino_unavailable())
    config = SPARSE_VARIANTS[0][1]
    generator = random_generator(config, seed=2)
    path = export_generator_onnx(generator, tmp_path / "sparse-bf16.onnx", height=256, width=256, graph="sparse-bf16")
    uniques = [node for node in onnx.load(str(path)).graph.node if node.op_type == "Unique"]
    assert uniques and not any(attribute.name == "axis" for node in uniques for attribute in node.attribute)
    noise = np.random.default_rng(0).integers(0, config.label_nc, (2, 256, 256))
    regions = np.stack([label_maps(config.replace(crop_size=256))[kind] for kind in ("many-regions", "one-region")])
    session = OpenVinoSession(path, precision=FP32, threads=2)
    assert session.per_image  # compiled for one image, a batch taken image by image
    for labels in (regions, noise):
        instances = np.stack([synthetic_instance_map(item) for item in labels])
        with torch.no_grad():
            eager = generator(to_semantic_input(labels, instances, config)).numpy()
        feeds = io_spec.generator_feeds(config, 256, 256, labels, instances)
        image_float = session.run([io_spec.IMAGE_FLOAT], feeds)[0]
        assert np.abs(image_float - eager).max() <= TOLERANCE
    with pytest.raises(ValueError, match=r"inputs must share one batch size of at least 1, got \{'label': 2, "
                                         r"'instance': 1\}"):
        session.run([io_spec.IMAGE_FLOAT], {**feeds, io_spec.INSTANCE: feeds[io_spec.INSTANCE][:1]})


def test_other_spade_kernels_stay_dense():
    generator = random_generator(GeneratorConfig(label_nc=3, ngf=8, spade_kernel=5, crop_size=64))
    with pytest.warns(UserWarning, match="needs 3x3 SPADE kernels.*every block stays dense"):
        graph = sparse_generator(generator, dense_below=1)
    assert not any(isinstance(block, SparseResBlock) for block in graph.blocks)


def test_winograd_only_where_chosen():
    """Winograd main convs in the sparse blocks up to `winograd_up_to` px: 4x4 tiles from LARGE_TILES_FROM where both
    sides are multiples of 4, 2x2 tiles where both are even; direct convs elsewhere."""
    generator = random_generator(GeneratorConfig(label_nc=4, ngf=8, crop_size=256, aspect_ratio=2.0), seed=1)
    graph = sparse_generator(generator, 96, 136, dense_below=1, winograd_up_to=48)
    tiles = {}
    for factor, block in zip(graph.factors, graph.blocks):
        tile = block.conv_0.tile if isinstance(block.conv_0, WinogradConv3x3) else 0
        assert tile == (block.conv_1.tile if isinstance(block.conv_1, WinogradConv3x3) else 0)
        tiles[(96 // factor, 136 // factor)] = tile
    # 96x136 is past winograd_up_to; 48x68 and 24x34 are not, but 24 is under LARGE_TILES_FROM; 3x4 has an odd side.
    assert tiles == {(3, 4): 0, (6, 8): 2, (12, 17): 0, (24, 34): 2, (48, 68): 4, (96, 136): 0}


@pytest.mark.parametrize("size, up_to, tile", [((128, 128), 128, 4), ((256, 256), 128, 0), ((32, 64), 128, 4),
                                               ((16, 16), 128, 2), ((36, 34), 128, 2), ((33, 64), 128, 0),
                                               ((64, 64), 0, 0), ((64, 64), 32, 0)])
def test_winograd_tile_rule(size, up_to, tile):
    assert winograd_tile(*size, up_to) == tile


def test_pointwise_conv_is_the_1x1_conv_channels_last_without_its_bias():
    torch.manual_seed(0)
    for bias in (False, True):
        conv = torch.nn.Conv2d(6, 5, 1, bias=bias)
        x = torch.randn(2, 6, 4, 3)
        with torch.no_grad():
            got = PointwiseConv(conv)(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            unbiased = conv(x) - (0 if conv.bias is None else conv.bias.view(-1, 1, 1))
            assert (got - unbiased).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="needs a 1x1 conv with stride 1, no padding or groups"):
        PointwiseConv(torch.nn.Conv2d(6, 5, 3, padding=1))


def test_tap_sum_conv_is_the_output_conv_from_channels_last():
    torch.manual_seed(0)
    for bias in (False, True):
        conv = torch.nn.Conv2d(6, 3, 3, padding=1, bias=bias)
        x = torch.randn(2, 6, 5, 7)
        with torch.no_grad():
            got = TapSumConv(conv)(x.permute(0, 2, 3, 1))  # channels last in, channels first out
            assert got.shape == (2, 3, 5, 7)
            assert (got - conv(x)).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="needs a 3x3 conv with stride 1, zero padding 1"):
        TapSumConv(torch.nn.Conv2d(6, 3, 3, padding=0))


def test_output_conv_follows_the_last_block_layout():
    """The output conv takes channels-last activations only after a sparse last block; a dense one keeps the Conv."""
    generator = random_generator(GeneratorConfig(label_nc=4, ngf=8, crop_size=64), seed=1)
    assert isinstance(sparse_generator(generator, dense_below=1).conv_img, TapSumConv)
    assert isinstance(sparse_generator(generator, dense_below=128).conv_img, torch.nn.Conv2d)


def test_times_upsamples_by_broadcasting():
    torch.manual_seed(0)
    x, factor = torch.randn(2, 3, 5, 4), torch.randn(2, 6, 10, 4)
    assert torch.equal(times(x, factor, upsample=True), upsample_last(x) * factor)
    assert torch.equal(times(factor, factor), factor * factor)
