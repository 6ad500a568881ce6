// Tracing: names and aliases, capture filters, early exit, interventions, and the `trace` CLI.
#include "common.hpp"
#include "mlxterp/trace.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

InterpretableModel golden_model(const std::string& name = "llama") {
  return InterpretableModel::load(golden_path("hf/" + name), {.device = test_device()});
}

at::Tensor some_ids() { return at::tensor(std::vector<int64_t>{1, 40, 41, 42, 7, 9}, at::kLong).unsqueeze(0); }

TEST(Trace, AliasesResolveToTheSameSite) {
  auto m = golden_model();
  const SiteTable& S = m.sites();
  int mlp = S.resolve("model.layers.1.mlp");
  EXPECT_EQ(S.resolve("model.model.layers.1.mlp"), mlp);
  EXPECT_EQ(S.resolve("layers.1.mlp"), mlp);
  EXPECT_EQ(S.resolve("blocks.1.hook_mlp_out"), mlp);
  EXPECT_EQ(S.resolve("blocks.1.hook_resid_post"), S.resolve("model.layers.1"));
  EXPECT_EQ(S.resolve("model.layers.1.resid_post"), S.resolve("model.layers.1"));
  EXPECT_EQ(S.resolve("blocks.1.hook_resid_pre"), S.resolve("model.layers.1.resid_pre"));
  EXPECT_EQ(S.resolve("model.layers.0.attn"), S.resolve("model.layers.0.self_attn"));
  EXPECT_EQ(S.resolve("blocks.0.attn.hook_pattern"), S.resolve("model.layers.0.self_attn.attention_weights"));
  EXPECT_EQ(S.resolve("logits"), S.resolve("lm_head"));
  EXPECT_EQ(S.resolve_component(1, "resid_post"), S.resolve("model.layers.1"));
}

TEST(Trace, UnknownNamesListCloseMatches) {
  auto m = golden_model();
  try {
    m.sites().resolve("model.layers.1.mlpp");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'model.layers.1.mlp'"), std::string::npos) << e.what();
  }
  try {
    m.sites().resolve("model.layers.40.mlp");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the model has 2 layers"), std::string::npos) << e.what();
  }
  try {
    m.sites().resolve_component(1, "mlpp");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("Could not find activations for layer 1, component 'mlpp'"), std::string::npos) << w;
    EXPECT_NE(w.find("mlxterp components"), std::string::npos) << w;
  }
}

TEST(Trace, CaptureAllMatchesUnhookedForward) {
  auto m = golden_model();
  at::Tensor plain = m.model().forward(some_ids().to(test_device()));
  TraceResult r = m.trace_ids(some_ids());
  EXPECT_TRUE(at::equal(plain.cpu(), r.logits.cpu()));
  EXPECT_FALSE(r.has("model.layers.0.self_attn.attention_weights"));  // only on request
  EXPECT_EQ(r.get("model.layers.1").sizes(), (std::vector<int64_t>{1, 6, 32}));
  // Residual bookkeeping: block output = resid_mid + mlp, resid_mid = resid_pre + attn.
  at::Tensor pre = r.get("model.layers.1.resid_pre"), mid = r.get("model.layers.1.resid_mid");
  EXPECT_LT(max_abs_diff(mid, pre + r.get("model.layers.1.self_attn")), 1e-6);
  EXPECT_LT(max_abs_diff(r.get("model.layers.1"), mid + r.get("model.layers.1.mlp")), 1e-6);
  EXPECT_TRUE(at::equal(r.get("model.layers.0").cpu(), r.get("model.layers.1.resid_pre").cpu()));
}

