#!/usr/bin/env python3
"""Golden losses and gradients for every SAE architecture, computed with plain dense PyTorch.

Writes tests/golden/sae/grads.json, read by tests/unit/test_sae_step.cpp (SaeGrad.*). Each case holds the
inputs (x, parameters, dead mask), the loss terms and d loss / d parameter, all float64.

The math is written independently of the C++ (dense matrices, torch.autograd.Function straight-through
estimators as in SAELens' JumpReLU), following the definitions in include/mlxterp/sae_step.hpp:
  pre = (x - b_dec) @ W_enc.T + b_enc ; mse = mean_t sum_d (x_hat - x)^2
  topk: z = scatter(ReLU(top-k(pre)))            batchtopk: top-(k*N) of ReLU(pre) over the batch
  jumprelu: z = ReLU(pre) * H(pre - theta), L0 = mean_t sum_i H (STE, rectangle kernel of width eps)
  relu: z = ReLU(pre), L1 = mean_t sum_i z_i * ||W_dec_i||
  AuxK (topk/batchtopk): top-k_aux of ReLU(pre) over dead latents, e_hat = z_aux @ W_dec,
        aux = mean_t||e - e_hat||^2 / mean_t||e - mean(e)||^2, e = (x - x_hat).detach()
  ghost grads (SAELens <= v5): exp(pre) on dead latents, rescaled to the residual norm and the MSE magnitude

Command (run from the repository root; torch 1.13 CPU is enough):
    /usr/bin/python3 tests/reference/sae_grad_reference.py > tests/golden/sae/grads.json
"""
import json
import sys

import torch

torch.set_default_dtype(torch.float64)


def rectangle(u):
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return torch.relu(x) * (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        x_grad = (x > threshold).to(x.dtype) * (x > 0).to(x.dtype) * g
        th_grad = (-(threshold / eps) * rectangle((x - threshold) / eps) * g).sum(0)
        return x_grad, th_grad, None


class StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        th_grad = (-(1.0 / eps) * rectangle((x - threshold) / eps) * g).sum(0)
        return torch.zeros_like(x), th_grad, None


def loss_terms(case, p, x, dead):
    arch = case["arch"]
    W_enc, b_enc, b_dec = p["W_enc"], p["b_enc"], p["b_dec"]
    W_dec = W_enc if case["tied"] else p["W_dec"]
    N, F = x.shape[0], W_enc.shape[0]
    pre = (x - b_dec) @ W_enc.T + b_enc
    zero = torch.zeros(())
    sparsity = zero
    if arch == "topk":
        vals, idx = pre.topk(case["k"], dim=1)
        z = torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))
    elif arch == "batchtopk":
        post = torch.relu(pre).reshape(-1)
        vals, idx = post.topk(case["k"] * N)
        z = torch.zeros_like(post).scatter(0, idx, vals).reshape(N, F)
    elif arch == "jumprelu":
        th = p["threshold"]
        z = JumpReLUFn.apply(pre, th, case["bandwidth"])
        l0 = StepFn.apply(pre, th, case["bandwidth"]).sum(1).mean()
        sparsity = case["sparsity_coef"] * l0
    else:  # relu
        z = torch.relu(pre)
        sparsity = case["sparsity_coef"] * (z * W_dec.norm(dim=1)).sum(1).mean()
    x_hat = z @ W_dec + b_dec
    mse = ((x_hat - x) ** 2).sum(1).mean()
    loss = mse + sparsity
    aux, ghost = zero, zero
    any_dead = float(dead.any())
    e = (x - x_hat).detach()
    if case["auxk_coef"] > 0 and arch in ("topk", "batchtopk"):
        masked = torch.where(dead[None, :], torch.relu(pre), torch.full_like(pre, float("-inf")))
        _, idx = masked.topk(case["k_aux"], dim=1)
        vals = torch.relu(pre.gather(1, idx)) * dead[idx].to(pre.dtype)
        z_aux = torch.zeros_like(pre).scatter(1, idx, vals)
        e_hat = z_aux @ W_dec
        num = ((e - e_hat) ** 2).sum(1).mean()
        den = ((e - e.mean(0, keepdim=True)) ** 2).sum(1).mean()
        aux = torch.nan_to_num(num / den, 0.0) * any_dead
        loss = loss + case["auxk_coef"] * aux
    if case["ghost"]:
        residual = x - x_hat
        ghost_out = torch.exp(pre[:, dead]) @ W_dec[dead]
        scale = residual.norm(dim=-1) / (1e-6 + ghost_out.norm(dim=-1) * 2)
        ghost_out = ghost_out * scale[:, None].detach()
        per_item = (x_hat - x) ** 2
        ghost_resid = (ghost_out - residual.detach()) ** 2
        rescale = (per_item / (ghost_resid + 1e-6)).detach()
        ghost = (rescale * ghost_resid).mean() * any_dead
        loss = loss + ghost
    return loss, {"mse": mse, "aux": aux, "ghost": ghost, "sparsity": sparsity}, z


