// Causal tracing (ROME): noise on the subject, restore clean states, recover P(target).
#include "mlxterp/analysis_causal.hpp"

#include "mlxterp/analysis_patching.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

std::pair<int64_t, int64_t> find_subject_span(const InterpretableModel& m, const std::vector<int32_t>& ids,
                                              const std::string& subject) {
  MLXTERP_CHECK(!subject.empty(), "causal trace: empty subject");
  std::vector<std::string> toks = token_strings(m, ids);
  std::string whole;
  std::vector<size_t> ends;
  for (const auto& t : toks) {
    whole += t;
    ends.push_back(whole.size());
  }
  size_t at = whole.find(subject);
  if (at == std::string::npos) {
    // Tokens usually show the space before a word; allow the subject to be written without it.
    at = whole.find(" " + subject);
    if (at != std::string::npos) ++at;
  }
  MLXTERP_CHECK(at != std::string::npos, "causal trace: subject ", quote(subject), " is not in the prompt ", quote(whole),
                " (tokens are matched by their text)");
  int64_t start = -1, end = -1;
  for (size_t i = 0; i < ends.size(); ++i) {
    if (start < 0 && ends[i] > at) start = int64_t(i);
    if (end < 0 && ends[i] >= at + subject.size()) {
      end = int64_t(i) + 1;
      break;
    }
  }
  MLXTERP_ASSERT(start >= 0 && end > start);
  return {start, end};
}

int32_t continuation_token(const InterpretableModel& m, const std::string& prompt, const std::string& target) {
  MLXTERP_CHECK(!target.empty(), "causal trace: empty target");
  std::string sep = (prompt.empty() || std::isspace(static_cast<unsigned char>(prompt.back())) ||
                     std::isspace(static_cast<unsigned char>(target.front())))
                        ? ""
                        : " ";
  std::vector<int32_t> p = m.encode(prompt), full = m.encode(prompt + sep + target);
  MLXTERP_CHECK(full.size() > p.size() && std::equal(p.begin(), p.end(), full.begin()), "causal trace: the target ",
                quote(target), " does not continue the prompt's tokens (the tokenizer merges across the boundary); "
                "give the target token as #ID");
  return full[p.size()];
}

double embedding_noise_std(const Model& model, double multiplier) {
  at::NoGradGuard ng;
  const int64_t V = model.config().d_vocab;
  const int64_t step = std::max<int64_t>(1, V / 16384);
  at::Tensor ids = at::arange(0, V, step, at::kLong).unsqueeze(0).to(model.device());
  return multiplier * model.embed(ids).to(at::kDouble).std().item<double>();
}

CausalTraceResult causal_trace(const InterpretableModel& m, const Prompt& prompt, int64_t s0, int64_t s1, int32_t target,
                               const CausalTraceOptions& o) {
  MLXTERP_CHECK(o.samples >= 1, "causal trace: samples must be >= 1, got ", o.samples);
  MLXTERP_CHECK(o.window >= 1, "causal trace: window must be >= 1, got ", o.window);
  CausalTraceResult r;
  r.ids = prompt_ids(m, prompt);
  r.tokens = token_strings(m, r.ids);
  const int64_t t = int64_t(r.ids.size());
  MLXTERP_CHECK(s0 >= 0 && s0 < s1 && s1 <= t, "causal trace: subject span [", s0, ", ", s1, ") is not inside the prompt's ", t,
                " tokens");
  MLXTERP_CHECK(target >= 0 && target < m.model().config().d_vocab, "causal trace: target token ", target, " is out of range");
  r.subject_start = s0;
  r.subject_end = s1;
  r.target = target;
  r.target_token = token_string(m, target);
  r.component = o.component;
  r.layers = resolve_layers(o.layers, m.n_layers(), "causal trace");
  r.noise_std = o.noise_std > 0 ? o.noise_std : embedding_noise_std(m.model(), o.noise_multiplier);
  r.samples = o.samples;
  const std::string suffix = component_site_suffix(o.component);
  const int L = m.n_layers();
  // One spec per (layer, position): the site restored in the window of layers around l.
  std::vector<PatchSpec> specs;
  for (int l : r.layers) {
    int lo = std::max(0, l - o.window / 2), hi = std::min(L, lo + o.window);
    lo = std::max(0, hi - o.window);
    for (int64_t p = 0; p < t; ++p) {
      PatchSpec spec;
      for (int k = lo; k < hi; ++k) spec.push_back({m.sites()[m.sites().resolve_component(k, suffix)].name, {p}, {}});
      specs.push_back(spec);
    }
  }
  const int64_t d = m.model().config().d_model;
  at::Tensor prob_sum = at::zeros({int64_t(specs.size())}, at::kDouble);
  double corrupt_sum = 0;
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  Progress bar("Causal trace", o.samples, stderr, !o.progress);
  const std::string embed_site = m.sites()[m.sites().resolve("model.embed_tokens")].name;
  for (int s = 0; s < o.samples; ++s) {
    at::Tensor noise = at::zeros({1, t, d}, at::kFloat);
    noise.narrow(1, s0, s1 - s0).copy_(at::randn({1, s1 - s0, d}, gen, at::TensorOptions().dtype(at::kFloat)) * r.noise_std);
    PatchRunOptions ro;
    ro.batch_size = o.batch_size;
    ro.base.emplace_back(embed_site, iv::add_vector(noise));
    PatchRuns runs = run_patches(m, r.ids, r.ids, specs, ro);
    if (s == 0) r.p_clean = at::softmax(runs.clean_logits, -1)[target].item<double>();
    corrupt_sum += at::softmax(runs.corrupt_logits, -1)[target].item<double>();
    prob_sum += at::softmax(runs.logits, -1).select(1, target).to(at::kDouble);
    bar.update(1);
  }
  bar.finish();
  r.p_corrupt = corrupt_sum / o.samples;
  r.prob = (prob_sum / o.samples).view({int64_t(r.layers.size()), t});
  const double denom = r.p_clean - r.p_corrupt;
  r.recovery = std::abs(denom) > 1e-12 ? (r.prob - r.p_corrupt) / denom : at::zeros_like(r.prob);
  return r;
}

