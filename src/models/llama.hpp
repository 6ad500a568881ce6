// The Llama family: Llama 2/3 (incl. llama3 RoPE scaling), Mistral (sliding window), Qwen2 (q/k/v
// bias), Qwen3 (per-head q/k RMSNorm), SmolLM, TinyLlama. Other pre-norm decoder families derive from
// LlamaModel and override the pieces that differ (norm, MLP, attention options, embedding scale).
#pragma once

#include <utility>
#include <vector>

#include "mlxterp/model.hpp"
#include "models/blocks.hpp"

namespace mlxterp {

class LlamaModel : public Model {
 public:
  LlamaModel(const ModelConfig& config, TensorMap weights);

  at::Tensor forward(const at::Tensor& ids, const ForwardArgs& args, Hooks& hooks) override;
  at::Tensor embed(const at::Tensor& ids) const override;
  at::Tensor final_norm(const at::Tensor& h) const override;
  at::Tensor unembed(const at::Tensor& h) const override;
  at::Tensor unembedding_matrix() const override;
  std::map<std::string, std::vector<int64_t>> expected_weights() const override;

 protected:
  // Site ids of one block, in execution order (-1 where the architecture has no such site).
  struct LayerSites {
    int resid_pre = -1, input_norm = -1, q = -1, k = -1, v = -1, q_norm = -1, k_norm = -1, attn_weights = -1, z = -1,
        o = -1, attn = -1, resid_mid = -1, post_norm = -1, gate = -1, up = -1, hidden = -1, down = -1, mlp = -1,
        out = -1;
    // Other families: fused projections (Phi-3, GPT-2, NeoX) and extra norms (Gemma 2/3, OLMo2).
    int qkv = -1, gate_up = -1, attn_out_norm = -1, ff_pre_norm = -1, ff_post_norm = -1;
  };
  // Per-layer weight handles (undefined where absent), refreshed by bind(). ln1_b / ln2_b: the biases of
  // LayerNorm families' two norms.
  struct LayerWeights {
    at::Tensor ln1, ln1_b, q, k, v, o, qb, kb, vb, ob, qn, kn, ln2, ln2_b, gate, up, down, gate_b, up_b, down_b;
  };
  // Everything a block needs from the surrounding forward pass.
  struct Context {
    int64_t batch = 0, t = 0, past = 0;
    at::Tensor positions;               // [b, t]
    at::Tensor full_mask, sliding_mask;  // [b, 1, t, t_total] bool
    // The mask is exactly the causal triangle (no cache, no padding, window >= t): attention may use
    // SDPA's is_causal path (FlashAttention) instead of the explicit mask.
    bool full_causal_only = false, sliding_causal_only = false;
    std::map<std::string, std::pair<at::Tensor, at::Tensor>> cos_sin;  // by layer type
    KVCache* cache = nullptr;
    at::Tensor padding_mask;  // [b, past + t] (1 = real token) as given; undefined: no padding
    at::Tensor attn_bias;     // added to every layer's attention scores when set (BLOOM's ALiBi)
  };

  // For derived families: construct without building anything, then call init() at the end of the
  // derived constructor (so the derived build_sites()/bind() are the ones that run).
  struct DeferInit {};
  LlamaModel(const ModelConfig& config, TensorMap weights, DeferInit);
  void init();

  virtual void build_sites();
  void bind() override;
  std::string layer_prefix(int i) const { return "model.layers." + std::to_string(i); }

  // Overridable pieces (defaults are Llama's).
  virtual at::Tensor norm(const at::Tensor& x, const at::Tensor& w) const;
  virtual at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H);
  virtual at::Tensor attention_block(int i, const at::Tensor& h, Context& ctx, Hooks& H);
  // The projections of attention_block: q [b, t, n_heads, d_head], k/v [b, t, n_kv_heads, d_head]
  // (after any q/k norm), each through its site.
  struct QKV {
    at::Tensor q, k, v;
  };
  virtual QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H);
  // The rest of attention_block: RoPE (skipped when ropes_ is empty or no_rope_[i]), KV cache, mask, attention
  // (weights site), z, o_proj and the block's attention site.
  at::Tensor attend(int i, QKV p, Context& ctx, Hooks& H);
  // Layer i's rotary embedding on q [b, n_heads, t, d_head] and k [b, n_kv, t, d_head] (cos/sin cached in ctx
  // per layer type), in the rope's convention. Returns the rotated {q, k}.
  std::pair<at::Tensor, at::Tensor> rotate(int i, const at::Tensor& q, const at::Tensor& k, Context& ctx) const;
  // Embedding sites at the start of forward (GPT-2 adds learned positions here).
  virtual at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H);
  virtual at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H);
  virtual blocks::AttentionOptions attention_options(int i) const;
  virtual void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const;

  std::vector<LayerSites> ls_;
  std::vector<LayerWeights> lw_;
  std::vector<blocks::Rope> ropes_;  // per layer (empty: no rotary embedding)
  std::vector<char> no_rope_;         // per layer: 1 = this layer skips the rotary embedding (SmolLM3's NoPE layers)
  bool qk_norm_full_width_ = false;   // OLMo2/OLMoE: q/k norm over the whole projection, before the head split
  at::Tensor embed_w_, norm_w_, head_w_;
  int embed_site_ = -1, norm_site_ = -1, head_site_ = -1;
};

}  // namespace mlxterp
