"""The memory-bound floor of the SAE step's optimizer work, measured with PyTorch on the same GPU.

    python3 bench/reference/bandwidth_peer.py [--d 4096] [--f 131072]

Prints (1) device-to-device copy bandwidth over an F*d float32 array and (2) torch.optim.AdamW(fused=True)
on one F*d float32 parameter with a dense gradient: it reads w, g, m, v and writes w, m, v (28 B per
parameter), the traffic each of our per-latent kernels has (W, m, v read and written, a bf16 copy written,
gradient rows gathered from L2). Our step does two such matrices.
"""
import argparse
import time

import torch


def timed(fn, iters=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--f", type=int, default=131072)
    a = ap.parse_args()
    n = a.d * a.f
    dev = "cuda"
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}: F*d = {n / 1e6:.0f} M parameters")
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src))
    print(f"copy float32: {ms:.3f} ms, {2 * 4 * n / ms / 1e9:.2f} TB/s (read + write)")
    del dst
    p = torch.nn.Parameter(src)
    p.grad = torch.randn_like(src) * 1e-3
    opt = torch.optim.AdamW([p], lr=1e-4, fused=True)
    ms = timed(opt.step)
    print(f"AdamW fused, dense gradient: {ms:.3f} ms, {28 * n / ms / 1e9:.2f} TB/s at 28 B/parameter")


if __name__ == "__main__":
    main()
