#include "kernels/cpu/bf16_widening.h"

#include <map>
#include <tuple>
#include <vector>

#include "core/check.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

// Calls fn(offset) for every element of a strided view, offsets in elements from its data.
template <class Fn>
void for_each_offset(const Tensor& t, Fn&& fn) {
  const int nd = t.ndim();
  if (t.numel() == 0) return;
  std::vector<i64> idx(static_cast<std::size_t>(nd), 0);
  for (;;) {
    i64 off = 0;
    for (int d = 0; d < nd; ++d) off += idx[static_cast<std::size_t>(d)] * t.stride(d);
    fn(off);
    int d = nd - 1;
    for (; d >= 0; --d) {
      if (++idx[static_cast<std::size_t>(d)] < t.size(d)) break;
      idx[static_cast<std::size_t>(d)] = 0;
    }
    if (d < 0) return;
  }
}

// The f32 stand-ins of one call's bf16 arguments. A view passed twice (an in-place op: y
// aliasing x) maps to one stand-in. Stand-ins keep the view's strides: the whole span from its
// first to its last element is widened, so row-strided views stay row-strided.
class Widened {
 public:
  Tensor in(const Tensor& t) { return widen(t, false); }
  Tensor out(const Tensor& t) { return widen(t, true); }

  // Rounds the outputs back into their bf16 views (only the views' elements: the gaps of a
  // strided view may belong to other tensors).
  void finish() {
    for (Entry& e : entries_) {
      if (!e.written) continue;
      auto* dst = static_cast<bf16*>(e.original.data);
      const float* src = e.wide.data();
      for_each_offset(e.original, [&](i64 off) { dst[off] = f32_to_bf16(src[off]); });
    }
  }

 private:
  struct Entry {
    Tensor original;
    std::vector<float> wide;
    bool written = false;
  };

  Tensor widen(const Tensor& t, bool written) {
    if (!t.defined() || t.dtype != DType::bf16 || t.numel() == 0) return t;
    LINMOE_CHECK(t.device == Device::cpu, "bf16 widening: ", t.str(), " is not on the CPU");
    for (Entry& e : entries_) {
      if (same_view(e.original, t)) {
        e.written = e.written || written;
        return view_of(e);
      }
    }
    i64 span = 1;
    for (int d = 0; d < t.ndim(); ++d) span += (t.size(d) - 1) * t.stride(d);
    entries_.emplace_back();
    Entry& e = entries_.back();
    e.original = t;
    e.written = written;
    e.wide.resize(static_cast<std::size_t>(span));
    const auto* src = static_cast<const bf16*>(t.data);
    for (i64 i = 0; i < span; ++i) e.wide[static_cast<std::size_t>(i)] = bf16_to_f32(src[i]);
    return view_of(e);
  }

  static Tensor view_of(Entry& e) {
    Tensor w = e.original;
    w.data = e.wide.data();
    w.dtype = DType::f32;
    return w;
  }

  static bool same_view(const Tensor& a, const Tensor& b) {
    if (a.data != b.data || a.ndim() != b.ndim()) return false;
    for (int d = 0; d < a.ndim(); ++d) {
      if (a.size(d) != b.size(d) || a.stride(d) != b.stride(d)) return false;
    }
    return true;
  }

  std::vector<Entry> entries_;  // moving an Entry keeps its wide buffer where it is
};

