// SmolLM3, matched to Hugging Face transformers' SmolLM3ForCausalLM: Llama with "NoPE" layers, where the rotary
// embedding is skipped. no_rope_layers lists one flag per layer (1 = rotary, 0 = none); without it, every
// no_rope_layer_interval-th layer (default 4: layers 3, 7, ...) has none, as SmolLM3Config derives it.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class SmolLM3Model : public FamilyModel {
 public:
  SmolLM3Model(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (smollm3)";
    no_rope_.assign(size_t(config_.n_layers), 0);
    if (t.contains("no_rope_layers") && !t["no_rope_layers"].is_null()) {
      const auto& flags = t["no_rope_layers"];
      MLXTERP_CHECK(flags.is_array() && int64_t(flags.size()) == config_.n_layers, where,
                    ": no_rope_layers must list one 0/1 flag per layer; expected ", config_.n_layers, " entries, got ",
                    flags.dump().substr(0, 80));
      for (size_t i = 0; i < flags.size(); ++i) {
        MLXTERP_CHECK(flags[i].is_number_integer() && (flags[i] == 0 || flags[i] == 1), where,
                      ": no_rope_layers entries must be 0 or 1; got ", flags[i].dump());
        no_rope_[i] = flags[i].get<int>() == 0;
      }
    } else {
      const int64_t every = json_int(t, "no_rope_layer_interval", 4, where);
      MLXTERP_CHECK(every > 0, where, ": no_rope_layer_interval must be positive; got ", every);
      for (int64_t i = 0; i < config_.n_layers; ++i) no_rope_[size_t(i)] = (i + 1) % every == 0;
    }
    init();
  }
};

const bool registered = register_architecture("smollm3", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<SmolLM3Model>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
