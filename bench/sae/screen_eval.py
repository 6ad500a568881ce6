#!/usr/bin/env python3
"""Held-out FVU / L0 / never-active of mlxterp SAE directories, by tests/reference/sae_topk_reference.py's
evaluate() on the last 10% of the cache's stories (one story at a time).
  /usr/bin/python3 bench/sae/screen_eval.py CACHE {topk|batchtopk} SAE_DIR...
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/reference"))
import sae_topk_reference as R  # noqa: E402

cache, arch = sys.argv[1], sys.argv[2]
xa, da = R.read_cache(cache, "model.layers.2")
starts = torch.cat([torch.tensor([0]), torch.nonzero(da[1:] != da[:-1]).reshape(-1) + 1])
cut = int(starts[len(starts) - int(len(starts) * 0.1)])
xh, docs = xa[cut:], da[cut:]
for d in sys.argv[3:]:
    cfg, t = R.read_mlxterp_sae(d)
    th = float(t["threshold"][0]) if "threshold" in t else None
    r = R.evaluate(t, xh, docs, arch, 32, th, per_sequence=True)
    print(d, "FVU %.5f l0 %.2f never %.4f" % (r["fvu"], r["l0"], r["never_active_heldout"]))
