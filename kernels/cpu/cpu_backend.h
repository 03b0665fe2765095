// The CPU reference backend: readable first, fast enough for every CPU test and the tiny run.
// Float ops compute in the tensors' dtype, f32 or f64 (templates in each op's file); OpenMP
// threads over rows/blocks. One op family per file in kernels/cpu/.
#pragma once
#include <memory>

#include "kernels/ops.h"

namespace linmoe {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  Device device() const override { return Device::cpu; }
  std::string name() const override;
  Allocator& allocator() override { return host_allocator(); }
  void synchronize() override {}
  int threads() const { return threads_; }

  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;

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
                        const Tensor& rstd, const Tensor& residual = Tensor{}) override;
  void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                         const Tensor& dx, const Tensor& dw, bool accumulate_dx = false) override;
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
  int threads_;
};

std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace linmoe
