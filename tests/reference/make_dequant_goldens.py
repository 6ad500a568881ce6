#!/usr/bin/python3
"""Reference dequantization of GGML block formats, and the goldens the C++ dequantizers are tested against.

An independent, vectorised numpy implementation following the formulas of llama.cpp's gguf-py
(gguf/quants.py, the reference the GGUF ecosystem uses): every product is rounded to float32 in the
same order as ggml's C reference, so the C++ results must match bit for bit.

For each type it writes, under tests/golden/gguf_dequant/:
  <TYPE>.blocks   N raw blocks (random bytes; the f16 scale fields set to finite values, including a
                  negative, a zero and a subnormal scale)
  <TYPE>.f32      N * block_elems little-endian float32 values: the dequantized blocks
  manifest.json   {type: {"id", "block_bytes", "block_elems", "n_blocks"}}

Usage (deterministic; see the README beside the goldens):
  /usr/bin/python3 tests/reference/make_dequant_goldens.py tests/golden/gguf_dequant
"""
import json
import os
import sys

import numpy as np

QK_K = 256

# name: (GGML type id, elements per block, bytes per block, byte offsets of the f16 fields)
TYPES = {
    "Q4_0": (2, 32, 18, [0]),
    "Q4_1": (3, 32, 20, [0, 2]),
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q8_0": (8, 32, 34, [0]),
    "Q2_K": (10, 256, 84, [80, 82]),
    "Q3_K": (11, 256, 110, [108]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
}


def f16(blocks, at):
    """The f16 field at byte offset `at` of each block, as float32 column [n, 1]."""
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def nibbles(b):
    """[n, k] bytes -> [n, 2, k]: low nibbles, then high nibbles."""
    return np.stack([b & 0x0F, b >> 4], axis=1)


def bit_planes(b, bits, n_planes):
    """[n, k] bytes -> [n, n_planes, k]: plane p holds (b >> bits*p) & mask."""
    shifts = (np.arange(n_planes, dtype=np.uint8) * bits).reshape(1, n_planes, 1)
    return (b[:, None, :] >> shifts) & np.uint8((1 << bits) - 1)


def deq_q4_0(b):
    d = f16(b, 0)
    q = nibbles(b[:, 2:18]).reshape(-1, 32).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def deq_q4_1(b):
    d, m = f16(b, 0), f16(b, 2)
    q = nibbles(b[:, 4:20]).reshape(-1, 32).astype(np.float32)
    return d * q + m


def q5_values(qh_bytes, qs):
    qh = qh_bytes.copy().view(np.uint32)  # [n, 1]
    high = ((qh >> np.arange(32, dtype=np.uint32).reshape(1, 32)) & np.uint32(1)).astype(np.uint8)
    low = nibbles(qs).reshape(-1, 32)
    return low | (high << np.uint8(4))


def deq_q5_0(b):
    d = f16(b, 0)
    q = q5_values(b[:, 2:6], b[:, 6:22]).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


def deq_q5_1(b):
    d, m = f16(b, 0), f16(b, 2)
    q = q5_values(b[:, 4:8], b[:, 8:24]).astype(np.float32)
    return d * q + m


def deq_q8_0(b):
    d = f16(b, 0)
    return d * b[:, 2:34].copy().view(np.int8).astype(np.float32)


def deq_q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, 0:16], b[:, 16:80]
    d, dmin = f16(b, 80), f16(b, 82)
    dl = (d * (scales & 0x0F).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
    # 2 halves of 128: 4 bit planes of 32 bytes each -> 16 groups of 16.
    q = np.concatenate([bit_planes(qs[:, 32 * h:32 * h + 32], 2, 4) for h in range(2)], axis=1)
    q = q.reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def deq_q3_k(b):
    n = b.shape[0]
    hmask, qs, sc = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = f16(b, 108)
    low = nibbles(sc[:, 0:8]).reshape(n, 16)                    # scale s: s<8 low nibble of sc[s], else high of sc[s-8]
    high = bit_planes(sc[:, 8:12], 2, 4).reshape(n, 16)          # scale s: bits 2*(s//4) of sc[8 + s%4]
    scale = ((low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)).astype(np.float32)
    dl = (d * scale).reshape(n, 16, 1)
    q2 = np.concatenate([bit_planes(qs[:, 32 * h:32 * h + 32], 2, 4) for h in range(2)], axis=1)
    hb = bit_planes(hmask, 1, 8)                                  # element 32k + l: bit k of hmask[l]
    q = q2.astype(np.int8) - ((hb ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def scale_min_k4(sc):
    """12 packed bytes -> 8 six-bit scales and 8 six-bit mins."""
    a, m, h = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scales = np.concatenate([a & 63, (h & 0x0F) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([m & 63, (h >> 4) | ((m >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def deq_q4_k(b):
    n = b.shape[0]
    d, dmin = f16(b, 0), f16(b, 2)
    sc, mn = scale_min_k4(b[:, 4:16])
    d1 = (d * sc).reshape(n, 8, 1)
    m1 = (dmin * mn).reshape(n, 8, 1)
    qs = b[:, 16:144]
    q = np.concatenate([nibbles(qs[:, 32 * c:32 * c + 32]) for c in range(4)], axis=1).astype(np.float32)
    return (d1 * q - m1).reshape(n, QK_K)


def deq_q5_k(b):
    n = b.shape[0]
    d, dmin = f16(b, 0), f16(b, 2)
    sc, mn = scale_min_k4(b[:, 4:16])
    d1 = (d * sc).reshape(n, 8, 1)
    m1 = (dmin * mn).reshape(n, 8, 1)
    qh, qs = b[:, 16:48], b[:, 48:176]
    low = np.concatenate([nibbles(qs[:, 32 * c:32 * c + 32]) for c in range(4)], axis=1)
    high = bit_planes(qh, 1, 8)
    q = (low | (high << np.uint8(4))).astype(np.float32)
    return (d1 * q - m1).reshape(n, QK_K)


def deq_q6_k(b):
    n = b.shape[0]
    ql, qh = b[:, 0:128], b[:, 128:192]
    sc = b[:, 192:208].copy().view(np.int8).astype(np.float32)
    d = f16(b, 208)
    dl = (d * sc).reshape(n, 16, 1)
    parts = []
    for h in range(2):  # each 128-element half: 4 groups of 32
        lo = ql[:, 64 * h:64 * h + 64]
        low = np.stack([lo[:, 0:32] & 0x0F, lo[:, 32:64] & 0x0F, lo[:, 0:32] >> 4, lo[:, 32:64] >> 4], axis=1)
        high = bit_planes(qh[:, 32 * h:32 * h + 32], 2, 4)
        parts.append(low | (high << np.uint8(4)))
    q = (np.concatenate(parts, axis=1).astype(np.int8) - np.int8(32)).astype(np.float32)
    return (dl * q.reshape(n, 16, 16)).reshape(n, QK_K)


DEQUANT = {
    "Q4_0": deq_q4_0, "Q4_1": deq_q4_1, "Q5_0": deq_q5_0, "Q5_1": deq_q5_1, "Q8_0": deq_q8_0,
    "Q2_K": deq_q2_k, "Q3_K": deq_q3_k, "Q4_K": deq_q4_k, "Q5_K": deq_q5_k, "Q6_K": deq_q6_k,
}


def random_blocks(rng, name, n_blocks):
    _, _, nbytes, f16_fields = TYPES[name]
    b = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for i in range(n_blocks):
        for k, at in enumerate(f16_fields):
            if i == 1 and k == 0:
                v = np.float16(-rng.uniform(1e-3, 0.1))          # negative scale
            elif i == 2 and k == 0:
                v = np.float16(0.0)                               # zero scale
            elif i == 3:
                v = np.frombuffer(np.uint16(0x0123).tobytes(), dtype=np.float16)[0]  # subnormal
            else:
                v = np.float16(rng.uniform(1e-4, 0.05) * (1 if rng.random() < 0.8 else -1))
            b[i, at:at + 2] = np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)
    return b


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/gguf_dequant"
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240601)
    manifest = {}
    for name, (tid, elems, nbytes, _) in TYPES.items():
        n_blocks = 8 if elems == 32 else 5
        blocks = random_blocks(rng, name, n_blocks)
        y = DEQUANT[name](blocks).astype(np.float32)
        assert y.shape == (n_blocks, elems), (name, y.shape)
        assert np.isfinite(y).all(), name
        blocks.tofile(os.path.join(out, f"{name}.blocks"))
        y.astype("<f4").tofile(os.path.join(out, f"{name}.f32"))
        manifest[name] = {"id": tid, "block_bytes": nbytes, "block_elems": elems, "n_blocks": n_blocks}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(manifest)} types to {out}")


if __name__ == "__main__":
    main()
