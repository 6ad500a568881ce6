// The TopK / BatchTopK SAE step in plain libtorch ops (the reference every CUDA kernel is tested
// against), the backend choice, and the CPU side of the device helpers. Compiled in every build.
#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/torch_compat.hpp"  // at::NoGradGuard on libtorch 2.x

#include <cfloat>
#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"
#include "cuda/sae_kernels_internal.hpp"

namespace mlxterp::sae_kernels {

// ---- parameters ---------------------------------------------------------------------------------------

Params Params::init(int64_t d_in, int64_t d_sae, at::Device device, uint64_t seed) {
  MLXTERP_CHECK(d_in > 0 && d_sae > 0, "sae_kernels::Params::init: d_in and d_sae must be > 0; got ", d_in, " and ",
                d_sae);
  at::manual_seed(seed);
  auto opt = at::TensorOptions().dtype(at::kFloat).device(device);
  const double bound = 1.0 / std::sqrt(double(d_in));  // nn.Linear's default (kaiming-uniform) range
  Params p;
  p.W_enc = at::rand({d_sae, d_in}, opt).mul_(2 * bound).sub_(bound);
  p.W_dec = p.W_enc / (p.W_enc.norm(2, {1}, true) + FLT_EPSILON);
  p.b_enc = at::zeros({d_sae}, opt);
  p.b_dec = at::zeros({d_in}, opt);
  return p;
}

Params Params::clone() const { return {W_enc.clone(), b_enc.clone(), W_dec.clone(), b_dec.clone()}; }

AdamState AdamState::zeros_like(const Params& p, at::ScalarType moment_dtype) {
  MLXTERP_CHECK(moment_dtype == at::kFloat || moment_dtype == at::kBFloat16,
                "sae_kernels::AdamState::zeros_like: moment dtype must be float32 or bfloat16; got ",
                dtype_str(moment_dtype));
  auto mat = [&](const at::Tensor& w) { return at::zeros(w.sizes(), w.options().dtype(moment_dtype)); };
  return {mat(p.W_enc), mat(p.W_enc), at::zeros_like(p.b_enc), at::zeros_like(p.b_enc),
          mat(p.W_dec), mat(p.W_dec), at::zeros_like(p.b_dec), at::zeros_like(p.b_dec)};
}

// ---- bfloat16 moments: the stochastic rounding's random bits (see the header) ---------------------------

namespace {

constexpr int64_t kMask32 = 0xffffffffLL;

uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// (x * c) mod 2^32 for int64 tensors holding values in [0, 2^32), without overflowing int64.
at::Tensor mul32(const at::Tensor& x, uint32_t c) {
  at::Tensor lo = x * int64_t(c & 0xffffu);
  at::Tensor hi = (x * int64_t(c >> 16)).bitwise_and_(0xffff).mul_(65536);
  return lo.add_(hi).bitwise_and_(kMask32);
}

at::Tensor fmix32(at::Tensor h) {
  h = h.bitwise_xor(h.div(65536, "floor"));
  h = mul32(h, 0x85EBCA6Bu);
  h = h.bitwise_xor(h.div(8192, "floor"));
  h = mul32(h, 0xC2B2AE35u);
  return h.bitwise_xor(h.div(65536, "floor"));
}

}  // namespace

uint32_t moment_seed(int64_t step, int matrix) {
  return fmix32(uint32_t(step) * 0x9E3779B9u + uint32_t(matrix) * 0x632BE5ABu + 0x2545F491u);
}

at::Tensor moment_hash(int64_t numel, uint32_t seed, at::Device device) {
  return moment_hash(at::arange(numel, at::TensorOptions().dtype(at::kLong).device(device)), seed);
}

at::Tensor moment_hash(const at::Tensor& index, uint32_t seed) {
  MLXTERP_CHECK(index.scalar_type() == at::kLong, "sae_kernels::moment_hash: index must be int64; got ",
                dtype_str(index.scalar_type()));
  const at::Tensor& i = index;
  at::Tensor lo = i.bitwise_and(kMask32), hi = i.div(int64_t(1) << 32, "floor");
  at::Tensor s = mul32(hi, 0x85EBCA77u).add_(int64_t(seed)).bitwise_and_(kMask32);
  return fmix32(mul32(lo, 0x9E3779B9u).bitwise_xor_(s));
}

std::pair<at::Tensor, at::Tensor> round_moments_bf16(const at::Tensor& m32, const at::Tensor& v32, int64_t step,
                                                     int matrix) {
  const at::Tensor h = moment_hash(m32.numel(), moment_seed(step, matrix), m32.device());
  return {round_bf16_stochastic(m32, h, /*high=*/false), round_bf16_stochastic(v32, h, /*high=*/true)};
}

at::Tensor round_bf16_stochastic(const at::Tensor& x, const at::Tensor& hash, bool high) {
  MLXTERP_CHECK(x.scalar_type() == at::kFloat && hash.numel() == x.numel(),
                "sae_kernels::round_bf16_stochastic: needs float32 x and one hash per element; got ",
                dtype_str(x.scalar_type()), " with ", hash.numel(), " hashes for ", x.numel(), " elements");
  at::Tensor r = high ? hash.div(65536, "floor") : hash.bitwise_and(0xffff);
  at::Tensor bits = x.contiguous().view(at::kInt).to(at::kLong).bitwise_and_(kMask32).reshape(-1);
  at::Tensor up = bits.add_(r).div_(65536, "floor").to(at::kInt).to(at::kShort);  // wraps to int16 bit patterns
  at::Tensor out = up.view(at::kBFloat16).reshape(x.sizes());
  return at::where(at::isnan(x), x.to(at::kBFloat16), out);
}

AdamState AdamState::clone() const {
  return {W_enc_m.clone(), W_enc_v.clone(), b_enc_m.clone(), b_enc_v.clone(),
          W_dec_m.clone(), W_dec_v.clone(), b_dec_m.clone(), b_dec_v.clone()};
}

namespace detail {

void check_step_inputs(const Params& p, const AdamState& s, const at::Tensor& since_fired, const at::Tensor& x,
                       const StepConfig& c, const char* where) {
  MLXTERP_CHECK(p.W_enc.defined() && p.W_enc.dim() == 2, where, ": W_enc must be [d_sae, d_in]");
  const int64_t F = p.W_enc.size(0), d = p.W_enc.size(1);
  const at::ScalarType mdt = s.W_enc_m.defined() ? s.W_enc_m.scalar_type() : at::kFloat;
  MLXTERP_CHECK(mdt == at::kFloat || mdt == at::kBFloat16, where,
                ": Adam W_enc_m must be float32 or bfloat16; got ", dtype_str(mdt));
  auto shape_is = [&](const at::Tensor& t, std::vector<int64_t> want, const char* name,
                      at::ScalarType dt = at::kFloat) {
    MLXTERP_CHECK(t.defined() && t.sizes().vec() == want, where, ": ", name, " has shape ",
                  t.defined() ? shape_str(t.sizes()) : "(undefined)", "; expected ", shape_str(want));
    MLXTERP_CHECK(t.scalar_type() == dt, where, ": ", name, " must be ", dtype_str(dt), "; got ",
                  dtype_str(t.scalar_type()),
                  " (master weights and bias moments are float32; the four weight-matrix moments share one dtype)");
    MLXTERP_CHECK(t.device() == p.W_enc.device(), where, ": ", name, " is on ", t.device().str(), "; expected ",
                  p.W_enc.device().str(), " like W_enc");
  };
  shape_is(p.W_enc, {F, d}, "W_enc");
  shape_is(p.W_dec, {F, d}, "W_dec");
  shape_is(p.b_enc, {F}, "b_enc");
  shape_is(p.b_dec, {d}, "b_dec");
  shape_is(s.W_enc_m, {F, d}, "Adam W_enc_m", mdt);
  shape_is(s.W_enc_v, {F, d}, "Adam W_enc_v", mdt);
  shape_is(s.W_dec_m, {F, d}, "Adam W_dec_m", mdt);
  shape_is(s.W_dec_v, {F, d}, "Adam W_dec_v", mdt);
  shape_is(s.b_enc_m, {F}, "Adam b_enc_m");
  shape_is(s.b_enc_v, {F}, "Adam b_enc_v");
  shape_is(s.b_dec_m, {d}, "Adam b_dec_m");
  shape_is(s.b_dec_v, {d}, "Adam b_dec_v");
  MLXTERP_CHECK(since_fired.defined() && since_fired.sizes().vec() == std::vector<int64_t>{F} &&
                    since_fired.scalar_type() == at::kLong && since_fired.device() == p.W_enc.device(),
                where, ": since_fired must be int64 [", F, "] on ", p.W_enc.device().str(), "; got ",
                since_fired.defined() ? dtype_str(since_fired.scalar_type()) + " " + shape_str(since_fired.sizes())
                                      : std::string("(undefined)"));
  MLXTERP_CHECK(x.defined() && x.dim() == 2 && x.size(1) == d, where, ": x must be [n_tokens, ", d, "]; got ",
                x.defined() ? shape_str(x.sizes()) : "(undefined)");
  MLXTERP_CHECK(x.size(0) > 0, where, ": x has no rows");
  MLXTERP_CHECK(at::isFloatingType(x.scalar_type()), where, ": x must be a floating-point tensor; got ",
                dtype_str(x.scalar_type()));
  MLXTERP_CHECK(x.device() == p.W_enc.device(), where, ": x is on ", x.device().str(), "; the SAE is on ",
                p.W_enc.device().str());
  MLXTERP_CHECK(c.k >= 1 && c.k <= F, where, ": k must be in [1, d_sae = ", F, "]; got ", c.k);
  MLXTERP_CHECK(c.step >= 1, where, ": step (Adam's t) must be >= 1; got ", c.step);
  MLXTERP_CHECK(c.lr >= 0 && c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1 && c.eps > 0, where,
                ": Adam settings out of range (lr ", c.lr, ", betas ", c.beta1, ", ", c.beta2, ", eps ", c.eps, ")");
  MLXTERP_CHECK(c.aux_dense_cap >= -1, where,
                ": aux_dense_cap must be -1 (sized from the dead count), 0 (off) or a count; got ", c.aux_dense_cap);
  MLXTERP_CHECK(c.auxk_coef >= 0 && (c.auxk_coef == 0 || c.k_aux >= 1), where,
                ": AuxK needs auxk_coef >= 0 and k_aux >= 1; got auxk_coef ", c.auxk_coef, ", k_aux ", c.k_aux);
  MLXTERP_CHECK(!c.allow_update.defined() || c.allow_update.numel() == 1, where,
                ": allow_update must be a one-element tensor; got ", shape_str(c.allow_update.sizes()));
  MLXTERP_CHECK(c.compute_dtype == at::kBFloat16 || c.compute_dtype == at::kFloat || c.compute_dtype == at::kHalf,
                where, ": compute_dtype must be bfloat16, float16 or float32; got ", dtype_str(c.compute_dtype));
}

}  // namespace detail

namespace {

// Rows of `mask` [N, F] -> CSR (row_ptr, latents, values) in (row, latent) order.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_to_csr(const at::Tensor& mask, const at::Tensor& acts) {
  at::Tensor nz = mask.nonzero();  // [P, 2] row-major order
  at::Tensor row_ptr = at::zeros({mask.size(0) + 1}, mask.options().dtype(at::kLong));
  row_ptr.narrow(0, 1, mask.size(0)).copy_(mask.sum(1).cumsum(0));
  return {row_ptr, nz.select(1, 1).contiguous(), acts.masked_select(mask)};
}

// Token of each CSR entry.
at::Tensor csr_rows(const at::Tensor& row_ptr, int64_t total) {
  at::Tensor counts = row_ptr.narrow(0, 1, row_ptr.size(0) - 1) - row_ptr.narrow(0, 0, row_ptr.size(0) - 1);
  at::Tensor rows = at::arange(row_ptr.size(0) - 1, row_ptr.options());
  return at::repeat_interleave(rows, counts, /*dim=*/0, /*output_size=*/total);
}

// Pairs processed per chunk in the gathers below (bounds the [chunk, d] temporaries to ~256 MB).
int64_t pair_chunk(int64_t d) { return std::max<int64_t>(1, (int64_t(1) << 26) / std::max<int64_t>(1, d)); }

// AdamW (torch's formulas) where `gate` ([] bool) is true; p, m, v unchanged elsewhere. bfloat16 moments
// (matrix = 0 W_enc, 1 W_dec) are computed in float32, used unrounded for this step's update, and stored
// stochastically rounded.
void adamw(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const StepConfig& c, bool decay,
           const at::Tensor& gate, int matrix = -1) {
  const double bc1 = 1 - std::pow(c.beta1, double(c.step)), bc2 = 1 - std::pow(c.beta2, double(c.step));
  at::Tensor p_new = decay && c.weight_decay != 0 ? p * (1 - c.lr * c.weight_decay) : p.clone();
  at::Tensor m32 = m.to(at::kFloat), v32 = v.to(at::kFloat);
  at::Tensor m_new = m32.lerp(g, 1 - c.beta1);
  at::Tensor v_new = v32 * c.beta2 + g * g * (1 - c.beta2);
  at::Tensor denom = (v_new.sqrt() / std::sqrt(bc2)).add_(c.eps);
  p_new.addcdiv_(m_new, denom, -c.lr / bc1);
  p.copy_(at::where(gate, p_new, p));
  if (m.scalar_type() == at::kBFloat16) {
    MLXTERP_CHECK(matrix >= 0, "sae_kernels: bfloat16 moments are for the weight matrices only");
    std::tie(m_new, v_new) = round_moments_bf16(m_new, v_new, c.step, matrix);
  }
  m.copy_(at::where(gate, m_new, m));
  v.copy_(at::where(gate, v_new, v));
}

}  // namespace

