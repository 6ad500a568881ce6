#!/usr/bin/env python3
"""Reference outputs from Hugging Face transformers for tiny random-weight models.

For every architecture mlxterp supports, builds a tiny model (random weights scaled so activations are
O(1)), saves it in HF layout (config.json written by transformers itself + model.safetensors) and saves
what transformers computes for a fixed batch of token ids:

  tests/golden/hf/<name>/config.json          as transformers 5.x writes it (rope_parameters)
  tests/golden/hf/<name>/config_v4.json       the same config in the transformers 4.x form (rope_theta + rope_scaling)
  tests/golden/hf/<name>/model.safetensors    fp32 weights
  tests/golden/hf/<name>/reference.safetensors
      input_ids [2, T] int64            the batch (random ids)
      logits [2, T, V]                  fp32 eager forward
      layer.{i} [2, T, d]               decoder layer outputs (residual stream after block i)
      attn.{i}, mlp.{i} [2, T, d]       attention / MLP block outputs (first element when a tuple)
      final_norm [2, T, d]              final norm output
      attn_weights.{i} [2, H, T, T]     attention probabilities (eager, output_attentions)
      router_logits.{i} [2*T, E]        MoE router logits (MoE models)
      mask_input_ids / mask_attention_mask / mask_logits   a right-padded batch with its mask
      generate_prompt [1, P], generate_ids [1, P + 8]        greedy HF generate (8 new tokens)
      logits_bf16 [2, T, V]             the same forward in bfloat16 (weights cast)
  tests/golden/hf/<name>/meta.json       versions, seed, notes

Run (where torch + transformers exist; ~1 minute on CPU):
    python3 tests/reference/make_hf_goldens.py --out tests/golden/hf
Only some models:  --only llama,qwen3
"""
import argparse
import json
import math
import os
import sys
import traceback

import torch

T = 12           # sequence length (longer than the sliding windows below)
VOCAB = 128
SEED = 1234


def base(**kw):
    d = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
             pad_token_id=0)
    d.update(kw)
    return d