TEST(Trace, EarlyExitStopsAfterTheLastNeededSite) {
  auto m = golden_model();
  TraceOptions o;
  o.sites = {"model.layers.0.mlp"};
  o.need_logits = false;
  TraceResult r = m.trace_ids(some_ids(), {}, o);
  EXPECT_FALSE(r.logits.defined());
  EXPECT_EQ(r.activations.size(), 1u);
  EXPECT_TRUE(r.has("model.layers.0.mlp"));
  // At the Hooks level: nothing past the stop site runs.
  Hooks h(m.sites());
  h.capture(m.sites().resolve("model.layers.0.mlp"));
  h.capture(m.sites().resolve("model.layers.0"));  // same block, after the MLP
  h.stop_after(m.sites().resolve("model.layers.0.mlp"));
  m.model().forward(some_ids().to(test_device()), {}, h);
  EXPECT_TRUE(h.has(m.sites().resolve("model.layers.0.mlp")));
  EXPECT_FALSE(h.has(m.sites().resolve("model.layers.0")));
  // With logits needed the whole model runs.
  o.need_logits = true;
  EXPECT_TRUE(m.trace_ids(some_ids(), {}, o).logits.defined());
}

TEST(Trace, InterventionsEditTheForwardPass) {
  auto m = golden_model();
  TraceResult clean = m.trace_ids(some_ids());
  TraceOptions o;
  o.interventions.push_back({"blocks.0.hook_mlp_out", [](const at::Tensor& x, const SiteCall&) { return x * 0; }});
  TraceResult edited = m.trace_ids(some_ids(), {}, o);
  EXPECT_EQ(edited.get("model.layers.0.mlp").abs().max().item<double>(), 0.0);  // capture is post-edit
  EXPECT_LT(max_abs_diff(edited.get("model.layers.0"), clean.get("model.layers.0.resid_mid")), 1e-6);
  EXPECT_GT(max_abs_diff(edited.logits, clean.logits), 1e-3);
  // Editing attention weights recomputes the attention output from them.
  TraceOptions w;
  w.interventions.push_back({"model.layers.0.self_attn.attention_weights",
                             [](const at::Tensor& p, const SiteCall&) { return p; }});
  EXPECT_LT(max_abs_diff(m.trace_ids(some_ids(), {}, w).logits, clean.logits), 1e-5);
  // A shape-changing intervention is an error, not a crash.
  TraceOptions bad;
  bad.interventions.push_back({"model.layers.0.mlp", [](const at::Tensor& x, const SiteCall&) { return x.sum(-1); }});
  EXPECT_THROW(m.trace_ids(some_ids(), {}, bad), Error);
}

TEST(Trace, OutOfRangeIdsAreRejected) {
  auto m = golden_model();
  EXPECT_THROW(m.trace_ids(at::tensor(std::vector<int64_t>{1, 500}, at::kLong).unsqueeze(0)), Error);
}

TEST(Trace, GenerationKeepsInterventionsOnEveryToken) {
  auto m = golden_model();
  GenerateOptions g;
  g.max_tokens = 6;
  g.temperature = 0;
  g.stop_at_eos = false;
  std::vector<int32_t> prompt = {1, 40, 41};
  auto clean = m.generate_ids(prompt, g);
  int calls = 0;
  std::vector<int64_t> offsets;
  g.interventions.push_back({"model.layers.1.mlp", [&](const at::Tensor& x, const SiteCall& c) {
                               ++calls;
                               offsets.push_back(c.pos_offset);
                               return x * 3.0;
                             }});
  auto edited = m.generate_ids(prompt, g);
  EXPECT_EQ(calls, 6);  // prompt pass + 5 cached single-token passes
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 3, 4, 5, 6, 7}));
  EXPECT_NE(clean.new_ids, edited.new_ids);
  // KV-cached generation equals recomputing the full sequence each step.
  std::vector<int32_t> seq = prompt;
  for (int i = 0; i < 6; ++i) {
    at::Tensor ids = at::tensor(std::vector<int64_t>(seq.begin(), seq.end()), at::kLong).unsqueeze(0);
    at::Tensor logits = m.trace_ids(ids, {}, {.capture = false}).logits;
    seq.push_back(int32_t(logits[0][-1].argmax().item<int64_t>()));
  }
  EXPECT_EQ(std::vector<int32_t>(seq.begin() + 3, seq.end()), clean.new_ids);
}

