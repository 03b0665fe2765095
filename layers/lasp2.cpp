// LASP-2 context parallelism of the LSM cores (layers/lasp2.h, PARALLEL.md): the summaries'
// all-gathers, their host composition, the decay transitions and the conv halo exchange.
#include "layers/lasp2.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "core/check.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace linmoe::lasp2 {

namespace {

// A host f64 view of n doubles.
Tensor host_f64(double* p, i64 n) {
  return Tensor(p, DType::f64, Device::cpu, Shape{n});
}

// The host (MPI) cp group, whatever the backend: every buffer this file communicates is a host
// vector (the summaries, the halos), staged with explicit Backend::copy calls; never a device
// pointer, so never tensor_group.
Communicator& cp_comm(const LayerContext& ctx) {
  Communicator& cp = ctx.groups->group(GroupKind::cp);
  LINMOE_CHECK(cp.device() == Device::cpu, "LASP-2 composes on the host: the cp communicator ",
               cp.name(), " must hold host memory");
  return cp;
}

// in[n] of every rank -> [size · n], rank-major, carried in `wire` (f32 or f64).
std::vector<double> all_gather_host(Communicator& comm, const std::vector<double>& in, DType wire) {
  const auto n = static_cast<i64>(in.size());
  std::vector<double> out(in.size() * static_cast<std::size_t>(comm.size()));
  if (wire == DType::f64) {
    comm.all_gather(in.data(), out.data(), n, DType::f64);
    return out;
  }
  LINMOE_CHECK(wire == DType::f32, "LASP-2 summaries travel as f32 or f64, not ", dtype_name(wire));
  const std::vector<float> in32(in.begin(), in.end());
  std::vector<float> out32(out.size());
  comm.all_gather(in32.data(), out32.data(), n, DType::f32);
  out.assign(out32.begin(), out32.end());
  return out;
}

// Copies this rank's summary [state | transition] (device, stat) to the host, all-gathers it
// over cp and returns the cp blocks.
std::vector<double> gather_summaries(LayerContext& ctx, const StateDims& d, const Tensor& state,
                                     const Tensor& transition) {
  const i64 ns = d.state_numel(), np = d.transition_numel();
  std::vector<double> mine(static_cast<std::size_t>(ns + np));
  ctx.backend.copy(state, host_f64(mine.data(), ns));
  if (np > 0) ctx.backend.copy(transition, host_f64(mine.data() + ns, np));
  return all_gather_host(cp_comm(ctx), mine, stat_dtype(ctx.dtype));
}

}  // namespace

bool enabled(const LayerContext& ctx) {
  return ctx.groups != nullptr && ctx.groups->layout().cp > 1;
}

i64 StateDims::transition_numel() const {
  switch (kind) {
    case Transition::identity:
      return 0;
    case Transition::scalar:
      return B * H;
    case Transition::vector:
      return B * H * Dk;
    case Transition::matrix:
      return B * H * Dk * Dk;
  }
  LINMOE_CHECK(false, "unknown LASP-2 transition");
  return 0;
}

Shape StateDims::transition_shape() const {
  switch (kind) {
    case Transition::scalar:
      return Shape{B, H};
    case Transition::vector:
      return Shape{B, H, Dk};
    case Transition::matrix:
      return Shape{B, H, Dk, Dk};
    case Transition::identity:
      break;
  }
  LINMOE_CHECK(false, "the identity transition has no tensor");
  return Shape{};
}

void apply_transition(const StateDims& d, const double* p, double* s, bool transpose) {
  const i64 BH = d.B * d.H, Dk = d.Dk, Dv = d.Dv, n = Dk * Dv;
  switch (d.kind) {
    case Transition::identity:
      return;
    case Transition::scalar:  // s ← p_bh · s
      for (i64 bh = 0; bh < BH; ++bh) {
        for (i64 e = 0; e < n; ++e) s[bh * n + e] *= p[bh];
      }
      return;
    case Transition::vector:  // s[i, :] ← p_bh[i] · s[i, :] (Diag(p) is its own transpose)
      for (i64 bh = 0; bh < BH; ++bh) {
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 v = 0; v < Dv; ++v) s[bh * n + i * Dv + v] *= p[bh * Dk + i];
        }
      }
      return;
    case Transition::matrix: {  // s ← P s or Pᵀ s, P [Dk, Dk]
      std::vector<double> t(static_cast<std::size_t>(n));
      for (i64 bh = 0; bh < BH; ++bh) {
        const double* P = p + bh * Dk * Dk;
        double* S = s + bh * n;
        std::fill(t.begin(), t.end(), 0.0);
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 k = 0; k < Dk; ++k) {
            const double a = transpose ? P[k * Dk + i] : P[i * Dk + k];
            for (i64 v = 0; v < Dv; ++v)
              t[static_cast<std::size_t>(i * Dv + v)] += a * S[k * Dv + v];
          }
        }
        std::copy(t.begin(), t.end(), S);
      }
      return;
    }
  }
}

