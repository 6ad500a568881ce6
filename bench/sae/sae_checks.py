#!/usr/bin/env python3
"""Helpers for bench/sae/run_full.sh (stdlib + numpy; run with /usr/bin/python3).

  sae_checks.py rss METRICS.jsonl            RSS over a run: value at 25% / 100% of the steps, growth, peak
                                             (from the trainer's rss_mb, sampled at each metric sync)
  sae_checks.py sample-rss PID METRICS.jsonl OUT.tsv [PERIOD_S]
                                             poll /proc/PID/status (VmRSS, VmHWM) every PERIOD_S (0.05) seconds
                                             until PID exits, tagging each sample with the last step logged in
                                             METRICS.jsonl so far; writes "t_s step rss_kb hwm_kb" rows
  sae_checks.py rss-samples OUT.tsv TOTAL_STEPS
                                             flatness from those samples: peak RSS up to 25% of the steps vs peak
                                             over the whole run (a steady oscillation is not growth), the median of
                                             the last quarter vs the median of the second quarter, the final VmHWM
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
    if cmd == "sample-rss":
        import time
        pid, metrics, out = int(args[0]), args[1], args[2]
        period = float(args[3]) if len(args) > 3 else 0.05
        step, mf, pending, t0 = 0, None, "", time.time()
        with open(out, "w") as o:
            o.write("t_s\tstep\trss_kb\thwm_kb\n")
            while True:
                try:
                    st = open(f"/proc/{pid}/status").read()
                except OSError:
                    break
                if mf is None and os.path.exists(metrics):
                    mf = open(metrics)
                if mf is not None:  # read only what was appended since the last poll
                    pending += mf.read()
                    *lines, pending = pending.split("\n")
                    for l in lines:
                        if '"split":"train"' in l.replace(" ", "") and '"step"' in l:
                            try:
                                step = max(step, int(json.loads(l)["step"]))
                            except (ValueError, KeyError):
                                pass
                kv = dict(l.split(":", 1) for l in st.splitlines() if ":" in l)
                if "VmRSS" not in kv:  # a zombie: the process has exited
                    break
                rss, hwm = (int(kv[k].split()[0]) for k in ("VmRSS", "VmHWM"))
                o.write(f"{time.time() - t0:.3f}\t{step}\t{rss}\t{hwm}\n")
                time.sleep(period)
        sys.exit(0)
    if cmd == "rss-samples":
        total = int(args[1])
        rows = [l.split("\t") for l in open(args[0]).read().splitlines()[1:] if l.strip()]
        t, step, rss, hwm = (np.array([float(r[i]) for r in rows]) for i in range(4))
        rss, hwm = rss / 1024, hwm / 1024
        # A sample carries the last step logged before it; the final log row (step == total) comes after the
        # last training step, so samples tagged `total` are the post-training phase (validation, saving).
        train = step < total
        q = [train & (step > total * a / 4) & (step <= total * b / 4) for a, b in [(0, 1), (1, 2), (2, 3), (3, 4)]]
        upto25 = step <= total / 4
        res = {"steps": total, "samples": len(rows), "sample_period_s": float(np.median(np.diff(t))) if len(t) > 1 else None,
               "samples_per_quarter": [int(m.sum()) for m in q],
               "peak_rss_mb_upto_25pct": float(rss[upto25].max()), "peak_rss_mb_whole_run": float(rss.max()),
               "peak_rss_mb_after_25pct": float(rss[~upto25].max()),
               "median_rss_mb_per_quarter": [float(np.median(rss[m])) if m.any() else None for m in q],
               "min_rss_mb_per_quarter": [float(rss[m].min()) if m.any() else None for m in q],
               "max_rss_mb_per_quarter": [float(rss[m].max()) if m.any() else None for m in q],
               "final_vmhwm_mb": float(hwm.max()),
               "peak_rss_mb_post_training": float(rss[~train].max()) if (~train).any() else None}
        res["growth_peak_pct"] = 100.0 * (res["peak_rss_mb_whole_run"] - res["peak_rss_mb_upto_25pct"]) / res["peak_rss_mb_upto_25pct"]
        m2, m4 = res["median_rss_mb_per_quarter"][1], res["median_rss_mb_per_quarter"][3]
        res["growth_median_q2_to_q4_pct"] = 100.0 * (m4 - m2) / m2
        res["flat"] = res["growth_peak_pct"] < 5.0 and res["growth_median_q2_to_q4_pct"] < 5.0
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
