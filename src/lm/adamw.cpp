// AdamW, the cosine learning-rate schedule and gradient clipping, on plain tensors (so a checkpoint can
// hold the exact optimizer state).
#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/train_lm.hpp"

namespace mlxterp::lm {

double cosine_lr(int64_t step, int64_t total, int64_t warmup, double max_lr, double min_lr) {
  if (warmup > 0 && step < warmup) return max_lr * double(step + 1) / double(warmup);
  if (step >= total) return min_lr;
  const double span = double(std::max<int64_t>(1, total - warmup));
  const double progress = std::clamp(double(step - warmup) / span, 0.0, 1.0);
  return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), o_(options) {
  MLXTERP_CHECK(o_.beta1 >= 0 && o_.beta1 < 1, "--beta1: must be in [0, 1), got ", o_.beta1);
  MLXTERP_CHECK(o_.beta2 >= 0 && o_.beta2 < 1, "--beta2: must be in [0, 1), got ", o_.beta2);
  MLXTERP_CHECK(o_.eps > 0, "AdamW eps: must be > 0, got ", o_.eps);
  MLXTERP_CHECK(o_.weight_decay >= 0, "--weight-decay: must be >= 0, got ", o_.weight_decay);
  for (const auto& [name, p] : params_) {
    MLXTERP_ASSERT(p.requires_grad());
    m_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    v_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++t_;
  const double bc1 = 1.0 - std::pow(o_.beta1, double(t_));
  const double bc2 = 1.0 - std::pow(o_.beta2, double(t_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (o_.weight_decay > 0 && p.dim() >= 2) p.mul_(1.0 - lr * o_.weight_decay);
    m_[i].mul_(o_.beta1).add_(g, 1.0 - o_.beta1);
    v_[i].mul_(o_.beta2).addcmul_(g, g, 1.0 - o_.beta2);
    // p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), as torch.optim.AdamW computes it.
    at::Tensor denom = (v_[i].sqrt() / std::sqrt(bc2)).add_(o_.eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
}

TensorMap AdamW::state() const {
  TensorMap s;
  for (size_t i = 0; i < params_.size(); ++i) {
    s["m." + params_[i].first] = m_[i];
    s["v." + params_[i].first] = v_[i];
  }
  return s;
}

void AdamW::load_state(const TensorMap& state, int64_t steps_taken) {
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto* slot : {&m_[i], &v_[i]}) {
      const std::string key = (slot == &m_[i] ? "m." : "v.") + params_[i].first;
      auto it = state.find(key);
      MLXTERP_CHECK(it != state.end(), "checkpoint: optimizer state '", key, "' is missing");
      MLXTERP_CHECK(it->second.sizes() == slot->sizes(), "checkpoint: optimizer state '", key, "' has shape ",
                    shape_str(it->second.sizes()), "; expected ", shape_str(slot->sizes()));
      slot->copy_(it->second);
    }
  }
  t_ = steps_taken;
}

double clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& params, double max_norm) {
  at::NoGradGuard no_grad;
  double sq = 0;
  for (const auto& [name, p] : params)
    if (p.grad().defined()) sq += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (const auto& [name, p] : params)
      if (p.grad().defined()) const_cast<at::Tensor&>(p).mutable_grad().mul_(scale);
  }
  return norm;
}

}  // namespace mlxterp::lm
