// OPT, matched to Hugging Face transformers' OPTForCausalLM: learned absolute positions whose table has two
// extra rows (row = position + 2), biases on every projection (enable_bias), a plain ReLU MLP fc1 -> fc2,
// tied lm_head. Two block layouts:
//   do_layer_norm_before = true (opt-125m, 1.3b, ...):  x + attn(ln1(x)), then x + mlp(ln2(x)), a final LayerNorm;
//   do_layer_norm_before = false (opt-350m):            ln1(x + attn(x)), then ln2(x + mlp(x)), no final norm.
// In the post-norm layout the residual stream itself is normalised, so resid_mid and the block output are the
// normalised values (what the next sub-layer reads) and there are no input_layernorm / post_attention_layernorm
// sites. When word_embed_proj_dim differs from hidden_size (opt-350m), project_in maps the token embedding up
// (site model.project_in) and project_out maps the final hidden state down before lm_head; the unembedding
// matrix is then lm_head . project_out. Native paths (model.decoder.layers.{i}.self_attn, .fc1, ...) are aliases.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

constexpr int64_t kPositionOffset = 2;  // OPTLearnedPositionalEmbedding

class OPTModel : public FamilyModel {
 public:
  OPTModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (opt)";
    pre_norm_ = json_bool(t, "do_layer_norm_before", true, where);
    final_ln_ = pre_norm_ && !json_bool(t, "_remove_final_layer_norm", false, where);
    affine_ = json_bool(t, "layer_norm_elementwise_affine", true, where);
    proj_dim_ = json_int(t, "word_embed_proj_dim", config_.d_model, where);
    MLXTERP_CHECK(proj_dim_ > 0 && proj_dim_ <= (1 << 20), where, ": word_embed_proj_dim must be positive; got ", proj_dim_);
    MLXTERP_CHECK(config_.n_kv_heads == config_.n_heads, where, ": OPT has no grouped-query attention; expected ",
                  "num_key_value_heads == num_attention_heads, got ", config_.n_kv_heads, " vs ", config_.n_heads);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": hidden_size (", config_.d_model,
                  ") must equal num_attention_heads x head size (", config_.n_heads, " x ", config_.d_head, ")");
    // Checkpoints saved from OPTModel (facebook/opt-125m) have no "model." prefix.
    prefix_ = has_weight("decoder.embed_tokens.weight") && !has_weight("model.decoder.embed_tokens.weight") ? "decoder."
                                                                                                             : "model.decoder.";
    init();
    ropes_.clear();
  }

  // The token's contribution to the residual stream: its embedding through project_in (when present).
  at::Tensor embed(const at::Tensor& ids) const override {
    at::Tensor x = at::embedding(embed_w_, ids.to(embed_w_.device()));
    return project_in_.defined() ? at::linear(x, project_in_) : x;
  }
  at::Tensor final_norm(const at::Tensor& h) const override {
    return final_ln_ ? blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps) : h;
  }
  at::Tensor unembed(const at::Tensor& h) const override {
    return at::linear(project_out_.defined() ? at::linear(h, project_out_) : h, head_w_);
  }
  // [d_model, vocab]: lm_head after project_out.
  at::Tensor unembedding_matrix() const override {
    return project_out_.defined() ? at::matmul(head_w_, project_out_).t() : head_w_.t();
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp, e = proj_dim_;
    const std::string& P = prefix_;
    std::map<std::string, std::vector<int64_t>> out;
    out[P + "embed_tokens.weight"] = {c.d_vocab, e};
    out[P + "embed_positions.weight"] = {c.n_ctx + kPositionOffset, d};
    if (e != d) {
      out[P + "project_in.weight"] = {d, e};
      out[P + "project_out.weight"] = {e, d};
    }
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = P + "layers." + std::to_string(i) + ".";
      for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
        out[p + "self_attn." + n + ".weight"] = {d, d};
        if (c.attention_bias) out[p + "self_attn." + n + ".bias"] = {d};
      }
      out[p + "fc1.weight"] = {f, d};
      out[p + "fc2.weight"] = {d, f};
      if (c.mlp_bias) {
        out[p + "fc1.bias"] = {f};
        out[p + "fc2.bias"] = {d};
      }
      if (affine_ || has_weight(p + "self_attn_layer_norm.weight")) {
        for (const char* ln : {"self_attn_layer_norm", "final_layer_norm"}) {
          out[p + ln + ".weight"] = {d};
          out[p + ln + ".bias"] = {d};
        }
      }
    }
    if (final_ln_ && affine_) {
      out[P + "final_layer_norm.weight"] = {d};
      out[P + "final_layer_norm.bias"] = {d};
    }
    expect_lm_head(out, e);
    return out;
  }

 protected:
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    if (proj_dim_ != config_.d_model) project_in_site_ = add_site(-1, "model.project_in");
    pos_site_ = add_site(-1, "model.embed_positions");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.input_norm = pre_norm_, .post_norm = pre_norm_});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    const std::string native = prefix_ == "decoder." ? "decoder." : "model.decoder.";
    sites_.add_alias(native + "embed_tokens", embed_site_);
    sites_.add_alias(native + "embed_positions", pos_site_);
    sites_.add_alias("hook_pos_embed", pos_site_);
    if (project_in_site_ >= 0) sites_.add_alias(native + "project_in", project_in_site_);
    if (final_ln_) sites_.add_alias(native + "final_layer_norm", norm_site_);
    // Pre-norm: the two LayerNorms feed the sub-layers. Post-norm: they produce the residual stream.
    const std::string ln1 = pre_norm_ ? "input_layernorm" : "resid_mid";
    const std::string ln2 = pre_norm_ ? "post_attention_layernorm" : "";
    alias_blocks(native + "layers.", {{"", ""},
                                      {"self_attn_layer_norm", ln1},
                                      {"self_attn", "self_attn"},
                                      {"self_attn.q_proj", "self_attn.q_proj"},
                                      {"self_attn.k_proj", "self_attn.k_proj"},
                                      {"self_attn.v_proj", "self_attn.v_proj"},
                                      {"self_attn.out_proj", "self_attn.o_proj"},
                                      {"final_layer_norm", ln2},
                                      {"fc1", "mlp.up_proj"},
                                      {"activation_fn", "mlp.hidden"},
                                      {"fc2", "mlp.down_proj"}});
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    const std::string& P = prefix_;
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = P + "layers." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      l.ln1 = opt_weight(p + "self_attn_layer_norm.weight");
      l.ln2 = opt_weight(p + "final_layer_norm.weight");
      l.ln1_b = opt_weight(p + "self_attn_layer_norm.bias");
      l.ln2_b = opt_weight(p + "final_layer_norm.bias");
      l.q = opt_weight(p + "self_attn.q_proj.weight");
      l.k = opt_weight(p + "self_attn.k_proj.weight");
      l.v = opt_weight(p + "self_attn.v_proj.weight");
      l.o = opt_weight(p + "self_attn.out_proj.weight");
      l.qb = opt_weight(p + "self_attn.q_proj.bias");
      l.kb = opt_weight(p + "self_attn.k_proj.bias");
      l.vb = opt_weight(p + "self_attn.v_proj.bias");
      l.ob = opt_weight(p + "self_attn.out_proj.bias");
      l.up = opt_weight(p + "fc1.weight");
      l.up_b = opt_weight(p + "fc1.bias");
      l.down = opt_weight(p + "fc2.weight");
      l.down_b = opt_weight(p + "fc2.bias");
    }
    embed_w_ = opt_weight(P + "embed_tokens.weight");
    wpe_ = opt_weight(P + "embed_positions.weight");
    project_in_ = opt_weight(P + "project_in.weight");
    project_out_ = opt_weight(P + "project_out.weight");
    norm_w_ = opt_weight(P + "final_layer_norm.weight");
    norm_b_ = opt_weight(P + "final_layer_norm.bias");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H) override {
    at::Tensor x = H(embed_site_, at::embedding(embed_w_, tok));  // [b, t, word_embed_proj_dim]
    if (project_in_.defined()) x = H(project_in_site_, at::linear(x, project_in_));  // [b, t, d]
    return x + learned_positions(ctx, H, wpe_, pos_site_, kPositionOffset, "opt");
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    const double eps = config_.norm_eps;
    if (pre_norm_) return layer_norm_block(i, x, ctx, H);
    x = H(s.resid_pre, x);
    x = H(s.resid_mid, blocks::layer_norm(x + attention_block(i, x, ctx, H), w.ln1, w.ln1_b, eps));
    return H(s.out, blocks::layer_norm(x + mlp_block(i, x, H), w.ln2, w.ln2_b, eps));
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  bool pre_norm_ = true, final_ln_ = true, affine_ = true;  // affine_: LayerNorms with weight and bias
  int64_t proj_dim_ = 0;
  std::string prefix_ = "model.decoder.";
  int pos_site_ = -1, project_in_site_ = -1;
  at::Tensor wpe_, norm_b_, project_in_, project_out_;
};

const bool registered = register_architecture("opt", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<OPTModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