class Bf16Widening final : public Backend {
 public:
  explicit Bf16Widening(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  Device device() const override { return inner_->device(); }
  std::string name() const override { return inner_->name(); }
  Allocator& allocator() override { return inner_->allocator(); }
  void synchronize() override { inner_->synchronize(); }
  double peak_flops_per_second() const override { return inner_->peak_flops_per_second(); }
  void* stream_handle() override { return inner_->stream_handle(); }
  // The inner backend converts between dtypes itself.
  void copy(const Tensor& src, const Tensor& dst) override { inner_->copy(src, dst); }
  void fill(const Tensor& dst, double value) override { inner_->fill(dst, value); }

  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            double alpha, double beta) override;
  void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b,
                    const std::vector<std::int64_t>& group_rows, const Tensor& c, double alpha,
                    double beta) override;
  void grouped_gemm_wgrad(const Tensor& a, const Tensor& b,
                          const std::vector<std::int64_t>& group_rows, const Tensor& c,
                          double alpha, double beta) override;
  void add(const Tensor& a, const Tensor& b, const Tensor& out) override;
  void mul(const Tensor& a, const Tensor& b, const Tensor& out) override;
  void axpy(double alpha, const Tensor& x, const Tensor& y) override;
  void scale(const Tensor& x, double s) override;
  void activation_forward(Activation f, const Tensor& x, const Tensor& y) override;
  void activation_backward(Activation f, const Tensor& x, const Tensor& dy, const Tensor& dx,
                           bool accumulate) override;
  void rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                        const Tensor& rstd, const Tensor& residual) override;
  void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                         const Tensor& dx, const Tensor& dw, bool accumulate_dx) override;
  void softmax_forward(const Tensor& x, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout,
                       const Tensor& dgate, const Tensor& dup) override;
  void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out,
                         std::int64_t vocab_start) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable,
                          std::int64_t vocab_start) override;
  void cross_entropy_stats(const Tensor& logits, const Tensor& targets, std::int64_t vocab_start,
                           const Tensor& lse, const Tensor& target_logit) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, std::int64_t vocab_start,
                              const Tensor& lse, const Tensor& dloss,
                              const Tensor& dlogits) override;
  void lsm_scalar_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& log_decay, double scale, int chunk_size,
                                const Tensor& initial_state, const Tensor& o,
                                const Tensor& final_state) override;
  void lsm_scalar_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& log_decay, double scale, int chunk_size,
                                 const Tensor& initial_state, const Tensor& d_o,
                                 const Tensor& d_final_state, const Tensor& dq, const Tensor& dk,
                                 const Tensor& dv, const Tensor& d_log_decay,
                                 const Tensor& d_initial_state) override;
  void lsm_vector_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& log_decay, double scale, int chunk_size,
                                const Tensor& initial_state, const Tensor& o,
                                const Tensor& final_state) override;
  void lsm_vector_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& log_decay, double scale, int chunk_size,
                                 const Tensor& initial_state, const Tensor& d_o,
                                 const Tensor& d_final_state, const Tensor& dq, const Tensor& dk,
                                 const Tensor& dv, const Tensor& d_log_decay,
                                 const Tensor& d_initial_state) override;
  void lsm_delta_rule_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                              const Tensor& log_decay, double scale, int chunk_size,
                              const Tensor& initial_state, const Tensor& o,
                              const Tensor& final_state) override;
  void lsm_delta_rule_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& beta, const Tensor& log_decay, double scale,
                               int chunk_size, const Tensor& initial_state, const Tensor& d_o,
                               const Tensor& d_final_state, const Tensor& dq, const Tensor& dk,
                               const Tensor& dv, const Tensor& d_beta, const Tensor& d_log_decay,
                               const Tensor& d_initial_state) override;
  void l2_norm_forward(const Tensor& x, double eps, const Tensor& y,
                       const Tensor& inv_norm) override;
  void l2_norm_backward(const Tensor& x, const Tensor& inv_norm, const Tensor& dy,
                        const Tensor& dx) override;
  void rope_forward(const Tensor& x, const Tensor& y, double theta,
                    std::int64_t position_offset) override;
  void rope_backward(const Tensor& dy, const Tensor& dx, double theta,
                     std::int64_t position_offset) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                         std::int64_t q_offset, const Tensor& o, const Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& lse, const Tensor& d_o, double scale, std::int64_t q_offset,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv) override;
  void moe_topk(const Tensor& probs, int k, bool renormalize, const Tensor& expert_ids,
                const Tensor& weights) override;
  void moe_capacity_keep(const Tensor& probs, const Tensor& expert_ids, std::int64_t capacity,
                         const Tensor& keep) override;
  std::int64_t moe_dispatch_plan(const Tensor& expert_ids, const Tensor& keep, int num_experts,
                                 const Tensor& order, const Tensor& counts) override;
  void moe_permute(const Tensor& x, const Tensor& order, int k, const Tensor& out) override;
  void moe_permute_backward(const Tensor& dout, const Tensor& order, int k,
                            const Tensor& dx) override;
  void moe_unpermute(const Tensor& y, const Tensor& order, const Tensor& weights, const Tensor& out,
                     bool accumulate) override;
  void moe_unpermute_backward(const Tensor& dout, const Tensor& y, const Tensor& order,
                              const Tensor& weights, const Tensor& dy,
                              const Tensor& d_weights) override;
  void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr,
                    double beta1, double beta2, double eps, double weight_decay,
                    std::int64_t step) override;
  void sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum,
                  double weight_decay, std::int64_t step) override;
  void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                             const Tensor& halo, const Tensor& y) override;
  void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& halo,
                              const Tensor& dy, const Tensor& dx, const Tensor& dw,
                              const Tensor& dbias, const Tensor& d_halo) override;
  double sum(const Tensor& x) override;
  double sum_squares(const Tensor& x) override;
  double max_abs(const Tensor& x) override;
  bool all_finite(const Tensor& x) override;
  void sum_rows(const Tensor& x, const Tensor& out, bool accumulate) override;

 private:
  std::unique_ptr<Backend> inner_;
};

