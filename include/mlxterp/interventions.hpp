// mlxterp/interventions.hpp — ready-made edits for any site: x -> f(x) during a forward pass.
//
//   namespace iv = mlxterp::iv;
//   mlxterp::TraceOptions o;
//   o.interventions.push_back({"model.layers.2.mlp", iv::zero()});                         // ablate an MLP
//   o.interventions.push_back({"model.layers.3", iv::add_vector(steer * 4.0)});            // steer ([d_model])
//   o.interventions.push_back({"model.layers.1.self_attn.z", iv::at_heads(iv::zero(), {5}, n_heads)});  // one head
//   o.interventions.push_back({"model.embed_tokens", iv::at_positions(iv::noise(0.3, 42), {1, 2, 3})});
//   o.interventions.push_back({"model.layers.4", iv::replace_with(clean_resid, iv::Align::Strict)});
//   auto r = m.trace_ids(ids, {}, o);
//
//   // The CLI's --intervene forms:
//   auto [site, fn] = iv::parse_intervention("model.layers.3=add:v.safetensors*4", m.model());
//
// Every function returns an InterventionFn (model.hpp): fn(x, SiteCall) -> tensor of x's shape. Any C++
// callable with that signature is an intervention too; iv::fn wraps one that ignores the SiteCall.
//
// Positions. A site's sequence axis is 1 ([b, t, ...]), or 2 for attention weights ([b, h, t, t_k]).
// Positions are ABSOLUTE: during KV-cached generation each call sees only the new tokens, and
// SiteCall::pos_offset says where they start; at_positions, add_vector with a [t, d] vector and
// replace_with (Align::Start) use it, so an edit "at position 3" lands on token 3 of the whole text,
// whichever forward call carries it. Negative positions count from the end of the text seen so far
// (pos_offset + t): -1 is the newest token.
//
// Interventions compose in order when several are registered on one site (Hooks::intervene), and
// iv::compose builds the same chain as one function.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mlxterp/model.hpp"

namespace mlxterp::iv {

// ---- basic edits ----------------------------------------------------------------------------------

InterventionFn zero();                   // zeros_like(x)
InterventionFn scale(double factor);     // x * factor
// x + v. v: [d] added at every position; [t, d] or [1|b, t, d] added at absolute positions 0..t-1
// (positions beyond t are left alone). Moved to x's device and dtype.
InterventionFn add_vector(const at::Tensor& v);

// How a replacement with a different sequence length lines up with x.
enum class Align {
  End,     // the value's last position onto x's last position (the original's default)
  Start,   // value position j onto absolute position j (works across KV-cached calls)
  Strict,  // lengths must match (and the call must start at position 0), else an error
};
// Replaces x by `value` ([.., t_v, ..] of x's shape up to the sequence length; batch 1 broadcasts).
InterventionFn replace_with(const at::Tensor& value, Align align = Align::End);
InterventionFn replace_with(double value);  // full_like(x, value)

// min(max(x, lo), hi); either bound may be absent.
InterventionFn clamp(std::optional<double> lo, std::optional<double> hi);
// x + std * N(0, 1). Seeded: the same seed gives the same noise on every device; each call advances
// the generator (so the tokens of a generation each get fresh noise).
InterventionFn noise(double std, uint64_t seed = 0);

// Left-to-right composition: compose({f, g})(x) == g(f(x)).
InterventionFn compose(std::vector<InterventionFn> fns);
class Composer {
 public:
  Composer& add(InterventionFn f) {
    fns_.push_back(std::move(f));
    return *this;
  }
  InterventionFn build() const { return compose(fns_); }

