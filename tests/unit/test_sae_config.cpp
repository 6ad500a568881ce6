// SAEConfig: every field has an invalid value with its exact message (the guide's words where it has them),
// wrong JSON types and unknown keys are errors, and JSON round-trips.
#include <gmock/gmock.h>

#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae_config.hpp"

using namespace mlxterp;
using mlxterp::test::error_of;
using ::testing::HasSubstr;

namespace {

struct Bad {
  const char* field;
  const char* value;    // as given to --set
  const char* message;  // expected substring
};

// One invalid value per field (the test below checks this table covers SAEConfig::fields()).
const Bad kBad[] = {
    {"sae_type", "gated", "sae_type must be one of \"topk\", \"batchtopk\", \"jumprelu\", \"relu\", \"standard\", got \"gated\""},
    {"expansion_factor", "0", "expansion_factor must be >= 1, got 0"},
    {"k", "0", "k must be >= 1, got 0"},
    {"lambda_sparse", "-1", "lambda_sparse must be >= 0, got -1"},
    {"tied_weights", "1", "tied_weights must be true or false, got 1"},
    {"decoder_unit_norm", "\"yes\"", "decoder_unit_norm must be true or false, got \"yes\""},
    {"b_dec_init", "median", "b_dec_init must be one of \"geometric_median\", \"mean\", \"zeros\", got \"median\""},
    {"normalize_input", "null", "normalize_input must be true or false, got null"},
    {"jumprelu_bandwidth", "0", "jumprelu_bandwidth must be > 0, got 0"},
    {"jumprelu_init_threshold", "-0.5", "jumprelu_init_threshold must be > 0, got -0.5"},
    {"learning_rate", "0", "learning_rate must be > 0, got 0"},
    {"batch_size", "0", "batch_size must be >= 1, got 0"},
    {"num_epochs", "0", "num_epochs must be >= 1, got 0"},
    {"warmup_steps", "-1", "warmup_steps must be >= 0, got -1"},
    {"lr_scheduler", "step", "lr_scheduler must be one of \"cosine\", \"linear\", \"constant\", got \"step\""},
    {"lr_decay_steps", "1000", "lr_decay_steps must be > warmup_steps (1000) or null (= the last step), got 1000"},
    {"lr_min_ratio", "2", "lr_min_ratio must be in [0, 1], got 2"},
    {"sparsity_warm_up_steps", "-5", "sparsity_warm_up_steps must be >= 0 or null, got -5"},
    {"k_anneal_steps", "-1", "k_anneal_steps must be >= 0 (0 = off), got -1"},
    {"gradient_clip", "-1", "gradient_clip must be >= 0 (0 or null = off), got -1"},
    {"adam_beta1", "1", "adam_beta1 must be in [0, 1), got 1"},
    {"adam_beta2", "1.5", "adam_beta2 must be in [0, 1), got 1.5"},
    {"adam_eps", "0", "adam_eps must be > 0, got 0"},
    {"weight_decay", "-0.01", "weight_decay must be >= 0, got -0.01"},
    {"optimizer_state_dtype", "float16",
     "optimizer_state_dtype must be one of \"float32\", \"bfloat16\", got \"float16\""},
    {"seed", "-3", "seed must be >= 0, got -3"},
    {"use_ghost_grads", "\"true\"", "use_ghost_grads must be true or false, got \"true\""},
    {"feature_sampling_window", "0", "feature_sampling_window must be >= 1, got 0"},
    {"dead_feature_window", "0", "dead_feature_window must be >= 1, got 0"},
    {"dead_tokens_window", "-1", "dead_tokens_window must be >= 0 (0 = dead_feature_window * batch_size), got -1"},
    {"dead_neuron_threshold", "-1e-6", "dead_neuron_threshold must be >= 0, got -1e-06"},
    {"k_aux", "-2", "k_aux must be >= 0 (0 = d_in / 2), got -2"},
    {"auxk_coef", "-0.1", "auxk_coef must be >= 0, got -0.1"},
    {"resample_dead_every", "-1", "resample_dead_every must be >= 0 (0 = off), got -1"},
    {"threshold_decay", "1", "threshold_decay must be in [0, 1), got 1"},
    {"threshold_calibration_steps", "-1", "threshold_calibration_steps must be >= 0 (0 = auto), got -1"},
    {"text_batch_size", "0", "text_batch_size must be >= 1, got 0"},
    {"context_size", "1", "context_size must be >= 2 (BOS + one token), got 1"},
    {"exclude_special_tokens", "0", "exclude_special_tokens must be true or false, got 0"},
    {"shuffle_buffer_tokens", "100", "shuffle_buffer_tokens must be >= batch_size (256) or 0 (auto), got 100"},
    {"validation_split", "1", "validation_split must be in [0, 1), got 1"},
    {"validation_max_tokens", "0", "validation_max_tokens must be >= 1, got 0"},
    {"dtype", "int8", "dtype must be one of \"float32\", \"bfloat16\", \"float16\", got \"int8\""},
    {"device", "tpu", "device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"tpu\""},
    {"checkpoint_every", "-1", "checkpoint_every must be >= 0 (0 = only at the end), got -1"},
    {"log_every", "0", "log_every must be >= 1, got 0"},
    {"eval_every", "-1", "eval_every must be >= 0 (0 = after each epoch), got -1"},
    {"use_wandb", "\"no\"", "use_wandb must be true or false, got \"no\""},
    {"wandb_project", "\"\"", "wandb_project must be a non-empty string, got \"\""},
    {"wandb_entity", "3", "wandb_entity must be a string, got 3"},
    {"wandb_name", "[1]", "wandb_name must be a string, got [1]"},
    {"wandb_tags", "[1,2]", "wandb_tags must be a list of strings or null, got [1,2]"},
};

TEST(SaeConfig, EveryFieldHasAnInvalidValueTest) {
  std::set<std::string> tested;
  for (const auto& b : kBad) tested.insert(b.field);
  for (const auto& f : SAEConfig::fields()) EXPECT_TRUE(tested.count(f.name)) << "no invalid-value test for " << f.name;
  EXPECT_EQ(tested.size(), SAEConfig::fields().size());
}

TEST(SaeConfig, InvalidValuesGiveTheirMessage) {
  SAEConfig def;
  def.validate();  // the defaults are valid
  for (const auto& b : kBad) {
    std::string msg = error_of([&] {
      SAEConfig c;
      c.set(b.field, b.value);
      c.validate();
    });
    EXPECT_THAT(msg, HasSubstr(b.message)) << "field " << b.field << " = " << b.value;
  }
}

TEST(SaeConfig, GuideMessagesWordForWord) {
  // The troubleshooting guide's ValueError texts, exactly.
  SAEConfig c;
  c.expansion_factor = 0;
  EXPECT_EQ(error_of([&] { c.validate(); }), "expansion_factor must be >= 1, got 0");
  c = SAEConfig();
  c.k = -3;
  EXPECT_EQ(error_of([&] { c.validate(); }), "k must be >= 1, got -3");
  c = SAEConfig();
  c.validation_split = 1.5;
  EXPECT_EQ(error_of([&] { c.validate(); }), "validation_split must be in [0, 1), got 1.5");
}

// Auto shuffle buffer: a whole cached epoch when it fits in 512 MB (a full permutation every epoch, which
// BatchTopK needs: docs/sae-results.md), else at most 131,072 tokens; an explicit size always wins.
TEST(SaeConfig, AutoShuffleBufferTakesAWholeCachedEpochThatFits) {
  SAEConfig c;
  c.batch_size = 256;
  EXPECT_EQ(c.shuffle_buffer_for(64), 131072);                 // streaming
  EXPECT_EQ(c.shuffle_buffer_for(64, 340087), 340087);         // stories260K's cached training split
  EXPECT_EQ(c.shuffle_buffer_for(64, 2097152), 2097152);       // exactly 512 MB of float32 rows
  EXPECT_EQ(c.shuffle_buffer_for(64, 2097153), 131072);        // too big: the streaming rule
  EXPECT_EQ(c.shuffle_buffer_for(4096, 340087), 32768);        // 512 MB / (4 · 4096)
  EXPECT_EQ(c.shuffle_buffer_for(64, 100), 256);               // at least one batch
  c.shuffle_buffer_tokens = 5000;
  EXPECT_EQ(c.shuffle_buffer_for(64, 340087), 5000);
}

TEST(SaeConfig, CrossFieldRules) {
  SAEConfig c;
  c.sae_type = "relu";
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("lambda_sparse must be > 0 for sae_type \"relu\""));
  c.lambda_sparse = 5;
  c.validate();
  c = SAEConfig();
  c.expansion_factor = 2;
  c.k = 200;
  EXPECT_EQ(error_of([&] { c.validate_for(64); }), "k must be <= d_sae (128 = 64 x expansion_factor 2), got 200");
  c.k = 32;
  c.k_aux = 500;
  EXPECT_EQ(error_of([&] { c.validate_for(64); }), "k_aux must be <= d_sae (128), got 500");
}

