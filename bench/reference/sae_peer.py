#!/usr/bin/env python3
"""PyTorch peer of bench_sae: a sparsify-style TopK SAE training step, timed on the same device.

One step = encode (Linear on x - b_dec), relu, top-k, decode, FVU loss, backward, remove the gradient
parallel to the decoder rows, Adam step, unit-norm decoder rows, dead-latent bookkeeping (on the device).
Variants: bf16 autocast with a dense decoder (scatter the k activations into [N, F], matmul), plain fp32
(dense decoder), and bf16 autocast with an embedding_bag (sparse) decoder. dense_bf16_trainer adds what
bench_sae's trainer case adds: AuxK (k_aux = d / 2, coefficient 1/32, 10% of the latents dead for good) and
gradient-norm clipping at 1 (no finite-gradient gate: it would cost the step a host sync here). fp32 master weights and Adam
(fused on CUDA) in all of them. Also times the encoder GEMM alone ([N, d] x [d, F] in bf16).

    python3 bench/reference/sae_peer.py --device cuda --d 4096 --f 131072 --k 128 --n 4096

Prints a human-readable table, then one line `PEER_JSON {...}` that bench_sae parses (times in ms, median
over repeats; peak memory in bytes from torch.cuda.max_memory_allocated).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


class TopKSae(torch.nn.Module):
    def __init__(self, d, f, k, device):
        super().__init__()
        self.k = k
        self.encoder = torch.nn.Linear(d, f, device=device, dtype=torch.float32)
        self.encoder.bias.data.zero_()
        self.W_dec = torch.nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
        self.set_decoder_norm_to_unit_norm()

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self):
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True) + eps

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self):
        parallel = torch.einsum("fd,fd->f", self.W_dec.grad, self.W_dec.data)
        self.W_dec.grad -= torch.einsum("f,fd->fd", parallel, self.W_dec.data)

    def forward(self, x, decoder, dead=None, k_aux=0, auxk_coef=0.0):
        pre = self.encoder(x - self.b_dec)
        acts, idx = torch.relu(pre).topk(self.k, sorted=False)
        if decoder == "dense":
            z = torch.zeros_like(pre).scatter(1, idx, acts)
            x_hat = z @ self.W_dec + self.b_dec
        else:  # embedding_bag: sum_j acts[:, j] * W_dec[idx[:, j]]
            w = self.W_dec.to(acts.dtype)
            x_hat = F.embedding_bag(idx, w, per_sample_weights=acts, mode="sum") + self.b_dec
        e = x_hat.float() - x.float()
        total_variance = (x.float() - x.float().mean(0)).pow(2).sum()
        loss = e.pow(2).sum() / total_variance
        if dead is not None:
            # AuxK (the trainer's form): the top k_aux dead latents per token, decoded without the bias,
            # fit the detached residual r = x - x_hat; normalised by r's variance; zero when none is dead.
            aux_pre = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
            aux_acts, aux_idx = aux_pre.topk(k_aux, sorted=False)
            aux_acts = torch.relu(aux_acts)
            e_hat = torch.zeros_like(pre).scatter(1, aux_idx, aux_acts) @ self.W_dec
            r = -e.detach()
            ratio = (e_hat.float() - r).pow(2).sum(1).mean() / ((r - r.mean(0)).pow(2).sum() / x.shape[0])
            loss = loss + auxk_coef * torch.where(dead.any() & ratio.isfinite(), ratio, torch.zeros_like(ratio))
        return loss, idx, acts


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup, iters, repeats):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


def run_variant(name, args, device, xs):
    torch.manual_seed(0)
    sae = TopKSae(args.d, args.f, args.k, device)
    fused = device.type == "cuda"
    try:
        opt = torch.optim.Adam(sae.parameters(), lr=2e-4, fused=fused)
    except (TypeError, RuntimeError):
        opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
    since_fired = torch.zeros(args.f, dtype=torch.long, device=device)
    autocast = name != "fp32"
    decoder = "embedding_bag" if name == "embedding_bag_bf16" else "dense"
    trainer = name == "dense_bf16_trainer"
    if trainer:  # as bench_sae's trainer case: 10% of the latents dead for good
        since_fired[: args.f // 10] = args.dead_tokens
    state = {"i": 0}

    def step():
        x = xs[state["i"] % len(xs)]
        state["i"] += 1
        dead = since_fired >= args.dead_tokens if trainer else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, idx, acts = sae(x if autocast else x.float(), decoder, dead, args.d // 2, 1.0 / 32)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        if trainer:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            fired = torch.zeros(args.f, dtype=torch.bool, device=device)
            fired[idx.flatten()[acts.flatten() > 0]] = True
            since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
            if trainer:
                since_fired[: args.f // 10] = args.dead_tokens

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    ms = timed(step, device, args.warmup, args.iters, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else -1
    n_params = sum(p.numel() for p in sae.parameters())
    del sae, opt
    return {"ms": ms, "tokens_per_s": args.n / ms * 1e3, "peak_bytes": peak, "state_bytes": 3 * 4 * n_params}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--f", type=int, default=131072)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="dense_bf16,fp32,embedding_bag_bf16")
    ap.add_argument("--dead-tokens", type=int, default=10_000_000, help="dense_bf16_trainer: AuxK's dead window")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: leave)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 variant is fp32
    gen = torch.Generator(device="cpu").manual_seed(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    xs = [(torch.randn(args.n, args.d, generator=gen) * 1.5 + 0.2).to(device=device, dtype=dtype) for _ in range(4)]

    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "d": args.d, "f": args.f, "k": args.k, "n": args.n}
    # The encoder GEMM alone (bf16 on CUDA, fp32 on CPU): the floor of any step.
    w = torch.randn(args.f, args.d, generator=gen).to(device=device, dtype=dtype)
    gemm_ms = timed(lambda: xs[0] @ w.t(), device, 3, max(args.iters, 5), args.repeats)
    out["gemm_ms"] = gemm_ms
    out["gemm_tflops"] = 2.0 * args.n * args.d * args.f / gemm_ms / 1e9
    del w
    print(f"[peer] torch {torch.__version__} on {out['device']}: d={args.d} F={args.f} k={args.k} N={args.n}")
    print(f"[peer] encoder GEMM alone          {gemm_ms:9.3f} ms  ({out['gemm_tflops']:.0f} TFLOP/s)")
    for name in args.variants.split(","):
        if not name:
            continue
        try:
            r = run_variant(name, args, device, xs)
        except torch.cuda.OutOfMemoryError as e:  # report, keep going
            r = {"error": f"out of memory: {str(e).splitlines()[0]}"}
        except RuntimeError as e:
            r = {"error": str(e).splitlines()[0]}
        out[name] = r
        if "error" in r:
            print(f"[peer] {name:28s} failed: {r['error']}")
        else:
            print(f"[peer] {name:28s} {r['ms']:9.3f} ms  {r['tokens_per_s'] / 1e3:8.1f}K tok/s  peak "
                  f"{r['peak_bytes'] / 2**30:6.2f} GiB")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("PEER_JSON " + json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
