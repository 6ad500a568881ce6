// SAE files: native round trip, SAELens and sparsify export -> import (identical tensors), normalisation
// folding (same function), foreign-format folds (apply_b_dec_to_input = false, rescale_acts_by_decoder_norm),
// and the errors for broken directories.
#include <gmock/gmock.h>

#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae.hpp"

using namespace mlxterp;
using namespace mlxterp::test;
using ::testing::HasSubstr;

namespace {

SAE random_sae(SaeArch arch, int64_t d_in, int64_t d_sae, bool normalize, bool tied = false, uint64_t seed = 0) {
  at::manual_seed(seed);
  SAE s;
  s.arch = arch;
  s.d_in = d_in;
  s.d_sae = d_sae;
  s.k = 5;
  s.tied = tied;
  s.params.W_enc = at::randn({d_sae, d_in});
  s.params.b_enc = at::randn({d_sae}) * 0.1;
  s.params.W_dec = tied ? s.params.W_enc : at::randn({d_sae, d_in});
  s.params.b_dec = at::randn({d_in});
  if (arch == SaeArch::JumpReLU) s.params.threshold = at::rand({d_sae});
  if (arch == SaeArch::BatchTopK) s.params.threshold = at::full({d_sae}, 0.7);
  if (normalize) {
    s.input_mean = at::randn({d_in});
    s.input_std = at::rand({d_in}) + 0.5;
  }
  s.metadata = {{"model", "stories260K.gguf"}, {"site", "model.layers.2"}, {"layer", 2}, {"component", ""}};
  return s;
}

void expect_same_tensors(const SAE& a, const SAE& b, const std::string& what) {
  auto ma = a.params.named(), mb = b.params.named();
  ASSERT_EQ(ma.size(), mb.size()) << what;
  for (const auto& [k, v] : ma) EXPECT_TRUE(at::equal(v, mb.at(k))) << what << ": " << k << " differs";
  EXPECT_EQ(a.arch, b.arch) << what;
  EXPECT_EQ(a.d_in, b.d_in);
  EXPECT_EQ(a.d_sae, b.d_sae);
}

void expect_same_function(const SAE& a, const SAE& b, const std::string& what) {
  at::manual_seed(9);
  at::Tensor x = at::randn({50, a.d_in}) * 3;
  at::Tensor za = a.encode(x), zb = b.encode(x);
  EXPECT_TRUE(at::equal(za > 0, zb > 0)) << what << ": different active latents";
  EXPECT_LT(max_abs_diff(za, zb), 1e-5 * (1 + za.abs().max().item<double>())) << what;
  at::Tensor xa = a.decode(za);
  EXPECT_LT(max_abs_diff(xa, b.decode(za)), 1e-5 * (1 + xa.abs().max().item<double>())) << what;
}

TEST(SaeIO, NativeRoundTrip) {
  TempDir tmp;
  for (SaeArch arch : {SaeArch::TopK, SaeArch::BatchTopK, SaeArch::JumpReLU, SaeArch::ReLU}) {
    for (bool norm : {false, true}) {
      SAE s = random_sae(arch, 12, 40, norm, /*tied=*/arch == SaeArch::ReLU);
      std::string d = tmp.file(cat(sae_arch_name(arch), norm));
      s.save(d);
      SAE r = SAE::load(d);
      expect_same_tensors(s, r, d);
      EXPECT_EQ(r.tied, s.tied);
      EXPECT_EQ(r.k, s.k);
      EXPECT_EQ(r.normalizes(), norm);
      if (norm) EXPECT_TRUE(at::equal(r.input_std, s.input_std));
      EXPECT_EQ(r.metadata["site"], "model.layers.2");
      expect_same_function(s, r, d);
    }
  }
}

TEST(SaeIO, SaeLensRoundTripIsExact) {
  TempDir tmp;
  for (SaeArch arch : {SaeArch::TopK, SaeArch::BatchTopK, SaeArch::JumpReLU, SaeArch::ReLU}) {
    SAE s = random_sae(arch, 12, 40, false);
    std::string d = tmp.file(cat("sl_", sae_arch_name(arch)));
    export_sae(s, "saelens", d);
    SAE r = import_sae(d, "saelens");
    expect_same_tensors(s, r, d);  // transposed twice: bitwise identical
    if (arch == SaeArch::TopK || arch == SaeArch::BatchTopK) EXPECT_EQ(r.k, s.k);
    // Exported again: the same files' tensors.
    std::string d2 = d + "_again";
    export_sae(r, "saelens", d2);
    auto t1 = SafeTensors::open(join_path(d, "sae_weights.safetensors")).all();
    auto t2 = SafeTensors::open(join_path(d2, "sae_weights.safetensors")).all();
    ASSERT_EQ(t1.size(), t2.size());
    for (const auto& [k, v] : t1) EXPECT_TRUE(at::equal(v, t2.at(k))) << k;
  }
  // Orientation and names per sae-state-of-the-art.md §3.1.
  SAE s = random_sae(SaeArch::BatchTopK, 12, 40, false);
  export_sae(s, "saelens", tmp.file("sl_shape"));
  auto t = SafeTensors::open(tmp.file("sl_shape/sae_weights.safetensors"));
  EXPECT_EQ(t.infos().at("W_enc").shape, (std::vector<int64_t>{12, 40}));
  EXPECT_EQ(t.infos().at("W_dec").shape, (std::vector<int64_t>{40, 12}));
  EXPECT_EQ(t.infos().at("threshold").shape, (std::vector<int64_t>{40}));
  auto cfg = nlohmann::json::parse(read_file(tmp.file("sl_shape/cfg.json")));
  EXPECT_EQ(cfg["architecture"], "jumprelu");  // batchtopk is exported as JumpReLU with its threshold
  EXPECT_EQ(cfg["metadata"]["hook_name"], "blocks.2.hook_resid_post");
  EXPECT_EQ(cfg["apply_b_dec_to_input"], true);
  EXPECT_EQ(cfg["normalize_activations"], "none");
}

TEST(SaeIO, SparsifyRoundTripIsExact) {
  TempDir tmp;
  SAE s = random_sae(SaeArch::TopK, 12, 40, false);
  export_sae(s, "sparsify", tmp.file("sp"));
  EXPECT_TRUE(file_exists(tmp.file("sp/layers.2/sae.safetensors")));
  auto t = SafeTensors::open(tmp.file("sp/layers.2/sae.safetensors"));
  EXPECT_EQ(t.infos().at("encoder.weight").shape, (std::vector<int64_t>{40, 12}));
  EXPECT_EQ(t.infos().at("W_dec").shape, (std::vector<int64_t>{40, 12}));
  SAE r = import_sae(tmp.file("sp"), "auto");  // the run directory with one hookpoint
  expect_same_tensors(s, r, "sparsify");
  EXPECT_EQ(r.k, 5);
  auto cfg = nlohmann::json::parse(read_file(tmp.file("sp/layers.2/cfg.json")));
  EXPECT_EQ(cfg["num_latents"], 40);
  EXPECT_EQ(cfg["activation"], "topk");
  EXPECT_THAT(error_of([&] { export_sae(random_sae(SaeArch::BatchTopK, 12, 40, false), "sparsify", tmp.file("x")); }),
              HasSubstr("the sparsify format holds TopK SAEs only; got sae_type \"batchtopk\""));
}

TEST(SaeIO, NormalisationIsFoldedOnExport) {
  TempDir tmp;
  for (SaeArch arch : {SaeArch::TopK, SaeArch::JumpReLU}) {
    SAE s = random_sae(arch, 12, 40, /*normalize=*/true);
    export_sae(s, "saelens", tmp.file(cat("f", int(arch))));
    SAE r = import_sae(tmp.file(cat("f", int(arch))));
    EXPECT_FALSE(r.normalizes());
    expect_same_function(s, r, "folded saelens");
  }
  SAE s = random_sae(SaeArch::TopK, 12, 40, true);
  export_sae(s, "sparsify", tmp.file("fs"));
  expect_same_function(s, import_sae(tmp.file("fs")), "folded sparsify");
}

// SAELens files written by other tools: Gemma-Scope-style (no b_dec on the input) and TopK with
// rescale_acts_by_decoder_norm; both are folded into our form on import and compute the same function.
TEST(SaeIO, SaeLensForeignVariantsFold) {
  TempDir tmp;
  at::manual_seed(4);
  const int64_t D = 10, F = 30;
  at::Tensor W_enc = at::randn({D, F}), b_enc = at::randn({F}) * 0.1, W_dec = at::randn({F, D}), b_dec = at::randn({D});
  at::Tensor th = at::rand({F}) * 0.5;
  at::Tensor x = at::randn({40, D}) * 2;
  {  // jumprelu, apply_b_dec_to_input = false
    make_dirs(tmp.file("gs"));
    save_safetensors(tmp.file("gs/sae_weights.safetensors"),
                     {{"W_enc", W_enc}, {"b_enc", b_enc}, {"W_dec", W_dec}, {"b_dec", b_dec}, {"threshold", th}});
    write_file_atomic(tmp.file("gs/cfg.json"), R"({"architecture":"jumprelu","d_in":10,"d_sae":30,"apply_b_dec_to_input":false})");
    SAE s = SAE::load(tmp.file("gs"));
    at::Tensor pre = at::matmul(x, W_enc) + b_enc;  // SAELens semantics, written out
    at::Tensor z = at::relu(pre) * (pre > th).to(at::kFloat);
    EXPECT_LT(max_abs_diff(s.encode(x), z), 1e-4);
    EXPECT_LT(max_abs_diff(s.decode(z), at::matmul(z, W_dec) + b_dec), 1e-4);
  }
  {  // topk with rescale_acts_by_decoder_norm
    make_dirs(tmp.file("rs"));
    save_safetensors(tmp.file("rs/sae_weights.safetensors"), {{"W_enc", W_enc}, {"b_enc", b_enc}, {"W_dec", W_dec}, {"b_dec", b_dec}});
    write_file_atomic(tmp.file("rs/cfg.json"),
                      R"({"architecture":"topk","d_in":10,"d_sae":30,"k":4,"rescale_acts_by_decoder_norm":true})");
    SAE s = SAE::load(tmp.file("rs"));
    at::Tensor n = W_dec.norm(2, 1);
    at::Tensor pre = (at::matmul(x - b_dec, W_enc) + b_enc) * n;  // top-k on pre·‖W_dec,i‖
    auto [v, i] = pre.topk(4, 1);
    at::Tensor f = at::zeros_like(pre).scatter(1, i, at::relu(v));
    at::Tensor want = at::matmul(f / n, W_dec) + b_dec;  // decode f / ‖W_dec,i‖
    EXPECT_LT(max_abs_diff(s.reconstruct(x), want), 1e-4);
  }
}

TEST(SaeIO, BrokenDirectoriesAreClearErrors) {
  TempDir tmp;
  EXPECT_THAT(error_of([&] { SAE::load(tmp.file("nope")); }), HasSubstr("SAE directory not found"));
  make_dirs(tmp.file("empty"));
  EXPECT_THAT(error_of([&] { SAE::load(tmp.file("empty")); }), HasSubstr("not an SAE directory; expected config.json"));
  SAE s = random_sae(SaeArch::TopK, 12, 40, false);
  s.save(tmp.file("n"));
  save_safetensors(tmp.file("n/weights.safetensors"), {{"W_enc", at::zeros({40, 11})}, {"b_enc", at::zeros({40})}});
  EXPECT_THAT(error_of([&] { SAE::load(tmp.file("n")); }),
              HasSubstr("tensor 'W_enc' has shape [40, 11]; expected [40, 12]"));
  export_sae(s, "saelens", tmp.file("sl"));
  write_file_atomic(tmp.file("sl/cfg.json"), R"({"architecture":"gated","d_in":12,"d_sae":40})");
  EXPECT_THAT(error_of([&] { SAE::load(tmp.file("sl")); }), HasSubstr("architecture \"gated\" is not supported"));
  // Using an SAE on the wrong site width.
  EXPECT_THAT(error_of([&] { s.encode(at::zeros({3, 64})); }),
              HasSubstr("input has last dimension 64; expected d_in = 12"));
  SAE b = random_sae(SaeArch::BatchTopK, 12, 40, false);
  b.params.threshold = at::Tensor();
  EXPECT_THAT(error_of([&] { b.encode(at::zeros({3, 12})); }), HasSubstr("has no inference threshold"));
}

}  // namespace
