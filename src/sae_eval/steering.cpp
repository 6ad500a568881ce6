// Feature steering from the command line: the `--intervene SITE=sae:DIR:LATENTS:EDIT` forms.
//
//   SITE=sae:DIR:LATENTS:clamp:VALUE   set the latents to VALUE at every position (Anthropic-style feature clamping)
//   SITE=sae:DIR:LATENTS:scale:F       multiply them by F
//   SITE=sae:DIR:LATENTS:ablate        set them to 0
// LATENTS is one index or a comma list ("12,40"). The site's activation x becomes
// x + decode(z') - decode(z) with z = encode(x) and z' the edited latents: the SAE's reconstruction error is kept,
// so only the edited latents' decoder directions move the activation (iv::sae_edit). DIR is any SAE directory
// (native, SAELens, sparsify) and may itself contain ':'.
#include <memory>

#include "mlxterp/error.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/sae.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

const char* kUsage = "sae:DIR:LATENT[,LATENT...]:clamp:VALUE | sae:DIR:LATENT:scale:F | sae:DIR:LATENT:ablate";

InterventionFn parse_sae_form(const std::string& arg, int site, const Model& model, const std::string& spec) {
  auto parts = split(arg, ':');
  auto bad = [&](const std::string& what) {
    MLXTERP_FAIL("--intervene ", quote(spec), ": ", what, "; expected ", kUsage);
  };
  if (parts.size() < 3) bad("too few fields");
  // From the right: [..DIR..] LATENTS clamp VALUE | [..DIR..] LATENTS scale F | [..DIR..] LATENTS ablate
  std::string verb;
  double value = 0;
  size_t latents_at = 0;
  if (parts.back() == "ablate") {
    verb = "ablate";
    latents_at = parts.size() - 2;
  } else if (parts.size() >= 4 && (parts[parts.size() - 2] == "clamp" || parts[parts.size() - 2] == "scale")) {
    verb = parts[parts.size() - 2];
    try {
      value = parse_float(trim(parts.back()), "value");
    } catch (const Error&) {
      bad(cat("the ", verb, " value must be a number, got '", parts.back(), "'"));
    }
    latents_at = parts.size() - 3;
  } else {
    bad(cat("unknown latent edit '", parts.back(), "'"));
  }
  if (latents_at == 0) bad("no SAE directory");
  std::vector<std::string> dir_parts(parts.begin(), parts.begin() + std::ptrdiff_t(latents_at));
  const std::string dir = join(dir_parts, ":");
  MLXTERP_CHECK(is_directory(dir), "--intervene ", quote(spec), ": SAE directory '", dir, "' not found; expected ", kUsage);
  auto sae = std::make_shared<SAE>(SAE::load(dir).to(model.device()));
  std::vector<iv::LatentEdit> edits;
  for (const auto& t : split(parts[latents_at], ',')) {
    int64_t latent = 0;
    try {
      latent = parse_int(trim(t), "latent");
    } catch (const Error&) {
      bad(cat("latent '", t, "' is not an integer"));
    }
    MLXTERP_CHECK(latent >= 0 && latent < sae->d_sae, "--intervene ", quote(spec), ": latent ", latent,
                  " is out of range; expected 0 .. ", sae->d_sae - 1, " (", dir, " has ", sae->d_sae, " latents)");
    edits.push_back(verb == "ablate"  ? iv::ablate_latent(latent)
                    : verb == "clamp" ? iv::clamp_latent(latent, value)
                                      : iv::amplify_latent(latent, value));
  }
  InterventionFn edit = iv::sae_edit(iv::sae_codec<SAE>(sae, sae->d_sae), edits, /*keep_error=*/true);
  const int64_t d_in = sae->d_in;
  const std::string site_name = model.sites()[site].name;
  return [edit, d_in, site_name, dir](const at::Tensor& x, const SiteCall& call) {
    // Per-head sites [b, t, h, d_head] are flattened to the SAE's [b, t, d_in] and back.
    const int64_t per_token = x.dim() >= 2 ? x.numel() / std::max<int64_t>(1, x.size(0) * x.size(1)) : x.size(-1);
    MLXTERP_CHECK(per_token == d_in, "--intervene sae:", dir, ": site '", site_name, "' has ", per_token,
                  " values per token; expected the SAE's d_in = ", d_in, " (is the SAE for another site?)");
    if (x.dim() == 3) return edit(x, call);
    return edit(x.reshape({x.size(0), x.size(1), d_in}), call).view(x.sizes());
  };
}

const bool registered = iv::register_intervention_form("sae", kUsage, parse_sae_form);

}  // namespace

}  // namespace mlxterp
