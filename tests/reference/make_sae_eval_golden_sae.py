#!/usr/bin/env python3
"""Cuts the small SAE of tests/golden/sae_eval/sae out of a trained stories260K block-2 TopK SAE.

The golden needs an SAE with trained (meaningful) encoder/decoder directions and input standardisation, but
small enough to commit: the first N latents of a TopK SAE trained by `mlxterp sae train` (F = 1024, k = 32,
normalize_input on), kept with their input_mean / input_std, and k lowered to K.

  /usr/bin/python3 tests/reference/make_sae_eval_golden_sae.py --src /tmp/eval_work/topk \\
      --out tests/golden/sae_eval/sae --latents 128 --k 8
"""
import argparse
import json
import struct

import numpy as np


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in h.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        assert info["dtype"] == "F32"
        out[name] = np.frombuffer(data[b:e], dtype=np.float32).reshape(info["shape"])
    return out


def write(path, tensors, meta):
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--latents", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    a = ap.parse_args()
    cfg = json.load(open(f"{a.src}/config.json"))
    assert cfg["architecture"] == "topk"
    t = read(f"{a.src}/weights.safetensors")
    n = a.latents
    t["W_enc"], t["W_dec"], t["b_enc"] = t["W_enc"][:n], t["W_dec"][:n], t["b_enc"][:n]
    write(f"{a.out}/weights.safetensors", t, {"format": "mlxterp-sae"})
    out = {k: cfg[k] for k in ("format", "version", "architecture", "d_in", "tied_weights", "normalize_input", "dtype",
                               "site", "layer", "component")}
    out["d_sae"], out["k"] = n, a.k
    out["model"] = "stories260K"
    out["config"] = {"sae_type": "topk", "k": a.k, "context_size": cfg["config"]["context_size"]}
    out["derived_from"] = (f"the first {n} latents of a TopK SAE (d_sae = {cfg['d_sae']}, k = {cfg['k']}) trained by "
                           f"mlxterp sae train on stories260K model.layers.2, {cfg['steps']} steps; k lowered to {a.k}")
    with open(f"{a.out}/config.json", "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