 private:
  std::vector<InterventionFn> fns_;
};
// Wraps a plain tensor function (no SiteCall).
InterventionFn fn(std::function<at::Tensor(const at::Tensor&)> f);

// ---- restrictions -----------------------------------------------------------------------------------

// Applies f, then keeps its result only at these absolute positions (see the header comment).
InterventionFn at_positions(InterventionFn f, std::vector<int64_t> positions);
// Positions in [start, end) (absolute; end < 0 counts from the end of the text seen so far).
InterventionFn at_position_range(InterventionFn f, int64_t start, int64_t end);
// Only these batch rows (sequences).
InterventionFn at_sequences(InterventionFn f, std::vector<int64_t> rows);
// Only these heads of a per-head site: [b, t, n_heads * d_head] (self_attn.z, q_proj; heads are
// contiguous d_head slices), [b, t, n_heads, d_head] (q_norm) or [b, n_heads, t, t_k] (attention weights).
InterventionFn at_heads(InterventionFn f, std::vector<int64_t> heads, int64_t n_heads);

// ---- SAE latent edits ---------------------------------------------------------------------------------

// The two functions an SAE must offer. encode: [..., d_in] -> [..., d_sae] latent activations (after
// the nonlinearity); decode: [..., d_sae] -> [..., d_in] (including b_dec).
struct SaeCodec {
  std::function<at::Tensor(const at::Tensor&)> encode;
  std::function<at::Tensor(const at::Tensor&)> decode;
  int64_t d_sae = 0;  // 0 = unknown (latent indices then checked against the encoded width)
};
// Any SAE type with `at::Tensor encode(const at::Tensor&) const` and `decode(...) const`.
template <class Sae>
SaeCodec sae_codec(std::shared_ptr<const Sae> sae, int64_t d_sae = 0) {
  return SaeCodec{[sae](const at::Tensor& x) { return sae->encode(x); },
                  [sae](const at::Tensor& z) { return sae->decode(z); }, d_sae};
}

struct LatentEdit {
  enum class Kind { Ablate, Clamp, Amplify };
  Kind kind = Kind::Ablate;
  int64_t latent = 0;
  double value = 0;  // Clamp: the value set; Amplify: the factor
};
inline LatentEdit ablate_latent(int64_t latent) { return {LatentEdit::Kind::Ablate, latent, 0}; }
inline LatentEdit clamp_latent(int64_t latent, double value) { return {LatentEdit::Kind::Clamp, latent, value}; }
inline LatentEdit amplify_latent(int64_t latent, double factor) { return {LatentEdit::Kind::Amplify, latent, factor}; }

// x -> decode(edit(encode(x))) + (x - decode(encode(x))): the SAE's reconstruction error is kept, so
// with no edit the site is unchanged (up to float rounding) and only the edited latents move.
// keep_error = false drops the error term (x replaced by the edited reconstruction).
InterventionFn sae_edit(SaeCodec codec, std::vector<LatentEdit> edits, bool keep_error = true);

// ---- command-line specs -------------------------------------------------------------------------------

// Parses one `--intervene` SPEC (CLI.md) against a model:
//   SITE=zero | SITE=scale:F | SITE=clamp:LO:HI | SITE=noise:STD[:SEED]
//   SITE=add:FILE.safetensors[:TENSOR][*STRENGTH] | SITE=replace:FILE.safetensors[:TENSOR]
// SITE is any site name or alias (checked now; unknown names list close matches). LO or HI may be
// empty ("clamp::5"). Without :TENSOR the file must hold one tensor, or one named like the site
// (any of its names), e.g. what `mlxterp steer compute` writes. add: also takes a GGUF control
// vector (FILE.gguf): the site must be a block output model.layers.N and direction.N is added.
// replace: lines the stored tensor up by absolute position (Align::Start: stored position j replaces
// token j, also during KV-cached generation); a [d] vector replaces every position.
// Returns {canonical site name, intervention}. Throws mlxterp::Error naming the spec on any problem.
std::pair<std::string, InterventionFn> parse_intervention(std::string_view spec, const Model& model);

// Extra ACTION forms contributed by other modules (e.g. the SAE latent forms `sae:DIR:LATENT:clamp:V`, registered
// by src/sae_eval/steering.cpp). `verb` is ACTION up to its first ':'; the parser gets what follows it, the
// resolved site and the whole spec (for messages). `usage` is listed in parse_intervention's error messages.
using InterventionFormParser =
    std::function<InterventionFn(const std::string& arg, int site, const Model& model, const std::string& spec)>;
bool register_intervention_form(const std::string& verb, const std::string& usage, InterventionFormParser parser);

}  // namespace mlxterp::iv