def variants():
    """name -> (config class name, kwargs)."""
    v = {}
    v["llama"] = ("LlamaConfig", base(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["llama3_rope"] = ("LlamaConfig", base(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}))
    v["mistral"] = ("MistralConfig", base(sliding_window=4, head_dim=8,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["qwen2"] = ("Qwen2Config", base(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    v["qwen3"] = ("Qwen3Config", base(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    v["gemma"] = ("GemmaConfig", base(head_dim=8, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["gemma2"] = ("Gemma2Config", base(head_dim=8, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                                        sliding_window=4, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                                        final_logit_softcapping=3.0,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["gemma3"] = ("Gemma3TextConfig", base(head_dim=8, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                                            sliding_window=4, query_pre_attn_scalar=16, num_hidden_layers=3,
                                            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                            rope_parameters={
                                                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}))
    v["gpt2"] = ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=1, eos_token_id=2, activation_function="gelu_new"))
    v["gpt_neox"] = ("GPTNeoXConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, max_position_embeddings=64, use_parallel_residual=True,
                                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                           rotary_pct=0.25, partial_rotary_factor=0.25,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "partial_rotary_factor": 0.25}))
    v["gpt_neox_seq"] = ("GPTNeoXConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=64, max_position_embeddings=64, use_parallel_residual=False,
                                               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                               rotary_pct=0.5, partial_rotary_factor=0.5,
                                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                "partial_rotary_factor": 0.5}))
    v["phi3"] = ("Phi3Config", base(original_max_position_embeddings=64,
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["olmo2"] = ("Olmo2Config", base(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["mixtral"] = ("MixtralConfig", base(num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    v["qwen2_moe"] = ("Qwen2MoeConfig", base(moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                             num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                                             mlp_only_layers=[], norm_topk_prob=False,
                                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    v["qwen3_moe"] = ("Qwen3MoeConfig", base(head_dim=8, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                             decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    v["olmoe"] = ("OlmoeConfig", base(intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                                      num_key_value_heads=4,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # Parallel attention + MLP from one LayerNorm, partial rotary, biases, gelu_new, a biased lm_head.
    v["phi"] = ("PhiConfig", base(num_key_value_heads=4, layer_norm_eps=1e-5, hidden_act="gelu_new",
                                  qk_layernorm=False, partial_rotary_factor=0.5,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.5}))
    v["gptj"] = ("GPTJConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64,
                                    activation_function="gelu_new", tie_word_embeddings=False, bos_token_id=1,
                                    eos_token_id=2))
    # Sequential LayerNorm blocks: StableLM (partial rotary, qkv bias, SwiGLU), StarCoder2 (biases everywhere,
    # gelu MLP, sliding window).
    v["stablelm"] = ("StableLmConfig", base(layer_norm_eps=1e-5, use_qkv_bias=True, qk_layernorm=False,
                                            use_parallel_residual=False, partial_rotary_factor=0.25,
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 0.25}))
    v["starcoder2"] = ("Starcoder2Config", base(norm_epsilon=1e-5, use_bias=True, sliding_window=4,
                                                hidden_act="gelu_pytorch_tanh",
                                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # GPT-Neo: learned positions, unscaled attention scores, global and local (windowed) layers, tied lm_head.
    v["gpt_neo"] = ("GPTNeoConfig", dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                         intermediate_size=None, window_size=4,
                                         attention_types=[[["global", "local"], 1]], max_position_embeddings=64,
                                         activation_function="gelu_new", bos_token_id=1, eos_token_id=2))
    # OPT: learned positions offset by 2, biases everywhere, ReLU; pre-LayerNorm (125m, 1.3b ...) and the
    # post-LayerNorm layout of opt-350m with project_in / project_out around a narrower embedding.
    v["opt"] = ("OPTConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                  num_attention_heads=4, max_position_embeddings=64, do_layer_norm_before=True,
                                  word_embed_proj_dim=32, activation_function="relu", enable_bias=True,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0))
    v["opt_postln"] = ("OPTConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                         num_attention_heads=4, max_position_embeddings=64, do_layer_norm_before=False,
                                         word_embed_proj_dim=16, activation_function="relu", enable_bias=True,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0))
    # BLOOM: ALiBi (6 heads: the slopes' non-power-of-two branch), a LayerNorm right after the embedding,
    # per-head interleaved query_key_value; and the apply_residual_connection_post_layernorm layout.
    v["bloom"] = ("BloomConfig", dict(vocab_size=VOCAB, hidden_size=48, n_layer=2, n_head=6, layer_norm_epsilon=1e-5,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0))
    v["bloom_postres"] = ("BloomConfig", dict(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4,
                                              layer_norm_epsilon=1e-5, apply_residual_connection_post_layernorm=True,
                                              bos_token_id=1, eos_token_id=2, pad_token_id=0))
    # GPTBigCode (SantaCoder, StarCoder 1): GPT-2 blocks with Linear weights and multi-query attention; and
    # the multi-head layout.
    v["gpt_bigcode"] = ("GPTBigCodeConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                 activation_function="gelu_pytorch_tanh", multi_query=True,
                                                 bos_token_id=1, eos_token_id=2))
    v["gpt_bigcode_mha"] = ("GPTBigCodeConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                     activation_function="gelu_pytorch_tanh", multi_query=False,
                                                     bos_token_id=1, eos_token_id=2))
    # Falcon: 7B layout (multi-query, parallel attention + MLP from one LayerNorm, no biases, rotary) and the
    # 40B/180B one (new_decoder_architecture: grouped k/v heads, separate ln_attn / ln_mlp).
    v["falcon"] = ("FalconConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        multi_query=True, parallel_attn=True, new_decoder_architecture=False,
                                        bias=False, alibi=False, max_position_embeddings=64, rope_theta=10000.0,
                                        bos_token_id=1, eos_token_id=2))
    v["falcon_new"] = ("FalconConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_kv_heads=2, new_decoder_architecture=True, parallel_attn=True,
                                            bias=False, alibi=False, max_position_embeddings=64, rope_theta=10000.0,
                                            bos_token_id=1, eos_token_id=2))
    # Granite: Llama with embedding / residual / attention multipliers and logits scaling.
    v["granite"] = ("GraniteConfig", base(embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.22,
                                          attention_multiplier=0.125,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # Cohere (Command-R): parallel block from one bias-free LayerNorm, interleaved rotary, logit_scale, tied.
    v["cohere"] = ("CohereConfig", base(logit_scale=0.25, use_qk_norm=False, layer_norm_eps=1e-5,
                                        tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # OLMo (1): LayerNorms without parameters, q/k/v clipped to +-clip_qkv.
    v["olmo"] = ("OlmoConfig", base(clip_qkv=1.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # MPT: ALiBi with alibi_bias_max (6 heads: the non-power-of-two slopes), bias-free LayerNorms and
    # projections, fused Wqkv, clip_qkv, GELU MLP with the residual added inside the module, tied head.
    v["mpt"] = ("MptConfig", dict(vocab_size=VOCAB, d_model=48, n_heads=6, n_layers=2, expansion_ratio=4,
                                  max_seq_len=64, no_bias=True, layer_norm_epsilon=1e-5,
                                  attn_config={"alibi": True, "alibi_bias_max": 8, "clip_qkv": 1.0,
                                               "softmax_scale": None, "qk_ln": False},
                                  bos_token_id=1, eos_token_id=2))
    # SmolLM3: Llama with rotary embedding switched off in some layers (no_rope_layers: 1 = rotary, 0 = none).
    v["smollm3"] = ("SmolLM3Config", base(num_hidden_layers=3, no_rope_layers=[1, 0, 1], use_sliding_window=False,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # GLM-4 (THUDM/glm-4-9b-hf, model_type glm): q/k/v bias, fused gate_up, half of each head rotated in the
    # interleaved convention; glm4 (GLM-4-0414) adds post-attention / post-MLP norms.
    v["glm"] = ("GlmConfig", base(head_dim=8, attention_bias=True, partial_rotary_factor=0.5, hidden_act="silu",
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.5}))
    v["glm4"] = ("Glm4Config", base(head_dim=8, attention_bias=True, partial_rotary_factor=0.5, hidden_act="silu",
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                     "partial_rotary_factor": 0.5}))
    # Llama relatives: Arcee (ReLU^2 MLP without a gate), ERNIE 4.5 (interleaved rotary, biases everywhere),
    # Helium (interleaved rotary, q/k/v bias), Seed-OSS (q/k/v bias, none on o_proj), HunYuan dense (q/k
    # RMSNorm after the rotary; rotary base scaled by alpha), Ministral (per-layer sliding window).
    v["arcee"] = ("ArceeConfig", base(hidden_act="relu2", rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["ernie4_5"] = ("Ernie4_5Config", base(head_dim=8, use_bias=True,
                                            rope_parameters={"rope_type": "default", "rope_theta": 500000.0}))
    v["helium"] = ("HeliumConfig", base(head_dim=8, attention_bias=True, rms_norm_eps=1e-8,
                                        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}))
    v["seed_oss"] = ("SeedOssConfig", base(head_dim=8, attention_bias=True, attention_out_bias=False,
                                           attention_dropout=0.0, residual_dropout=0.0,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000000.0}))
    v["hunyuan_v1_dense"] = ("HunYuanDenseV1Config", base(head_dim=8, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 1000.0, "factor": 1.0}))
    v["ministral"] = ("MinistralConfig", base(head_dim=8, sliding_window=4, num_hidden_layers=3,
                                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    # OLMo 3: OLMo 2 with sliding-window layers (every 4th layer full).
    v["olmo3"] = ("Olmo3Config", base(num_hidden_layers=4, sliding_window=4, rope_parameters={
        "full_attention": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "beta_fast": 32.0,
                           "beta_slow": 1.0, "original_max_position_embeddings": 16, "attention_factor": 1.2},
        "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}}))
    # Nemotron: LayerNorm1p (weight + 1, with bias), ReLU^2 MLP without a gate, partial rotary.
    v["nemotron"] = ("NemotronConfig", base(norm_eps=1e-5, hidden_act="relu2", partial_rotary_factor=0.5, head_dim=8,
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 0.5}))
    # EXAONE 4: q/k RMSNorm, post-attention / post-MLP norms (OLMo 2 style), sliding layers with rotary and
    # global layers without it.
    v["exaone4"] = ("Exaone4Config", base(head_dim=8, sliding_window=4, num_hidden_layers=4, sliding_window_pattern=4,
                                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    # Apertus: xIELU activation (learned alpha_p / alpha_n) without a gate, q/k RMSNorm, llama3 rotary.
    v["apertus"] = ("ApertusConfig", base(head_dim=8, rope_parameters={
        "rope_type": "llama3", "rope_theta": 12000000.0, "factor": 8.0, "original_max_position_embeddings": 16,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}))
    # Command-R+ (cohere with per-head q/k LayerNorm) and Command-R7B / Command-A (cohere2: sliding layers with
    # rotary, global layers without).
    v["cohere_qknorm"] = ("CohereConfig", base(logit_scale=0.25, use_qk_norm=True, layer_norm_eps=1e-5,
                                               tie_word_embeddings=True,
                                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["cohere2"] = ("Cohere2Config", base(logit_scale=0.25, layer_norm_eps=1e-5, tie_word_embeddings=True,
                                          sliding_window=4, num_hidden_layers=4,
                                          layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                                                       "full_attention"],
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # GraniteMoE: Granite's multipliers with a top-k mixture of experts stored as fused input / output linears;
    # GraniteMoeShared adds a shared expert.
    v["granitemoe"] = ("GraniteMoeConfig", base(embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.22,
                                                attention_multiplier=0.125, num_local_experts=4, num_experts_per_tok=2,
                                                intermediate_size=32,
                                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    v["granitemoeshared"] = ("GraniteMoeSharedConfig", base(embedding_multiplier=12.0, logits_scaling=8.0,
                                                            residual_multiplier=0.22, attention_multiplier=0.125,
                                                            num_local_experts=4, num_experts_per_tok=2,
                                                            intermediate_size=32, shared_intermediate_size=48,
                                                            rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 10000.0}))
    # gpt-oss: attention sinks, alternating sliding / full layers, q/k/v/o biases, yarn rotary, top-k experts
    # with a clamped SwiGLU (interleaved gate / up) and biases.
    v["gpt_oss"] = ("GptOssConfig", base(head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                                         num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                                         intermediate_size=32, attention_bias=True,
                                         rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                                          "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                                          "original_max_position_embeddings": 4096}))
    # DeepSeek-V3 (and Kimi K2): multi-head latent attention (q through a low-rank q_a / q_b pair, keys and values
    # from a compressed kv latent, a shared rotary key), interleaved rotary with YaRN's mscale terms, a dense first
    # layer, then sigmoid-scored experts chosen within the best groups (with a correction bias), renormalised
    # and scaled, plus a shared expert. The second variant: q_proj without the low-rank pair, rotate_half
    # rotary, one group, no renormalisation.
    v["deepseek_v3"] = ("DeepseekV3Config", base(
        num_hidden_layers=3, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16, n_shared_experts=1,
        n_routed_experts=8, routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
        v_head_dim=12, qk_nope_head_dim=8, n_group=4, topk_group=2, num_experts_per_tok=2, first_k_dense_replace=1,
        norm_topk_prob=True, rope_interleave=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}))
    v["deepseek_v3_noq"] = ("DeepseekV3Config", base(
        num_hidden_layers=2, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16, n_shared_experts=2,
        n_routed_experts=8, routed_scaling_factor=1.0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        v_head_dim=8, qk_nope_head_dim=16, n_group=1, topk_group=1, num_experts_per_tok=3, first_k_dense_replace=0,
        norm_topk_prob=False, rope_interleave=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # DeepSeek-V2: the same latent attention; softmax-scored experts chosen greedily ("greedy", V2-Lite) or
    # within the groups holding the best single scores ("group_limited_greedy", V2), scaled, not renormalised.
    v["deepseek_v2"] = ("DeepseekV2Config", base(
        num_hidden_layers=3, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16, n_shared_experts=1,
        n_routed_experts=8, routed_scaling_factor=2.0, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
        v_head_dim=12, qk_nope_head_dim=8, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        num_experts_per_tok=3, first_k_dense_replace=1, norm_topk_prob=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}))
    v["deepseek_v2_lite"] = ("DeepseekV2Config", base(
        num_hidden_layers=2, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16, n_shared_experts=2,
        n_routed_experts=8, routed_scaling_factor=1.0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        v_head_dim=8, qk_nope_head_dim=16, topk_method="greedy", n_group=1, topk_group=1, num_experts_per_tok=3,
        first_k_dense_replace=1, norm_topk_prob=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    # DeepSeek-V3's router and shared experts on other attention: GLM-4.5 (glm4_moe: q/k/v bias, per-head q/k
    # RMSNorm, partial rotate_half rotary) and dots.llm1 (dots1: Qwen3 attention).
    v["glm4_moe"] = ("Glm4MoeConfig", base(
        head_dim=8, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=16, n_shared_experts=1,
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=True, attention_bias=True, partial_rotary_factor=0.5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}))
    v["dots1"] = ("Dots1Config", base(
        head_dim=8, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=16, n_shared_experts=1,
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        first_k_dense_replace=1, norm_topk_prob=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    return v


def make_config(cls_name, kw):
    import transformers
    cls = getattr(transformers, cls_name)
    try:
        return cls(**kw)
    except TypeError:
        # Older transformers (4.x): rope_parameters -> rope_theta / rope_scaling.
        kw = dict(kw)
        rp = kw.pop("rope_parameters", None)
        if rp and "rope_type" in rp:
            kw["rope_theta"] = rp.get("rope_theta", 10000.0)
            if rp["rope_type"] != "default":
                kw["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
            if "partial_rotary_factor" in rp:
                kw["rotary_pct"] = rp["partial_rotary_factor"]
        return cls(**kw)


def to_v4(cfg):
    """The transformers 4.x form of a 5.x config dict: rope_parameters -> rope_theta + rope_scaling."""
    c = dict(cfg)
    rp = c.pop("rope_parameters", None)
    if rp is None:
        return c
    if all(isinstance(v, dict) for v in rp.values()):   # per layer type (Gemma 3)
        full = rp.get("full_attention", {})
        slide = rp.get("sliding_attention", {})
        c["rope_theta"] = full.get("rope_theta", 10000.0)
        if full.get("rope_type", "default") != "default":
            c["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
        else:
            c["rope_scaling"] = None
        c["rope_local_base_freq"] = slide.get("rope_theta", 10000.0)
        return c
    c["rope_theta"] = rp.get("rope_theta", 10000.0)
    if "partial_rotary_factor" in rp:
        c["partial_rotary_factor"] = rp["partial_rotary_factor"]
        if c.get("model_type") == "gpt_neox":
            c["rotary_pct"] = rp["partial_rotary_factor"]
    extra = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
    c["rope_scaling"] = extra if extra.get("rope_type", "default") != "default" else None
    return c


def randomize(model, gen):
    """Weights of O(1/sqrt(fan_in)) (HF's 0.02 init makes every activation tiny and every check trivial)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "ln_f" in name \
                    or ".ln_" in name:
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                elif "gemma" in type(model).__name__.lower():
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))   # Gemma scales by (1 + w)
                else:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if "wte" not in name and "wpe" not in name and "embed" not in name else 1
                scale = 1.0 / math.sqrt(fan_in)
                # GPT-2's Conv1D stores [in, out]: fan_in is the first dimension.
                if type(p).__name__ and "c_" in name and "gpt2" in type(model).__name__.lower():
                    scale = 1.0 / math.sqrt(p.shape[0])
                p.copy_(scale * torch.randn(p.shape, generator=gen))


def randomize_buffers(model, gen):
    """Learned buffers the checkpoint carries (DeepSeek-V3's router correction bias) start at zero: make them
    matter."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def find_layers(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks"):
        obj = model
        ok = True
        for part in path.split("."):
            if not hasattr(obj, part):
                ok = False
                break
            obj = getattr(obj, part)
        if ok:
            return path, obj
    raise RuntimeError("cannot find decoder layers")


def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture(model, ids, mask=None):
    """Forward with hooks on every layer, its attention and MLP, and the final norm."""
    _, layers = find_layers(model)
    store, handles = {}, []

    def hook(key):
        def fn(m, inp, out):
            o = first(out)
            # BLOOM's attention and MLP modules add the residual (their second argument) themselves.
            if ("Bloom" in type(m).__name__ or "MptMLP" in type(m).__name__) and key.split(".")[0] in ("attn", "mlp") \
                    and len(inp) > 1:
                o = o - inp[1]
            store[key] = o.detach().float().clone()
        return fn

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook(f"layer.{i}")))
        attn = next((getattr(layer, a) for a in ("self_attn", "attn", "attention", "self_attention")
                     if hasattr(layer, a)), None)
        # OPT's layer has no MLP module: fc2's output is the MLP block's output.
        mlp = next((getattr(layer, a) for a in ("mlp", "block_sparse_moe", "feed_forward", "fc2", "ffn")
                    if hasattr(layer, a)),
                   None)
        if attn is not None:
            handles.append(attn.register_forward_hook(hook(f"attn.{i}")))
        if mlp is not None:
            handles.append(mlp.register_forward_hook(hook(f"mlp.{i}")))
            gate = getattr(mlp, "gate", None)
            if isinstance(gate, torch.nn.Module) and getattr(mlp, "experts", None) is not None:
                handles.append(gate.register_forward_hook(hook(f"router_logits.{i}")))

                # Routers that choose by something other than the top-k logits (DeepSeek-V3: sigmoid scores
                # plus a correction bias within the best groups) return (logits, weights, indices): keep the
                # chosen experts, sorted per token.
                def keep_choice(m, inp, out, i=i):
                    if isinstance(out, tuple) and len(out) == 3 and not out[2].is_floating_point():
                        store[f"router_topk.{i}"] = out[2].sort(-1).values.long().clone()
                handles.append(gate.register_forward_hook(keep_choice))
    for norm_path in ("model.norm", "model.final_layernorm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                      "model.decoder.final_layer_norm", "transformer.norm_f"):
        obj = model
        try:
            for part in norm_path.split("."):
                obj = getattr(obj, part)
            handles.append(obj.register_forward_hook(hook("final_norm")))
            break
        except AttributeError:
            continue
    kwargs = dict(output_attentions=True, use_cache=False)
    if mask is not None:
        kwargs["attention_mask"] = mask
    try:
        out = model(ids, output_router_logits=True, **kwargs)
    except TypeError:
        out = model(ids, **kwargs)
    for h in handles:
        h.remove()
    store["logits"] = out.logits.detach().float().clone()
    if getattr(out, "attentions", None):
        for i, a in enumerate(out.attentions):
            if a is not None:
                store[f"attn_weights.{i}"] = a.detach().float().clone()
    rl = getattr(out, "router_logits", None)
    if rl:
        for i, r in enumerate(rl):
            if r is not None:
                store[f"router_logits.{i}"] = first(r).detach().float().clone()
    return store


def build(name, cls_name, kw, out_dir):
    import transformers
    from safetensors.torch import save_file
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    cfg = make_config(cls_name, kw)
    try:
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", torch_dtype=torch.float32)
    model.eval()
    randomize(model, gen)
    randomize_buffers(model, gen)
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    with open(os.path.join(d, "config.json")) as f:
        cfg_json = json.load(f)
    with open(os.path.join(d, "config_v4.json"), "w") as f:
        json.dump(to_v4(cfg_json), f, indent=2, sort_keys=True)

    ids = torch.randint(3, VOCAB, (2, T), generator=gen)
    ref = {"input_ids": ids}
    with torch.no_grad():
        ref.update(capture(model, ids))
        mask_ids = ids.clone()
        mask = torch.ones_like(ids)
        mask[1, T - 3:] = 0
        mask_ids[1, T - 3:] = 0
        ref["mask_input_ids"] = mask_ids
        ref["mask_attention_mask"] = mask
        ref["mask_logits"] = model(mask_ids, attention_mask=mask, use_cache=False).logits.float()
        prompt = ids[:1, :5]
        gen_out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8,
                                 min_new_tokens=8, eos_token_id=None, pad_token_id=0)
        ref["generate_prompt"] = prompt
        ref["generate_ids"] = gen_out
        mb = model.to(torch.bfloat16)
        ref["logits_bf16"] = mb(ids, use_cache=False).logits.float()
    ref = {k: v.detach().clone().contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(d, "reference.safetensors"))
    meta = {"name": name, "config_class": cls_name, "seed": SEED, "T": T,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tensors": sorted(ref.keys()),
            "command": "python3 tests/reference/make_hf_goldens.py --out tests/golden/hf"}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return sorted(ref.keys())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden/hf")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    only = set(x for x in a.only.split(",") if x)
    failed = []
    alternatives = {
        # transformers versions that want Gemma 3's local base frequency as a flat field
        "gemma3": lambda kw: {**{k: v for k, v in kw.items() if k != "rope_parameters"},
                              "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                              "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    }
    for name, (cls_name, kw) in variants().items():
        if only and name not in only:
            continue
        tries = [kw] + ([alternatives[name](kw)] if name in alternatives else [])
        for n_try, k in enumerate(tries):
            try:
                keys = build(name, cls_name, k, a.out)
                print(f"ok   {name}: {len(keys)} tensors" + (" (alternative config)" if n_try else ""), flush=True)
                break
            except Exception:
                print(f"FAIL {name} (try {n_try})", flush=True)
                traceback.print_exc()
        else:
            failed.append(name)
    print("failed:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