TEST(SaeConfig, TypesUnknownKeysAndSetSyntax) {
  SAEConfig c;
  EXPECT_EQ(error_of([&] { c.set("k", "\"32\""); }), "--set k=\"32\": k must be an integer, got \"32\"");
  EXPECT_EQ(error_of([&] { c.set("k", "3.5"); }), "--set k=3.5: k must be an integer, got 3.5");
  EXPECT_EQ(error_of([&] { c.set("learning_rate", "fast"); }),
            "--set learning_rate=fast: learning_rate must be a number, got \"fast\"");
  EXPECT_THAT(error_of([&] { c.set("learning_rat", "1"); }),
              HasSubstr("unknown SAEConfig field 'learning_rat' (did you mean 'learning_rate'?)"));
  EXPECT_THAT(error_of([&] { c.set_assignment("k32"); }), HasSubstr("--set: expected key=value"));
  EXPECT_THAT(error_of([&] { c.apply_json(nlohmann::json::array(), "cfg.json"); }),
              HasSubstr("cfg.json: an SAE config must be a JSON object"));
  EXPECT_THAT(error_of([&] { c.apply_json({{"epochs", 3}}, "cfg.json"); }),
              HasSubstr("cfg.json: unknown SAEConfig field 'epochs'"));
  c.set_assignment("sae_type=batchtopk");
  c.set_assignment("gradient_clip=null");
  c.set_assignment("lr_decay_steps=5000");
  c.set_assignment("wandb_tags=[\"a\",\"b\"]");
  c.set_assignment("warmup_steps=1e3");  // an integral float from a JSON file is accepted
  EXPECT_EQ(c.sae_type, "batchtopk");
  EXPECT_FALSE(c.gradient_clip.has_value());
  EXPECT_EQ(*c.lr_decay_steps, 5000);
  EXPECT_EQ(c.wandb_tags->size(), 2u);
  EXPECT_EQ(c.warmup_steps, 1000);
  c.validate();
}

