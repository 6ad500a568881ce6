#!/usr/bin/env python3
"""PyTorch reference for `mlxterp sae eval`: the same metrics, computed independently in float64.

Everything here is written from the definitions in docs/sae-evaluation.md, not from mlxterp's code:
  * a Hugging Face Llama forward (RMSNorm, rotate-half RoPE, GQA, SwiGLU, tied or separate lm_head) read from
    config.json + model.safetensors, run one sequence at a time (no padding at all);
  * the SAE from an mlxterp native directory (weights.safetensors + config.json: topk / batchtopk / jumprelu / relu,
    optional input standardisation);
  * the evaluated sequences from `mlxterp sae eval --save-tokens F.jsonl` ({"ids": [...], "keep": [0/1...]}), so
    both sides see exactly the same tokens and the same evaluated positions.
Metrics: reconstruction (mse, mse_per_element, fvu, explained_variance, explained_variance_global, cosine, ...),
sparsity (l0, dead, practically dead, dense), and downstream: CE clean / with the SAE spliced in at evaluated
positions (others keep their activation) / with the site zeroed at every position, CE-loss recovered, delta LM
loss, KL(clean || spliced) and KL(clean || ablated) over evaluated positions.

Example (tests/golden/sae_eval/README.md has the exact commands):
  /usr/bin/python3 tests/reference/sae_eval_reference.py --model-dir /work/shared/data/models/stories260K/hf \\
      --sae tests/golden/sae_eval/sae --site model.layers.2 --tokens tokens.jsonl --out reference.json
"""
import argparse
import json
import math
import struct

import numpy as np
import torch

DT = torch.float64


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    kinds = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=kinds[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float64))
    return out


