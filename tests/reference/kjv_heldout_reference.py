#!/usr/bin/env python3
"""Independent check of models/kjv-llama's held-out perplexity and unigram baseline (plain PyTorch).

Re-implements the Llama forward pass from the HF modelling equations (RMSNorm, rotate-half RoPE, grouped-query
attention, SiLU-gated MLP, tied unembedding), reads model.safetensors without the safetensors package, tokenizes
the held-out text with Python's sentencepiece, and scores it exactly as `mlxterp train-lm` does: the held-out
documents as one stream (BOS + pieces + EOS per verse), cut into windows of n_ctx + 1 tokens with stride n_ctx
(every token but the first is a target, each window starts from no context). The unigram baseline uses the
training text's token counts with add-one smoothing.

    /usr/bin/python3 tests/reference/kjv_heldout_reference.py models/kjv-llama build/kjv tests/golden/kjv/reference.json
    (build/kjv = scripts/make_demo_model.sh's WORK directory: train.txt, heldout.txt; the third argument,
    optional, writes the numbers as the golden that tests/unit/test_demo_model.cpp checks)

Prints both losses and perplexities (compare with models/kjv-llama/training_summary.json) and the greedy
continuation of "And God said" (ids and text; tests/unit/test_demo_model.cpp expects the same).
"""
import json
import math
import struct
import sys

import sentencepiece as spm
import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        out[name] = t.float()
    return out


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def forward(W, cfg, ids):  # ids [b, t] -> logits [b, t, V]
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // nh)
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    b, t = ids.shape
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    mask = torch.full((t, t), float("-inf")).triu(1)
    x = W["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(b, t, nh, hd).transpose(1, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(1, 2).reshape(b, t, nh * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = torch.nn.functional.silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
        x = x + g @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


def stream(sp, path):
    ids = []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.strip():
            ids += [sp.bos_id()] + sp.encode(line) + [sp.eos_id()]
    return ids


def main():
    model_dir, work = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{model_dir}/config.json"))
    W = read_safetensors(f"{model_dir}/model.safetensors")
    sp = spm.SentencePieceProcessor(model_file=f"{model_dir}/tokenizer.model")
    train, held = stream(sp, f"{work}/train.txt"), stream(sp, f"{work}/heldout.txt")
    n_ctx, V = cfg["max_position_embeddings"], cfg["vocab_size"]

    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(held) - 1, n_ctx):
            w = torch.tensor(held[s:s + n_ctx + 1])
            if len(w) < 2:
                break
            logp = torch.log_softmax(forward(W, cfg, w[None, :-1])[0].double(), -1)
            nll -= logp.gather(1, w[1:, None]).sum().item()
            n += len(w) - 1
    counts = torch.ones(V, dtype=torch.float64)
    counts += torch.bincount(torch.tensor(train), minlength=V).double()
    logq = (counts / counts.sum()).log()
    targets = [held[s + j] for s in range(0, len(held) - 1, n_ctx) for j in range(1, min(n_ctx + 1, len(held) - s))]
    uni = -logq[torch.tensor(targets)].sum().item() / len(targets)
    ids = [sp.bos_id()] + sp.encode("And God said")
    with torch.no_grad():
        for _ in range(40):  # greedy, no KV cache: the whole sequence each step
            ids.append(int(forward(W, cfg, torch.tensor([ids]))[0, -1].argmax()))
            if ids[-1] == sp.eos_id():
                break
    out = {"heldout_tokens": len(held), "targets": n, "model_loss": nll / n,
           "model_perplexity": math.exp(nll / n), "unigram_loss": uni, "unigram_perplexity": math.exp(uni),
           "greedy_prompt": "And God said", "greedy_ids": ids, "greedy_text": sp.decode(ids)}
    print(json.dumps(out))
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
