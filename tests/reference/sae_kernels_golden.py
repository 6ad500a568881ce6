#!/usr/bin/env python3
"""Golden for mlxterp::sae_kernels::reference_step: three training steps of a TopK / BatchTopK SAE written the
obvious PyTorch way (dense autograd, torch.optim.AdamW, clip_grad_norm_), in sparsify's order:
backward -> remove the gradient parallel to each decoder row -> clip -> AdamW step -> unit-norm decoder rows.

    /usr/bin/python3 tests/reference/sae_kernels_golden.py > tests/golden/sae_kernels/steps.json

(float32 on the CPU; written with torch 1.13.)
"""
import json

import torch

EPS32 = torch.finfo(torch.float32).eps


def select(acts, k, batch):
    """Dense mask-free selection that keeps the autograd path through the selected activations."""
    if batch:
        flat = acts.flatten()
        vals, idx = flat.topk(acts.shape[0] * k, sorted=False)
        return torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)
    vals, idx = acts.topk(k, dim=1, sorted=False)
    return torch.zeros_like(acts).scatter(1, idx, vals)


def run_case(name, seed, n, d, f, k, batch, loss_norm, lr, wd, max_grad_norm, remove_parallel, normalize, steps=3,
             auxk_coef=0.0, k_aux=0, dead_tokens=0, dead_frac=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 1.5 + 0.3
    bound = 1 / d ** 0.5
    w = torch.rand(f, d, generator=g) * 2 * bound - bound
    W_enc = w.clone()
    W_dec = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b_enc = torch.randn(f, generator=g) * 0.05 + 0.05  # enough positive pre-activations: no ties at zero
    b_dec = torch.randn(d, generator=g) * 0.1
    init = {"W_enc": W_enc.tolist(), "b_enc": b_enc.tolist(), "W_dec": W_dec.tolist(), "b_dec": b_dec.tolist()}
    params = [t.clone().requires_grad_(True) for t in (W_enc, b_enc, W_dec, b_dec)]
    W_enc, b_enc, W_dec, b_dec = params
    opt = torch.optim.AdamW([{"params": [W_enc, W_dec], "weight_decay": wd},
                             {"params": [b_enc, b_dec], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    # Some latents start "dead" (have not fired for dead_tokens tokens) so that AuxK has work to do.
    since_fired = torch.zeros(f, dtype=torch.long)
    n_dead = int(dead_frac * f)
    since_fired[:n_dead] = dead_tokens
    since_fired_init = since_fired.clone()
    losses = []
    for _ in range(steps):
        dead = since_fired >= dead_tokens if auxk_coef > 0 else None
        pre = (x - b_dec) @ W_enc.T + b_enc
        acts = torch.relu(pre)
        z = select(acts, k, batch)
        e = z @ W_dec + b_dec - x
        if loss_norm == "fvu":
            denom = (x - x.mean(0)).pow(2).sum()
        elif loss_norm == "mean_square":
            denom = torch.tensor(float(n * d))
        else:
            denom = torch.tensor(float(n))
        loss = e.pow(2).sum() / denom
        if dead is not None and bool(dead.any()):
            r = (-e).detach()  # x - x_hat
            masked = torch.where(dead[None], acts, torch.full_like(acts, -float("inf")))
            ka = min(k_aux, f)
            idx = masked.topk(ka, dim=1).indices
            vals = acts.gather(1, idx) * dead[idx].float()
            e_hat = torch.zeros_like(acts).scatter(1, idx, vals) @ W_dec
            num = (r - e_hat).pow(2).sum(1).mean()
            den = (r - r.mean(0)).pow(2).sum(1).mean()
            loss = loss + auxk_coef * (num / den)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            if remove_parallel:
                wn = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
                W_dec.grad -= (W_dec.grad * wn).sum(1, keepdim=True) * wn
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            if normalize:
                W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            fired = (z > 0).any(0)
            since_fired += n
            since_fired[fired] = 0
        losses.append(loss.item())
    return {
        "name": name, "n": n, "d": d, "f": f, "k": k, "selection": "batch_topk" if batch else "topk",
        "loss_norm": loss_norm, "lr": lr, "weight_decay": wd, "max_grad_norm": max_grad_norm,
        "remove_parallel_grad": remove_parallel, "normalize_decoder": normalize,
        "auxk_coef": auxk_coef, "k_aux": k_aux, "dead_tokens": dead_tokens,
        "since_fired_init": since_fired_init.tolist(),
        "x": x.tolist(), "init": init, "losses": losses, "since_fired": since_fired.tolist(),
        "final": {"W_enc": W_enc.tolist(), "b_enc": b_enc.tolist(), "W_dec": W_dec.tolist(), "b_dec": b_dec.tolist()},
    }


def main():
    cases = [
        run_case("topk_fvu_clip", 1, n=16, d=8, f=32, k=3, batch=False, loss_norm="fvu", lr=1e-2, wd=0.01,
                 max_grad_norm=0.05, remove_parallel=True, normalize=True),
        run_case("batch_topk_mse", 2, n=16, d=8, f=32, k=3, batch=True, loss_norm="mean_square", lr=5e-3, wd=0.0,
                 max_grad_norm=0.0, remove_parallel=True, normalize=True),
        run_case("topk_per_token_plain", 3, n=12, d=16, f=24, k=5, batch=False, loss_norm="sum_per_token", lr=2e-3,
                 wd=0.0, max_grad_norm=0.0, remove_parallel=False, normalize=False),
        run_case("topk_auxk", 4, n=16, d=8, f=48, k=3, batch=False, loss_norm="sum_per_token", lr=5e-3, wd=0.01,
                 max_grad_norm=1.0, remove_parallel=True, normalize=True, auxk_coef=1 / 32, k_aux=4,
                 dead_tokens=100, dead_frac=0.5),
        run_case("batch_topk_auxk", 5, n=16, d=8, f=48, k=3, batch=True, loss_norm="sum_per_token", lr=5e-3, wd=0.0,
                 max_grad_norm=0.0, remove_parallel=True, normalize=True, auxk_coef=0.5, k_aux=6,
                 dead_tokens=40, dead_frac=0.25),
    ]
    print(json.dumps({"torch": torch.__version__, "cases": cases}))


if __name__ == "__main__":
    main()