class Llama:
    def __init__(self, model_dir):
        self.cfg = json.load(open(f"{model_dir}/config.json"))
        self.w = read_safetensors(f"{model_dir}/model.safetensors")
        c = self.cfg
        self.d = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads", self.nh)
        self.dh = c.get("head_dim", self.d // self.nh)
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.L = c["num_hidden_layers"]
        self.head = self.w["lm_head.weight"] if "lm_head.weight" in self.w else self.w["model.embed_tokens.weight"]

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):  # x [h, t, dh]
        inv = 1.0 / (self.theta ** (torch.arange(0, self.dh, 2, dtype=DT) / self.dh))
        ang = pos[:, None].to(DT) * inv[None, :]
        emb = torch.cat([ang, ang], -1)
        cos, sin = emb.cos(), emb.sin()
        x1, x2 = x[..., : self.dh // 2], x[..., self.dh // 2:]
        rot = torch.cat([-x2, x1], -1)
        return x * cos + rot * sin

    def forward(self, ids, edit_site=None, edit=None, capture_site=None):
        """ids: list of ints (one sequence). edit(act) -> new act at `edit_site`. Returns logits [t, V], captured."""
        w = self.w
        t = len(ids)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        pos = torch.arange(t)
        mask = torch.full((t, t), float("-inf"), dtype=DT).triu(1)
        captured = None

        def site(name, v):
            nonlocal captured
            if name == capture_site:
                captured = v.clone()
            if name == edit_site and edit is not None:
                v = edit(v)
            return v

        for i in range(self.L):
            p = f"model.layers.{i}."
            h = self.norm(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(t, self.nh, self.dh).transpose(0, 1)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(t, self.nkv, self.dh).transpose(0, 1)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(t, self.nkv, self.dh).transpose(0, 1)
            q, k = self.rope(q, pos), self.rope(k, pos)
            rep = self.nh // self.nkv
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dh) + mask, -1)
            z = (att @ v).transpose(0, 1).reshape(t, self.nh * self.dh)
            a = site(p + "self_attn", z @ w[p + "self_attn.o_proj.weight"].T)
            x = x + a
            h = self.norm(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            u = h @ w[p + "mlp.up_proj.weight"].T
            m = site(p + "mlp", (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T)
            x = site(f"model.layers.{i}", x + m)
        x = self.norm(x, w["model.norm.weight"])
        return x @ self.head.T, captured


class Sae:
    def __init__(self, d):
        cfg = json.load(open(f"{d}/config.json"))
        t = read_safetensors(f"{d}/weights.safetensors")
        self.arch, self.k = cfg["architecture"], cfg.get("k", 0)
        self.W_enc, self.b_enc, self.b_dec = t["W_enc"], t["b_enc"], t["b_dec"]
        self.W_dec = t["W_dec"] if "W_dec" in t else t["W_enc"]
        self.th = t.get("threshold")
        self.mu, self.sd = t.get("input_mean"), t.get("input_std")
        self.d_sae = self.W_enc.shape[0]

    def encode(self, x):
        xn = (x - self.mu) / self.sd if self.mu is not None else x
        pre = (xn - self.b_dec) @ self.W_enc.T + self.b_enc
        if self.arch == "topk":
            v, i = pre.topk(min(self.k, self.d_sae), -1)
            return torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
        if self.arch in ("batchtopk", "jumprelu"):
            return torch.relu(pre) * (pre > self.th).to(DT)
        return torch.relu(pre)

    def decode(self, z):
        xn = z @ self.W_dec + self.b_dec
        return xn * self.sd + self.mu if self.mu is not None else xn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--sae", required=True)
    ap.add_argument("--site", required=True, help="model.layers.N, model.layers.N.mlp or model.layers.N.self_attn")
    ap.add_argument("--tokens", required=True, help="JSONL from `mlxterp sae eval --save-tokens`")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    model, sae = Llama(a.model_dir), Sae(a.sae)
    seqs = [json.loads(line) for line in open(a.tokens) if line.strip()]

    xs, xhs, zs = [], [], []
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl = {"sae": 0.0, "zero": 0.0}
    n_ce = n_kl = 0
    for s in seqs:
        ids, keep = s["ids"], torch.tensor(s["keep"], dtype=torch.bool)
        logits, act = model.forward(ids, capture_site=a.site)
        x = act[keep]
        z = sae.encode(x)
        xh = sae.decode(z)
        xs.append(x), xhs.append(xh), zs.append(z)
        full = act.clone()
        full[keep] = xh
        l_sae, _ = model.forward(ids, edit_site=a.site, edit=lambda v: full)
        l_zero, _ = model.forward(ids, edit_site=a.site, edit=lambda v: torch.zeros_like(v))
        tgt = torch.tensor(ids[1:])
        m = keep[:-1]  # input position evaluated (every target is a real token: no padding here)
        for name, lg in (("clean", logits), ("sae", l_sae), ("zero", l_zero)):
            nll = -torch.log_softmax(lg[:-1], -1).gather(-1, tgt[:, None]).squeeze(-1)
            ce[name] += nll[m].sum().item()
        n_ce += int(m.sum())
        lp = torch.log_softmax(logits, -1)
        for name, lg in (("sae", l_sae), ("zero", l_zero)):
            k = (lp.exp() * (lp - torch.log_softmax(lg, -1))).sum(-1)
            kl[name] += k[keep].sum().item()
        n_kl += int(keep.sum())

    x, xh, z = torch.cat(xs), torch.cat(xhs), torch.cat(zs)
    N, d = x.shape
    r = x - xh
    sse = r.pow(2).sum().item()
    sst = (x - x.mean(0)).pow(2).sum().item()
    fired = z > 0
    counts = fired.sum(0)
    rare = max(10, int(0.01 * N))
    cos = ((x * xh).sum(1) / (x.norm(dim=1) * xh.norm(dim=1) + 1e-8)).mean().item()
    out = {
        "tokens": N,
        "reconstruction": {
            "mse": sse / N,
            "mse_per_element": sse / (N * d),
            "fvu": sse / sst,
            "explained_variance": 1 - sse / sst,
            "frac_variance_explained_centered": 1 - (r - r.mean(0)).pow(2).sum().item() / sst,
            "explained_variance_global": 1 - r.var(unbiased=False).item() / (x.var(unbiased=False).item() + 1e-8),
            "nmse_openai": (r.pow(2).mean(1) / x.pow(2).mean(1)).mean().item(),
            "cosine": cos,
        },
        "shrinkage": {
            "l2_ratio": (xh.norm(dim=1) / x.norm(dim=1)).mean().item(),
            "relative_reconstruction_bias": (xh.pow(2).sum(1).mean() / (x * xh).sum(1).mean()).item(),
        },
        "sparsity": {
            "l0": fired.sum(1).to(DT).mean().item(),
            "l1": z.sum(1).mean().item(),
            "dead_features": int((counts == 0).sum()),
            "rare_threshold_tokens": rare,
            "practically_dead_features": int((counts < rare).sum()),
            "dense_features": int((counts.to(DT) / N > 0.1).sum()),
        },
        "downstream": {
            "ce_loss_without_sae": ce["clean"] / n_ce,
            "ce_loss_with_sae": ce["sae"] / n_ce,
            "ce_loss_with_ablation": ce["zero"] / n_ce,
            "kl_div_with_sae": kl["sae"] / n_kl,
            "kl_div_with_ablation": kl["zero"] / n_kl,
            "ce_tokens": n_ce,
            "kl_tokens": n_kl,
        },
    }
    ds = out["downstream"]
    ds["ce_loss_score"] = (ds["ce_loss_with_ablation"] - ds["ce_loss_with_sae"]) / (
        ds["ce_loss_with_ablation"] - ds["ce_loss_without_sae"])
    ds["delta_lm_loss"] = ds["ce_loss_with_sae"] - ds["ce_loss_without_sae"]
    ds["kl_div_score"] = (ds["kl_div_with_ablation"] - ds["kl_div_with_sae"]) / ds["kl_div_with_ablation"]
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps({"tokens": N, **ds}, indent=2))


if __name__ == "__main__":
    main()
