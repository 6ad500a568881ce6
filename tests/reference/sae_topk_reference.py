#!/usr/bin/env python3
"""A straightforward PyTorch TopK / BatchTopK SAE trainer, to compare mlxterp's trainer against on identical data.

It reads activations from an mlxterp activation cache (`mlxterp cache`, docs/formats.md: meta.json +
shard_NNNNN.safetensors), trains the textbook recipe — decoder rows at unit norm with the parallel gradient
removed, W_enc = W_dec at init, b_dec = geometric median of the first 32768 rows, Adam, the same LR schedule
as mlxterp (linear warm-up then cosine), gradient clipping at 1.0, a full random permutation of all training
tokens every epoch, no AuxK — and evaluates it, and optionally an mlxterp SAE directory, on held-out cached
activations with the same formulas:
  FVU = sum_t ||x - x_hat||^2 / sum_t ||x - mean(x)||^2 over all held-out tokens
  L0  = mean over tokens of #latents > 0
  dead (training window) = latents that did not fire in the last `dead_window` training tokens
  never active (held-out) = latents that are 0 on every held-out token
BatchTopK: top-(k*N) of ReLU(pre) over each batch; inference threshold = EMA (decay 0.99) of the batch's
smallest kept activation (SAELens' rule); evaluated per token with that threshold (JumpReLU form).

Timing: the mean wall time of one training step (forward, backward, projection, clipping, Adam, renorm) on
this machine with --threads threads, after 20 warm-up steps.

Example (see bench/sae/compare_topk.sh for the whole protocol):
  /usr/bin/python3 tests/reference/sae_topk_reference.py --train-cache C/train --heldout-cache C/heldout \\
      --site model.layers.2 --arch topk --k 32 --expansion 16 --batch 256 --epochs 4 --lr 1e-3 --warmup 100 \\
      --ours runs/topk --json out.json
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch


# ---- reading safetensors and the mlxterp cache / SAE formats (no `safetensors` package needed) ----

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = mm[base + b: base + e]
        dt = info["dtype"]
        if dt == "F32":
            a = raw.view(np.float32)
        elif dt == "F16":
            a = raw.view(np.float16).astype(np.float32)
        elif dt == "BF16":
            a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dt == "I32":
            a = raw.view(np.int32)
        elif dt == "I64":
            a = raw.view(np.int64)
        else:
            raise SystemExit(f"{path}: unsupported dtype {dt} for {name}")
        out[name] = a.reshape(info["shape"])
    return out


def read_cache(d, site):
    meta = json.load(open(os.path.join(d, "meta.json")))
    assert meta["format"] == "mlxterp-activation-cache", d
    xs, docs = [], []
    for sh in meta["shards"]:
        t = read_safetensors(os.path.join(d, sh["file"]))
        xs.append(np.asarray(t["acts." + site], dtype=np.float32))
        docs.append(np.asarray(t["doc_ids"]))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(docs).astype(np.int64))


def read_mlxterp_sae(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    t = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in read_safetensors(os.path.join(d, "weights.safetensors")).items()}
    if "W_dec" not in t:
        t["W_dec"] = t["W_enc"]
    if cfg.get("normalize_input"):  # fold the standardisation in (what `sae export` does)
        mu, sd = t["input_mean"], t["input_std"]
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] / sd, t["W_dec"] * sd, t["b_dec"] * sd + mu
    return cfg, t


# ---- the reference trainer ----

def geometric_median(x, iters=100, tol=1e-5):
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        moved = (y_new - y).norm()
        y = y_new
        if moved < tol * max(1.0, float(y.norm())):
            break
    return y


def lr_at(step, total, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return lr * 0.5 * (1 + math.cos(math.pi * p))


def encode(p, x, arch, k, threshold=None):
    pre = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    if arch == "topk":
        vals, idx = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, torch.relu(vals)), None
    if threshold is not None:  # inference: JumpReLU with the scalar threshold
        return torch.relu(pre) * (pre > threshold).to(pre.dtype), None
    post = torch.relu(pre).reshape(-1)
    vals, idx = post.topk(k * x.shape[0])
    z = torch.zeros_like(post).scatter(0, idx, vals).reshape(pre.shape)
    kept = vals[vals > 0]
    return z, (float(kept.min()) if kept.numel() else None)


def train(x, args):
    g = torch.Generator().manual_seed(args.seed)
    n, D = x.shape
    F = D * args.expansion
    W = torch.randn(F, D, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    p = {"W_enc": W.clone(), "b_enc": torch.zeros(F), "W_dec": W.clone(),
         "b_dec": geometric_median(x[:32768])}
    for v in p.values():
        v.requires_grad_(True)
    opt = torch.optim.Adam(p.values(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    total = n * args.epochs // args.batch
    tsf = torch.zeros(F, dtype=torch.long)
    threshold = None
    step, t_steps, timed = 0, 0.0, 0
    while step < total:
        perm = torch.randperm(n, generator=g)
        for b in range(0, n - args.batch + 1, args.batch):
            if step >= total:
                break
            xb = x[perm[b:b + args.batch]]
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, args.lr, args.warmup)
            z, kept_min = encode(p, xb, args.arch, args.k)
            x_hat = z @ p["W_dec"] + p["b_dec"]
            loss = ((x_hat - xb) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            with torch.no_grad():
                Wd = p["W_dec"]
                w = Wd / Wd.norm(dim=1, keepdim=True)
                Wd.grad -= (Wd.grad * w).sum(1, keepdim=True) * w
                torch.nn.utils.clip_grad_norm_(p.values(), 1.0)
            opt.step()
            with torch.no_grad():
                p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True)
            if step >= 20:
                t_steps += time.perf_counter() - t0
                timed += 1
            fired = (z.detach() > 0).any(0)
            tsf = torch.where(fired, torch.zeros_like(tsf), tsf + args.batch)
            if args.arch == "batchtopk" and kept_min is not None:
                threshold = kept_min if threshold is None else 0.99 * threshold + 0.01 * kept_min
            step += 1
    return {k: v.detach() for k, v in p.items()}, tsf, threshold, (t_steps / timed if timed else float("nan")), total


@torch.no_grad()
def evaluate(p, x, docs, arch, k, threshold, per_sequence):
    mean = x.double().mean(0)
    sse = sst = l0 = 0.0
    active = torch.zeros(p["W_enc"].shape[0], dtype=torch.bool)
    # One sequence (document) at a time, so a batch-dependent encoder would show it.
    bounds = [0] + (torch.nonzero(docs[1:] != docs[:-1]).reshape(-1) + 1).tolist() + [x.shape[0]]
    if not per_sequence:
        bounds = list(range(0, x.shape[0], 4096)) + [x.shape[0]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        xb = x[a:b]
        if arch == "topk":
            z, _ = encode(p, xb, "topk", k)
        else:
            z, _ = encode(p, xb, "batchtopk", k, threshold)
        xh = z @ p["W_dec"] + p["b_dec"]
        sse += float(((xb.double() - xh.double()) ** 2).sum())
        sst += float(((xb.double() - mean) ** 2).sum())
        l0 += float((z > 0).sum())
        active |= (z > 0).any(0)
    n = x.shape[0]
    return {"fvu": sse / sst, "l0": l0 / n, "never_active_heldout": float((~active).double().mean()), "n_tokens": n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-cache", required=True)
    ap.add_argument("--heldout-cache", required=True)
    ap.add_argument("--site", required=True)
    ap.add_argument("--arch", choices=["topk", "batchtopk"], default="topk")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--dead-window", type=int, default=256000, help="tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours", help="an mlxterp SAE directory to evaluate the same way")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, _ = read_cache(args.train_cache, args.site)
    xh, docs = read_cache(args.heldout_cache, args.site)
    t0 = time.time()
    p, tsf, threshold, step_s, total = train(x, args)
    res = {"config": vars(args), "train_tokens": x.shape[0], "steps": total, "train_seconds": time.time() - t0,
           "reference": {"step_ms": step_s * 1e3, "steps_per_s": 1.0 / step_s,
                         "dead_frac_window": float((tsf >= args.dead_window).double().mean()),
                         "threshold": threshold}}
    res["reference"].update(evaluate(p, xh, docs, args.arch, args.k, threshold, per_sequence=True))
    if args.ours:
        cfg, t = read_mlxterp_sae(args.ours)
        th = float(t["threshold"][0]) if "threshold" in t else None
        res["ours"] = evaluate(t, xh, docs, args.arch, args.k, th, per_sequence=True)
        res["ours"]["threshold"] = th
        res["ours"]["training_final_metrics"] = cfg.get("final_metrics")
        res["ours"]["timing"] = cfg.get("timing")
    json.dump(res, sys.stdout, indent=1)
    sys.stdout.write("\n")
    if args.json:
        json.dump(res, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
