// Ready-made interventions (interventions.hpp).
#include "mlxterp/interventions.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::iv {

namespace {

// The sequence axis of a site's tensor: 2 for attention weights [b, h, t, t_k], else 1; -1 if none.
int seq_axis(const at::Tensor& x, const SiteCall& call) {
  if (x.dim() < 2) return -1;
  if (call.info && ends_with(call.info->component, "attention_weights")) return x.dim() >= 3 ? 2 : -1;
  return 1;
}

// A tensor converted once per (device, dtype) and reused by every call.
class Cached {
 public:
  explicit Cached(at::Tensor t) : src_(std::move(t)) {}
  const at::Tensor& like(const at::Tensor& x) {
    if (!conv_.defined() || conv_.device() != x.device() || conv_.scalar_type() != x.scalar_type())
      conv_ = src_.to(x.device(), x.scalar_type());
    return conv_;
  }
  const at::Tensor& src() const { return src_; }

 private:
  at::Tensor src_, conv_;
};

// Boolean mask broadcastable to x, true at the given absolute positions along the sequence axis.
at::Tensor position_mask(const at::Tensor& x, const SiteCall& call, const std::vector<int64_t>& positions) {
  int ax = seq_axis(x, call);
  MLXTERP_CHECK(ax >= 0, "intervention at positions: site '", call.info ? call.info->name : "?",
                "' has no sequence axis (shape ", shape_str(x.sizes()), ")");
  const int64_t t = x.size(ax), total = call.pos_offset + t;
  std::vector<uint8_t> keep(size_t(t), 0);
  for (int64_t p : positions) {
    int64_t a = p < 0 ? total + p : p;
    int64_t local = a - call.pos_offset;
    if (local >= 0 && local < t) keep[size_t(local)] = 1;
  }
  std::vector<int64_t> shape(size_t(x.dim()), 1);
  shape[size_t(ax)] = t;
  return at::tensor(keep, at::kByte).to(at::kBool).view(shape).to(x.device());
}

}  // namespace

InterventionFn zero() {
  return [](const at::Tensor& x, const SiteCall&) { return at::zeros_like(x); };
}

InterventionFn scale(double factor) {
  return [factor](const at::Tensor& x, const SiteCall&) { return x * factor; };
}

InterventionFn add_vector(const at::Tensor& v0) {
  MLXTERP_CHECK(v0.defined() && v0.dim() >= 1 && v0.dim() <= 3, "iv::add_vector: expected a vector [d], [t, d] or [b, t, d], got ",
                v0.defined() ? shape_str(v0.sizes()) : std::string("an undefined tensor"));
  auto c = std::make_shared<Cached>(v0.detach());
  return [c](const at::Tensor& x, const SiteCall& call) {
    const at::Tensor& v = c->like(x);
    MLXTERP_CHECK(v.size(-1) == x.size(-1), "iv::add_vector on '", call.info ? call.info->name : "?", "': the vector has ",
                  v.size(-1), " features; expected ", x.size(-1), " (the site's shape is ", shape_str(x.sizes()), ")");
    if (v.dim() == 1) return x + v;
    // [t_v, d] or [b, t_v, d]: absolute positions 0..t_v-1.
    MLXTERP_CHECK(x.dim() == 3, "iv::add_vector: a per-position vector needs a [b, t, d] site, got ",
                  shape_str(x.sizes()));
    at::Tensor vv = v.dim() == 2 ? v.unsqueeze(0) : v;
    MLXTERP_CHECK(vv.size(0) == 1 || vv.size(0) == x.size(0), "iv::add_vector: the vector's batch is ", vv.size(0),
                  "; expected 1 or ", x.size(0));
    const int64_t t = x.size(1), lo = call.pos_offset, hi = std::min(lo + t, vv.size(1));
    if (hi <= lo) return x;
    at::Tensor out = x.clone();
    out.narrow(1, 0, hi - lo).add_(vv.narrow(1, lo, hi - lo));
    return out;
  };
}