void Bf16Widening::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                        const Tensor& c, double alpha, double beta) {
  Widened wide;
  inner_->gemm(wide.in(a), trans_a, wide.in(b), trans_b, wide.out(c), alpha, beta);
  wide.finish();
}

void Bf16Widening::grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b,
                                const std::vector<std::int64_t>& group_rows, const Tensor& c,
                                double alpha, double beta) {
  Widened wide;
  inner_->grouped_gemm(wide.in(a), wide.in(b), trans_b, group_rows, wide.out(c), alpha, beta);
  wide.finish();
}

void Bf16Widening::grouped_gemm_wgrad(const Tensor& a, const Tensor& b,
                                      const std::vector<std::int64_t>& group_rows, const Tensor& c,
                                      double alpha, double beta) {
  Widened wide;
  inner_->grouped_gemm_wgrad(wide.in(a), wide.in(b), group_rows, wide.out(c), alpha, beta);
  wide.finish();
}

void Bf16Widening::add(const Tensor& a, const Tensor& b, const Tensor& out) {
  Widened wide;
  inner_->add(wide.in(a), wide.in(b), wide.out(out));
  wide.finish();
}

void Bf16Widening::mul(const Tensor& a, const Tensor& b, const Tensor& out) {
  Widened wide;
  inner_->mul(wide.in(a), wide.in(b), wide.out(out));
  wide.finish();
}

void Bf16Widening::axpy(double alpha, const Tensor& x, const Tensor& y) {
  Widened wide;
  inner_->axpy(alpha, wide.in(x), wide.out(y));
  wide.finish();
}

void Bf16Widening::scale(const Tensor& x, double s) {
  Widened wide;
  inner_->scale(wide.out(x), s);
  wide.finish();
}

void Bf16Widening::activation_forward(Activation f, const Tensor& x, const Tensor& y) {
  Widened wide;
  inner_->activation_forward(f, wide.in(x), wide.out(y));
  wide.finish();
}

void Bf16Widening::activation_backward(Activation f, const Tensor& x, const Tensor& dy,
                                       const Tensor& dx, bool accumulate) {
  Widened wide;
  inner_->activation_backward(f, wide.in(x), wide.in(dy), wide.out(dx), accumulate);
  wide.finish();
}

void Bf16Widening::rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                                    const Tensor& rstd, const Tensor& residual) {
  Widened wide;
  // With a residual, x is written too (x + residual, in place).
  const Tensor wx = residual.defined() ? wide.out(x) : wide.in(x);
  inner_->rms_norm_forward(wx, wide.in(w), eps, wide.out(y), wide.out(rstd), wide.in(residual));
  wide.finish();
}

void Bf16Widening::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                     const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                                     bool accumulate_dx) {
  Widened wide;
  inner_->rms_norm_backward(wide.in(dy), wide.in(x), wide.in(w), wide.in(rstd), wide.out(dx),
                            wide.out(dw), accumulate_dx);
  wide.finish();
}

