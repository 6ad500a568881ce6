// mlxterp trace --model M (--prompt S | --ids 1,2,3 | --prompt-file F) [--sites S1,S2,...]
//               [--intervene SPEC]... [--out F.safetensors] [--json]
#include <iostream>

#include "cli.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, prompt, ids, prompt_file, sites, out;
  std::vector<std::string> intervene;
  bool json = false, has_prompt = false;
};

int run(const Opts& o, const Globals& g) {
  int sources = int(o.has_prompt) + int(!o.ids.empty()) + int(!o.prompt_file.empty());
  if (sources != 1) throw UsageError("trace: give exactly one of --prompt, --ids, --prompt-file");
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  at::Tensor ids;
  if (!o.ids.empty()) {
    auto v = parse_id_list(o.ids, "--ids");
    MLXTERP_CHECK(!v.empty(), "--ids: expected a comma-separated list of token ids, got '", o.ids, "'");
    ids = at::tensor(v, at::kLong).unsqueeze(0);
  } else {
    std::string text = o.has_prompt ? o.prompt : read_file(o.prompt_file);
    auto v = m.encode(text);
    MLXTERP_CHECK(!v.empty(), "trace: the prompt encodes to no tokens");
    ids = at::tensor(std::vector<int64_t>(v.begin(), v.end()), at::kLong).unsqueeze(0);
  }
  TraceOptions opt;
  std::vector<std::string> requested = parse_name_list(o.sites);
  bool want_logits = requested.empty();
  for (const auto& s : requested) {
    int id = m.sites().resolve(s);  // unknown names fail here with close matches
    if (m.sites()[id].name == "lm_head") want_logits = true;
  }
  opt.sites = requested;
  opt.need_logits = want_logits;
  for (const auto& spec : o.intervene) opt.interventions.push_back(parse_intervention_cli(spec, m));
  TraceResult r = m.trace_ids(ids, {}, opt);

  // Tensors keyed by the name exactly as requested (or canonical names when capturing everything).
  TensorMap outputs;
  if (requested.empty()) {
    for (const auto& [name, t] : r.activations) outputs[name] = t;
  } else {
    for (const auto& s : requested) outputs[s] = r.get(s);
  }
  if (!o.out.empty()) {
    TensorMap f32;
    for (const auto& [k, t] : outputs) f32[k] = t.to(at::kCPU, at::kFloat).contiguous();
    save_safetensors(o.out, f32, {{"format", "pt"}, {"producer", "mlxterp trace"}, {"model", o.model}});
  }
  if (o.json) {
    nlohmann::ordered_json j;
    at::Tensor idc = ids.squeeze(0);
    j["ids"] = std::vector<int64_t>(idc.data_ptr<int64_t>(), idc.data_ptr<int64_t>() + idc.numel());
    if (m.has_tokenizer()) {
      std::vector<int32_t> v(idc.data_ptr<int64_t>(), idc.data_ptr<int64_t>() + idc.numel());
      j["tokens"] = m.to_str_tokens(v);
    }
    nlohmann::ordered_json sites = nlohmann::ordered_json::object();
    for (const auto& [k, t] : outputs) sites[k] = t.sizes().vec();
    j["sites"] = sites;
    if (!o.out.empty()) j["out"] = o.out;
    std::cout << j.dump(2) << "\n";
  } else if (!g.quiet) {
    size_t w = 0;
    for (const auto& [k, t] : outputs) w = std::max(w, k.size());
    for (const auto& [k, t] : outputs) std::cout << k << std::string(w + 2 - k.size(), ' ') << shape_str(t.sizes()) << "\n";
    if (!o.out.empty()) std::cerr << "wrote " << outputs.size() << " tensors to " << o.out << "\n";
  }
  return 0;
}

const bool registered = register_command(
    "trace", "Run the model once and capture (and edit) sites by name", [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option_function<std::string>("--prompt", [o](const std::string& s) { o->prompt = s; o->has_prompt = true; },
                                           "Text to trace (BOS per the tokenizer)");
      app.add_option("--ids", o->ids, "Token ids, comma-separated, fed verbatim (no BOS added)");
      app.add_option("--prompt-file", o->prompt_file, "Read the prompt from a file (bytes verbatim)");
      app.add_option("--sites", o->sites, "Comma-separated site names or aliases (default: all); 'logits' for the logits");
      app.add_option("--intervene", o->intervene, "SITE=zero | SITE=scale:F | SITE=clamp:LO:HI | SITE=noise:STD[:SEED] | "
                                                  "SITE=add:FILE.safetensors[:TENSOR][*STRENGTH] | SITE=replace:FILE[:TENSOR]");
      app.add_option("--out", o->out, "Write the captured tensors (float32, keyed as requested) to a .safetensors file");
      app.add_flag("--json", o->json, "Print ids, tokens and site shapes as JSON");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
