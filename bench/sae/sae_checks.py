#!/usr/bin/env python3
"""Helpers for bench/sae/run_full.sh (stdlib + numpy; run with /usr/bin/python3).

  sae_checks.py rss METRICS.jsonl            RSS over a run: value at 25% / 100% of the steps, growth, peak
  sae_checks.py checkpoint FILE              FILE is a complete safetensors file (header parses, every tensor's
                                             byte range lies inside the file, sizes match dtype x shape, the size
                                             equals the header's end) with checkpoint metadata; prints its step
  sae_checks.py same-weights DIR_A DIR_B     the two SAE directories' weights.safetensors hold identical tensors
                                             (bitwise), else the max |difference| per tensor; exit 1 if not equal
Each prints one JSON object.
"""
import json
import os
import struct
import sys

import numpy as np

DT = {"F32": (np.float32, 4), "F64": (np.float64, 8), "F16": (np.float16, 2), "I64": (np.int64, 8),
      "I32": (np.int32, 4), "BF16": (np.uint16, 2), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1)}


def read_header(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: {size} bytes, shorter than the 8-byte header length")
        n = struct.unpack("<Q", raw)[0]
        if 8 + n > size:
            raise ValueError(f"{path}: header of {n} bytes does not fit in {size} bytes")
        header = json.loads(f.read(n))
    return header, 8 + n, size


def check_complete(path):
    header, base, size = read_header(path)
    end = base
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        _, width = DT[info["dtype"]]
        want = width * int(np.prod(info["shape"])) if info["shape"] else width
        if e - b != want:
            raise ValueError(f"{path}: {name}: {e - b} bytes for shape {info['shape']} {info['dtype']} (want {want})")
        end = max(end, base + e)
    if end != size:
        raise ValueError(f"{path}: data ends at byte {end}, file has {size} bytes")
    return header


def tensors(path):
    header, base, _ = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt, _ = DT[info["dtype"]]
        out[name] = np.array(mm[base + b: base + e].view(dt).reshape(info["shape"]))
    return out


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "rss":
        rows = [json.loads(l) for l in open(args[0]) if l.strip()]
        rows = [r for r in rows if r.get("split") == "train" and "rss_mb" in r]
        total = max(r["step"] for r in rows)
        at25 = min(rows, key=lambda r: abs(r["step"] - total / 4))
        after = [r["rss_mb"] for r in rows if r["step"] >= at25["step"]]
        res = {"steps": total, "samples": len(rows), "rss_mb_at_25pct": at25["rss_mb"], "rss_mb_at_end": rows[-1]["rss_mb"],
               "max_rss_mb_after_25pct": max(after), "peak_sampled_rss_mb": max(r["rss_mb"] for r in rows),
               "growth_25_to_100_pct": 100.0 * (max(after) - at25["rss_mb"]) / at25["rss_mb"]}
        res["flat"] = res["growth_25_to_100_pct"] < 5.0
        print(json.dumps(res))
        sys.exit(0 if res["flat"] else 1)
    if cmd == "checkpoint":
        try:
            h = check_complete(args[0])
            meta = json.loads(h["__metadata__"]["mlxterp_checkpoint"])
            print(json.dumps({"file": args[0], "complete": True, "step": meta["step"]}))
        except Exception as e:  # noqa: BLE001 - report any malformation
            print(json.dumps({"file": args[0], "complete": False, "error": str(e)}))
            sys.exit(1)
        return
    if cmd == "same-weights":
        a = tensors(os.path.join(args[0], "weights.safetensors"))
        b = tensors(os.path.join(args[1], "weights.safetensors"))
        diff = {}
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b or a[k].shape != b[k].shape:
                diff[k] = "missing or shape differs"
            elif not np.array_equal(a[k], b[k]):
                diff[k] = float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max())
        print(json.dumps({"bitwise_equal": not diff, "tensors": sorted(a), "differences": diff}))
        sys.exit(0 if not diff else 1)
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