void Bf16Widening::softmax_forward(const Tensor& x, const Tensor& y) {
  Widened wide;
  inner_->softmax_forward(wide.in(x), wide.out(y));
  wide.finish();
}

void Bf16Widening::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Widened wide;
  inner_->softmax_backward(wide.in(y), wide.in(dy), wide.out(dx));
  wide.finish();
}

void Bf16Widening::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  Widened wide;
  inner_->swiglu_forward(wide.in(gate), wide.in(up), wide.out(out));
  wide.finish();
}

void Bf16Widening::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout,
                                   const Tensor& dgate, const Tensor& dup) {
  Widened wide;
  inner_->swiglu_backward(wide.in(gate), wide.in(up), wide.in(dout), wide.out(dgate),
                          wide.out(dup));
  wide.finish();
}

void Bf16Widening::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out,
                                     std::int64_t vocab_start) {
  Widened wide;
  inner_->embedding_forward(wide.in(ids), wide.in(table), wide.out(out), vocab_start);
  wide.finish();
}

void Bf16Widening::embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable,
                                      std::int64_t vocab_start) {
  Widened wide;
  inner_->embedding_backward(wide.in(ids), wide.in(dout), wide.out(dtable), vocab_start);
  wide.finish();
}

void Bf16Widening::cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                       std::int64_t vocab_start, const Tensor& lse,
                                       const Tensor& target_logit) {
  Widened wide;
  inner_->cross_entropy_stats(wide.in(logits), wide.in(targets), vocab_start, wide.out(lse),
                              wide.out(target_logit));
  wide.finish();
}

void Bf16Widening::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                          std::int64_t vocab_start, const Tensor& lse,
                                          const Tensor& dloss, const Tensor& dlogits) {
  Widened wide;
  inner_->cross_entropy_backward(wide.in(logits), wide.in(targets), vocab_start, wide.in(lse),
                                 wide.in(dloss), wide.out(dlogits));
  wide.finish();
}

void Bf16Widening::lsm_scalar_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& log_decay, double scale, int chunk_size,
                                            const Tensor& initial_state, const Tensor& o,
                                            const Tensor& final_state) {
  Widened wide;
  inner_->lsm_scalar_decay_forward(wide.in(q), wide.in(k), wide.in(v), wide.in(log_decay), scale,
                                   chunk_size, wide.in(initial_state), wide.out(o),
                                   wide.out(final_state));
  wide.finish();
}

void Bf16Widening::lsm_scalar_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& log_decay, double scale, int chunk_size,
                                             const Tensor& initial_state, const Tensor& d_o,
                                             const Tensor& d_final_state, const Tensor& dq,
                                             const Tensor& dk, const Tensor& dv,
                                             const Tensor& d_log_decay,
                                             const Tensor& d_initial_state) {
  Widened wide;
  inner_->lsm_scalar_decay_backward(wide.in(q), wide.in(k), wide.in(v), wide.in(log_decay), scale,
                                    chunk_size, wide.in(initial_state), wide.in(d_o),
                                    wide.in(d_final_state), wide.out(dq), wide.out(dk),
                                    wide.out(dv), wide.out(d_log_decay), wide.out(d_initial_state));
  wide.finish();
}

void Bf16Widening::lsm_vector_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& log_decay, double scale, int chunk_size,
                                            const Tensor& initial_state, const Tensor& o,
                                            const Tensor& final_state) {
  Widened wide;
  inner_->lsm_vector_decay_forward(wide.in(q), wide.in(k), wide.in(v), wide.in(log_decay), scale,
                                   chunk_size, wide.in(initial_state), wide.out(o),
                                   wide.out(final_state));
  wide.finish();
}

void Bf16Widening::lsm_vector_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& log_decay, double scale, int chunk_size,
                                             const Tensor& initial_state, const Tensor& d_o,
                                             const Tensor& d_final_state, const Tensor& dq,
                                             const Tensor& dk, const Tensor& dv,
                                             const Tensor& d_log_decay,
                                             const Tensor& d_initial_state) {
  Widened wide;
  inner_->lsm_vector_decay_backward(wide.in(q), wide.in(k), wide.in(v), wide.in(log_decay), scale,
                                    chunk_size, wide.in(initial_state), wide.in(d_o),
                                    wide.in(d_final_state), wide.out(dq), wide.out(dk),
                                    wide.out(dv), wide.out(d_log_decay), wide.out(d_initial_state));
  wide.finish();
}

