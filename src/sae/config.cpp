// SAEConfig: field table (JSON I/O, --set) and validation with the guide's messages.
#include "mlxterp/sae_config.hpp"

#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

using json = nlohmann::json;

std::string shown(const json& v) { return v.dump(); }

std::string fmt_num(double v) {
  // Shortest form that reads back the same ("0.0003", "1e-08", "0").
  char buf[64];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

struct Field {
  std::string name, type, doc;
  std::function<json(const SAEConfig&)> get;
  std::function<void(SAEConfig&, const json&)> set;
};

int64_t want_int(const std::string& name, const json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);  // 1e3 in a JSON file
  }
  MLXTERP_FAIL(name, " must be an integer, got ", shown(v));
}
double want_num(const std::string& name, const json& v) {
  MLXTERP_CHECK(v.is_number(), name, " must be a number, got ", shown(v));
  return v.get<double>();
}
bool want_bool(const std::string& name, const json& v) {
  MLXTERP_CHECK(v.is_boolean(), name, " must be true or false, got ", shown(v));
  return v.get<bool>();
}
std::string want_str(const std::string& name, const json& v) {
  MLXTERP_CHECK(v.is_string(), name, " must be a string, got ", shown(v));
  return v.get<std::string>();
}

template <class T>
using Member = T SAEConfig::*;

Field int_f(const char* n, Member<int64_t> m, const char* doc) {
  return {n, "int", doc, [m](const SAEConfig& c) { return json(c.*m); },
          [m, n](SAEConfig& c, const json& v) { c.*m = want_int(n, v); }};
}
Field num_f(const char* n, Member<double> m, const char* doc) {
  return {n, "float", doc, [m](const SAEConfig& c) { return json(c.*m); },
          [m, n](SAEConfig& c, const json& v) { c.*m = want_num(n, v); }};
}
Field bool_f(const char* n, Member<bool> m, const char* doc) {
  return {n, "bool", doc, [m](const SAEConfig& c) { return json(c.*m); },
          [m, n](SAEConfig& c, const json& v) { c.*m = want_bool(n, v); }};
}
Field str_f(const char* n, Member<std::string> m, const char* doc) {
  return {n, "str", doc, [m](const SAEConfig& c) { return json(c.*m); },
          [m, n](SAEConfig& c, const json& v) { c.*m = want_str(n, v); }};
}
Field opt_int_f(const char* n, Member<std::optional<int64_t>> m, const char* doc) {
  return {n, "int|null", doc,
          [m](const SAEConfig& c) { return (c.*m) ? json(*(c.*m)) : json(nullptr); },
          [m, n](SAEConfig& c, const json& v) {
            if (v.is_null()) c.*m = std::nullopt;
            else c.*m = want_int(n, v);
          }};
}
Field opt_num_f(const char* n, Member<std::optional<double>> m, const char* doc) {
  return {n, "float|null", doc,
          [m](const SAEConfig& c) { return (c.*m) ? json(*(c.*m)) : json(nullptr); },
          [m, n](SAEConfig& c, const json& v) {
            if (v.is_null()) c.*m = std::nullopt;
            else c.*m = want_num(n, v);
          }};
}
Field opt_str_f(const char* n, Member<std::optional<std::string>> m, const char* doc) {
  return {n, "str|null", doc,
          [m](const SAEConfig& c) { return (c.*m) ? json(*(c.*m)) : json(nullptr); },
          [m, n](SAEConfig& c, const json& v) {
            if (v.is_null()) c.*m = std::nullopt;
            else c.*m = want_str(n, v);
          }};
}

