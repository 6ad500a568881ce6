"""A tiny gpt-oss checkpoint with its experts in MXFP4, as OpenAI's gpt-oss checkpoints ship them, and what HF
transformers makes of it (Mxfp4Config(dequantize=True)). Writes tests/golden/hf/gpt_oss_mxfp4/:

  config.json, model.safetensors   the checkpoint: experts as *_blocks (uint8 [E, rows, cols/32, 16], two e2m1
                                   values per byte) and *_scales (uint8 [E, rows, cols/32], e8m0 exponents)
  reference.safetensors            input_ids [2, T], logits [2, T, V] (fp32 forward of the dequantized model),
                                   gate_up_proj.0 / down_proj.0: layer 0's dequantized experts as HF holds them

The packed bytes and scales are random; whatever they mean is decided by HF's loader, which is the reference.
Run on a machine with transformers >= 4.55 (made with 5.17.0):

  python3 tests/reference/make_gpt_oss_mxfp4_golden.py --out tests/golden/hf/gpt_oss_mxfp4
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden/hf/gpt_oss_mxfp4")
    a = ap.parse_args()
    import transformers
    from transformers import GptOssConfig, AutoModelForCausalLM, Mxfp4Config

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    E, d, f, V, T = 4, 64, 64, 128, 12
    cfg = GptOssConfig(vocab_size=V, hidden_size=d, intermediate_size=f, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, num_local_experts=E, num_experts_per_tok=2,
                       sliding_window=4, layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                                        "beta_slow": 1.0, "truncate": False,
                                        "original_max_position_embeddings": 4096})
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    tensors = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                continue
            if "norm" in name:
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif p.dim() == 1:
                v = 0.1 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = 1 if "embed" in name else p.shape[-1]
                v = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            tensors[name] = v.contiguous()
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}.mlp.experts."
        # gate_up_proj: rows 2f, cols d; down_proj: rows d, cols f (the packed layout is [E, rows, cols / 32, 16]).
        for proj, rows, cols in (("gate_up_proj", 2 * f, d), ("down_proj", d, f)):
            tensors[pre + proj + "_blocks"] = torch.randint(0, 256, (E, rows, cols // 32, 16), generator=gen,
                                                            dtype=torch.uint8)
            # e8m0 exponents around 2^-3 .. 2^-1 so the weights are O(1/sqrt(fan_in)).
            tensors[pre + proj + "_scales"] = torch.randint(124, 127, (E, rows, cols // 32), generator=gen,
                                                            dtype=torch.uint8)
        tensors[pre + "gate_up_proj_bias"] = 0.1 * torch.randn(E, 2 * f, generator=gen)
        tensors[pre + "down_proj_bias"] = 0.1 * torch.randn(E, d, generator=gen)
    os.makedirs(a.out, exist_ok=True)
    cj = cfg.to_dict()
    cj["quantization_config"] = {"quant_method": "mxfp4",
                                 "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                            "model.embed_tokens", "lm_head"]}
    cj["architectures"] = ["GptOssForCausalLM"]
    cj["transformers_version"] = transformers.__version__
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(cj, fh, indent=2)
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})

    hf = AutoModelForCausalLM.from_pretrained(a.out, quantization_config=Mxfp4Config(dequantize=True),
                                              attn_implementation="eager", dtype=torch.float32)
    hf = hf.float().eval()
    ids = torch.randint(3, V, (2, T), generator=gen)
    with torch.no_grad():
        logits = hf(ids).logits.float()
    ex = hf.model.layers[0].mlp.experts
    ref = {"input_ids": ids, "logits": logits.contiguous(),
           "gate_up_proj.0": ex.gate_up_proj.detach().float().contiguous(),
           "down_proj.0": ex.down_proj.detach().float().contiguous()}
    save_file(ref, os.path.join(a.out, "reference.safetensors"))
    print("gate_up_proj", tuple(ex.gate_up_proj.shape), ex.gate_up_proj.dtype, "down_proj", tuple(ex.down_proj.shape),
          "logits", tuple(logits.shape), float(logits.abs().max()))


if __name__ == "__main__":
    main()