// ---- selection and decoding references -----------------------------------------------------------------

namespace ref {

std::pair<at::Tensor, at::Tensor> topk_rows(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k,
                                            const at::Tensor& mask_in) {
  at::Tensor acts = at::relu(pre.to(at::kFloat) + b_enc.to(at::kFloat));  // [N, F]
  if (mask_in.defined()) acts = acts * mask_in.to(at::kFloat).unsqueeze(0);  // outside the mask: 0
  at::Tensor kth = std::get<0>(acts.topk(k, 1, true, false)).amin(1, true);  // [N, 1] k-th largest
  at::Tensor gt = acts > kth, eq = acts == kth;
  at::Tensor room = k - gt.sum(1, true);                                   // [N, 1] ties still to take
  at::Tensor mask = gt.logical_or(eq.logical_and(eq.cumsum(1) <= room));   // lowest latents win ties
  auto [row_ptr, latents, values] = mask_to_csr(mask, acts);
  return {latents.view({pre.size(0), k}), values.view({pre.size(0), k})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_topk(const at::Tensor& pre, const at::Tensor& b_enc,
                                                          int64_t k) {
  at::Tensor acts = at::relu(pre.to(at::kFloat) + b_enc.to(at::kFloat));  // [N, F]
  const int64_t total = pre.size(0) * k;
  at::Tensor kth = std::get<0>(acts.flatten().topk(total, 0, true, false)).min();
  at::Tensor gt = acts > kth, eq = acts == kth;
  at::Tensor room = total - gt.sum();
  at::Tensor mask = gt.logical_or(eq.logical_and(eq.flatten().cumsum(0).view_as(eq) <= room));
  return mask_to_csr(mask, acts);
}

at::Tensor sparse_decode_residual(const at::Tensor& row_ptr, const at::Tensor& latents, const at::Tensor& values,
                                  const at::Tensor& W, const at::Tensor& b_dec, const at::Tensor& x) {
  const int64_t N = x.size(0), d = x.size(1), P = latents.numel();
  at::Tensor tok = csr_rows(row_ptr, P);
  at::Tensor xhat = b_dec.defined() ? b_dec.to(at::kFloat).unsqueeze(0).repeat({N, 1})  // [N, d]
                                    : at::zeros({N, d}, x.options().dtype(at::kFloat));
  const int64_t chunk = pair_chunk(d);
  for (int64_t s = 0; s < P; s += chunk) {
    const int64_t n = std::min(chunk, P - s);
    at::Tensor rows = W.index_select(0, latents.narrow(0, s, n)).to(at::kFloat);  // [n, d]
    xhat.index_add_(0, tok.narrow(0, s, n), rows * values.narrow(0, s, n).unsqueeze(1));
  }
  return xhat - x.to(at::kFloat);
}

}  // namespace ref

// ---- the reference step -----------------------------------------------------------------------------------

namespace ref {

// d loss / d val for each pair (tok, lat) with gradient rows G (= coef * residual): G[tok] . W[lat]; and the
// gradients of W_dec (sum val * G[tok] per latent) and W_enc / b_enc (gpre = gval [val > 0]; xc[tok]).
void accumulate_pairs(const at::Tensor& lat, const at::Tensor& tok, const at::Tensor& val, const at::Tensor& G,
                      const at::Tensor& xcf, const Params& p, Grads& g) {
  const int64_t P = lat.numel(), d = p.d_in();
  const int64_t chunk = pair_chunk(d);
  at::Tensor gval = at::empty({P}, G.options());
  for (int64_t s0 = 0; s0 < P; s0 += chunk) {
    const int64_t n = std::min(chunk, P - s0);
    at::Tensor l = lat.narrow(0, s0, n), t = tok.narrow(0, s0, n), v = val.narrow(0, s0, n);
    at::Tensor gr = G.index_select(0, t);                                        // [n, d]
    gval.narrow(0, s0, n).copy_((gr * p.W_dec.index_select(0, l)).sum(1));
    g.W_dec.index_add_(0, l, gr * v.unsqueeze(1));
  }
  at::Tensor gpre = gval * (val > 0).to(at::kFloat);  // relu'(pre) = [val > 0]
  g.b_enc.index_add_(0, lat, gpre);
  for (int64_t s0 = 0; s0 < P; s0 += chunk) {
    const int64_t n = std::min(chunk, P - s0);
    g.W_enc.index_add_(0, lat.narrow(0, s0, n),
                       xcf.index_select(0, tok.narrow(0, s0, n)) * gpre.narrow(0, s0, n).unsqueeze(1));
  }
}

Grads gradients(const Params& p, const at::Tensor& x_in, const StepConfig& c, const at::Tensor& dead,
                StepStats* stats) {
  at::NoGradGuard no_grad;
  const int64_t N = x_in.size(0), d = p.d_in();
  const auto cdt = c.compute_dtype;
  at::Tensor x = x_in.to(at::kFloat);                              // [N, d]
  at::Tensor xc = (x - p.b_dec).to(cdt);                           // [N, d] as the encoder GEMM sees it
  at::Tensor pre = at::mm(xc, p.W_enc.to(cdt).t());                // [N, F] compute dtype
  at::Tensor Wd = p.W_dec.to(cdt);

  StepStats st;
  if (c.selection == Selection::TopK) {
    auto [lat, val] = topk_rows(pre, p.b_enc, c.k);                // [N, k]
    st.latents = lat.flatten();
    st.values = val.flatten();
    st.row_ptr = at::arange(0, (N + 1) * c.k, c.k, x.options().dtype(at::kLong));
  } else {
    std::tie(st.row_ptr, st.latents, st.values) = batch_topk(pre, p.b_enc, c.k);
  }
  st.kept_min = at::where(st.values > 0, st.values, at::full_like(st.values, INFINITY)).min();
  at::Tensor tok = csr_rows(st.row_ptr, st.latents.numel());      // [P]

  at::Tensor e = sparse_decode_residual(st.row_ptr, st.latents, st.values, Wd, p.b_dec, x);  // x_hat - x
  st.residual = e;
  st.sq_err = e.pow(2).sum();
  st.mse = st.sq_err / double(N);
  at::Tensor total_var = (x - x.mean(0, true)).pow(2).sum();
  at::Tensor denom = c.loss_norm == LossNorm::FVU          ? total_var
                     : c.loss_norm == LossNorm::MeanSquare ? at::scalar_tensor(double(N * d), x.options())
                                                           : at::scalar_tensor(double(N), x.options());
  st.fvu = st.sq_err / total_var;
  at::Tensor coef = 2.0 / denom;  // d main / d x_hat = coef * e
  st.loss = st.sq_err / denom;
  st.aux = at::zeros({}, x.options());

  Grads g{at::zeros_like(p.W_enc), at::zeros_like(p.b_enc), at::zeros_like(p.W_dec), {}};
  at::Tensor xcf = xc.to(at::kFloat);
  accumulate_pairs(st.latents, tok, st.values, e * coef, xcf, p, g);

  if (c.auxk_coef > 0 && dead.defined()) {
    // AuxK: the dead latents' top k_aux reconstruct r = x - x_hat (no gradient through r).
    auto [alat, aval] = topk_rows(pre, p.b_enc, std::min(c.k_aux, p.d_sae()), dead);  // [N, ka]
    const int64_t ka = alat.size(1);
    at::Tensor arow_ptr = at::arange(0, (N + 1) * ka, ka, x.options().dtype(at::kLong));
    at::Tensor r = -e;
    at::Tensor q = sparse_decode_residual(arow_ptr, alat.flatten(), aval.flatten(), Wd, at::Tensor(), r);  // e_hat - r
    at::Tensor num = q.pow(2).sum() / double(N);
    at::Tensor den = (r - r.mean(0, true)).pow(2).sum() / double(N);
    at::Tensor ratio = num / den;
    at::Tensor valid = at::isfinite(ratio).logical_and(dead.any());
    st.aux = at::where(valid, ratio, at::zeros_like(ratio));
    st.loss = st.loss + c.auxk_coef * st.aux;
    at::Tensor acoef = at::where(valid, c.auxk_coef * 2.0 / (double(N) * den), at::zeros_like(den));
    at::Tensor atok = at::arange(N, tok.options()).repeat_interleave(ka);
    accumulate_pairs(alat.flatten(), atok, aval.flatten(), q * acoef, xcf, p, g);
  }
  pre = at::Tensor();
  // b_dec: the decoder bias, and the -b_dec inside the encoder's input.
  g.b_dec = e.sum(0) * coef - at::mv(p.W_enc.t(), g.b_enc);

  at::Tensor fired = (st.values > c.fire_threshold).to(at::kInt);
  st.fire_count = at::zeros({p.d_sae()}, x.options().dtype(at::kInt)).index_add_(0, st.latents, fired);
  st.l0 = fired.sum().to(at::kFloat) / double(N);
  st.l1 = st.values.abs().sum();
  if (stats) *stats = st;
  return g;
}

}  // namespace ref

StepStats reference_step(Params& p, AdamState& s, at::Tensor& since_fired, const at::Tensor& x,
                         const StepConfig& c) {
  detail::check_step_inputs(p, s, since_fired, x, c, "sae_kernels::reference_step");
  at::NoGradGuard no_grad;
  at::Tensor dead;
  if (c.auxk_coef > 0) dead = since_fired >= c.dead_tokens;
  StepStats st;
  Grads g = ref::gradients(p, x, c, dead, &st);
  if (c.remove_parallel_grad) {
    at::Tensor w = p.W_dec / p.W_dec.norm(2, {1}, true).clamp_min(1e-12);
    g.W_dec.sub_((g.W_dec * w).sum(1, true) * w);
  }
  st.grad_norm =
      (g.W_enc.pow(2).sum() + g.b_enc.pow(2).sum() + g.W_dec.pow(2).sum() + g.b_dec.pow(2).sum()).sqrt();
  at::Tensor gate = at::isfinite(st.loss);
  if (c.allow_update.defined()) gate = gate.logical_and(c.allow_update.to(at::kBool).reshape({}));
  st.clipped = at::zeros({}, x.options().dtype(at::kFloat));
  if (c.max_grad_norm > 0 || c.finite_grad_gate) gate = gate.logical_and(at::isfinite(st.grad_norm));
  if (c.max_grad_norm > 0) {
    at::Tensor clip = (c.max_grad_norm / (st.grad_norm + 1e-6)).clamp_max(1.0);
    st.clipped = (clip < 1).to(at::kFloat);
    for (at::Tensor* t : {&g.W_enc, &g.b_enc, &g.W_dec, &g.b_dec}) t->mul_(clip);
  }
  adamw(p.W_enc, g.W_enc, s.W_enc_m, s.W_enc_v, c, true, gate, 0);
  adamw(p.b_enc, g.b_enc, s.b_enc_m, s.b_enc_v, c, false, gate);
  adamw(p.W_dec, g.W_dec, s.W_dec_m, s.W_dec_v, c, true, gate, 1);
  adamw(p.b_dec, g.b_dec, s.b_dec_m, s.b_dec_v, c, false, gate);
  if (c.normalize_decoder)
    p.W_dec.copy_(at::where(gate, p.W_dec / p.W_dec.norm(2, {1}, true).clamp_min(1e-12), p.W_dec));
  st.ok = gate.logical_and(at::isfinite(st.grad_norm));
  at::Tensor tsf = at::where(st.fire_count > 0, at::zeros_like(since_fired), since_fired + x.size(0));
  since_fired.copy_(at::where(st.ok, tsf, since_fired));
  return st;
}

// ---- backend choice ---------------------------------------------------------------------------------------

std::string cuda_unsupported_reason(const Params& p, const at::Tensor& x, const StepConfig& c) {
#ifndef MLXTERP_HAVE_CUDA_KERNELS
  (void)p;
  (void)x;
  (void)c;
  return "built without the CUDA kernels (configure with -DMLXTERP_CUDA=ON)";
#else
#ifndef MLXTERP_CUDA_EMULATE
  if (!x.is_cuda()) return "x is on " + x.device().str() + ", not a CUDA device";
  if (!p.W_enc.is_cuda()) return "the SAE is not on a CUDA device";
#endif
  if (c.compute_dtype != at::kBFloat16) return "compute_dtype is " + dtype_str(c.compute_dtype) + " (kernels: bfloat16)";
  const int64_t F = p.d_sae(), d = p.d_in(), N = x.size(0);
  if (d % 8 != 0 || d > 16384) return "d_in = " + std::to_string(d) + " (kernels: a multiple of 8, at most 16384)";
  if (F % 8 != 0) return "d_sae = " + std::to_string(F) + " (kernels: a multiple of 8)";
  if (c.k > 8192 && c.selection == Selection::TopK) return "k = " + std::to_string(c.k) + " (TopK kernel: k <= 8192)";
  if (c.auxk_coef > 0 && std::min(c.k_aux, F) > 8192) return "k_aux = " + std::to_string(c.k_aux) + " (kernel: <= 8192)";
  if (c.auxk_coef > 0 && c.k_aux < 1) return "auxk_coef > 0 with k_aux = " + std::to_string(c.k_aux);
  if (N * (c.k + (c.auxk_coef > 0 ? std::min(c.k_aux, F) : 0)) >= (int64_t(1) << 31) || 2 * N >= (int64_t(1) << 31))
    return "batch too large for 32-bit pair indices";
  if (c.selection == Selection::BatchTopK && N * F >= (int64_t(1) << 31))
    return "BatchTopK over more than 2^31 activations";
  for (const at::Tensor* t : {&p.W_enc, &p.W_dec, &p.b_enc, &p.b_dec})
    if (!t->is_contiguous() || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0)
      return "parameters must be contiguous and 16-byte aligned";
  return "";
#endif
}

bool cuda_kernels_available() {
#if defined(MLXTERP_CUDA_EMULATE)
  return true;
#elif defined(MLXTERP_HAVE_CUDA_KERNELS)
  return at::hasCUDA();
#else
  return false;
#endif
}

StepStats Stepper::step(Params& p, AdamState& opt, at::Tensor& since_fired, const at::Tensor& x,
                        const StepConfig& cfg) {
  Backend use = backend_;
  if (use == Backend::Auto) use = cuda_unsupported_reason(p, x, cfg).empty() ? Backend::Cuda : Backend::Reference;
  if (use == Backend::Cuda) {
    const std::string why = cuda_unsupported_reason(p, x, cfg);
    MLXTERP_CHECK(why.empty(), "sae_kernels: the CUDA backend was requested but cannot run: ", why);
#ifdef MLXTERP_HAVE_CUDA_KERNELS
    // The copies are stale if p changed since the last step: another tensor, or an in-place libtorch op on it
    // (the kernels write through raw pointers, which leaves the version counters alone).
    const bool stale = !shadows_valid_ || !W_enc_bf16_.defined() || W_enc_bf16_.sizes() != p.W_enc.sizes() ||
                       W_enc_bf16_.device() != p.W_enc.device() || seen_ptr_[0] != p.W_enc.data_ptr() ||
                       seen_ptr_[1] != p.W_dec.data_ptr() || seen_version_[0] != p.W_enc._version() ||
                       seen_version_[1] != p.W_dec._version();
    if (stale) {
      W_enc_bf16_ = p.W_enc.to(at::kBFloat16).contiguous();
      W_dec_bf16_ = p.W_dec.to(at::kBFloat16).contiguous();
    }
    StepStats st = cuda::step(p, opt, since_fired, x, cfg, W_enc_bf16_, W_dec_bf16_, &aux_hint_);
    shadows_valid_ = true;
    seen_ptr_[0] = p.W_enc.data_ptr();
    seen_ptr_[1] = p.W_dec.data_ptr();
    seen_version_[0] = p.W_enc._version();
    seen_version_[1] = p.W_dec._version();
    last_ = Backend::Cuda;
    return st;
#endif
  }
  shadows_valid_ = false;  // the reference updates the fp32 weights only
  last_ = Backend::Reference;
  return reference_step(p, opt, since_fired, x, cfg);
}

// ---- device helpers: CPU side (the CUDA build defines them in sae_kernels_cuda.cpp) ---------------------------

#ifndef MLXTERP_HAVE_CUDA_KERNELS
DeviceInfo device_info(at::Device device) {
  MLXTERP_CHECK(!device.is_cuda(), "sae_kernels: device ", device.str(),
                " needs the CUDA build (configure with -DMLXTERP_CUDA=ON)");
  return {"cpu", 0, 0};
}
void synchronize(at::Device) {}
void reset_peak_memory(at::Device) {}
int64_t peak_memory_bytes(at::Device) { return -1; }
int64_t allocated_memory_bytes(at::Device) { return -1; }
void empty_cache(at::Device) {}
#endif

}  // namespace mlxterp::sae_kernels
