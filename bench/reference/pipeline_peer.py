#!/usr/bin/env python3
"""PyTorch + HF transformers peer of bench_pipeline: streaming SAE training on a random Llama-shaped model.

forward (HF LlamaForCausalLM, bf16, SDPA; a forward hook on the block before `--stop-layer` captures the
residual stream = hidden_states[stop_layer] and, for the early-exit variant, raises to stop the pass)
-> token shuffle buffer on the device (the same replace-a-random-resident scheme as mlxterp's)
-> the sparsify-style dense bf16 TopK step of sae_peer.py on every `--sae-batch` tokens.

    python3 bench/reference/pipeline_peer.py --device cuda      # Llama-3-8B shape, batch 32 x 256

Prints a table, then `PEER_JSON {...}` with tokens/s of: forward_stop, forward_full, pipeline_stop,
pipeline_full (dicts with "tokens_per_s").
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sae_peer import TopKSae  # noqa: E402


class StopForward(Exception):
    pass


def build_model(args, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = dict(hidden_size=args.d, intermediate_size=args.d_mlp, num_hidden_layers=args.layers,
                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                max_position_embeddings=8192, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
                attn_implementation="sdpa", use_cache=False)
    try:
        config = LlamaConfig(**base, rope_theta=500000.0)
    except TypeError:
        config = LlamaConfig(**base)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if device.type == "cuda":
            with torch.device(device):  # weights created (and initialised) on the GPU
                model = LlamaForCausalLM(config)
        else:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.requires_grad_(False)
    return model


class Buffer:
    """Token shuffle buffer on the device: fill, then each new row replaces a random resident."""

    def __init__(self, capacity, d, device, dtype):
        self.buf = torch.empty(capacity, d, device=device, dtype=dtype)
        self.size = 0

    def push(self, rows):
        cap, n = self.buf.shape[0], rows.shape[0]
        fill = min(n, cap - self.size)
        if fill > 0:
            self.buf[self.size:self.size + fill].copy_(rows[:fill])
            self.size += fill
        outs = []
        for off in range(fill, n, cap):
            m = min(cap, n - off)
            slots = torch.randperm(cap, device=self.buf.device)[:m]
            outs.append(self.buf.index_select(0, slots))
            self.buf.index_copy_(0, slots, rows[off:off + m])
        if not outs:
            return self.buf[:0]
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--d-mlp", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--stop-layer", type=int, default=16)
    ap.add_argument("--f", type=int, default=131072)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--sae-batch", type=int, default=4096)
    ap.add_argument("--buffer-tokens", type=int, default=32768)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = build_model(args, device, dtype)
    sync(device)
    import transformers
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[peer] torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{model.config._attn_implementation} attention; {n_params / 1e9:.2f} B parameters built in "
          f"{time.perf_counter() - t0:.1f} s")
    ids = [torch.randint(0, args.vocab, (args.batch, args.seq), device=device) for _ in range(4)]
    store = {}
    mode = {"stop": True}

    def hook(_module, _inputs, output):
        store["h"] = output[0] if isinstance(output, tuple) else output
        if mode["stop"]:
            raise StopForward()

    model.model.layers[args.stop_layer - 1].register_forward_hook(hook)

    def forward(i):
        with torch.no_grad():
            try:
                model(input_ids=ids[i % len(ids)], use_cache=False)
            except StopForward:
                pass
        return store.pop("h").reshape(-1, args.d)

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    tokens = args.batch * args.seq

    def measure(name, stop, with_sae):
        mode["stop"] = stop
        state = {"i": 0, "pending": None}
        if with_sae:
            torch.manual_seed(1)
            sae = TopKSae(args.d, args.f, args.k, device)
            try:
                opt = torch.optim.Adam(sae.parameters(), lr=2e-4, fused=device.type == "cuda")
            except (TypeError, RuntimeError):
                opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
            since_fired = torch.zeros(args.f, dtype=torch.long, device=device)
            buf = Buffer(args.buffer_tokens, args.d, device, dtype)

        def sae_step(x):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, idx, acts = sae(x, "dense")
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=False)
            sae.set_decoder_norm_to_unit_norm()
            with torch.no_grad():
                fired = torch.zeros(args.f, dtype=torch.bool, device=device)
                fired[idx.flatten()[acts.flatten() > 0]] = True
                since_fired.add_(x.shape[0]).masked_fill_(fired, 0)

        def one():
            acts = forward(state["i"])
            state["i"] += 1
            if not with_sae:
                return
            rows = buf.push(acts)
            p = state["pending"]
            p = rows if p is None or p.shape[0] == 0 else torch.cat([p, rows])
            while p.shape[0] >= args.sae_batch:
                sae_step(p[:args.sae_batch])
                p = p[args.sae_batch:]
            state["pending"] = p

        if with_sae:
            while buf.size < args.buffer_tokens:
                one()
        one()  # warm-up
        sync(device)
        times = []
        for _ in range(args.repeats):
            sync(device)
            t = time.perf_counter()
            for _ in range(args.iters):
                one()
            sync(device)
            times.append((time.perf_counter() - t) / args.iters)
        tps = tokens / statistics.median(times)
        out[name] = {"tokens_per_s": tps}
        print(f"[peer] {name:16s} {tps / 1e3:10.1f}K tok/s")
        sys.stdout.flush()
        if with_sae:
            del sae, opt, buf
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for name, stop, with_sae in (("forward_stop", True, False), ("forward_full", False, False),
                                 ("pipeline_stop", True, True), ("pipeline_full", False, True)):
        try:
            measure(name, stop, with_sae)
        except Exception as e:  # report and go on with the next variant
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            print(f"[peer] {name} failed: {out[name]['error']}")
    print("PEER_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