InterventionFn replace_with(const at::Tensor& value, Align align) {
  MLXTERP_CHECK(value.defined(), "iv::replace_with: the value is an undefined tensor");
  auto c = std::make_shared<Cached>(value.detach());
  return [c, align](const at::Tensor& x, const SiteCall& call) -> at::Tensor {
    const at::Tensor& v = c->like(x);
    const std::string where = call.info ? call.info->name : "?";
    if (v.sizes() == x.sizes() && call.pos_offset == 0) return v.clone();
    int ax = seq_axis(x, call);
    if (ax < 0 || v.dim() != x.dim()) return v.expand(x.sizes()).clone();  // broadcast fallback ([d] etc.)
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (d == ax) continue;
      bool ok = v.size(d) == x.size(d) || (d == 0 && v.size(0) == 1);
      MLXTERP_CHECK(ok, "iv::replace_with on '", where, "': replacement has shape ", shape_str(v.sizes()),
                    " but target has shape ", shape_str(x.sizes()), "; expected them to agree except along the sequence axis");
    }
    const int64_t tx = x.size(ax), tv = v.size(ax);
    if (align == Align::Strict) {
      MLXTERP_CHECK(tv == tx && call.pos_offset == 0, "Shape mismatch on '", where, "': replacement has shape ",
                    shape_str(v.sizes()), " but target has shape ", shape_str(x.sizes()),
                    (call.pos_offset ? " (at position offset " + std::to_string(call.pos_offset) + ")" : std::string()),
                    ". Use align='end' or align='start' to handle different sequence lengths.");
    }
    at::Tensor out = x.clone();
    int64_t x0, v0, n;
    if (align == Align::Start || align == Align::Strict) {
      // value position j -> absolute position j
      v0 = call.pos_offset;
      x0 = 0;
      n = std::min(tx, tv - v0);
    } else {
      n = std::min(tx, tv);
      x0 = tx - n;
      v0 = tv - n;
    }
    if (n <= 0) return out;
    out.narrow(ax, x0, n).copy_(v.narrow(ax, v0, n).expand_as(out.narrow(ax, x0, n)));
    return out;
  };
}

InterventionFn replace_with(double value) {
  return [value](const at::Tensor& x, const SiteCall&) { return at::full_like(x, value); };
}

InterventionFn clamp(std::optional<double> lo, std::optional<double> hi) {
  MLXTERP_CHECK(!(lo && hi) || *lo <= *hi, "iv::clamp: the lower bound ", lo.value_or(0), " is above the upper bound ",
                hi.value_or(0));
  return [lo, hi](const at::Tensor& x, const SiteCall&) {
    at::Tensor y = x;
    if (lo) y = at::clamp_min(y, *lo);
    if (hi) y = at::clamp_max(y, *hi);
    return y;
  };
}

InterventionFn noise(double std, uint64_t seed) {
  MLXTERP_CHECK(std >= 0 && std::isfinite(std), "iv::noise: the standard deviation must be >= 0, got ", std);
  auto gen = std::make_shared<at::Generator>(at::detail::createCPUGenerator(seed));
  return [gen, std](const at::Tensor& x, const SiteCall&) {
    // at::randn takes the generator's own lock.
    at::Tensor n = at::randn(x.sizes(), *gen, at::TensorOptions().dtype(at::kFloat));
    return x + (n * std).to(x.device(), x.scalar_type());
  };
}

InterventionFn compose(std::vector<InterventionFn> fns) {
  for (const auto& f : fns) MLXTERP_CHECK(f != nullptr, "iv::compose: an empty function in the chain");
  return [fns = std::move(fns)](const at::Tensor& x, const SiteCall& call) {
    at::Tensor y = x;
    for (const auto& f : fns) y = f(y, call);
    return y;
  };
}

InterventionFn fn(std::function<at::Tensor(const at::Tensor&)> f) {
  MLXTERP_CHECK(f != nullptr, "iv::fn: an empty function");
  return [f = std::move(f)](const at::Tensor& x, const SiteCall&) { return f(x); };
}

InterventionFn at_positions(InterventionFn f, std::vector<int64_t> positions) {
  MLXTERP_CHECK(f != nullptr, "iv::at_positions: an empty function");
  return [f = std::move(f), positions = std::move(positions)](const at::Tensor& x, const SiteCall& call) {
    at::Tensor m = position_mask(x, call, positions);
    if (!m.any().item<bool>()) return x;
    return at::where(m, f(x, call), x);
  };
}

InterventionFn at_position_range(InterventionFn f, int64_t start, int64_t end) {
  MLXTERP_CHECK(f != nullptr, "iv::at_position_range: an empty function");
  return [f = std::move(f), start, end](const at::Tensor& x, const SiteCall& call) {
    int ax = seq_axis(x, call);
    MLXTERP_CHECK(ax >= 0, "iv::at_position_range: site has no sequence axis (shape ", shape_str(x.sizes()), ")");
    const int64_t total = call.pos_offset + x.size(ax);
    int64_t a = start < 0 ? total + start : start, b = end < 0 ? total + end : end;
    std::vector<int64_t> pos;
    for (int64_t p = std::max<int64_t>(a, call.pos_offset); p < std::min(b, total); ++p) pos.push_back(p);
    if (pos.empty()) return x;
    return at::where(position_mask(x, call, pos), f(x, call), x);
  };
}