TEST(TraceCli, OutWritesTensorsKeyedAsRequested) {
  TempDir tmp;
  std::string out = tmp.file("acts.safetensors");
  auto r = run_cli("trace --model '" + golden_path("hf/llama") +
                   "' --ids 1,40,41 --sites blocks.1.hook_resid_post,logits,model.layers.0.mlp --out '" + out + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  SafeTensors st = SafeTensors::open(out);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"blocks.1.hook_resid_post", "logits", "model.layers.0.mlp"}));
  auto m = golden_model();
  TraceResult ref = m.trace_ids(at::tensor(std::vector<int64_t>{1, 40, 41}, at::kLong).unsqueeze(0));
  // The CLI runs on the CPU; the reference on the test device (a GPU's reductions differ by ~1e-6).
  EXPECT_TRUE(at::allclose(st.get("logits"), ref.logits.cpu().to(at::kFloat), 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(st.get("blocks.1.hook_resid_post"), ref.get("model.layers.1").cpu(), 1e-4, 1e-5));
  EXPECT_EQ(st.get("logits").scalar_type(), at::kFloat);
}

TEST(TraceCli, ErrorsAndExitCodes) {
  std::string model = golden_path("hf/llama");
  auto bad_site = run_cli("trace --model '" + model + "' --ids 1,2 --sites model.layers.1.mlpp");
  EXPECT_EQ(bad_site.code, 1);
  EXPECT_EQ(bad_site.err.rfind("error: ", 0), 0u) << bad_site.err;
  EXPECT_NE(bad_site.err.find("model.layers.1.mlp"), std::string::npos);
  auto usage = run_cli("trace --model '" + model + "'");
  EXPECT_EQ(usage.code, 2) << usage.err;
  auto bad_ids = run_cli("trace --model '" + model + "' --ids 1,x");
  EXPECT_EQ(bad_ids.code, 1) << bad_ids.err;
  auto missing = run_cli("trace --model /nonexistent/model --ids 1");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("/nonexistent/model"), std::string::npos);
  auto bad_iv = run_cli("trace --model '" + model + "' --ids 1,2 --intervene model.layers.0.mlp=explode");
  EXPECT_EQ(bad_iv.code, 1);
  EXPECT_NE(bad_iv.err.find("unknown action 'explode'"), std::string::npos) << bad_iv.err;
  auto zero = run_cli("trace --model '" + model + "' --ids 1,2 --sites model.layers.0.mlp --json --intervene model.layers.0.mlp=zero");
  EXPECT_EQ(zero.code, 0) << zero.err;
}

}  // namespace

namespace {

TEST(Loading, NamedSafetensorsFileIsLoadedNotTheDirectorysDefault) {
  TempDir tmp;
  std::string src = golden_path("hf/llama");
  write_file_atomic(tmp.file("config.json"), read_file(join_path(src, "config.json")));
  TensorMap w = SafeTensors::open(join_path(src, "model.safetensors")).all();
  save_safetensors(tmp.file("model.safetensors"), w);
  TensorMap w2;
  for (auto& [k, t] : w) w2[k] = t * 2;  // a different checkpoint beside the default one
  save_safetensors(tmp.file("finetuned.safetensors"), w2);
  auto a = load_model(tmp.file("model.safetensors")), b = load_model(tmp.file("finetuned.safetensors"));
  const std::string n = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_TRUE(at::equal(a.model->w(n), w.at(n)));
  EXPECT_TRUE(at::equal(b.model->w(n), w2.at(n)));
}

TEST(Trace, TyposInAliasesSuggestTheCanonicalSite) {
  auto m = golden_model("mixtral");
  try {
    m.sites().resolve("blocks.1.hook_mlp_outt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'model.layers.1.mlp'"), std::string::npos) << e.what();
  }
}

}  // namespace