std::vector<double> compose_incoming(const StateDims& d, const std::vector<double>& packed,
                                     int rank) {
  const i64 ns = d.state_numel(), block = ns + d.transition_numel();
  LINMOE_CHECK(rank >= 0 && static_cast<i64>(packed.size()) >= (rank + 1) * block,
               "compose_incoming: ", packed.size(), " values for rank ", rank);
  std::vector<double> s(static_cast<std::size_t>(ns), 0.0);
  // S_in(j+1) = P_j(S_in(j)) + M_j from S_in(0) = 0.
  for (int j = 0; j < rank; ++j) {
    const double* m = packed.data() + j * block;
    apply_transition(d, m + ns, s.data(), /*transpose=*/false);
    for (i64 e = 0; e < ns; ++e) s[static_cast<std::size_t>(e)] += m[e];
  }
  return s;
}

std::vector<double> compose_outgoing_gradient(const StateDims& d, const std::vector<double>& packed,
                                              int rank) {
  const i64 ns = d.state_numel(), block = ns + d.transition_numel();
  const auto size = static_cast<int>(static_cast<i64>(packed.size()) / block);
  LINMOE_CHECK(static_cast<i64>(packed.size()) == size * block && rank >= 0 && rank < size,
               "compose_outgoing_gradient: ", packed.size(), " values for rank ", rank);
  std::vector<double> g(static_cast<std::size_t>(ns), 0.0);
  // g_j = h_j + P_jᵀ(g_{j+1}) from g_size = 0, down to j = rank + 1.
  for (int j = size - 1; j > rank; --j) {
    const double* h = packed.data() + j * block;
    apply_transition(d, h + ns, g.data(), /*transpose=*/true);
    for (i64 e = 0; e < ns; ++e) g[static_cast<std::size_t>(e)] += h[e];
  }
  return g;
}

namespace {

// The one exchange both directions share: run(undefined, summary) fills this piece's summary
// (M_r forward, h_r backward) in scratch, ONE all-gather of (summary, P) over cp, then
// compose(...) on the host writes the result into `out`.
using Compose = std::vector<double> (*)(const StateDims&, const std::vector<double>&, int);
void exchange(LayerContext& ctx, const StateDims& d, const Tensor& transition,
              const std::function<void(const Tensor&, const Tensor&)>& run, Compose compose,
              const Tensor& out) {
  std::vector<double> packed;
  {
    ScratchScope scope(ctx.scratch);
    const Tensor mine = ctx.temp(out.dtype, out.shape);  // [B, H, Dk, Dv]
    run(Tensor{}, mine);
    packed = gather_summaries(ctx, d, mine, transition);
  }
  std::vector<double> r = compose(d, packed, cp_comm(ctx).rank());
  ctx.backend.copy(host_f64(r.data(), d.state_numel()), out);
}

}  // namespace

Tensor incoming_state(LayerContext& ctx, const StateDims& d, const Tensor& transition,
                      const CoreForward& run) {
  const Tensor s_in =
      ctx.saved.allocate(stat_dtype(ctx.dtype), Shape{d.B, d.H, d.Dk, d.Dv});  // [B, H, Dk, Dv]
  exchange(ctx, d, transition, run, compose_incoming, s_in);
  return s_in;
}

Tensor outgoing_state_gradient(LayerContext& ctx, const StateDims& d, const Tensor& transition,
                               const CoreBackward& run) {
  // ∂L/∂S_out(r) [B, H, Dk, Dv] in the caller's scratch scope.
  const Tensor d_out = ctx.temp(stat_dtype(ctx.dtype), Shape{d.B, d.H, d.Dk, d.Dv});
  exchange(ctx, d, transition, run, compose_outgoing_gradient, d_out);
  return d_out;
}

void decay_transition(LayerContext& ctx, const Tensor& log_decay, const Tensor& transition) {
  LINMOE_CHECK(log_decay.ndim() == 3 && log_decay.is_contiguous(),
               "decay_transition: log_decay must be [B, T, W] contiguous, got ", log_decay.str());
  const i64 B = log_decay.size(0), W = log_decay.size(2);
  LINMOE_CHECK(transition.numel() == B * W, "decay_transition: transition ", transition.str(),
               " for log_decay ", log_decay.str());
  ScratchScope scope(ctx.scratch);
  const Tensor sums = ctx.temp(log_decay.dtype, {B, W});  // [B, W] Σ_t log_decay
  for (i64 b = 0; b < B; ++b)
    ctx.backend.sum_rows(log_decay.select(0, b), sums.select(0, b), false);
  std::vector<double> p(static_cast<std::size_t>(B * W));
  ctx.backend.copy(sums, host_f64(p.data(), B * W));
  for (double& e : p) e = std::exp(e);  // finite sums: a strong decay underflows to 0, not NaN
  ctx.backend.copy(host_f64(p.data(), B * W), transition);
}