InterventionFn at_sequences(InterventionFn f, std::vector<int64_t> rows) {
  MLXTERP_CHECK(f != nullptr, "iv::at_sequences: an empty function");
  return [f = std::move(f), rows = std::move(rows)](const at::Tensor& x, const SiteCall& call) {
    MLXTERP_CHECK(x.dim() >= 1, "iv::at_sequences: site has no batch axis");
    std::vector<uint8_t> keep(size_t(x.size(0)), 0);
    for (int64_t r : rows) {
      int64_t a = r < 0 ? x.size(0) + r : r;
      MLXTERP_CHECK(a >= 0 && a < x.size(0), "iv::at_sequences: row ", r, " is out of range; the batch has ", x.size(0),
                    " sequences");
      keep[size_t(a)] = 1;
    }
    std::vector<int64_t> shape(size_t(x.dim()), 1);
    shape[0] = x.size(0);
    at::Tensor m = at::tensor(keep, at::kByte).to(at::kBool).view(shape).to(x.device());
    return at::where(m, f(x, call), x);
  };
}

InterventionFn at_heads(InterventionFn f, std::vector<int64_t> heads, int64_t n_heads) {
  MLXTERP_CHECK(f != nullptr, "iv::at_heads: an empty function");
  MLXTERP_CHECK(n_heads > 0, "iv::at_heads: n_heads must be > 0, got ", n_heads);
  for (int64_t h : heads)
    MLXTERP_CHECK(h >= 0 && h < n_heads, "iv::at_heads: head ", h, " is out of range; expected 0 .. ", n_heads - 1);
  return [f = std::move(f), heads = std::move(heads), n_heads](const at::Tensor& x, const SiteCall& call) {
    std::vector<uint8_t> keep(size_t(n_heads), 0);
    for (int64_t h : heads) keep[size_t(h)] = 1;
    at::Tensor hm = at::tensor(keep, at::kByte).to(at::kBool).to(x.device());
    at::Tensor m;
    const bool weights = call.info && ends_with(call.info->component, "attention_weights");
    if (weights) {
      MLXTERP_CHECK(x.dim() == 4 && x.size(1) == n_heads, "iv::at_heads: attention weights of shape ",
                    shape_str(x.sizes()), " do not have ", n_heads, " heads on axis 1");
      m = hm.view({1, n_heads, 1, 1});
    } else if (x.dim() == 4) {
      MLXTERP_CHECK(x.size(2) == n_heads, "iv::at_heads: site of shape ", shape_str(x.sizes()), " does not have ",
                    n_heads, " heads on axis 2");
      m = hm.view({1, 1, n_heads, 1});
    } else {
      MLXTERP_CHECK(x.dim() == 3 && x.size(2) % n_heads == 0, "iv::at_heads: site '", call.info ? call.info->name : "?",
                    "' of shape ", shape_str(x.sizes()), " is not a per-head site with ", n_heads,
                    " heads (expected [b, t, n_heads * d_head], e.g. self_attn.z)");
      const int64_t d_head = x.size(2) / n_heads;
      m = hm.repeat_interleave(d_head).view({1, 1, n_heads * d_head});
    }
    return at::where(m, f(x, call), x);
  };
}

InterventionFn sae_edit(SaeCodec codec, std::vector<LatentEdit> edits, bool keep_error) {
  MLXTERP_CHECK(codec.encode && codec.decode, "iv::sae_edit: the SAE codec needs both encode and decode");
  for (const auto& e : edits) {
    MLXTERP_CHECK(e.latent >= 0 && (codec.d_sae == 0 || e.latent < codec.d_sae), "iv::sae_edit: latent ", e.latent,
                  " is out of range; expected 0 .. ", codec.d_sae - 1);
  }
  return [codec = std::move(codec), edits = std::move(edits), keep_error](const at::Tensor& x, const SiteCall& call) {
    at::Tensor z = codec.encode(x);  // [..., d_sae]
    at::Tensor recon = codec.decode(z);
    MLXTERP_CHECK(recon.sizes() == x.sizes(), "iv::sae_edit on '", call.info ? call.info->name : "?",
                  "': the SAE reconstructs shape ", shape_str(recon.sizes()), "; expected the site's shape ",
                  shape_str(x.sizes()));
    at::Tensor ze = z.clone();
    for (const auto& e : edits) {
      MLXTERP_CHECK(e.latent < ze.size(-1), "iv::sae_edit: latent ", e.latent, " is out of range; the SAE has ",
                    ze.size(-1), " latents");
      at::Tensor col = ze.select(-1, e.latent);
      switch (e.kind) {
        case LatentEdit::Kind::Ablate: col.zero_(); break;
        case LatentEdit::Kind::Clamp: col.fill_(e.value); break;
        case LatentEdit::Kind::Amplify: col.mul_(e.value); break;
      }
    }
    at::Tensor edited = codec.decode(ze);
    if (!keep_error) return edited.to(x.scalar_type());
    // x + (decode(z') - decode(z)): exact identity when nothing changes, error term kept.
    return (x + (edited - recon)).to(x.scalar_type());
  };
}

}  // namespace mlxterp::iv