CausalTraceResult causal_trace(const InterpretableModel& m, const std::string& prompt, const std::string& subject,
                               const std::string& target, const CausalTraceOptions& o) {
  std::vector<int32_t> ids = prompt_ids(m, prompt);
  auto [s0, s1] = find_subject_span(m, ids, subject);
  int32_t tgt = (!target.empty() && target[0] == '#') ? resolve_token(m, target) : continuation_token(m, prompt, target);
  return causal_trace(m, Prompt::ids(ids), s0, s1, tgt, o);
}

nlohmann::json CausalTraceResult::to_json() const {
  nlohmann::ordered_json j;
  j["ids"] = ids;
  j["tokens"] = tokens;
  j["subject_span"] = {subject_start, subject_end};
  j["target"] = target;
  j["target_token"] = target_token;
  j["component"] = component;
  j["noise_std"] = noise_std;
  j["samples"] = samples;
  j["p_clean"] = p_clean;
  j["p_corrupt"] = p_corrupt;
  j["layers"] = layers;
  j["prob"] = report::tensor_json(prob);
  j["recovery"] = report::tensor_json(recovery);
  return j;
}

// ---- facts --------------------------------------------------------------------------------------

std::vector<FactRecord> load_facts(const std::string& path) {
  std::string text = read_file(path);
  std::vector<nlohmann::json> items;
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    // A list, or a JSONL file of exactly one fact (which parses as one object).
    MLXTERP_CHECK(j.is_array() || j.is_object(), path, ": expected a JSON list of facts or one fact object per line, got ",
                  j.type_name());
    if (j.is_object()) items.push_back(j);
    else for (auto& x : j) items.push_back(x);
  } catch (const nlohmann::json::parse_error&) {
    // JSONL
    size_t line_no = 0;
    for (const auto& line : split(text, '\n')) {
      ++line_no;
      if (trim(line).empty()) continue;
      try {
        items.push_back(nlohmann::json::parse(line));
      } catch (const nlohmann::json::exception& e) {
        MLXTERP_FAIL(path, ":", line_no, ": invalid JSON (expected a JSON list or one object per line): ", e.what());
      }
    }
  }
  std::vector<FactRecord> out;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& x = items[i];
    MLXTERP_CHECK(x.is_object(), path, ": fact ", i, " is not an object");
    FactRecord f;
    f.subject = x.value("subject", "");
    if (x.contains("prompt")) f.prompt = x["prompt"].get<std::string>();
    else if (x.contains("template")) {
      std::string tpl = x["template"].get<std::string>();
      size_t b = tpl.find("{}");
      if (b == std::string::npos) b = tpl.find("{subject}");
      MLXTERP_CHECK(b != std::string::npos, path, ": fact ", i, ": template has no {} for the subject");
      size_t len = tpl.compare(b, 2, "{}") == 0 ? 2 : 9;
      f.prompt = tpl.substr(0, b) + f.subject + tpl.substr(b + len);
    }
    for (const char* k : {"attribute", "object", "target"})
      if (f.target.empty() && x.contains(k) && x[k].is_string()) f.target = x[k].get<std::string>();
    if (x.contains("known_id") && x["known_id"].is_number_integer()) f.id = x["known_id"].get<int64_t>();
    else f.id = int64_t(i);
    MLXTERP_CHECK(!f.prompt.empty() && !f.subject.empty() && !f.target.empty(), path, ": fact ", i,
                  " needs prompt (or template), subject and attribute (or object/target)");
    out.push_back(std::move(f));
  }
  return out;
}