// optimizer_state_dtype: float32 (exact torch AdamW) by default, bfloat16 by --set / JSON; anything else is
// refused with a hint; it round-trips through the JSON stored in the SAE's config.json and checkpoints.
TEST(SaeConfig, OptimizerStateDtype) {
  SAEConfig c;
  EXPECT_EQ(c.optimizer_state_dtype, "float32");
  EXPECT_EQ(c.to_json()["optimizer_state_dtype"], "float32");
  c.set_assignment("optimizer_state_dtype=bfloat16");
  c.validate();
  SAEConfig d = SAEConfig::from_json(nlohmann::json::parse(c.to_json().dump()), "config.json");
  EXPECT_EQ(d.optimizer_state_dtype, "bfloat16");
  EXPECT_EQ(d.to_json(), c.to_json());
  SAEConfig e;
  e.set("optimizer_state_dtype", "bf16");
  EXPECT_EQ(
      error_of([&] { e.validate(); }),
      "optimizer_state_dtype must be one of \"float32\", \"bfloat16\", got \"bf16\" (did you mean \"bfloat16\"?)");
  EXPECT_THAT(error_of([&] {
                SAEConfig e = SAEConfig::from_json({{"optimizer_state_dtype", "int8"}}, "sae.json");
                e.validate();
              }),
              HasSubstr("got \"int8\" (the dtype of W_enc's and W_dec's Adam moments: bfloat16 halves"));
  EXPECT_EQ(error_of([&] { SAEConfig::from_json({{"optimizer_state_dtype", 16}}, "sae.json"); }),
            "sae.json: optimizer_state_dtype must be a string, got 16");
  bool listed = false;
  for (const auto& f : SAEConfig::fields())
    if (f.name == "optimizer_state_dtype") listed = f.type == "str" && f.default_value == "\"float32\"";
  EXPECT_TRUE(listed) << "--help-config should list optimizer_state_dtype (str, default \"float32\")";
}

TEST(SaeConfig, JsonRoundTrip) {
  SAEConfig c;
  c.sae_type = "jumprelu";
  c.lambda_sparse = 1e-3;
  c.k = 64;
  c.gradient_clip = std::nullopt;
  c.wandb_name = "run";
  nlohmann::ordered_json j = c.to_json();
  EXPECT_EQ(j.size(), SAEConfig::fields().size());
  SAEConfig d = SAEConfig::from_json(j, "x");
  EXPECT_EQ(d.to_json(), j);
  // The guide's two example configurations are valid as written.
  SAEConfig quick = SAEConfig::from_json(
      {{"sae_type", "batchtopk"}, {"expansion_factor", 4}, {"k", 64}, {"learning_rate", 3e-4}, {"num_epochs", 1},
       {"batch_size", 64}, {"text_batch_size", 32}, {"warmup_steps", 100}, {"lr_scheduler", "cosine"},
       {"validation_split", 0.1}, {"normalize_input", true}, {"use_ghost_grads", true}, {"gradient_clip", 1.0},
       {"use_wandb", false}},
      "quick");
  quick.validate();
  SAEConfig prod = SAEConfig::from_json(
      {{"sae_type", "batchtopk"}, {"expansion_factor", 32}, {"k", 128}, {"learning_rate", 3e-4}, {"num_epochs", 3},
       {"batch_size", 256}, {"text_batch_size", 32}, {"warmup_steps", 1000}, {"lr_scheduler", "cosine"},
       {"lr_decay_steps", nullptr}, {"sparsity_warm_up_steps", nullptr}, {"use_ghost_grads", true},
       {"feature_sampling_window", 1000}, {"dead_feature_window", 5000}, {"validation_split", 0.05},
       {"normalize_input", true}, {"gradient_clip", 1.0}, {"use_wandb", true}, {"wandb_project", "your-project"},
       {"checkpoint_every", 5000}},
      "production");
  prod.validate();
}

}  // namespace
