#!/usr/bin/env python3
"""Golden for llama.cpp control-vector semantics (tests/golden/steering/).

Writes a GGUF control vector with random directions (this script's own GGUF writer, stdlib only, so the
file does not come from mlxterp), then runs llama.cpp itself (tests/reference/llamacpp_cvec.cpp linked
against libllama + libllama-common) on stories260K.gguf:
  * without a control vector,
  * with it at strength 1 over llama.cpp's default layer range (1 .. n_layer),
  * with it at strength -2.5 restricted to layer range 2 .. 2,
and stores the logits at a few positions. tests/unit/test_analysis_steering.cpp then checks that adding
direction.N to our site model.layers.N (block N's output) reproduces these logits, and that the
neighbouring blocks do not.

    python3 tests/reference/make_cvec_golden.py --llama-lib DIR --model ../shared/data/models/stories260K/stories260K.gguf \
        --out tests/golden/steering

DIR holds libllama*.so and libllama-common.so (we used the prebuilt CPU build of the npm package
@node-llama-cpp/linux-x64@3.22.1: `npm pack @node-llama-cpp/linux-x64@3.22.1`, bins/linux-x64/;
llama.cpp commit 0ad4a86 per llama_build_info()).
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile

import numpy as np

POSITIONS = [2, 9, 15]  # positions whose logits are kept (all carry the effect of every direction)
IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426]


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def write_control_vector(path, directions, model_hint, layer_count):
    """GGUF v3: general.architecture=controlvector, model_hint, layer_count; F32 1-D direction.N tensors."""
    kv = b"".join([
        gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("controlvector"),
        gguf_string("controlvector.model_hint") + struct.pack("<I", 8) + gguf_string(model_hint),
        gguf_string("controlvector.layer_count") + struct.pack("<I", 5) + struct.pack("<i", layer_count),
    ])
    infos, blobs, offset = [], [], 0
    for n, vec in sorted(directions.items()):
        data = np.asarray(vec, dtype="<f4").tobytes()
        infos.append(gguf_string(f"direction.{n}") + struct.pack("<I", 1) + struct.pack("<Q", len(vec)) +
                     struct.pack("<I", 0) + struct.pack("<Q", offset))
        pad = (-len(data)) % 32
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    header = b"GGUF" + struct.pack("<IQQ", 3, len(directions), 3) + kv + b"".join(infos)
    header += b"\0" * ((-len(header)) % 32)
    with open(path, "wb") as f:
        f.write(header + b"".join(blobs))


harness_lib = [""]


def run(harness, model, cvec=None, strength=None, lo=None, hi=None):
    args = [harness, model, ",".join(map(str, IDS))]
    if cvec:
        args += [cvec, str(strength), str(lo), str(hi)]
    env = dict(os.environ, LLAMA_BACKEND_DIR=os.path.dirname(harness_lib[0]))
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    logits = json.loads(out)["logits"]
    return [logits[p] for p in POSITIONS]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-lib", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    lib = os.path.abspath(a.llama_lib)
    libllama = next(f for f in os.listdir(lib) if f.startswith("libllama.") and f.endswith(".so"))
    libggml = next(f for f in os.listdir(lib) if f.startswith("libggml.") and f.endswith(".so"))
    harness_lib[0] = os.path.join(lib, libllama)
    with tempfile.TemporaryDirectory() as tmp:
        harness = os.path.join(tmp, "llamacpp_cvec")
        subprocess.run(["g++", "-O2", "-std=c++17", os.path.join(here, "llamacpp_cvec.cpp"), "-o", harness, "-L" + lib,
                        "-l:" + libllama, "-l:libllama-common.so", "-l:" + libggml, "-Wl,-rpath," + lib], check=True)
        os.makedirs(a.out, exist_ok=True)
        rng = np.random.default_rng(20260128)
        dirs = {n: rng.normal(0.0, 0.4, 64).astype(np.float32) for n in (1, 2, 4)}
        cvec = os.path.join(a.out, "cvec.gguf")
        write_control_vector(cvec, dirs, "llama", 4)
        result = {
            "ids": IDS,
            "positions": POSITIONS,
            "directions": {str(n): v.tolist() for n, v in dirs.items()},
            "base": run(harness, a.model),
            "all_layers_strength_1": run(harness, a.model, cvec, 1.0, 1, 5),
            "layer_2_only_strength_-2.5": run(harness, a.model, cvec, -2.5, 2, 2),
            "llama_cpp": "0ad4a86 (npm @node-llama-cpp/linux-x64@3.22.1, CPU)",
        }
    with open(os.path.join(a.out, "llamacpp_logits.json"), "w") as f:
        json.dump(result, f)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
