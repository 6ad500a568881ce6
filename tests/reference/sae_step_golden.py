#!/usr/bin/env python3
"""Golden for mlxterp::sae_step::reference_step: three training steps of a TopK / BatchTopK SAE written the
obvious PyTorch way (dense autograd, torch.optim.AdamW, clip_grad_norm_), in sparsify's order:
backward -> remove the gradient parallel to each decoder row -> clip -> AdamW step -> unit-norm decoder rows.

    /usr/bin/python3 tests/reference/sae_step_golden.py > tests/golden/sae_step/steps.json

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


def run_case(name, seed, n, d, f, k, batch, loss_norm, lr, wd, max_grad_norm, remove_parallel, normalize, steps=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 1.5 + 0.3
    bound = 1 / d ** 0.5
    w = torch.rand(f, d, generator=g) * 2 * bound - bound
    W_enc = w.clone()
    W_dec = w / (w.norm(dim=1, keepdim=True) + EPS32)
    b_enc = torch.randn(f, generator=g) * 0.05 + 0.05  # enough positive pre-activations: no ties at zero
    b_dec = torch.randn(d, generator=g) * 0.1
    init = {"W_enc": W_enc.tolist(), "b_enc": b_enc.tolist(), "W_dec": W_dec.tolist(), "b_dec": b_dec.tolist()}
    params = [t.clone().requires_grad_(True) for t in (W_enc, b_enc, W_dec, b_dec)]
    W_enc, b_enc, W_dec, b_dec = params
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    since_fired = torch.zeros(f, dtype=torch.long)
    losses = []
    for _ in range(steps):
        acts = torch.relu((x - b_dec) @ W_enc.T + b_enc)
        z = select(acts, k, batch)
        e = z @ W_dec + b_dec - x
        if loss_norm == "fvu":
            denom = (x - x.mean(0)).pow(2).sum()
        elif loss_norm == "mean_square":
            denom = torch.tensor(float(n * d))
        else:
            denom = torch.tensor(float(n))
        loss = e.pow(2).sum() / denom
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            if remove_parallel:
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            if normalize:
                W_dec /= W_dec.norm(dim=1, keepdim=True) + EPS32
            fired = (z > 0).any(0)
            since_fired += n
            since_fired[fired] = 0
        losses.append(loss.item())
    return {
        "name": name, "n": n, "d": d, "f": f, "k": k, "selection": "batch_topk" if batch else "topk",
        "loss_norm": loss_norm, "lr": lr, "weight_decay": wd, "max_grad_norm": max_grad_norm,
        "remove_parallel_grad": remove_parallel, "normalize_decoder": normalize,
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
    ]
    print(json.dumps({"torch": torch.__version__, "cases": cases}))


if __name__ == "__main__":
    main()
