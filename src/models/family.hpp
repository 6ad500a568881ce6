// Shared scaffolding for the decoder families that derive from LlamaModel (Gemma, GPT-2, GPT-NeoX,
// Phi-3, OLMo2, MoE): site-building helpers that keep one execution order and one naming scheme for
// the same concepts, native-path aliases, and access to architecture extras in the config.
//
//   class MyModel : public FamilyModel {
//     MyModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) { init(); }
//     void build_sites() override {
//       embed_site_ = add_site(-1, "model.embed_tokens");
//       for (int i = 0; i < n; ++i) { ...; add_attention_sites(i, ls_[i], /*fused_qkv=*/false); ... }
//       alias_blocks("transformer.h.", {{"attn", "self_attn"}, ...});
//       sites_.add_standard_aliases(n);
//     }
//   };
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "models/llama.hpp"

namespace mlxterp {

class FamilyModel : public LlamaModel {
 protected:
  FamilyModel(const ModelConfig& config, TensorMap weights) : LlamaModel(config, std::move(weights), DeferInit{}) {}

  // Adds "model.layers.{i}.<comp>" (i >= 0; comp "" = the block itself) or, for i == -1, `comp` as a
  // global site name.
  int add_site(int i, const std::string& comp, bool on_request = false);
  // Attention sites in execution order: [self_attn.qkv_proj], self_attn.{q,k,v}_proj,
  // [self_attn.{q,k}_norm when config_.qk_norm], self_attn.attention_weights (on request),
  // self_attn.z, self_attn.o_proj, self_attn.
  void add_attention_sites(int i, LayerSites& l, bool fused_qkv);
  enum class Mlp { Gated, FusedGated, Plain };
  // MLP sites: Gated mlp.{gate,up}_proj, FusedGated mlp.gate_up_proj + the split halves, Plain
  // mlp.up_proj (fc_in); then mlp.hidden (down_proj input), mlp.down_proj, mlp.
  void add_mlp_sites(int i, LayerSites& l, Mlp kind);
  // All sites of block i in execution order: resid_pre, [input_layernorm], the attention sites, [resid_mid],
  // [post_attention_layernorm], the MLP sites, the block output. The flags drop what a family lacks.
  struct BlockShape {
    bool input_norm = true, fused_qkv = false, resid_mid = true, post_norm = true;
    Mlp mlp = Mlp::Plain;
  };
  void add_block_sites(int i, const BlockShape& shape);
  // GPT-2's native block paths (ln_1, attn, attn.c_attn, attn.c_proj, ln_2, mlp, mlp.c_fc, mlp.act, mlp.c_proj)
  // as (native suffix, canonical component) pairs for alias_blocks; GPTBigCode shares them.
  static const std::vector<std::pair<std::string, std::string>>& gpt2_block_paths();
  // The pre-LayerNorm sequential block of GPT-2 and its kin, through the sites add_block_sites made, with
  // block i's norms (lw_[i].ln1 / ln1_b, ln2 / ln2_b): x + attn(LayerNorm1(x)), then + mlp(LayerNorm2(.)).
  // [b, t, d] -> [b, t, d]
  at::Tensor layer_norm_block(int i, at::Tensor x, Context& ctx, Hooks& H);
  // For each block i and each (native suffix, canonical component) pair, aliases
  // "<prefix><i>[.<native>]" to the canonical "model.layers.<i>[.<component>]" where that site exists.
  void alias_blocks(const std::string& prefix, const std::vector<std::pair<std::string, std::string>>& map);
  // The config object holding the text model's fields (raw, or raw["text_config"]).
  const nlohmann::json& text_config() const;
  // An optional weight (undefined if absent).
  at::Tensor opt_weight(const std::string& name) const;
  // A plain (non-gated) MLP on h [b, t, d]: up (+ bias) -> hidden_act -> down (+ bias), through the sites
  // add_mlp_sites(Mlp::Plain) made (mlp.up_proj, mlp.hidden, mlp.down_proj, mlp). Biases may be undefined.
  at::Tensor plain_mlp(int i, const at::Tensor& h, const at::Tensor& up_w, const at::Tensor& up_b,
                       const at::Tensor& down_w, const at::Tensor& down_b, Hooks& H) const;
  // A fused q/k/v projection qkv [b, t, (H + 2K) dh] split through the q/k/v sites ([b, t, H dh] / [b, t, K dh])
  // into heads. PerHead: each head's [q | k | v] (GPT-NeoX, BLOOM, GPTBigCode multi-head; needs K == H);
  // Stacked: [all q | all k | all v] (GPT-2, GPTBigCode multi-query).
  enum class QkvLayout { PerHead, Stacked };
  QKV split_qkv(int i, const at::Tensor& qkv, const Context& ctx, Hooks& H, QkvLayout layout) const;
  // A fused gated MLP (Phi-3, GLM): gate_up [2 f, d] -> mlp.gate_up_proj, split into mlp.gate_proj / mlp.up_proj,
  // up * act(gate) -> mlp.hidden, down -> mlp.down_proj, mlp. [b, t, d] -> [b, t, d]
  at::Tensor fused_gated_mlp(int i, const at::Tensor& h, const at::Tensor& gate_up_w, const at::Tensor& down_w,
                             Hooks& H) const;
  // The routed part of a mixture-of-experts MLP, shared by the MoE families. x [N, d] (N = b * t tokens);
  // weights [N, E] (0 for experts not chosen); chosen [N, k] the chosen experts. The weights go through
  // `routing_site` as [b, t, E]: an edit re-routes (the chosen experts become its nonzeros, weighted by it).
  // expert(e, x_e) runs expert e on its tokens x_e [n_e, d] -> [n_e, d]; its output at all tokens goes through
  // expert_sites[e] when requested. Returns sum_e weights[:, e] * expert_e, [N, d] in x's dtype.
  at::Tensor routed_experts(const at::Tensor& x, at::Tensor weights, const at::Tensor& chosen, int64_t b, int64_t t,
                            int routing_site, const std::vector<int>& expert_sites, Hooks& H,
                            const std::function<at::Tensor(int64_t e, const at::Tensor& xe)>& expert) const;
  // GPT-2-style block weights of layer i, named under p (e.g. "transformer.h.3."): ln_1 / ln_2 and the MLP's
  // mlp.c_fc / mlp.c_proj as nn.Linear, weights and biases, into lw_[i] (GPT-Neo, GPTBigCode).
  void bind_gpt2_norms_and_mlp(int i, const std::string& p);
  // The output projection: lm_head.weight when the checkpoint has one, else the (tied) embedding embed_w_.
  at::Tensor lm_head_or_embedding() const;
  // Expects lm_head.weight [d_vocab, width] unless the head is tied and the checkpoint leaves it out.
  void expect_lm_head(std::map<std::string, std::vector<int64_t>>& out, int64_t width) const;
  // Learned absolute positions: rows ctx.positions + offset of wpe [n_rows, d] through `site` ([b, t, d]);
  // a position past the table is an error naming the family (OPT's table has offset = 2 extra rows).
  at::Tensor learned_positions(const Context& ctx, Hooks& H, const at::Tensor& wpe, int site, int64_t offset,
                               const char* family) const;
};

}  // namespace mlxterp
