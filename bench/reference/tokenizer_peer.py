"""The HF `tokenizers` peer of bench_tokenizer in Python (same protocol as tokenizer_peer.js).

    RAYON_NUM_THREADS=1 python3 tokenizer_peer.py TOKENIZER_JSON TEXT_FILE REPEATS
"""
import json
import re
import statistics
import sys
import time

from tokenizers import Tokenizer


def main():
    path, text_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tok = Tokenizer.from_file(path)
    text = open(text_file, encoding="utf-8").read()
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    n, h = 0, 1469598103934665603
    for line in lines:
        ids = tok.encode(line, add_special_tokens=False).ids
        n += len(ids)
        for i in ids:
            for b in range(4):
                h ^= (i >> (8 * b)) & 0xFF
                h = (h * 1099511628211) & (2**64 - 1)
    secs, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        tok.encode_batch(lines, add_special_tokens=False)
        cpu.append(time.process_time() - c0)
        secs.append(time.perf_counter() - t0)
    print(json.dumps({"tokens": n, "tokens_per_s": n / statistics.median(secs),
                      "tokens_per_cpu_s": n / statistics.median(cpu), "fingerprint": str(h)}))


if __name__ == "__main__":
    main()