Tensor identity_states(LayerContext& ctx, i64 B, i64 H, i64 Dk) {
  std::vector<double> eye(static_cast<std::size_t>(B * H * Dk * Dk), 0.0);
  for (i64 bh = 0; bh < B * H; ++bh) {
    for (i64 i = 0; i < Dk; ++i) eye[static_cast<std::size_t>((bh * Dk + i) * Dk + i)] = 1.0;
  }
  const Tensor t = ctx.temp(stat_dtype(ctx.dtype), {B, H, Dk, Dk});
  ctx.backend.copy(host_f64(eye.data(), B * H * Dk * Dk), t);
  return t;
}

namespace {

// Total elements of pieces [B, K−1, C_i].
i64 halo_numel(i64 B, i64 R, const std::vector<Tensor>& per_piece_c) {
  i64 n = 0;
  for (const Tensor& t : per_piece_c) n += B * R * t.size(-1);
  return n;
}

}  // namespace

void exchange_halo(LayerContext& ctx, i64 B, i64 T, i64 K, const std::vector<Tensor>& x,
                   const std::vector<Tensor>& halo) {
  const i64 R = K - 1;
  LINMOE_CHECK(x.size() == halo.size(), "exchange_halo: ", x.size(), " inputs, ", halo.size(),
               " halos");
  if (R <= 0) return;
  LINMOE_CHECK(T >= R, "context parallelism: each rank's piece of a sequence (", T,
               " tokens) must hold at least conv_size − 1 = ", R, " tokens");
  Communicator& cp = cp_comm(ctx);
  const int r = cp.rank(), n = cp.size();
  const DType dt = ctx.dtype;
  const std::size_t es = dtype_size(dt);
  const i64 total = halo_numel(B, R, x);
  std::vector<unsigned char> send(static_cast<std::size_t>(total) * es);
  std::vector<unsigned char> recv(send.size());
  i64 off = 0;
  if (r + 1 < n) {
    for (const Tensor& xi : x) {
      const i64 C = xi.size(1);
      for (i64 b = 0; b < B; ++b) {
        const Tensor host(send.data() + static_cast<std::size_t>(off) * es, dt, Device::cpu,
                          Shape{R, C});
        ctx.backend.copy(xi.slice(0, b * T + T - R, R), host);  // the last K−1 rows of sequence b
        off += R * C;
      }
    }
  }
  cp.send_recv(send.data(), total, r + 1 < n ? r + 1 : -1, recv.data(), total, r > 0 ? r - 1 : -1,
               dt);
  off = 0;
  for (const Tensor& h : halo) {
    if (r == 0) {
      ctx.backend.fill(h, 0.0);  // before the sequence start
      continue;
    }
    const i64 C = h.size(2);
    ctx.backend.copy(
        Tensor(recv.data() + static_cast<std::size_t>(off) * es, dt, Device::cpu, Shape{B, R, C}),
        h);
    off += B * R * C;
  }
}

void return_halo_gradient(LayerContext& ctx, i64 B, i64 T, i64 K, const std::vector<Tensor>& d_halo,
                          const std::vector<Tensor>& dx) {
  const i64 R = K - 1;
  LINMOE_CHECK(d_halo.size() == dx.size(), "return_halo_gradient: ", d_halo.size(),
               " halo gradients, ", dx.size(), " input gradients");
  if (R <= 0) return;
  Communicator& cp = cp_comm(ctx);
  const int r = cp.rank(), n = cp.size();
  const DType dt = ctx.dtype;
  const std::size_t es = dtype_size(dt);
  const i64 total = halo_numel(B, R, dx);
  std::vector<unsigned char> send(static_cast<std::size_t>(total) * es);
  std::vector<unsigned char> recv(send.size());
  i64 off = 0;
  if (r > 0) {
    for (const Tensor& g : d_halo) {
      const i64 C = g.size(2);
      ctx.backend.copy(g, Tensor(send.data() + static_cast<std::size_t>(off) * es, dt, Device::cpu,
                                 Shape{B, R, C}));
      off += B * R * C;
    }
  }
  cp.send_recv(send.data(), total, r > 0 ? r - 1 : -1, recv.data(), total, r + 1 < n ? r + 1 : -1,
               dt);
  if (r + 1 >= n) return;  // the last piece's outputs are nobody's halo
  ScratchScope scope(ctx.scratch);
  off = 0;
  for (const Tensor& g : dx) {
    const i64 C = g.size(1);
    const Tensor rows = ctx.temp({R, C});  // [K−1, C] the next rank's gradient of these rows
    for (i64 b = 0; b < B; ++b) {
      ctx.backend.copy(
          Tensor(recv.data() + static_cast<std::size_t>(off) * es, dt, Device::cpu, Shape{R, C}),
          rows);
      ctx.backend.axpy(1.0, rows, g.slice(0, b * T + T - R, R));
      off += R * C;
    }
  }
}

}  // namespace linmoe::lasp2
