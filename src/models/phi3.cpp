// Phi-3, matched to Hugging Face transformers' Phi3ForCausalLM: a Llama-style pre-norm decoder with a
// fused qkv_proj ([q | k | v] rows) and a fused gate_up_proj ([gate | up] rows). The fused outputs are
// sites (self_attn.qkv_proj, mlp.gate_up_proj) and so are their parts (self_attn.{q,k,v}_proj,
// mlp.{gate,up}_proj), so Llama-family tools find the same names. Partial rotary and longrope come from
// the config's RoPE parameters; Phi-3's sliding window from `sliding_window`.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class Phi3Model : public FamilyModel {
 public:
  Phi3Model(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) { init(); }

 protected:
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.fused_qkv = true, .mlp = Mlp::FusedGated});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    qkv_w_.assign(config_.n_layers, {});
    gate_up_w_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      qkv_w_[i] = opt_weight(layer_prefix(i) + ".self_attn.qkv_proj.weight");
      gate_up_w_[i] = opt_weight(layer_prefix(i) + ".mlp.gate_up_proj.weight");
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    const auto& c = config_;
    const std::string p = layer_prefix(i) + ".";
    const int64_t qd = c.n_heads * c.d_head, kvd = c.n_kv_heads * c.d_head;
    out[p + "input_layernorm.weight"] = {c.d_model};
    out[p + "post_attention_layernorm.weight"] = {c.d_model};
    out[p + "self_attn.qkv_proj.weight"] = {qd + 2 * kvd, c.d_model};
    out[p + "self_attn.o_proj.weight"] = {c.d_model, qd};
    out[p + "mlp.gate_up_proj.weight"] = {2 * c.d_mlp, c.d_model};
    out[p + "mlp.down_proj.weight"] = {c.d_model, c.d_mlp};
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const auto& c = config_;
    const int64_t qd = c.n_heads * c.d_head, kvd = c.n_kv_heads * c.d_head;
    at::Tensor qkv = H(s.qkv, blocks::linear(h, qkv_w_[i]));  // [b, t, qd + 2 kvd]
    at::Tensor q = H(s.q, qkv.narrow(-1, 0, qd));
    at::Tensor k = H(s.k, qkv.narrow(-1, qd, kvd));
    at::Tensor v = H(s.v, qkv.narrow(-1, qd + kvd, kvd));
    return {q.reshape({ctx.batch, ctx.t, c.n_heads, c.d_head}), k.reshape({ctx.batch, ctx.t, c.n_kv_heads, c.d_head}),
            v.reshape({ctx.batch, ctx.t, c.n_kv_heads, c.d_head})};
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    return fused_gated_mlp(i, h, gate_up_w_[i], lw_[i].down, H);
  }

 private:
  std::vector<at::Tensor> qkv_w_, gate_up_w_;
};

const bool registered = register_architecture("phi3", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<Phi3Model>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