const std::vector<Field>& table() {
  static const std::vector<Field> t = [] {
    std::vector<Field> f;
    f.push_back(str_f("sae_type", &SAEConfig::sae_type, "topk | batchtopk | jumprelu | relu (ReLU + L1; alias standard)"));
    f.push_back(int_f("expansion_factor", &SAEConfig::expansion_factor, "d_sae = d_in * expansion_factor"));
    f.push_back(int_f("k", &SAEConfig::k, "active latents per token (topk); mean per token (batchtopk)"));
    f.push_back(num_f("lambda_sparse", &SAEConfig::lambda_sparse, "sparsity coefficient: L1 (relu) or L0 (jumprelu); must be > 0 for those"));
    f.push_back(bool_f("tied_weights", &SAEConfig::tied_weights, "decoder rows = encoder rows (one matrix), separate b_dec"));
    f.push_back(bool_f("decoder_unit_norm", &SAEConfig::decoder_unit_norm, "keep decoder rows at unit norm, remove the gradient parallel to them"));
    f.push_back(str_f("b_dec_init", &SAEConfig::b_dec_init, "geometric_median | mean | zeros, from the first shuffle buffer"));
    f.push_back(bool_f("normalize_input", &SAEConfig::normalize_input, "one scalar rescale so that E||x||^2 = d_in (from the first buffer); folded into the weights on export"));
    f.push_back(num_f("jumprelu_bandwidth", &SAEConfig::jumprelu_bandwidth, "jumprelu: STE rectangle-kernel width"));
    f.push_back(num_f("jumprelu_init_threshold", &SAEConfig::jumprelu_init_threshold, "jumprelu: initial threshold"));
    f.push_back(num_f("learning_rate", &SAEConfig::learning_rate, "peak AdamW learning rate"));
    f.push_back(int_f("batch_size", &SAEConfig::batch_size, "activation rows (tokens) per step"));
    f.push_back(int_f("num_epochs", &SAEConfig::num_epochs, "passes over the training documents"));
    f.push_back(int_f("warmup_steps", &SAEConfig::warmup_steps, "linear LR warm-up steps"));
    f.push_back(str_f("lr_scheduler", &SAEConfig::lr_scheduler, "cosine | linear | constant (after warm-up)"));
    f.push_back(opt_int_f("lr_decay_steps", &SAEConfig::lr_decay_steps, "step at which the LR decay ends; null = the last step"));
    f.push_back(num_f("lr_min_ratio", &SAEConfig::lr_min_ratio, "decayed LR ends at learning_rate * lr_min_ratio"));
    f.push_back(opt_int_f("sparsity_warm_up_steps", &SAEConfig::sparsity_warm_up_steps, "lambda_sparse ramps from 0 over these steps (relu, jumprelu); null = none"));
    f.push_back(int_f("k_anneal_steps", &SAEConfig::k_anneal_steps, "topk/batchtopk: k decays linearly from min(d_sae, d_in) to k; 0 = off"));
    f.push_back(opt_num_f("gradient_clip", &SAEConfig::gradient_clip, "global gradient L2-norm limit; null or 0 = off"));
    f.push_back(num_f("adam_beta1", &SAEConfig::adam_beta1, "Adam beta1"));
    f.push_back(num_f("adam_beta2", &SAEConfig::adam_beta2, "Adam beta2"));
    f.push_back(num_f("adam_eps", &SAEConfig::adam_eps, "Adam epsilon"));
    f.push_back(num_f("weight_decay", &SAEConfig::weight_decay, "decoupled weight decay on W_enc, W_dec"));
    f.push_back(str_f("optimizer_state_dtype", &SAEConfig::optimizer_state_dtype,
                      "float32 | bfloat16: Adam moments of W_enc, W_dec. bfloat16 halves optimizer memory and the "
                      "fused CUDA step's optimizer traffic; moments are stochastically rounded so they stay unbiased. "
                      "float32 is exact torch AdamW"));
    f.push_back(int_f("seed", &SAEConfig::seed, "seed for initialisation, shuffling and resampling"));
    f.push_back(bool_f("use_ghost_grads", &SAEConfig::use_ghost_grads, "SAELens ghost gradients for dead latents"));
    f.push_back(int_f("feature_sampling_window", &SAEConfig::feature_sampling_window, "steps per latent-density window (dense fraction)"));
    f.push_back(int_f("dead_feature_window", &SAEConfig::dead_feature_window, "dead = not fired for this many steps' worth of tokens"));
    f.push_back(int_f("dead_tokens_window", &SAEConfig::dead_tokens_window, "dead window in tokens; 0 = dead_feature_window * batch_size"));
    f.push_back(num_f("dead_neuron_threshold", &SAEConfig::dead_neuron_threshold, "a latent fires when its activation is > this"));
    f.push_back(int_f("k_aux", &SAEConfig::k_aux, "AuxK latents (topk/batchtopk); 0 = d_in / 2"));
    f.push_back(num_f("auxk_coef", &SAEConfig::auxk_coef, "AuxK loss weight (topk/batchtopk) for inputs of unit mean squared norm (x d_in under normalize_input); 0 = off"));
    f.push_back(int_f("resample_dead_every", &SAEConfig::resample_dead_every, "steps between dead-latent resamplings; 0 = off"));
    f.push_back(num_f("threshold_decay", &SAEConfig::threshold_decay, "batchtopk: EMA decay of the running inference threshold"));
    f.push_back(int_f("threshold_calibration_steps", &SAEConfig::threshold_calibration_steps, "batchtopk: final threshold from the last N steps; 0 = auto"));
    f.push_back(int_f("text_batch_size", &SAEConfig::text_batch_size, "sequences per model forward while streaming"));
    f.push_back(int_f("context_size", &SAEConfig::context_size, "tokens per sequence; longer documents are split (BOS repeated)"));
    f.push_back(bool_f("exclude_special_tokens", &SAEConfig::exclude_special_tokens, "BOS/EOS/PAD positions never reach the SAE"));
    f.push_back(int_f("shuffle_buffer_tokens", &SAEConfig::shuffle_buffer_tokens, "token-level shuffle buffer size; 0 = auto"));
    f.push_back(num_f("validation_split", &SAEConfig::validation_split, "fraction of documents held out (the last ones)"));
    f.push_back(int_f("validation_max_tokens", &SAEConfig::validation_max_tokens, "validation tokens kept in memory"));
    f.push_back(str_f("dtype", &SAEConfig::dtype, "float32 | bfloat16 | float16: compute dtype of the SAE matmuls"));
    f.push_back(str_f("device", &SAEConfig::device, "auto (the model's) | cpu | cuda | cuda:N"));
    f.push_back(int_f("checkpoint_every", &SAEConfig::checkpoint_every, "steps between atomic checkpoints; 0 = only at the end"));
    f.push_back(int_f("log_every", &SAEConfig::log_every, "steps between metric syncs (progress bar, JSONL)"));
    f.push_back(int_f("eval_every", &SAEConfig::eval_every, "steps between validations; 0 = after each epoch"));
    f.push_back(bool_f("use_wandb", &SAEConfig::use_wandb, "offline stand-in: TensorBoard events + metrics.jsonl + HTML curves"));
    f.push_back(str_f("wandb_project", &SAEConfig::wandb_project, "run group name written to the logs"));
    f.push_back(opt_str_f("wandb_entity", &SAEConfig::wandb_entity, "recorded in the logs"));
    f.push_back(opt_str_f("wandb_name", &SAEConfig::wandb_name, "run name written to the logs"));
    f.push_back({"wandb_tags", "list[str]|null", "recorded in the logs",
                 [](const SAEConfig& c) { return c.wandb_tags ? json(*c.wandb_tags) : json(nullptr); },
                 [](SAEConfig& c, const json& v) {
                   if (v.is_null()) {
                     c.wandb_tags = std::nullopt;
                     return;
                   }
                   MLXTERP_CHECK(v.is_array(), "wandb_tags must be a list of strings or null, got ", shown(v));
                   std::vector<std::string> tags;
                   for (const auto& e : v) {
                     MLXTERP_CHECK(e.is_string(), "wandb_tags must be a list of strings or null, got ", shown(v));
                     tags.push_back(e.get<std::string>());
                   }
                   c.wandb_tags = tags;
                 }});
    return f;
  }();
  return t;
}

