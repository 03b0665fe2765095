// Naive fp64 references of the MoE routing and permutation ops (MODEL.md 4), written from the
// contracts in kernels/ops.h as plainly as possible: sorts and loops, no cleverness.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace linmoe::testing {

struct RefTopk {
  std::vector<int> ids;   // [N, k]
  std::vector<double> w;  // [N, k]
};

// p: [N, E]. A stable sort by descending probability keeps equal ones in expert order.
inline RefTopk ref_topk(const std::vector<double>& p, int N, int E, int k, bool renormalize) {
  RefTopk r;
  for (int n = 0; n < N; ++n) {
    std::vector<int> idx(static_cast<std::size_t>(E));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int a, int b) { return p[n * E + a] > p[n * E + b]; });
    double sum = 0;
    for (int s = 0; s < k; ++s) sum += p[n * E + idx[s]];
    for (int s = 0; s < k; ++s) {
      r.ids.push_back(idx[s]);
      r.w.push_back(renormalize ? p[n * E + idx[s]] / sum : p[n * E + idx[s]]);
    }
  }
  return r;
}

// keep: [N, k]. Per expert: its assignments in token order, stably sorted by descending
// probability (so equal ones stay in token order), the first `capacity` kept.
inline std::vector<int> ref_keep(const std::vector<double>& p, const std::vector<int>& ids, int N,
                                 int E, int k, std::int64_t capacity) {
  std::vector<int> keep(static_cast<std::size_t>(N * k), 0);
  for (int e = 0; e < E; ++e) {
    std::vector<int> mine;
    for (int a = 0; a < N * k; ++a) {
      if (ids[a] == e) mine.push_back(a);
    }
    std::stable_sort(mine.begin(), mine.end(),
                     [&](int a, int b) { return p[(a / k) * E + e] > p[(b / k) * E + e]; });
    for (std::size_t j = 0; j < mine.size() && static_cast<std::int64_t>(j) < capacity; ++j) {
      keep[mine[j]] = 1;
    }
  }
  return keep;
}

struct RefPlan {
  std::vector<int> order;            // [N·k]
  std::vector<std::int64_t> counts;  // [E]
  int A = 0;
};

// keep empty = all kept.
inline RefPlan ref_plan(const std::vector<int>& ids, const std::vector<int>& keep, int N, int k,
                        int E) {
  RefPlan r;
  for (int e = 0; e < E; ++e) {
    std::int64_t c = 0;
    for (int a = 0; a < N * k; ++a) {
      if (ids[a] == e && (keep.empty() || keep[a] == 1)) {
        r.order.push_back(a);
        ++c;
      }
    }
    r.counts.push_back(c);
  }
  r.A = static_cast<int>(r.order.size());
  r.order.resize(static_cast<std::size_t>(N * k), -1);
  return r;
}

// out[i] = x[order[i] / k], [A, D].
inline std::vector<double> ref_permute(const std::vector<double>& x, const std::vector<int>& order,
                                       int A, int k, int D) {
  std::vector<double> out;
  for (int i = 0; i < A; ++i) {
    for (int j = 0; j < D; ++j) out.push_back(x[(order[i] / k) * D + j]);
  }
  return out;
}

// dx[n] = Σ_{i: order[i]/k == n} dout[i], [N, D] (from zero).
inline std::vector<double> ref_permute_backward(const std::vector<double>& dout,
                                                const std::vector<int>& order, int A, int N, int k,
                                                int D) {
  std::vector<double> dx(static_cast<std::size_t>(N * D), 0.0);
  for (int i = 0; i < A; ++i) {
    for (int j = 0; j < D; ++j) dx[(order[i] / k) * D + j] += dout[i * D + j];
  }
  return dx;
}

// out[n] = Σ_{i: order[i]/k == n} w.flat[order[i]] · y[i], [N, D] (from zero).
inline std::vector<double> ref_unpermute(const std::vector<double>& y,
                                         const std::vector<int>& order,
                                         const std::vector<double>& w, int A, int N, int k, int D) {
  std::vector<double> out(static_cast<std::size_t>(N * D), 0.0);
  for (int i = 0; i < A; ++i) {
    for (int j = 0; j < D; ++j) out[(order[i] / k) * D + j] += w[order[i]] * y[i * D + j];
  }
  return out;
}

// dy[i] = w·dout[n]; dw.flat[order[i]] = ⟨dout[n], y[i]⟩, dropped slots 0.
inline void ref_unpermute_backward(const std::vector<double>& dout, const std::vector<double>& y,
                                   const std::vector<int>& order, const std::vector<double>& w,
                                   int A, int N, int k, int D, std::vector<double>* dy,
                                   std::vector<double>* dw) {
  dy->assign(static_cast<std::size_t>(A * D), 0.0);
  dw->assign(static_cast<std::size_t>(N * k), 0.0);
  for (int i = 0; i < A; ++i) {
    const int a = order[i], n = a / k;
    for (int j = 0; j < D; ++j) {
      (*dy)[i * D + j] = w[a] * dout[n * D + j];
      (*dw)[a] += dout[n * D + j] * y[i * D + j];
    }
  }
}

}  // namespace linmoe::testing
