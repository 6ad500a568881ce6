// Mixture-of-experts scaffolding shared by the MoE families (moe.cpp: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE;
// granite.cpp: GraniteMoE, GraniteMoeShared): the sites of a sparse block and the routed-expert sum through
// them, so every MoE family has the same names and the same intervention semantics.
//
//   class MyMoE : public MoeFamilyModel {
//     void build_sites() override { ...; add_moe_sites(i, /*shared_expert=*/false, /*shared_gate=*/false); ... }
//     at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
//       at::Tensor logits = H(ms_[i].router, at::linear(h, mw_[i].router));             // [b, t, E]
//       blocks::MoeRouting r = blocks::moe_route(logits.reshape({-1, n_experts_}), top_k_, true);
//       return H(ls_[i].mlp, mix_experts(i, h, r.weights, r.chosen, H));
//     }
//   };
#pragma once

#include <vector>

#include "models/family.hpp"

namespace mlxterp {

class MoeFamilyModel : public FamilyModel {
 protected:
  using FamilyModel::FamilyModel;

  struct MoeSites {
    int router = -1, routing = -1, switch_mlp = -1, shared = -1, shared_gate = -1;
    std::vector<int> experts;  // on request
  };
  // One gated expert: gate/up [f, d], down [d, f] (views into fused checkpoint tensors are fine).
  struct Expert {
    at::Tensor gate, up, down;
  };
  struct MoeWeights {
    at::Tensor router, shared_gate;  // [E, d], [1, d] (Qwen2-MoE only)
    Expert shared;                   // shared expert (undefined where the family has none)
    std::vector<Expert> experts;
  };

  // Block i's MoE sites in execution order: mlp.gate (router logits), mlp.routing_weights, mlp.experts.{e}
  // (on request), mlp.switch_mlp, [mlp.shared_expert, [mlp.shared_expert_gate]], then mlp (ls_[i].mlp).
  // Needs n_experts_ and ms_ sized to n_layers.
  void add_moe_sites(int i, bool shared_expert, bool shared_gate);
  // Every site of a Llama-shaped MoE decoder, in execution order: embeddings; per block resid_pre,
  // input_layernorm, [before_attention(i)], the attention sites, resid_mid, post_attention_layernorm, then
  // add_moe_sites where sparse(i) (else a dense SwiGLU's sites), the block output; model.norm, lm_head. Sizes
  // ls_ and ms_. The caller adds its aliases and the standard ones.
  void add_moe_decoder_sites(const std::function<bool(int)>& sparse, bool shared_expert, bool shared_gate,
                             const std::function<void(int)>& before_attention = nullptr);
  // act(x gate^T) * (x up^T), then down: x [n, d] -> [n, d].
  at::Tensor expert_mlp(const Expert& e, const at::Tensor& x) const;
  // The routed experts of block i on h [b, t, d]: weights [N = b t, E] (0 for experts not chosen; float32 or
  // the model dtype, the products are cast to h's dtype before summing), chosen [N, k] int64. Goes through
  // mlp.routing_weights (an edited value re-routes: its nonzeros become the chosen experts), mlp.experts.{e}
  // and mlp.switch_mlp, and returns the switch_mlp output [b, t, d].
  at::Tensor mix_experts(int i, const at::Tensor& h, at::Tensor weights, const at::Tensor& chosen, Hooks& H) const;

  int64_t n_experts_ = 0, top_k_ = 2;
  std::vector<MoeSites> ms_;    // per layer (unused for dense layers)
  std::vector<MoeWeights> mw_;  // per layer (empty for dense layers)
};

}  // namespace mlxterp