const Field* find_field(const std::string& key) {
  for (const auto& f : table())
    if (f.name == key) return &f;
  return nullptr;
}

[[noreturn]] void unknown_field(const std::string& key, const std::string& where) {
  std::vector<std::string> names;
  for (const auto& f : table()) names.push_back(f.name);
  auto near = close_matches(key, names, 3);
  std::string hint = near.empty() ? " (see `mlxterp sae train --help-config` for the list)"
                                  : " (did you mean '" + join(near, "', '") + "'?)";
  MLXTERP_FAIL(where, ": unknown SAEConfig field '", key, "'", hint);
}

bool one_of(const std::string& v, std::initializer_list<const char*> allowed) {
  for (const char* a : allowed)
    if (v == a) return true;
  return false;
}

std::string list_of(std::initializer_list<const char*> allowed) {
  std::string s;
  size_t i = 0;
  for (const char* a : allowed) s += (i++ ? ", \"" : "\"") + std::string(a) + "\"";
  return s;
}

}  // namespace

#define SAE_CHOICE(field, ...)                                                                           \
  MLXTERP_CHECK(one_of(field, {__VA_ARGS__}), #field " must be one of ", list_of({__VA_ARGS__}), ", got ", \
                quote(field))

void SAEConfig::validate() const {
  SAE_CHOICE(sae_type, "topk", "batchtopk", "jumprelu", "relu", "standard");
  MLXTERP_CHECK(expansion_factor >= 1, "expansion_factor must be >= 1, got ", expansion_factor);
  MLXTERP_CHECK(k >= 1, "k must be >= 1, got ", k);
  MLXTERP_CHECK(std::isfinite(lambda_sparse) && lambda_sparse >= 0, "lambda_sparse must be >= 0, got ", fmt_num(lambda_sparse));
  if (sae_type == "relu" || sae_type == "standard" || sae_type == "jumprelu")
    MLXTERP_CHECK(lambda_sparse > 0, "lambda_sparse must be > 0 for sae_type \"", sae_type,
                  "\" (it is the only sparsity pressure; try 5 for relu, 1e-3 for jumprelu), got 0");
  SAE_CHOICE(b_dec_init, "geometric_median", "mean", "zeros");
  MLXTERP_CHECK(std::isfinite(jumprelu_bandwidth) && jumprelu_bandwidth > 0, "jumprelu_bandwidth must be > 0, got ",
                fmt_num(jumprelu_bandwidth));
  MLXTERP_CHECK(std::isfinite(jumprelu_init_threshold) && jumprelu_init_threshold > 0,
                "jumprelu_init_threshold must be > 0, got ", fmt_num(jumprelu_init_threshold));
  MLXTERP_CHECK(std::isfinite(learning_rate) && learning_rate > 0, "learning_rate must be > 0, got ", fmt_num(learning_rate));
  MLXTERP_CHECK(batch_size >= 1, "batch_size must be >= 1, got ", batch_size);
  MLXTERP_CHECK(num_epochs >= 1, "num_epochs must be >= 1, got ", num_epochs);
  MLXTERP_CHECK(warmup_steps >= 0, "warmup_steps must be >= 0, got ", warmup_steps);
  SAE_CHOICE(lr_scheduler, "cosine", "linear", "constant");
  if (lr_decay_steps)
    MLXTERP_CHECK(*lr_decay_steps > warmup_steps, "lr_decay_steps must be > warmup_steps (", warmup_steps,
                  ") or null (= the last step), got ", *lr_decay_steps);
  MLXTERP_CHECK(std::isfinite(lr_min_ratio) && lr_min_ratio >= 0 && lr_min_ratio <= 1,
                "lr_min_ratio must be in [0, 1], got ", fmt_num(lr_min_ratio));
  if (sparsity_warm_up_steps)
    MLXTERP_CHECK(*sparsity_warm_up_steps >= 0, "sparsity_warm_up_steps must be >= 0 or null, got ", *sparsity_warm_up_steps);
  MLXTERP_CHECK(k_anneal_steps >= 0, "k_anneal_steps must be >= 0 (0 = off), got ", k_anneal_steps);
  if (gradient_clip)
    MLXTERP_CHECK(std::isfinite(*gradient_clip) && *gradient_clip >= 0,
                  "gradient_clip must be >= 0 (0 or null = off), got ", fmt_num(*gradient_clip));
  MLXTERP_CHECK(adam_beta1 >= 0 && adam_beta1 < 1, "adam_beta1 must be in [0, 1), got ", fmt_num(adam_beta1));
  MLXTERP_CHECK(adam_beta2 >= 0 && adam_beta2 < 1, "adam_beta2 must be in [0, 1), got ", fmt_num(adam_beta2));
  MLXTERP_CHECK(std::isfinite(adam_eps) && adam_eps > 0, "adam_eps must be > 0, got ", fmt_num(adam_eps));
  MLXTERP_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, "weight_decay must be >= 0, got ", fmt_num(weight_decay));
  const std::string& osd = optimizer_state_dtype;
  const char* osd_hint = osd == "bf16" ? "did you mean \"bfloat16\"?"
                         : osd == "f32"
                             ? "did you mean \"float32\"?"
                             : "the dtype of W_enc's and W_dec's Adam moments: bfloat16 halves their memory, "
                               "float32 is exact AdamW";
  MLXTERP_CHECK(one_of(osd, {"float32", "bfloat16"}),
                "optimizer_state_dtype must be one of \"float32\", \"bfloat16\", got ", quote(osd), " (", osd_hint,
                ")");
  MLXTERP_CHECK(seed >= 0, "seed must be >= 0, got ", seed);
  MLXTERP_CHECK(feature_sampling_window >= 1, "feature_sampling_window must be >= 1, got ", feature_sampling_window);
  MLXTERP_CHECK(dead_feature_window >= 1, "dead_feature_window must be >= 1, got ", dead_feature_window);
  MLXTERP_CHECK(dead_tokens_window >= 0, "dead_tokens_window must be >= 0 (0 = dead_feature_window * batch_size), got ",
                dead_tokens_window);
  MLXTERP_CHECK(std::isfinite(dead_neuron_threshold) && dead_neuron_threshold >= 0,
                "dead_neuron_threshold must be >= 0, got ", fmt_num(dead_neuron_threshold));
  MLXTERP_CHECK(k_aux >= 0, "k_aux must be >= 0 (0 = d_in / 2), got ", k_aux);
  MLXTERP_CHECK(std::isfinite(auxk_coef) && auxk_coef >= 0, "auxk_coef must be >= 0, got ", fmt_num(auxk_coef));
  MLXTERP_CHECK(resample_dead_every >= 0, "resample_dead_every must be >= 0 (0 = off), got ", resample_dead_every);
  MLXTERP_CHECK(threshold_decay >= 0 && threshold_decay < 1, "threshold_decay must be in [0, 1), got ",
                fmt_num(threshold_decay));
  MLXTERP_CHECK(threshold_calibration_steps >= 0, "threshold_calibration_steps must be >= 0 (0 = auto), got ",
                threshold_calibration_steps);
  MLXTERP_CHECK(text_batch_size >= 1, "text_batch_size must be >= 1, got ", text_batch_size);
  MLXTERP_CHECK(context_size >= 2, "context_size must be >= 2 (BOS + one token), got ", context_size);
  MLXTERP_CHECK(shuffle_buffer_tokens >= 0, "shuffle_buffer_tokens must be >= 0 (0 = auto), got ", shuffle_buffer_tokens);
  if (shuffle_buffer_tokens > 0)
    MLXTERP_CHECK(shuffle_buffer_tokens >= batch_size, "shuffle_buffer_tokens must be >= batch_size (", batch_size,
                  ") or 0 (auto), got ", shuffle_buffer_tokens);
  MLXTERP_CHECK(validation_split >= 0 && validation_split < 1, "validation_split must be in [0, 1), got ",
                fmt_num(validation_split));
  MLXTERP_CHECK(validation_max_tokens >= 1, "validation_max_tokens must be >= 1, got ", validation_max_tokens);
  SAE_CHOICE(dtype, "float32", "bfloat16", "float16");
  MLXTERP_CHECK(device == "auto" || device == "cpu" || device == "cuda" ||
                    (starts_with(device, "cuda:") && device.size() > 5 &&
                     device.find_first_not_of("0123456789", 5) == std::string::npos),
                "device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got ", quote(device));
  MLXTERP_CHECK(checkpoint_every >= 0, "checkpoint_every must be >= 0 (0 = only at the end), got ", checkpoint_every);
  MLXTERP_CHECK(log_every >= 1, "log_every must be >= 1, got ", log_every);
  MLXTERP_CHECK(eval_every >= 0, "eval_every must be >= 0 (0 = after each epoch), got ", eval_every);
  MLXTERP_CHECK(!wandb_project.empty(), "wandb_project must be a non-empty string, got \"\"");
}

