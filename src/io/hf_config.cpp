// Hugging Face config.json -> ModelConfig, for both transformers generations:
//   4.x: rope_theta + rope_scaling {rope_type|type, factor, ...}
//   5.x: rope_parameters {rope_type, rope_theta, factor, ...}, or per layer type
//        {"full_attention": {...}, "sliding_attention": {...}} (Gemma 3).
#include <algorithm>
#include <cmath>
#include <iterator>

#include "mlxterp/config.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

using nlohmann::json;

int64_t json_int(const json& j, const char* key, int64_t fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::abs(x) < 9.2e18 && x == std::trunc(x)) return int64_t(x);  // 64.0 is fine; 64.5 and 1e300 are not
  }
  MLXTERP_FAIL(where, ": '", key, "' must be an integer, got ", v.dump());
}

double json_float(const json& j, const char* key, double fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  MLXTERP_CHECK(v.is_number(), where, ": '", key, "' must be a number, got ", v.dump());
  return v.get<double>();
}

bool json_bool(const json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  MLXTERP_CHECK(v.is_boolean(), where, ": '", key, "' must be true or false, got ", v.dump());
  return v.get<bool>();
}

std::string json_string(const json& j, const char* key, const std::string& fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  MLXTERP_CHECK(v.is_string(), where, ": '", key, "' must be a string, got ", v.dump());
  return v.get<std::string>();
}

static std::vector<double> json_float_list(const json& j, const char* key, const std::string& where) {
  std::vector<double> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  MLXTERP_CHECK(j[key].is_array(), where, ": '", key, "' must be a list of numbers");
  for (const auto& x : j[key]) {
    MLXTERP_CHECK(x.is_number(), where, ": '", key, "' must be a list of numbers, got ", x.dump());
    out.push_back(x.get<double>());
  }
  return out;
}

// One RoPE parameter block (4.x rope_scaling or a 5.x rope_parameters entry).
static RopeParams parse_rope_block(const json& b, RopeParams base, const std::string& where) {
  MLXTERP_CHECK(b.is_object(), where, ": rope parameters must be an object, got ", b.dump());
  std::string type = json_string(b, "rope_type", json_string(b, "type", base.type, where), where);
  if (type == "su") type = "longrope";  // early Phi-3 name
  static const char* known[] = {"default", "linear", "dynamic", "llama3", "yarn", "longrope"};
  bool ok = false;
  for (const char* k : known) ok |= type == k;
  MLXTERP_CHECK(ok, where, ": unsupported rope_type '", type,
                "'; expected default, linear, dynamic, llama3, yarn or longrope");
  base.type = type;
  base.theta = json_float(b, "rope_theta", base.theta, where);
  base.factor = json_float(b, "factor", base.factor, where);
  base.low_freq_factor = json_float(b, "low_freq_factor", base.low_freq_factor, where);
  base.high_freq_factor = json_float(b, "high_freq_factor", base.high_freq_factor, where);
  base.original_max_position_embeddings =
      json_int(b, "original_max_position_embeddings", base.original_max_position_embeddings, where);
  base.beta_fast = json_float(b, "beta_fast", base.beta_fast, where);
  base.beta_slow = json_float(b, "beta_slow", base.beta_slow, where);
  if (b.contains("attention_factor") && !b["attention_factor"].is_null())
    base.attention_factor = json_float(b, "attention_factor", 1.0, where);
  base.truncate = json_bool(b, "truncate", base.truncate, where);
  if (b.contains("mscale") && !b["mscale"].is_null()) base.mscale = json_float(b, "mscale", 1.0, where);
  if (b.contains("mscale_all_dim") && !b["mscale_all_dim"].is_null())
    base.mscale_all_dim = json_float(b, "mscale_all_dim", 1.0, where);
  if (b.contains("alpha") && !b["alpha"].is_null()) base.alpha = json_float(b, "alpha", 1.0, where);
  auto sf = json_float_list(b, "short_factor", where);
  auto lf = json_float_list(b, "long_factor", where);
  if (!sf.empty()) base.short_factor = sf;
  if (!lf.empty()) base.long_factor = lf;
  base.partial_rotary_factor = json_float(b, "partial_rotary_factor", base.partial_rotary_factor, where);
  if (type == "llama3")
    MLXTERP_CHECK(base.original_max_position_embeddings > 0, where,
                  ": llama3 rope scaling needs original_max_position_embeddings > 0");
  return base;
}

