// StarCoder2, matched to Hugging Face transformers' Starcoder2ForCausalLM: Llama's attention (q/k/v/o_proj,
// GQA, full rotary, Mistral's sliding window when `sliding_window` is set) with biases everywhere when
// use_bias, LayerNorms with biases (norm_epsilon), a sequential residual and a plain MLP
// c_fc -> act (gelu_pytorch_tanh) -> c_proj. The MLP sites are the canonical plain-MLP names
// (mlp.up_proj, mlp.hidden, mlp.down_proj); the native paths mlp.c_fc, mlp.act and mlp.c_proj are aliases.
// Dropouts (embedding, residual, attention) are 0 at inference and not modelled.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class Starcoder2Model : public FamilyModel {
 public:
  Starcoder2Model(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) { init(); }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    auto out = LlamaModel::expected_weights();
    out["model.norm.bias"] = {config_.d_model};
    return out;
  }

 protected:
  struct Extra {
    at::Tensor fc_w, fc_b, proj_w, proj_b;
  };

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    for (const char* prefix : {"model.layers.", "layers.", "model.model.layers."})
      alias_blocks(prefix, {{"mlp.c_fc", "mlp.up_proj"}, {"mlp.act", "mlp.hidden"}, {"mlp.c_proj", "mlp.down_proj"}});
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});  // TransformerLens: the pre-activation
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    ex_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      Extra& e = ex_[i];
      e.fc_w = opt_weight(p + "mlp.c_fc.weight");
      e.fc_b = opt_weight(p + "mlp.c_fc.bias");
      e.proj_w = opt_weight(p + "mlp.c_proj.weight");
      e.proj_b = opt_weight(p + "mlp.c_proj.bias");
    }
    norm_b_ = opt_weight("model.norm.bias");
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    const auto& c = config_;
    const std::string p = layer_prefix(i) + ".";
    const int64_t d = c.d_model, qd = c.n_heads * c.d_head, kvd = c.n_kv_heads * c.d_head;
    for (const char* ln : {"input_layernorm", "post_attention_layernorm"}) {
      out[p + ln + ".weight"] = {d};
      out[p + ln + ".bias"] = {d};
    }
    out[p + "self_attn.q_proj.weight"] = {qd, d};
    out[p + "self_attn.k_proj.weight"] = {kvd, d};
    out[p + "self_attn.v_proj.weight"] = {kvd, d};
    out[p + "self_attn.o_proj.weight"] = {d, qd};
    out[p + "mlp.c_fc.weight"] = {c.d_mlp, d};
    out[p + "mlp.c_proj.weight"] = {d, c.d_mlp};
    if (c.attention_bias) {  // use_bias: every projection, attention and MLP
      out[p + "self_attn.q_proj.bias"] = {qd};
      out[p + "self_attn.k_proj.bias"] = {kvd};
      out[p + "self_attn.v_proj.bias"] = {kvd};
      out[p + "self_attn.o_proj.bias"] = {d};
    }
    if (c.mlp_bias) {
      out[p + "mlp.c_fc.bias"] = {c.d_mlp};
      out[p + "mlp.c_proj.bias"] = {d};
    }
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override { return layer_norm_block(i, x, ctx, H); }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const Extra& e = ex_[i];
    return plain_mlp(i, h, e.fc_w, e.fc_b, e.proj_w, e.proj_b, H);
  }

 private:
  at::Tensor norm_b_;
  std::vector<Extra> ex_;
};

const bool registered =
    register_architecture("starcoder2", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<Starcoder2Model>(c, std::move(w));
    });

}  // namespace
}  // namespace mlxterp