void Bf16Widening::lsm_delta_rule_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& beta, const Tensor& log_decay, double scale,
                                          int chunk_size, const Tensor& initial_state,
                                          const Tensor& o, const Tensor& final_state) {
  Widened wide;
  inner_->lsm_delta_rule_forward(wide.in(q), wide.in(k), wide.in(v), wide.in(beta),
                                 wide.in(log_decay), scale, chunk_size, wide.in(initial_state),
                                 wide.out(o), wide.out(final_state));
  wide.finish();
}

void Bf16Widening::lsm_delta_rule_backward(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& log_decay,
    double scale, int chunk_size, const Tensor& initial_state, const Tensor& d_o,
    const Tensor& d_final_state, const Tensor& dq, const Tensor& dk, const Tensor& dv,
    const Tensor& d_beta, const Tensor& d_log_decay, const Tensor& d_initial_state) {
  Widened wide;
  inner_->lsm_delta_rule_backward(
      wide.in(q), wide.in(k), wide.in(v), wide.in(beta), wide.in(log_decay), scale, chunk_size,
      wide.in(initial_state), wide.in(d_o), wide.in(d_final_state), wide.out(dq), wide.out(dk),
      wide.out(dv), wide.out(d_beta), wide.out(d_log_decay), wide.out(d_initial_state));
  wide.finish();
}

void Bf16Widening::l2_norm_forward(const Tensor& x, double eps, const Tensor& y,
                                   const Tensor& inv_norm) {
  Widened wide;
  inner_->l2_norm_forward(wide.in(x), eps, wide.out(y), wide.out(inv_norm));
  wide.finish();
}

void Bf16Widening::l2_norm_backward(const Tensor& x, const Tensor& inv_norm, const Tensor& dy,
                                    const Tensor& dx) {
  Widened wide;
  inner_->l2_norm_backward(wide.in(x), wide.in(inv_norm), wide.in(dy), wide.out(dx));
  wide.finish();
}

void Bf16Widening::rope_forward(const Tensor& x, const Tensor& y, double theta,
                                std::int64_t position_offset) {
  Widened wide;
  inner_->rope_forward(wide.in(x), wide.out(y), theta, position_offset);
  wide.finish();
}

void Bf16Widening::rope_backward(const Tensor& dy, const Tensor& dx, double theta,
                                 std::int64_t position_offset) {
  Widened wide;
  inner_->rope_backward(wide.in(dy), wide.out(dx), theta, position_offset);
  wide.finish();
}

void Bf16Widening::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     double scale, std::int64_t q_offset, const Tensor& o,
                                     const Tensor& lse) {
  Widened wide;
  inner_->attention_forward(wide.in(q), wide.in(k), wide.in(v), scale, q_offset, wide.out(o),
                            wide.out(lse));
  wide.finish();
}

void Bf16Widening::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& o, const Tensor& lse, const Tensor& d_o,
                                      double scale, std::int64_t q_offset, const Tensor& dq,
                                      const Tensor& dk, const Tensor& dv) {
  Widened wide;
  inner_->attention_backward(wide.in(q), wide.in(k), wide.in(v), wide.in(o), wide.in(lse),
                             wide.in(d_o), scale, q_offset, wide.out(dq), wide.out(dk),
                             wide.out(dv));
  wide.finish();
}

void Bf16Widening::moe_topk(const Tensor& probs, int k, bool renormalize, const Tensor& expert_ids,
                            const Tensor& weights) {
  Widened wide;
  inner_->moe_topk(wide.in(probs), k, renormalize, wide.out(expert_ids), wide.out(weights));
  wide.finish();
}

void Bf16Widening::moe_capacity_keep(const Tensor& probs, const Tensor& expert_ids,
                                     std::int64_t capacity, const Tensor& keep) {
  Widened wide;
  inner_->moe_capacity_keep(wide.in(probs), wide.in(expert_ids), capacity, wide.out(keep));
  wide.finish();
}