void SAEConfig::validate_for(int64_t d_in) const {
  validate();
  MLXTERP_CHECK(d_in >= 1, "the activation dimension must be >= 1, got ", d_in);
  const int64_t F = d_sae(d_in);
  MLXTERP_CHECK(k <= F, "k must be <= d_sae (", F, " = ", d_in, " x expansion_factor ", expansion_factor, "), got ", k);
  MLXTERP_CHECK(k_aux <= F, "k_aux must be <= d_sae (", F, "), got ", k_aux);
}

int64_t SAEConfig::k_aux_for(int64_t d_in) const {
  int64_t ka = k_aux > 0 ? k_aux : std::max<int64_t>(1, d_in / 2);
  return std::min(ka, d_sae(d_in));
}

int64_t SAEConfig::shuffle_buffer_for(int64_t d_in, int64_t whole_epoch_tokens) const {
  if (shuffle_buffer_tokens > 0) return shuffle_buffer_tokens;
  int64_t by_memory = (int64_t(512) << 20) / (4 * std::max<int64_t>(1, d_in));
  // A cached epoch that fits in 512 MB: the whole epoch in one buffer, i.e. a full random permutation of the
  // training tokens every epoch. BatchTopK's selection spans the batch, so it feels how well batches are mixed:
  // a 131,072-token buffer over a 340,087-token epoch cost it ~1.5% held-out FVU (docs/sae-results.md).
  if (whole_epoch_tokens > 0 && whole_epoch_tokens <= by_memory) return std::max(batch_size, whole_epoch_tokens);
  // Auto otherwise: as many tokens as fit in 512 MB of float32 rows, at most 2^17 (the model runs before the
  // first step until the buffer is full), and at least 16 batches.
  return std::max(batch_size * 16, std::min<int64_t>(131072, by_memory));
}