std::map<std::string, RopeParams> parse_rope(const json& j, const std::string& where) {
  RopeParams base;
  // GPT-NeoX / Pythia configs name the base `rotary_emb_base`.
  base.theta = json_float(j, "rope_theta", json_float(j, "rotary_emb_base", 10000.0, where), where);
  base.partial_rotary_factor = json_float(j, "partial_rotary_factor", json_float(j, "rotary_pct", 1.0, where), where);
  std::map<std::string, RopeParams> out;
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const json& rp = j["rope_parameters"];
    MLXTERP_CHECK(rp.is_object(), where, ": 'rope_parameters' must be an object");
    bool per_type = false;
    for (auto it = rp.begin(); it != rp.end(); ++it) per_type |= it.value().is_object();
    if (per_type) {
      for (auto it = rp.begin(); it != rp.end(); ++it)
        out[it.key()] = parse_rope_block(it.value(), base, where + ": rope_parameters." + it.key());
      if (!out.count("default") && out.count("full_attention")) out["default"] = out["full_attention"];
    } else {
      out["default"] = parse_rope_block(rp, base, where + ": rope_parameters");
    }
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    out["default"] = parse_rope_block(j["rope_scaling"], base, where + ": rope_scaling");
  } else {
    out["default"] = base;
  }
  // Gemma 3 (4.x): the local (sliding) layers use rope_local_base_freq with no scaling.
  if (j.contains("rope_local_base_freq") && !out.count("sliding_attention")) {
    RopeParams local = base;
    local.theta = json_float(j, "rope_local_base_freq", base.theta, where);
    out["sliding_attention"] = local;
  }
  return out;
}

const RopeParams& ModelConfig::rope_for_layer(int64_t i) const {
  if (i >= 0 && i < int64_t(layer_types.size())) {
    auto it = rope.find(layer_types[i]);
    if (it != rope.end()) return it->second;
  }
  auto it = rope.find("default");
  MLXTERP_ASSERT(it != rope.end());
  return it->second;
}

bool ModelConfig::is_sliding(int64_t i) const {
  return sliding_window.has_value() && i >= 0 && i < int64_t(layer_types.size()) &&
         layer_types[i] == "sliding_attention";
}

void ModelConfig::validate(const std::string& where) const {
  auto pos = [&](const char* name, int64_t v) {
    MLXTERP_CHECK(v > 0, where, ": ", name, " must be positive; expected > 0, got ", v);
  };
  pos("hidden_size", d_model);
  pos("num_hidden_layers", n_layers);
  pos("num_attention_heads", n_heads);
  pos("num_key_value_heads", n_kv_heads);
  pos("head_dim", d_head);
  pos("vocab_size", d_vocab);
  // Upper bounds far above any real model: absurd values (a corrupt or hand-edited config) must fail here,
  // not as a huge allocation or a loop over a billion layers.
  auto at_most = [&](const char* name, int64_t v, int64_t limit) {
    MLXTERP_CHECK(v <= limit, where, ": ", name, " is implausibly large; expected at most ", limit, ", got ", v,
                  " (corrupt config?)");
  };
  at_most("hidden_size", d_model, 1 << 20);
  at_most("num_hidden_layers", n_layers, 1 << 14);
  at_most("num_attention_heads", n_heads, 1 << 14);
  at_most("head_dim", d_head, 1 << 16);
  at_most("intermediate_size", d_mlp, 1 << 22);
  at_most("vocab_size", d_vocab, 1 << 24);
  MLXTERP_CHECK(n_heads % n_kv_heads == 0, where, ": num_attention_heads must be a multiple of num_key_value_heads; "
                "expected a multiple of ", n_kv_heads, ", got ", n_heads, " (grouped-query attention shares each key/value "
                "head among the same number of query heads)");
  MLXTERP_CHECK(int64_t(layer_types.size()) == n_layers, where, ": layer_types has ", layer_types.size(),
                " entries; expected one per layer (", n_layers, ")");
  if (sliding_window)
    MLXTERP_CHECK(*sliding_window > 0, where, ": sliding_window must be positive; expected > 0, got ", *sliding_window);
  MLXTERP_CHECK(std::isfinite(norm_eps) && norm_eps >= 0, where, ": the norm epsilon must be finite and >= 0; got ",
                norm_eps);
  for (const auto& [kind, r] : rope) {
    MLXTERP_CHECK(std::isfinite(r.theta) && r.theta > 0, where, ": rope_theta", kind == "default" ? "" : " (" + kind + ")",
                  " must be positive; expected > 0, got ", r.theta);
    MLXTERP_CHECK(std::isfinite(r.factor) && r.factor > 0, where, ": rope scaling factor", kind == "default" ? "" : " (" + kind + ")",
                  " must be positive; expected > 0, got ", r.factor);
    MLXTERP_CHECK(r.partial_rotary_factor > 0 && r.partial_rotary_factor <= 1, where,
                  ": partial_rotary_factor must be in (0, 1]; got ", r.partial_rotary_factor);
    if (r.alpha)
      MLXTERP_CHECK(std::isfinite(*r.alpha) && *r.alpha > 0, where, ": rope alpha", kind == "default" ? "" : " (" + kind + ")",
                    " must be positive; expected > 0, got ", *r.alpha);
  }
}

