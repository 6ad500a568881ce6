#!/usr/bin/env python3
"""Golden for head scores of stories260K (tests/golden/attention/stories260K_heads.json).

An independent float64 PyTorch forward of stories260K from its HF safetensors (no transformers needed:
Llama with rotate-half RoPE, GQA, RMSNorm, SwiGLU) computes every head's attention pattern on
  * 8 sequences [BOS, r_1..r_50, r_1..r_50] of random ordinary tokens (numpy seed 0, ids 3..511),
    giving induction (mean A[i, i-n+1]) and duplicate-token (mean A[i, i-n]) scores over the second
    copy's queries, and previous-token scores (mean A[i, i-1], i >= 1) on the same sequences.
tests/unit/test_analysis_attention.cpp compares mlxterp's scores (from the model's own forward, loaded
from the GGUF) with these.

    /usr/bin/python3 tests/reference/make_induction_golden.py \
        --model ../shared/data/models/stories260K/hf --out tests/golden/attention/stories260K_heads.json
"""
import argparse
import json
import struct

import numpy as np
import torch


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", v["dtype"]
        a, b = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(v["shape"]).copy()).double()
    return out


def patterns(W, cfg, ids):
    L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh, eps, theta = cfg["head_dim"], cfg["rms_norm_eps"], cfg["rope_theta"]
    B, T = ids.shape

    def rms(x, w):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w

    inv = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
    f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()

    def rope(x):
        return x * cos + torch.cat([-x[..., dh // 2:], x[..., :dh // 2]], -1) * sin

    x = W["model.embed_tokens.weight"][ids]
    out = []
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).view(B, T, H, dh).transpose(1, 2))
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).view(B, T, KV, dh).transpose(1, 2)).repeat_interleave(H // KV, 1)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(B, T, KV, dh).transpose(1, 2).repeat_interleave(H // KV, 1)
        a = (q @ k.transpose(-1, -2) / dh ** 0.5).masked_fill(mask, float("-inf")).softmax(-1)
        out.append(a)
        x = x + (a @ v).transpose(1, 2).reshape(B, T, H * dh) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = torch.nn.functional.silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
        x = x + g @ W[p + "mlp.down_proj.weight"].T
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cfg = json.load(open(a.model + "/config.json"))
    W = load_safetensors(a.model + "/model.safetensors")
    n, S = 50, 8
    toks = np.random.default_rng(0).integers(3, cfg["vocab_size"], size=(S, n))
    ids = torch.from_numpy(np.concatenate([np.full((S, 1), cfg["bos_token_id"]), toks, toks], 1))
    P = patterns(W, cfg, ids)
    q = torch.arange(1 + n, 1 + 2 * n)
    ind, dup, prev = [], [], []
    for A in P:
        rows = A[:, :, q, :]
        H = A.shape[1]
        ind.append(rows.gather(3, (q - (n - 1)).view(1, 1, -1, 1).expand(S, H, n, 1)).mean((0, 2, 3)).tolist())
        dup.append(rows.gather(3, (q - n).view(1, 1, -1, 1).expand(S, H, n, 1)).mean((0, 2, 3)).tolist())
        prev.append(A.diagonal(-1, 2, 3).mean((0, 2)).tolist())
    json.dump({"ids": ids.tolist(), "length": n, "offset": 1, "induction": ind, "duplicate": dup, "previous_token": prev},
              open(a.out, "w"))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