nlohmann::ordered_json SAEConfig::to_json() const {
  nlohmann::ordered_json j;
  for (const auto& f : table()) j[f.name] = f.get(*this);
  return j;
}

void SAEConfig::apply_json(const nlohmann::json& j, const std::string& where) {
  MLXTERP_CHECK(j.is_object(), where, ": an SAE config must be a JSON object of field: value, got ", j.type_name());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Field* f = find_field(it.key());
    if (!f) unknown_field(it.key(), where);
    try {
      f->set(*this, it.value());
    } catch (const Error& e) {
      MLXTERP_FAIL(where, ": ", e.what());
    }
  }
}

SAEConfig SAEConfig::from_json(const nlohmann::json& j, const std::string& where) {
  SAEConfig c;
  c.apply_json(j, where);
  return c;
}

void SAEConfig::set(const std::string& key, const std::string& value) {
  const std::string where = "--set " + key + "=" + value;
  const Field* f = find_field(key);
  if (!f) unknown_field(key, where);
  json v = json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded()) v = value;  // a bare word: a string
  // A string field given a bare word that happens to be JSON ("null", "1") stays a string only if the
  // field is a plain string; optional strings keep null.
  if (f->type == "str" && !v.is_string()) v = value;
  try {
    f->set(*this, v);
  } catch (const Error& e) {
    MLXTERP_FAIL(where, ": ", e.what());
  }
}

void SAEConfig::set_assignment(const std::string& a) {
  size_t eq = a.find('=');
  MLXTERP_CHECK(eq != std::string::npos && eq > 0, "--set: expected key=value (e.g. --set k=64), got ", quote(a));
  set(trim(a.substr(0, eq)), a.substr(eq + 1));
}

const std::vector<SAEConfig::FieldDoc>& SAEConfig::fields() {
  static const std::vector<FieldDoc> docs = [] {
    std::vector<FieldDoc> d;
    SAEConfig def;
    for (const auto& f : table()) d.push_back({f.name, f.type, f.get(def).dump(), f.doc});
    return d;
  }();
  return docs;
}

}  // namespace mlxterp