static int64_t first_id(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return -1;
  if (j[key].is_array()) {
    if (j[key].empty()) return -1;
    json first = {{key, j[key][0]}};
    return json_int(first, key, -1, where);
  }
  return json_int(j, key, -1, where);
}

// Llama relatives (src/models/llama_kin.cpp): their config classes' own defaults and field names.
static void llama_kin_fields(ModelConfig& c, const json& t, bool rotary_factor_given, const std::string& where) {
  const std::string& m = c.model_type;
  // HF's `alpha` (NTK-alpha rotary base) is HunYuan's alone.
  if (m != "hunyuan_v1_dense")
    for (auto& [kind, r] : c.rope) r.alpha.reset();
  static const char* kin[] = {"arcee", "seed_oss", "ministral", "helium", "ernie4_5", "hunyuan_v1_dense", "nemotron",
                              "apertus"};
  if (std::find(std::begin(kin), std::end(kin), m) == std::end(kin)) return;
  // Their config classes default to untied embeddings, except ERNIE 4.5 (tied, the parser's default).
  if (m != "ernie4_5" && !t.contains("tie_word_embeddings") && !c.raw.contains("tie_word_embeddings"))
    c.tie_word_embeddings = false;
  // head_dim defaults to 128 (not hidden_size / heads) in these classes; an explicit null means hidden / heads.
  if ((m == "seed_oss" || m == "helium" || m == "ernie4_5") && !t.contains("head_dim")) c.d_head = 128;
  if (m == "seed_oss") c.attention_bias = json_bool(t, "attention_bias", true, where);
  if (m == "ernie4_5") c.attention_bias = c.mlp_bias = json_bool(t, "use_bias", false, where);
  // Ministral's q/k/v and MLP, HunYuan's and Apertus's MLP have no bias whatever the config says.
  if (m == "ministral") c.attention_bias = false;
  if (m == "ministral" || m == "hunyuan_v1_dense" || m == "apertus") c.mlp_bias = false;
  c.qk_norm = c.qk_norm || m == "hunyuan_v1_dense" || m == "apertus";
  if (m == "nemotron") {
    c.norm_eps = json_float(t, "norm_eps", 1e-5, where);  // transformers also writes an unused rms_norm_eps
    if (!rotary_factor_given)
      for (auto& [kind, r] : c.rope) r.partial_rotary_factor = 0.5;  // NemotronConfig's default
  }
}

