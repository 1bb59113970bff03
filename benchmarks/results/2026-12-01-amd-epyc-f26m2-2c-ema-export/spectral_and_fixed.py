"""Power iterations on the EMA's averaged weights, and the old fixed-batch batch-norm estimate, on a checkpoint.

Run (from the repository root):

    python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-ema-export/spectral_and_fixed.py \
        RUN/checkpoints/step-000007000.pt
"""

import copy
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from spade_deploy.model.checkpoint import read_checkpoint
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.training.options import DataOptions
from spade_deploy.training.data import find_samples, SegmentationDataset
from spade_deploy.training.ema import recompute_batchnorm

torch.set_num_threads(2)
ckpt = read_checkpoint(sys.argv[1])
cfg = GeneratorConfig.from_dict(ckpt["options"]["generator"])
data = DataOptions(**ckpt["options"]["data"])
ema = SPADEGenerator(cfg)
ema.load_state_dict(ckpt["generator"]["state_dict"])
raw = ckpt["generator_raw"]["state_dict"]
# the EMA starts each export from the trained generator's u, v
for k, v in raw.items():
    if k.endswith("weight_u") or k.endswith("weight_v"):
        ema.state_dict()[k].copy_(v)
out = {"power": {}, "bn": {}}


def sigmas(model, iters):
    res = {}
    for name, m in model.named_modules():
        if hasattr(m, "weight_orig"):
            W = m.weight_orig.detach().reshape(m.weight_orig.shape[0], -1)
            u = m.weight_u.clone()
            v = m.weight_v.clone()
            for _ in range(iters):
                v = F.normalize(W.t() @ u, dim=0, eps=1e-12)
                u = F.normalize(W @ v, dim=0, eps=1e-12)
            res[name] = float(u @ (W @ v))
    return res


ref = sigmas(ema, 500)
for k in (0, 1, 2, 3, 5, 10, 20, 50):
    s = sigmas(ema, k)
    out["power"][k] = max(abs(s[n] / ref[n] - 1) for n in ref)
print(out["power"], flush=True)
samples = find_samples(data.dataroot, cfg)
ds = SegmentationDataset(samples, cfg, data, 0)
rng = np.random.default_rng(0)


def batches(n, seed):
    r = np.random.default_rng(seed)
    for _ in range(n):
        idx = r.choice(len(ds), 8, replace=False)
        b = default_collate([ds[0, int(i)] for i in idx])
        yield to_semantic_input(b["label"], None, cfg), None


val = default_collate([ds[0, i] for i in range(8)])
val_sem = to_semantic_input(val["label"], None, cfg)


def reest(n, seed):
    g = copy.deepcopy(ema)
    recompute_batchnorm(g, batches(n, seed))
    with torch.no_grad():
        y = g(val_sem)
    return g, y


gref, yref = reest(192, 99)
for n in (1, 2, 4, 8, 16, 32, 64):
    errs = []
    for seed in (1, 2):
        g, y = reest(n, seed)
        errs.append(float((y - yref).abs().max()))
    out["bn"][n] = errs
    print(n, errs, flush=True)
# the current way: first 64 files in sorted order (8 batches of 8, epoch-0 crops)
g = copy.deepcopy(ema)


def fixed():
    for s in range(0, 64, 8):
        b = default_collate([ds[0, i] for i in range(s, s + 8)])
        yield to_semantic_input(b["label"], None, cfg), None


recompute_batchnorm(g, fixed())
with torch.no_grad():
    out["bn"]["first64_sorted"] = float((g(val_sem) - yref).abs().max())
print(json.dumps(out, indent=1))
json.dump(out, open("spectral_and_fixed.json", "w"), indent=1)
