"""How many random batches (of the training batch size, 8) re-estimate the EMA generator's batch-norm statistics?

Run: python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-ema-export/measure.py RUN/checkpoints/step-000009000.pt
(the bundled landscape run at step 9000; writes bn_convergence.json, or the path given second)."""

import copy
import json
import sys

import numpy as np
import torch
from torch.utils.data import default_collate
from spade_deploy.model.checkpoint import read_checkpoint
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.networks import SPADEGenerator, converge_spectral_norms
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.training.options import DataOptions
from spade_deploy.training.data import find_samples, SegmentationDataset
from spade_deploy.training.ema import recompute_batchnorm

torch.set_num_threads(2)
ck = read_checkpoint(sys.argv[1])
cfg = GeneratorConfig.from_dict(ck["options"]["generator"])
data = DataOptions(**ck["options"]["data"])
ema = SPADEGenerator(cfg)
ema.load_state_dict(ck["generator"]["state_dict"])
converge_spectral_norms(ema)
ds = SegmentationDataset(find_samples(data.dataroot, cfg), cfg, data, 0)


def batches(n, seed):
    r = np.random.default_rng(seed)
    for _ in range(n):
        b = default_collate([ds[0, int(i)] for i in r.choice(len(ds), 8, replace=False)])
        yield to_semantic_input(b["label"], None, cfg), None


val = default_collate([ds[0, i] for i in range(0, 3000, 94)])  # 32 maps spread over the set
val_sem = to_semantic_input(val["label"], None, cfg)


def reest(n, seed):
    g = copy.deepcopy(ema)
    recompute_batchnorm(g, batches(n, seed))
    with torch.no_grad():
        y = g(val_sem)
    return y


ref = reest(256, 99)
out = {}
for n in (1, 2, 4, 8, 16, 32, 64, 128):
    rows = []
    for seed in (1, 2):
        y = reest(n, seed)
        d = (y - ref).abs()
        rows.append(
            {
                "mean_abs": float(d.mean()),
                "p99_abs": float(d.flatten().quantile(0.99)),
                "levels_8bit_mean": float(d.mean() * 127.5),
            }
        )
    out[n] = rows
    print(n, rows, flush=True)
json.dump(out, open(sys.argv[2] if len(sys.argv) > 2 else "bn_convergence.json", "w"), indent=1)