ModelConfig parse_hf_config(const json& j, const std::string& where) {
  MLXTERP_CHECK(j.is_object(), where, ": config must be a JSON object; expected an object, got ", j.type_name());
  ModelConfig c;
  c.raw = j;
  c.model_type = json_string(j, "model_type", "", where);
  if (c.model_type.empty() && j.contains("architectures") && j["architectures"].is_array() &&
      !j["architectures"].empty()) {
    const json& a = j["architectures"][0];
    if (a.is_string() && a.get<std::string>().find("Llama") != std::string::npos) c.model_type = "llama";
  }
  MLXTERP_CHECK(!c.model_type.empty(), where, ": no 'model_type'; expected e.g. \"llama\", \"qwen2\", \"mistral\"");
  // Some families nest the text model's config (Gemma 3 multimodal).
  const json& t = (j.contains("text_config") && j["text_config"].is_object()) ? j["text_config"] : j;
  c.arch = c.model_type;
  if (c.arch == "gemma3_text") c.arch = "gemma3";
  // Quantized checkpoints: gpt-oss's MXFP4 experts are dequantized at load (models/gpt_oss.cpp); any other
  // scheme stores weights we would misread, so it is refused here rather than failing on weight names later.
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    const std::string method = q.is_object() ? json_string(q, "quant_method", "?", where) : q.dump();
    MLXTERP_CHECK(method == "mxfp4" && c.model_type == "gpt_oss", where, ": quantized checkpoint (quant_method \"",
                  method, "\") is not supported; expected unquantized weights (hint: load the unquantized release, ",
                  "or gpt-oss with its MXFP4 experts)");
  }
  // GPT-2 style names.
  c.d_model = json_int(t, "hidden_size", json_int(t, "n_embd", 0, where), where);
  c.n_layers = json_int(t, "num_hidden_layers", json_int(t, "n_layer", 0, where), where);
  c.n_heads = json_int(t, "num_attention_heads", json_int(t, "n_head", 0, where), where);
  if (c.model_type == "bloom" && !t.contains("hidden_size")) c.d_model = json_int(t, "n_embed", c.d_model, where);
  if (c.model_type == "mpt") {  // MptConfig's own names
    c.d_model = json_int(t, "d_model", c.d_model, where);
    c.n_layers = json_int(t, "n_layers", c.n_layers, where);
    c.n_heads = json_int(t, "n_heads", c.n_heads, where);
  }
  if (c.model_type == "gpt_neo") {  // GPTNeoConfig's own names
    c.n_layers = json_int(t, "num_layers", c.n_layers, where);
    c.n_heads = json_int(t, "num_heads", c.n_heads, where);
  }
  c.n_kv_heads = json_int(t, "num_key_value_heads", c.n_heads, where);
  if (c.n_heads > 0) c.d_head = json_int(t, "head_dim", c.d_model / c.n_heads, where);
  c.d_mlp = json_int(t, "intermediate_size", json_int(t, "n_inner", 4 * c.d_model, where), where);
  if (c.model_type == "opt") c.d_mlp = json_int(t, "ffn_dim", c.d_mlp, where);
  c.d_vocab = json_int(t, "vocab_size", 0, where);
  c.n_ctx = json_int(t, "max_position_embeddings", json_int(t, "n_positions", 2048, where), where);
  c.norm_eps = json_float(t, "rms_norm_eps",
                          json_float(t, "layer_norm_eps", json_float(t, "layer_norm_epsilon", 1e-5, where), where),
                          where);
  c.hidden_act = json_string(t, "hidden_act", json_string(t, "hidden_activation",
                                                          json_string(t, "activation_function", "silu", where), where),
                             where);
  c.tie_word_embeddings = json_bool(j, "tie_word_embeddings", json_bool(t, "tie_word_embeddings", true, where), where);
  // transformers defaults tie_word_embeddings=True in PretrainedConfig; Llama/Mistral/Qwen2 configs
  // override to False in their classes, so an absent key means "that class's default".
  if (!j.contains("tie_word_embeddings") && !t.contains("tie_word_embeddings")) {
    static const char* untied_by_default[] = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe",
                                              "qwen3_moe", "olmo2", "olmoe", "phi3", "gpt_neox", "exaone4",
                                              "granitemoe", "granitemoeshared", "olmo3", "gpt_oss", "deepseek_v2",
                                              "deepseek_v3", "glm4_moe", "dots1"};
    for (const char* a : untied_by_default)
      if (c.model_type == a) c.tie_word_embeddings = false;
  }
  c.attention_bias = json_bool(t, "attention_bias",
                               c.model_type == "qwen2" || c.model_type == "qwen2_moe" || c.model_type == "gpt_oss", where);
  c.mlp_bias = json_bool(t, "mlp_bias", false, where);
  c.qk_norm = c.model_type == "qwen3" || c.model_type == "qwen3_moe" || c.model_type == "gemma3" ||
              c.model_type == "gemma3_text" || c.model_type == "olmo2" || c.model_type == "olmoe" ||
              c.model_type == "dots1" || (c.model_type == "glm4_moe" && json_bool(t, "use_qk_norm", false, where));
  // Sliding windows: Mistral/Gemma use `sliding_window`; Qwen2 only with use_sliding_window=true.
  if (t.contains("sliding_window") && !t["sliding_window"].is_null()) {
    bool use = json_bool(t, "use_sliding_window", c.model_type.rfind("qwen", 0) != 0, where);
    if (use) c.sliding_window = json_int(t, "sliding_window", 0, where);
  }
  // EXAONE 4, Cohere2 and OLMo 3 configs default to a 4096-token window when the key is absent (null: none).
  if ((c.model_type == "exaone4" || c.model_type == "cohere2" || c.model_type == "olmo3") && !t.contains("sliding_window"))
    c.sliding_window = 4096;
  // GPT-Neo: "global" / "local" layers (attention_layers, or its run-length form attention_types) and the
  // local layers' window (window_size, counting the token itself).
  if (c.model_type == "gpt_neo") {
    c.sliding_window = json_int(t, "window_size", 256, where);
    std::vector<std::string> kinds;
    if (t.contains("attention_layers") && t["attention_layers"].is_array()) {
      for (const auto& x : t["attention_layers"]) kinds.push_back(x.is_string() ? x.get<std::string>() : x.dump());
    } else if (t.contains("attention_types") && t["attention_types"].is_array()) {
      for (const auto& run : t["attention_types"]) {  // [[["global", "local"], 12]]
        MLXTERP_CHECK(run.is_array() && run.size() == 2 && run[0].is_array() && run[1].is_number_integer() &&
                          run[1].get<int64_t>() >= 0 && run[1].get<int64_t>() <= (1 << 14),
                      where, ": attention_types entries must be [[kinds...], repeats], got ", run.dump());
        for (int64_t r = 0; r < run[1].get<int64_t>(); ++r)
          for (const auto& x : run[0]) kinds.push_back(x.is_string() ? x.get<std::string>() : x.dump());
      }
    } else {
      kinds.assign(size_t(std::max<int64_t>(c.n_layers, 0)), "global");
    }
    for (const auto& k : kinds) {
      MLXTERP_CHECK(k == "global" || k == "local", where, ": GPT-Neo attention layer kind '", k,
                    "' is not supported; expected \"global\" or \"local\"");
      c.layer_types.push_back(k == "local" ? "sliding_attention" : "full_attention");
    }
  } else if (t.contains("layer_types") && t["layer_types"].is_array()) {  // 5.x writes them; 4.x Gemma 2/3 and Qwen2 derive them
    for (const auto& x : t["layer_types"]) {
      MLXTERP_CHECK(x.is_string(), where, ": layer_types entries must be strings, got ", x.dump());
      c.layer_types.push_back(x.get<std::string>());
    }
  } else {
    for (int64_t i = 0; i < c.n_layers; ++i) {
      std::string kind = c.sliding_window ? "sliding_attention" : "full_attention";
      if (c.model_type == "gemma2" || c.model_type == "gpt_oss") kind = (i % 2 == 0) ? "sliding_attention" : "full_attention";
      if (c.model_type == "gemma3" || c.model_type == "gemma3_text") {
        int64_t pattern = json_int(t, "sliding_window_pattern", 6, where);
        kind = ((i + 1) % pattern != 0) ? "sliding_attention" : "full_attention";
      }
      // EXAONE 4 / Cohere2 (their configs' __post_init__): every sliding_window_pattern-th layer is full. EXAONE 4
      // without a window has only full layers; its string patterns ("LLLG") only come with explicit layer_types.
      if (c.model_type == "exaone4" || c.model_type == "cohere2") {
        MLXTERP_CHECK(!t.contains("sliding_window_pattern") || !t["sliding_window_pattern"].is_string(), where,
                      ": sliding_window_pattern as a string (", t["sliding_window_pattern"].dump(), ") is not supported ",
                      "without layer_types; expected an integer or an explicit layer_types list");
        const int64_t pattern = json_int(t, "sliding_window_pattern", 4, where);
        MLXTERP_CHECK(pattern > 0 || !c.sliding_window, where, ": sliding_window_pattern must be positive; got ", pattern);
        kind = (c.sliding_window && (i + 1) % pattern != 0) ? "sliding_attention" : "full_attention";
      }
      if (c.model_type == "olmo3") kind = (i + 1) % 4 != 0 ? "sliding_attention" : "full_attention";  // Olmo3Config
      if (c.model_type == "qwen2" || c.model_type == "qwen2_moe" || c.model_type == "qwen3" || c.model_type == "dots1") {
        int64_t max_window_layers = json_int(t, "max_window_layers", c.n_layers, where);
        kind = (c.sliding_window && i >= max_window_layers) ? "sliding_attention" : "full_attention";
      }
      c.layer_types.push_back(kind);
    }
  }
  for (const auto& lt : c.layer_types)
    MLXTERP_CHECK(lt == "full_attention" || lt == "sliding_attention", where, ": unsupported layer type '", lt,
                  "'; expected full_attention or sliding_attention");
  bool any_sliding = std::find(c.layer_types.begin(), c.layer_types.end(), "sliding_attention") != c.layer_types.end();
  if (!any_sliding) c.sliding_window.reset();
  MLXTERP_CHECK(!any_sliding || c.sliding_window, where, ": layer_types has sliding_attention layers but no sliding_window");
  c.rope = parse_rope(t, where);
  // OLMo 3: a single rotary block (4.x rope_scaling) is the full layers'; the sliding layers use the default rotary
  // with rope_theta (Olmo3Config.convert_rope_params_to_dict).
  if (c.model_type == "olmo3" && !c.rope.count("sliding_attention")) {
    RopeParams local;
    local.theta = c.rope.at("default").theta;
    local.partial_rotary_factor = c.rope.at("default").partial_rotary_factor;
    c.rope["sliding_attention"] = local;
  }
  // StableLM, StarCoder2, Phi and GPT-J (LayerNorm families) name their epsilon and biases their own way;
  // transformers also writes an unused rms_norm_eps into their config.json, which must not win. StableLM's,
  // Phi's and GPT-J's classes default to untied embeddings; StableLM rotates 25% of each head.
  // Whether the config states the rotated fraction (top level, rope_parameters or rope_scaling).
  auto has_rotary_factor = [&] {
    auto given = [](const json& o) {
      return o.is_object() && o.contains("partial_rotary_factor") && !o["partial_rotary_factor"].is_null();
    };
    return given(t) || (t.contains("rope_parameters") && given(t["rope_parameters"])) ||
           (t.contains("rope_scaling") && given(t["rope_scaling"]));
  };
  const bool untied_by_default = c.model_type == "stablelm" || c.model_type == "phi" || c.model_type == "gptj";
  if (untied_by_default && !j.contains("tie_word_embeddings") && !t.contains("tie_word_embeddings"))
    c.tie_word_embeddings = false;
  if (c.model_type == "stablelm") {
    c.norm_eps = json_float(t, "layer_norm_eps", 1e-5, where);
    c.attention_bias = json_bool(t, "use_qkv_bias", false, where);
    if (!has_rotary_factor())
      for (auto& [kind, r] : c.rope) r.partial_rotary_factor = 0.25;
  } else if (c.model_type == "starcoder2") {
    c.norm_eps = json_float(t, "norm_epsilon", 1e-5, where);
    c.attention_bias = c.mlp_bias = json_bool(t, "use_bias", true, where);
  } else if (c.model_type == "gpt_neo" || c.model_type == "bloom" || c.model_type == "gpt_bigcode") {
    c.norm_eps = json_float(t, "layer_norm_epsilon", 1e-5, where);
    if (c.model_type == "bloom") c.hidden_act = "gelu_pytorch_tanh";  // BloomGelu: the tanh approximation
    if (c.model_type == "gpt_bigcode") {
      c.hidden_act = json_string(t, "activation_function", "gelu_pytorch_tanh", where);
      c.n_kv_heads = json_bool(t, "multi_query", true, where) ? 1 : c.n_heads;  // multi-query: one k/v head
    }
  } else if (c.model_type == "mpt") {
    c.norm_eps = json_float(t, "layer_norm_epsilon", 1e-5, where);
    c.hidden_act = "gelu";        // MptMLP: exact GELU
    c.d_mlp = 4 * c.d_model;      // MptMLP: always 4 d_model, whatever expansion_ratio says
    c.n_ctx = json_int(t, "max_seq_len", c.n_ctx, where);
  } else if (c.model_type == "cohere" || c.model_type == "cohere2") {
    c.norm_eps = json_float(t, "layer_norm_eps", 1e-5, where);  // transformers also writes an unused rms_norm_eps
  } else if (c.model_type == "falcon") {
    c.norm_eps = json_float(t, "layer_norm_epsilon", 1e-5, where);
    c.hidden_act = json_string(t, "activation", "gelu", where);
    c.d_mlp = json_int(t, "ffn_hidden_size", 4 * c.d_model, where);
    c.attention_bias = c.mlp_bias = json_bool(t, "bias", false, where);
    // Key/value heads: num_kv_heads with new_decoder_architecture, else one (multi_query) or one per head.
    if (json_bool(t, "new_decoder_architecture", false, where))
      c.n_kv_heads = json_int(t, "num_kv_heads", c.n_heads, where);
    else
      c.n_kv_heads = json_bool(t, "multi_query", true, where) ? 1 : c.n_heads;
  } else if (c.model_type == "opt") {
    c.norm_eps = 1e-5;  // torch.nn.LayerNorm's default: OPTConfig has no epsilon
    c.attention_bias = c.mlp_bias = json_bool(t, "enable_bias", true, where);
  }
  // Phi (1, 1.5, 2) rotates half of each head unless told; GPT-J rotates `rotary_dim` dims of each head
  // (class default 64; null = the whole head).
  if (c.model_type == "phi" || c.model_type == "gptj") {
    const bool phi = c.model_type == "phi";
    c.norm_eps = json_float(t, phi ? "layer_norm_eps" : "layer_norm_epsilon", 1e-5, where);
    if (phi && !has_rotary_factor())
      for (auto& [kind, r] : c.rope) r.partial_rotary_factor = 0.5;
    if (!phi && c.d_head > 0) {
      const int64_t rot = t.contains("rotary_dim") ? json_int(t, "rotary_dim", c.d_head, where) : 64;
      MLXTERP_CHECK(rot > 0 && rot <= c.d_head && rot % 2 == 0, where, ": rotary_dim must be an even number of ",
                    "rotated dimensions per head; expected 2 .. ", c.d_head, " (the head size), got ", rot);
      for (auto& [kind, r] : c.rope) {
        // make_rope rotates int(d_head * factor) dims: nudge the factor so that it lands on rotary_dim.
        r.partial_rotary_factor = double(rot) / double(c.d_head);
        while (int64_t(c.d_head * r.partial_rotary_factor) < rot)
          r.partial_rotary_factor = std::nextafter(r.partial_rotary_factor, 2.0);
      }
    }
  }
  llama_kin_fields(c, t, has_rotary_factor(), where);
  c.bos_token_id = first_id(t, "bos_token_id", where);
  c.eos_token_id = first_id(t, "eos_token_id", where);
  c.pad_token_id = first_id(t, "pad_token_id", where);
  c.torch_dtype = json_string(j, "torch_dtype", json_string(j, "dtype", "", where), where);
  c.validate(where);
  return c;
}