def make_case(name, arch, seed, N=16, D=8, F=32, **kw):
    g = torch.Generator().manual_seed(seed)
    case = {"name": name, "arch": arch, "k": kw.get("k", 4), "k_aux": kw.get("k_aux", 6),
            "auxk_coef": kw.get("auxk_coef", 0.0), "sparsity_coef": kw.get("sparsity_coef", 0.0),
            "bandwidth": kw.get("bandwidth", 0.001), "ghost": kw.get("ghost", False), "tied": kw.get("tied", False)}
    x = torch.randn(N, D, generator=g) * 2 + 0.5
    W_dec = torch.randn(F, D, generator=g)
    if kw.get("unit_dec", True):
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": torch.randn(F, D, generator=g) * 0.5, "b_enc": torch.randn(F, generator=g) * 0.1,
         "W_dec": W_dec, "b_dec": torch.randn(D, generator=g) * 0.1}
    if arch == "jumprelu":
        p["threshold"] = torch.rand(F, generator=g) * 0.6 + 0.05
    dead = torch.rand(F, generator=g) < kw.get("dead_frac", 0.0)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    if case["tied"]:
        del leaves["W_dec"]
    loss, terms, _ = loss_terms(case, leaves, x, dead)
    loss.backward()
    out = dict(case)
    out["x"] = x.tolist()
    out["dead"] = dead.tolist()
    out["params"] = {k: v.tolist() for k, v in p.items() if not (case["tied"] and k == "W_dec")}
    out["loss"] = loss.item()
    out["terms"] = {k: float(v) for k, v in terms.items()}
    out["grads"] = {k: v.grad.tolist() for k, v in leaves.items()}
    return out


def make_train_case(seed=11, N=16, D=8, F=32, steps=4):
    """Several full training steps (AuxK, decoder projection, clipping, Adam, renorm, dead counters)."""
    g = torch.Generator().manual_seed(seed)
    case = {"name": "train_steps_topk", "arch": "topk", "k": 4, "k_aux": 6, "auxk_coef": 1 / 32,
            "sparsity_coef": 0.0, "bandwidth": 0.001, "ghost": False, "tied": False,
            "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "clip": 5.0, "dead_window_tokens": 20}
    W_dec = torch.randn(F, D, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": W_dec.clone() * 0.8, "b_enc": torch.zeros(F), "W_dec": W_dec, "b_dec": torch.randn(D, generator=g) * 0.1}
    xs = [torch.randn(N, D, generator=g) * 2 for _ in range(steps)]
    out = dict(case)
    out["params"] = {k: v.tolist() for k, v in p.items()}
    out["xs"] = [x.tolist() for x in xs]
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=case["lr"], betas=(case["beta1"], case["beta2"]), eps=case["eps"])
    tsf = torch.zeros(F, dtype=torch.long)
    after = []
    for x in xs:
        dead = tsf >= case["dead_window_tokens"]
        opt.zero_grad()
        loss, terms, z = loss_terms(case, leaves, x, dead)
        loss.backward()
        with torch.no_grad():
            W = leaves["W_dec"]
            w = W / W.norm(dim=1, keepdim=True)
            W.grad -= (W.grad * w).sum(1, keepdim=True) * w
            norm = torch.sqrt(sum((v.grad ** 2).sum() for v in leaves.values()))
            scale = min(1.0, case["clip"] / (float(norm) + 1e-6))
            for v in leaves.values():
                v.grad *= scale
        opt.step()
        with torch.no_grad():
            leaves["W_dec"] /= leaves["W_dec"].norm(dim=1, keepdim=True)
        fired = (z.detach() > 0).any(0)  # latents of this step's forward pass (before the update)
        tsf = torch.where(fired, torch.zeros_like(tsf), tsf + N)
        after.append({"params": {k: v.detach().tolist() for k, v in leaves.items()}, "loss": loss.item(),
                      "aux": float(terms["aux"]), "grad_norm": float(norm), "tokens_since_fired": tsf.tolist()})
    out["after"] = after
    return out


def main():
    cases = [
        make_case("topk", "topk", 1),
        make_case("topk_auxk", "topk", 2, auxk_coef=1 / 32, dead_frac=0.4),
        make_case("batchtopk_auxk", "batchtopk", 3, auxk_coef=1 / 32, dead_frac=0.4),
        make_case("jumprelu", "jumprelu", 4, sparsity_coef=0.3, bandwidth=0.5),
        make_case("relu_l1_free_norm", "relu", 5, sparsity_coef=0.2, unit_dec=False),
        make_case("relu_ghost", "relu", 6, sparsity_coef=0.2, ghost=True, dead_frac=0.3),
        make_case("topk_tied", "topk", 7, tied=True, auxk_coef=1 / 32, dead_frac=0.4),
    ]
    json.dump({"generator": "tests/reference/sae_grad_reference.py", "torch": torch.__version__, "cases": cases,
               "train": make_train_case()},
              sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