const char* CausalTraceSummary::group_name(int g) {
  static const char* names[kGroups] = {"first subject token", "middle subject tokens", "last subject token",
                                       "first subsequent token", "further tokens", "last token"};
  return names[g];
}

CausalTraceSummary causal_trace_facts(const InterpretableModel& m, const std::vector<FactRecord>& facts,
                                      const CausalTraceOptions& o, double min_drop, int64_t limit) {
  CausalTraceSummary s;
  s.layers = resolve_layers(o.layers, m.n_layers(), "causal trace");
  const int64_t nl = int64_t(s.layers.size());
  s.recovery = at::zeros({CausalTraceSummary::kGroups, nl}, at::kDouble);
  s.indirect_effect = at::zeros({CausalTraceSummary::kGroups, nl}, at::kDouble);
  s.count = at::zeros({CausalTraceSummary::kGroups}, at::kDouble);
  const double noise = o.noise_std > 0 ? o.noise_std : embedding_noise_std(m.model(), o.noise_multiplier);
  CausalTraceOptions fo = o;
  fo.noise_std = noise;
  fo.progress = false;
  const int64_t n = limit > 0 ? std::min<int64_t>(limit, int64_t(facts.size())) : int64_t(facts.size());
  Progress bar("Causal trace (facts)", n, stderr, !o.progress);
  auto skip = [&](const std::string& why) {
    ++s.n_skipped;
    if (s.skipped_reasons.size() < 10) s.skipped_reasons.push_back(why);
  };
  for (int64_t i = 0; i < n; ++i, bar.update(1)) {
    const FactRecord& f = facts[size_t(i)];
    ++s.n_facts;
    CausalTraceResult r;
    try {
      r = causal_trace(m, f.prompt, f.subject, f.target, fo);
    } catch (const Error& e) {
      skip("fact " + std::to_string(f.id) + ": " + e.what());
      continue;
    }
    if (r.p_clean - r.p_corrupt < min_drop) {
      skip("fact " + std::to_string(f.id) + ": corruption drops P(target) by " + report::fmt(r.p_clean - r.p_corrupt, "%.4f") +
           " < min_drop " + report::fmt(min_drop, "%.3g"));
      continue;
    }
    ++s.n_used;
    s.mean_p_clean += r.p_clean;
    s.mean_p_corrupt += r.p_corrupt;
    const int64_t t = int64_t(r.ids.size());
    // Positions of each group.
    std::vector<std::vector<int64_t>> groups(CausalTraceSummary::kGroups);
    groups[0] = {r.subject_start};
    for (int64_t p = r.subject_start + 1; p + 1 < r.subject_end; ++p) groups[1].push_back(p);
    groups[2] = {r.subject_end - 1};
    if (r.subject_end < t - 1) groups[3] = {r.subject_end};
    for (int64_t p = r.subject_end + 1; p < t - 1; ++p) groups[4].push_back(p);
    groups[5] = {t - 1};
    for (int g = 0; g < CausalTraceSummary::kGroups; ++g) {
      if (groups[size_t(g)].empty()) continue;
      at::Tensor idx = at::tensor(groups[size_t(g)], at::kLong);
      s.recovery[g] += r.recovery.index_select(1, idx).mean(1);
      s.indirect_effect[g] += (r.prob.index_select(1, idx) - r.p_corrupt).mean(1);
      s.count[g] += 1;
    }
  }
  bar.finish();
  for (int g = 0; g < CausalTraceSummary::kGroups; ++g) {
    double c = s.count[g].item<double>();
    if (c > 0) {
      s.recovery[g] /= c;
      s.indirect_effect[g] /= c;
    } else {
      s.recovery[g].fill_(std::nan(""));
      s.indirect_effect[g].fill_(std::nan(""));
    }
  }
  if (s.n_used) {
    s.mean_p_clean /= double(s.n_used);
    s.mean_p_corrupt /= double(s.n_used);
  }
  return s;
}

nlohmann::json CausalTraceSummary::to_json() const {
  nlohmann::ordered_json j;
  j["n_facts"] = n_facts;
  j["n_used"] = n_used;
  j["n_skipped"] = n_skipped;
  j["skipped_examples"] = skipped_reasons;
  j["mean_p_clean"] = mean_p_clean;
  j["mean_p_corrupt"] = mean_p_corrupt;
  j["layers"] = layers;
  nlohmann::json g = nlohmann::json::array();
  for (int i = 0; i < kGroups; ++i)
    g.push_back({{"group", group_name(i)},
                 {"facts", count[i].item<double>()},
                 {"recovery", report::tensor_json(recovery[i])},
                 {"indirect_effect", report::tensor_json(indirect_effect[i])}});
  j["groups"] = g;
  return j;
}

}  // namespace mlxterp