json ModelConfig::to_hf_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["model_type"] = model_type.empty() ? arch : model_type;
  j["hidden_size"] = d_model;
  j["num_hidden_layers"] = n_layers;
  j["num_attention_heads"] = n_heads;
  j["num_key_value_heads"] = n_kv_heads;
  j["head_dim"] = d_head;
  j["intermediate_size"] = d_mlp;
  j["vocab_size"] = d_vocab;
  j["max_position_embeddings"] = n_ctx;
  j["rms_norm_eps"] = norm_eps;
  j["hidden_act"] = hidden_act;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  if (sliding_window) j["sliding_window"] = *sliding_window;
  j["layer_types"] = layer_types;
  auto block = [](const RopeParams& r) {
    json b = {{"rope_type", r.type}, {"rope_theta", r.theta}};
    if (r.type != "default") b["factor"] = r.factor;
    if (r.type == "llama3") {
      b["low_freq_factor"] = r.low_freq_factor;
      b["high_freq_factor"] = r.high_freq_factor;
      b["original_max_position_embeddings"] = r.original_max_position_embeddings;
    }
    if (r.partial_rotary_factor != 1.0) b["partial_rotary_factor"] = r.partial_rotary_factor;
    if (r.alpha) b["alpha"] = *r.alpha;
    return b;
  };
  if (rope.size() == 1) {
    j["rope_parameters"] = block(rope.at("default"));
  } else {
    json rp = json::object();
    for (const auto& [k, r] : rope)
      if (k != "default") rp[k] = block(r);
    j["rope_parameters"] = rp;
  }
  j.erase("rope_theta");
  j.erase("rope_scaling");
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  return j;
}

}  // namespace mlxterp
