// mlxterp steer compute  --model M --positive F --negative F --layers L --out V.safetensors [--gguf F.gguf]
//                        [--method mean|pca-diff|pca-center] [--reduce last|mean] [--component C]
// mlxterp steer generate --model M (--vectors V.safetensors | --gguf F.gguf) --prompt S [--strength X] [...]
// mlxterp steer convert  --model M --vectors V.safetensors --gguf F.gguf   (and back with --from-gguf)
#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_steering.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct ComputeOpts {
  std::string model, tokenizer, positive, negative, layers, out, gguf, method = "mean", reduce = "last",
                                                                          component = "resid_post", json;
  int batch_size = 32;
};

int run_compute(const ComputeOpts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  auto pos = read_prompt_lines(o.positive, "--positive"), neg = read_prompt_lines(o.negative, "--negative");
  SteeringOptions so;
  so.layers = parse_layer_list(o.layers, "--layers");
  so.method = parse_steer_method(o.method);
  so.reduce = o.reduce == "mean" ? Reduce::Mean : Reduce::Last;
  so.component = o.component;
  so.batch_size = o.batch_size;
  SteeringVectors sv = compute_steering_vectors(m, pos, neg, so);
  ControlVector cv;
  if (!o.gguf.empty()) cv = to_control_vector(sv, m.model().config().arch, m.n_layers());  // checks before writing anything
  save_steering_vectors(o.out, sv);
  if (!o.gguf.empty()) save_control_vector(o.gguf, cv);
  if (!write_outputs(o.json, "", sv.to_json(), nullptr)) {
    std::cout << "steering vectors (" << sv.method << ", " << pos.size() << " positive / " << neg.size()
              << " negative prompts) -> " << o.out << (o.gguf.empty() ? "" : " and " + o.gguf) << "\n";
    std::cout << "layer  site              norm      pos-proj  neg-proj  separation\n";
    for (size_t i = 0; i < sv.layers.size(); ++i)
      std::cout << sv.layers[i] << "      " << sv.site(sv.layers[i]) << "  " << report::fmt(sv.vectors[i].norm().item<double>(), "%.4f")
                << "  " << report::fmt(sv.pos_projection[i], "%.4f") << "  " << report::fmt(sv.neg_projection[i], "%.4f") << "  "
                << report::fmt(sv.separation[i], "%.3f") << "\n";
  }
  return 0;
}

struct GenOpts {
  std::string model, tokenizer, vectors, gguf, layer_range;
  PromptOption prompt;
  double strength = 1.0;
  GenerateOptions gen;
};

int run_generate(const GenOpts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  if (o.vectors.empty() == o.gguf.empty()) throw UsageError("give exactly one of --vectors V.safetensors or --gguf F.gguf");
  GenerateOptions gen = o.gen;
  if (!o.vectors.empty()) {
    gen.interventions = steering_interventions(load_steering_vectors(o.vectors), o.strength);
  } else {
    int lo = -1, hi = -1;
    if (!o.layer_range.empty()) {
      auto parts = split(o.layer_range, ',');
      MLXTERP_CHECK(parts.size() == 2, "--layer-range: expected START,END (inclusive), got '", o.layer_range, "'");
      lo = int(parse_int(trim(parts[0]), "--layer-range START"));
      hi = int(parse_int(trim(parts[1]), "--layer-range END"));
    }
    gen.interventions = control_vector_interventions(load_control_vector(o.gguf), m.model(), o.strength, lo, hi);
  }
  Prompt p = get_prompt(o.prompt, "prompt");
  GenerateResult r = p.is_ids ? m.generate_ids(p.token_ids, gen) : m.generate(p.text, gen);
  if (m.has_tokenizer()) {
    std::cout << r.text << "\n";
  } else {
    for (size_t i = 0; i < r.new_ids.size(); ++i) std::cout << (i ? " " : "") << r.new_ids[i];
    std::cout << "\n";
  }
  return 0;
}