std::int64_t Bf16Widening::moe_dispatch_plan(const Tensor& expert_ids, const Tensor& keep,
                                             int num_experts, const Tensor& order,
                                             const Tensor& counts) {
  Widened wide;
  const std::int64_t r = inner_->moe_dispatch_plan(wide.in(expert_ids), wide.in(keep), num_experts,
                                                   wide.out(order), wide.out(counts));
  wide.finish();
  return r;
}

void Bf16Widening::moe_permute(const Tensor& x, const Tensor& order, int k, const Tensor& out) {
  Widened wide;
  inner_->moe_permute(wide.in(x), wide.in(order), k, wide.out(out));
  wide.finish();
}

void Bf16Widening::moe_permute_backward(const Tensor& dout, const Tensor& order, int k,
                                        const Tensor& dx) {
  Widened wide;
  inner_->moe_permute_backward(wide.in(dout), wide.in(order), k, wide.out(dx));
  wide.finish();
}

void Bf16Widening::moe_unpermute(const Tensor& y, const Tensor& order, const Tensor& weights,
                                 const Tensor& out, bool accumulate) {
  Widened wide;
  inner_->moe_unpermute(wide.in(y), wide.in(order), wide.in(weights), wide.out(out), accumulate);
  wide.finish();
}

void Bf16Widening::moe_unpermute_backward(const Tensor& dout, const Tensor& y, const Tensor& order,
                                          const Tensor& weights, const Tensor& dy,
                                          const Tensor& d_weights) {
  Widened wide;
  inner_->moe_unpermute_backward(wide.in(dout), wide.in(y), wide.in(order), wide.in(weights),
                                 wide.out(dy), wide.out(d_weights));
  wide.finish();
}

void Bf16Widening::adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                                double lr, double beta1, double beta2, double eps,
                                double weight_decay, std::int64_t step) {
  Widened wide;
  inner_->adamw_update(wide.out(p), wide.in(g), wide.out(m), wide.out(v), lr, beta1, beta2, eps,
                       weight_decay, step);
  wide.finish();
}

void Bf16Widening::sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, double lr,
                              double momentum, double weight_decay, std::int64_t step) {
  Widened wide;
  inner_->sgd_update(wide.out(p), wide.in(g), wide.out(buf), lr, momentum, weight_decay, step);
  wide.finish();
}

void Bf16Widening::causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                         const Tensor& halo, const Tensor& y) {
  Widened wide;
  inner_->causal_conv1d_forward(wide.in(x), wide.in(w), wide.in(bias), wide.in(halo), wide.out(y));
  wide.finish();
}

void Bf16Widening::causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& halo,
                                          const Tensor& dy, const Tensor& dx, const Tensor& dw,
                                          const Tensor& dbias, const Tensor& d_halo) {
  Widened wide;
  inner_->causal_conv1d_backward(wide.in(x), wide.in(w), wide.in(halo), wide.in(dy), wide.out(dx),
                                 wide.out(dw), wide.out(dbias), wide.out(d_halo));
  wide.finish();
}

double Bf16Widening::sum(const Tensor& x) {
  Widened wide;
  const double r = inner_->sum(wide.in(x));
  wide.finish();
  return r;
}

double Bf16Widening::sum_squares(const Tensor& x) {
  Widened wide;
  const double r = inner_->sum_squares(wide.in(x));
  wide.finish();
  return r;
}

double Bf16Widening::max_abs(const Tensor& x) {
  Widened wide;
  const double r = inner_->max_abs(wide.in(x));
  wide.finish();
  return r;
}

bool Bf16Widening::all_finite(const Tensor& x) {
  Widened wide;
  const bool r = inner_->all_finite(wide.in(x));
  wide.finish();
  return r;
}

void Bf16Widening::sum_rows(const Tensor& x, const Tensor& out, bool accumulate) {
  Widened wide;
  inner_->sum_rows(wide.in(x), wide.out(out), accumulate);
  wide.finish();
}

}  // namespace

std::unique_ptr<Backend> make_bf16_widening(std::unique_ptr<Backend> inner) {
  return std::make_unique<Bf16Widening>(std::move(inner));
}

}  // namespace linmoe