struct ConvertOpts {
  std::string model, tokenizer, vectors, gguf;
  bool from_gguf = false;
};

int run_convert(const ConvertOpts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  if (o.from_gguf) {
    ControlVector cv = load_control_vector(o.gguf);
    MLXTERP_CHECK(cv.n_embd() == m.model().config().d_model, o.gguf, ": directions have ", cv.n_embd(),
                  " elements; the model's d_model is ", m.model().config().d_model);
    SteeringVectors sv;
    sv.method = "gguf:" + cv.model_hint;
    for (const auto& [n, d] : cv.directions) {
      sv.layers.push_back(n);
      sv.vectors.push_back(d);
    }
    save_steering_vectors(o.vectors, sv);
  } else {
    save_control_vector(o.gguf, to_control_vector(load_steering_vectors(o.vectors), m.model().config().arch, m.n_layers()));
  }
  return 0;
}

const bool reg_compute = register_command(
    "steer compute", "Contrastive steering vectors (mean difference or sign-calibrated PCA) from prompt files",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<ComputeOpts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--positive", o->positive, "Positive prompts, one per line")->required();
      app.add_option("--negative", o->negative, "Negative prompts, one per line (paired with --positive for PCA)")->required();
      app.add_option("--layers", o->layers, "Layers (block outputs), e.g. 2,3 (default all)");
      app.add_option("--out", o->out, "Output .safetensors (tensors named by site)")->required();
      app.add_option("--gguf", o->gguf, "Also write a llama.cpp control vector (direction.N for block N's output)");
      app.add_option("--method", o->method, "mean | pca-diff | pca-center")->capture_default_str();
      app.add_option("--reduce", o->reduce, "last: the last token's activation; mean: the mean over tokens")
          ->check(CLI::IsMember({"last", "mean"}))
          ->capture_default_str();
      app.add_option("--component", o->component, "Site suffix (resid_post = block output)")->capture_default_str();
      app.add_option("--batch-size", o->batch_size, "Prompts per forward pass")->capture_default_str();
      app.add_option("--json", o->json, "Write the diagnostics as JSON (- for stdout)");
      return [o, &g] { return run_compute(*o, g); };
    });

const bool reg_generate = register_command(
    "steer generate", "Generate with steering vectors (or a GGUF control vector) added at every token",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<GenOpts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--vectors", o->vectors, "Steering vectors from `steer compute`");
      app.add_option("--gguf", o->gguf, "A llama.cpp control vector");
      app.add_option("--layer-range", o->layer_range, "With --gguf: only blocks START,END (inclusive)");
      add_prompt_options(app, o->prompt, "prompt", "The prompt");
      app.add_option("--strength", o->strength, "Multiplier of the vectors (negative steers the other way)")->capture_default_str();
      app.add_option("--max-tokens", o->gen.max_tokens, "Tokens to generate")->capture_default_str();
      app.add_option("--temperature", o->gen.temperature, "0 = greedy")->capture_default_str();
      app.add_option("--top-k", o->gen.top_k, "Top-k sampling (0 = off)")->capture_default_str();
      app.add_option("--top-p", o->gen.top_p, "Nucleus sampling (1 = off)")->capture_default_str();
      app.add_option("--seed", o->gen.seed, "Sampling seed")->capture_default_str();
      return [o, &g] { return run_generate(*o, g); };
    });

const bool reg_convert = register_command(
    "steer convert", "Convert steering vectors (.safetensors) to a llama.cpp control vector (.gguf), or back",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<ConvertOpts>();
      app.add_option("--model", o->model, "The model the vectors belong to (for d_model, layer count, model hint)")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--vectors", o->vectors, "Steering vectors .safetensors")->required();
      app.add_option("--gguf", o->gguf, "Control vector .gguf")->required();
      app.add_flag("--from-gguf", o->from_gguf, "Convert the GGUF into --vectors instead");
      return [o, &g] { return run_convert(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
