// MpiCommunicator on every rank: each collective, each dtype, the chunked paths (a tiny
// max-count-per-call), uneven all_to_all_v with zeros, a send/recv ring, broadcast from a
// non-zero root. Every rank checks its own result; the test main reduces failures.
//
// Values are small dyadic numbers, so every sum is exact in every dtype (bf16 holds integers up
// to 256) and the expected values are exact: any difference is a bug, not rounding.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/test_util.h"
#include "parallel/mpi_communicator.h"

using linmoe::DType;
using linmoe::MpiCommunicator;
using linmoe::ReduceOp;
using linmoe::testing::HostTensor;

namespace {

const DType kAllDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};

// A value rank `r` contributes at position i: an integer in [-6, 9].
double value_of(int r, std::int64_t i) {
  return static_cast<double>((i * 5 + r * 3) % 16 - 6);
}

double reduce_expected(ReduceOp op, int size, std::int64_t i) {
  double acc = value_of(0, i);
  for (int r = 1; r < size; ++r) {
    const double v = value_of(r, i);
    if (op == ReduceOp::sum) acc += v;
    if (op == ReduceOp::max) acc = std::max(acc, v);
    if (op == ReduceOp::min) acc = std::min(acc, v);
  }
  return acc;
}

HostTensor values_tensor(DType dtype, std::int64_t n, int rank, std::int64_t first = 0) {
  HostTensor t(dtype, {n});
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = value_of(rank, first + i);
  t.from_f64(v);
  return t;
}

// The world, as a communicator of its own: tests split and cap chunk sizes freely.
std::unique_ptr<MpiCommunicator> make_world() {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  return world.split(0, world.rank(), "test_world");
}

}  // namespace

TEST_CASE("all_reduce: every dtype and op, plain and chunked", "[mpi][communicator]") {
  auto comm = make_world();
  for (std::int64_t max_count : {std::int64_t{INT_MAX}, std::int64_t{3}}) {
    comm->set_max_count_per_call(max_count);
    for (DType dtype : kAllDTypes) {
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
        INFO("dtype " << linmoe::dtype_name(dtype) << " op " << linmoe::reduce_op_name(op)
                      << " max count " << max_count);
        const std::int64_t n = 37;
        HostTensor t = values_tensor(dtype, n, comm->rank());
        comm->all_reduce(t.t(), op);
        const std::vector<double> got = t.to_f64();
        int bad = 0;
        for (std::int64_t i = 0; i < n; ++i) {
          if (got[static_cast<std::size_t>(i)] != reduce_expected(op, comm->size(), i)) ++bad;
        }
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("all_reduce of bf16 rounds once, in f32", "[mpi][communicator]") {
  auto comm = make_world();
  // Rank 0 holds 1, the others 2^-9 each. Summed pairwise in bf16 every 1 + 2^-9 rounds back to
  // 1; summed in f32 and rounded once, (size-1)·2^-9 survives when it reaches half an ulp (2^-8).
  HostTensor t(DType::bf16, {4});
  const double mine = comm->rank() == 0 ? 1.0 : 1.0 / 512.0;
  t.from_f64(std::vector<double>(4, mine));
  comm->all_reduce(t.t(), ReduceOp::sum);
  const double exact = 1.0 + (comm->size() - 1) / 512.0;
  const double expected = linmoe::bf16_to_f32(linmoe::f32_to_bf16(static_cast<float>(exact)));
  for (double v : t.to_f64()) CHECK(v == expected);
}

TEST_CASE("reduce_scatter: every dtype, rank-major blocks, plain and chunked",
          "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  for (std::int64_t max_count : {std::int64_t{INT_MAX}, std::int64_t{2}}) {
    comm->set_max_count_per_call(max_count);
    for (DType dtype : kAllDTypes) {
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
        INFO("dtype " << linmoe::dtype_name(dtype) << " op " << linmoe::reduce_op_name(op)
                      << " max count " << max_count);
        const std::int64_t count = 5;
        HostTensor in = values_tensor(dtype, p * count, comm->rank());
        HostTensor out(dtype, {count});
        linmoe::testing::poison(out.t());
        comm->reduce_scatter(in.t(), out.t(), op);
        const std::vector<double> got = out.to_f64();
        for (std::int64_t i = 0; i < count; ++i) {
          CHECK(got[static_cast<std::size_t>(i)] ==
                reduce_expected(op, p, comm->rank() * count + i));
        }
      }
    }
  }
}

TEST_CASE("all_gather: every dtype, rank-major, plain and chunked", "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  for (std::int64_t max_count : {std::int64_t{INT_MAX}, std::int64_t{3}}) {
    comm->set_max_count_per_call(max_count);
    for (DType dtype : kAllDTypes) {
      INFO("dtype " << linmoe::dtype_name(dtype) << " max count " << max_count);
      const std::int64_t count = 7;
      HostTensor in = values_tensor(dtype, count, comm->rank());
      HostTensor out(dtype, {p, count});  // [size, count]
      linmoe::testing::poison(out.t());
      comm->all_gather(in.t(), out.t());
      const std::vector<double> got = out.to_f64();
      int bad = 0;
      for (int r = 0; r < p; ++r) {
        for (std::int64_t i = 0; i < count; ++i) {
          if (got[static_cast<std::size_t>(r * count + i)] != value_of(r, i)) ++bad;
        }
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("reduce_scatter and all_gather are inverses of each other", "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  const std::int64_t count = 6;
  // all_gather(reduce_scatter(y)) == all_reduce(y).
  HostTensor y = values_tensor(DType::f32, p * count, comm->rank());
  HostTensor piece(DType::f32, {count});
  HostTensor gathered(DType::f32, {p * count});
  linmoe::testing::poison(gathered.t());
  comm->reduce_scatter(y.t(), piece.t());
  comm->all_gather(piece.t(), gathered.t());
  comm->all_reduce(y.t());
  CHECK(gathered.to_f64() == y.to_f64());
  // reduce_scatter(all_gather(x)) == size·x (every rank's gathered copy is the same).
  HostTensor x = values_tensor(DType::f64, count, comm->rank());
  HostTensor all(DType::f64, {p * count});
  HostTensor back(DType::f64, {count});
  comm->all_gather(x.t(), all.t());
  comm->reduce_scatter(all.t(), back.t());
  std::vector<double> expected = x.to_f64();
  for (double& v : expected) v *= p;
  CHECK(back.to_f64() == expected);
}

namespace {
// Elements rank p sends rank q: uneven, with zeros (and rank 0 sends nothing at all).
std::int64_t pair_count(int p, int q) {
  return p == 0 ? 0 : (p + 2 * q) % 3;
}
// The k-th element p sends q, exact in bf16 for up to 4 ranks: < 256.
double pair_value(int p, int q, std::int64_t k) {
  return p * 32 + q * 4 + k;
}
}  // namespace

TEST_CASE("all_to_all_v: uneven counts with zeros and gaps, plain and pairwise",
          "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  const int me = comm->rank();
  for (std::int64_t max_count : {std::int64_t{INT_MAX}, std::int64_t{1}}) {
    comm->set_max_count_per_call(max_count);
    for (DType dtype : kAllDTypes) {
      INFO("dtype " << linmoe::dtype_name(dtype) << " max count " << max_count);
      std::vector<std::int64_t> sc(p), sd(p), rc(p), rd(p);
      // Send blocks in peer order with a one-element gap before each; receive blocks in reverse
      // peer order, packed, after a two-element gap at the front.
      std::int64_t send_total = 0, recv_total = 2;
      for (int q = 0; q < p; ++q) {
        sc[q] = pair_count(me, q);
        sd[q] = send_total + 1;
        send_total += sc[q] + 1;
      }
      for (int q = p - 1; q >= 0; --q) {
        rc[q] = pair_count(q, me);
        rd[q] = recv_total;
        recv_total += rc[q];
      }
      HostTensor send(dtype, {send_total});
      HostTensor recv(dtype, {recv_total});
      std::vector<double> sv(static_cast<std::size_t>(send_total), -1.0);
      for (int q = 0; q < p; ++q) {
        for (std::int64_t k = 0; k < sc[q]; ++k) {
          sv[static_cast<std::size_t>(sd[q] + k)] = pair_value(me, q, k);
        }
      }
      send.from_f64(sv);
      linmoe::testing::poison(recv.t());
      const std::vector<double> poisoned = recv.to_f64();
      if (max_count == INT_MAX) {
        comm->all_to_all_v(send.t(), sc, sd, recv.t(), rc, rd);
      } else {
        comm->all_to_all_v(send.t().data, sc, sd, recv.t().data, rc, rd, dtype);
      }
      const std::vector<double> got = recv.to_f64();
      int bad = 0;
      for (int q = 0; q < p; ++q) {
        for (std::int64_t k = 0; k < rc[q]; ++k) {
          if (got[static_cast<std::size_t>(rd[q] + k)] != pair_value(q, me, k)) ++bad;
        }
      }
      CHECK(bad == 0);
      // The gap is never written (NaN != NaN, so compare as "still poisoned").
      for (int g = 0; g < 2; ++g) {
        const double v = got[static_cast<std::size_t>(g)];
        if (linmoe::dtype_is_float(dtype)) {
          CHECK(v != v);
        } else {
          CHECK(v == poisoned[static_cast<std::size_t>(g)]);
        }
      }
    }
  }
}

TEST_CASE("send/recv around a ring, plain and chunked", "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  if (p == 1) return;  // a ring needs a neighbour; blocking send to oneself may deadlock
  const int next = (comm->rank() + 1) % p, prev = (comm->rank() + p - 1) % p;
  for (std::int64_t max_count : {std::int64_t{INT_MAX}, std::int64_t{4}}) {
    comm->set_max_count_per_call(max_count);
    for (DType dtype : kAllDTypes) {
      INFO("dtype " << linmoe::dtype_name(dtype) << " max count " << max_count);
      const std::int64_t n = 11;
      HostTensor out = values_tensor(dtype, n, comm->rank());
      HostTensor in(dtype, {n});
      linmoe::testing::poison(in.t());
      // Even ranks send first, odd ranks receive first: no cycle of blocked sends.
      if (comm->rank() % 2 == 0) {
        comm->send(out.t(), next, /*tag=*/7);
        comm->recv(in.t(), prev, /*tag=*/7);
      } else {
        comm->recv(in.t(), prev, /*tag=*/7);
        comm->send(out.t(), next, /*tag=*/7);
      }
      CHECK(in.to_f64() == values_tensor(dtype, n, prev).to_f64());
    }
  }
}

TEST_CASE("broadcast from the last rank, every dtype, plain and chunked", "[mpi][communicator]") {
  auto comm = make_world();
  const int root = comm->size() - 1;
  for (std::int64_t max_count : {std::int64_t{INT_MAX}, std::int64_t{5}}) {
    comm->set_max_count_per_call(max_count);
    for (DType dtype : kAllDTypes) {
      INFO("dtype " << linmoe::dtype_name(dtype) << " max count " << max_count);
      const std::int64_t n = 13;
      HostTensor t = values_tensor(dtype, n, comm->rank());
      if (comm->rank() != root) linmoe::testing::poison(t.t());
      comm->broadcast(t.t(), root);
      CHECK(t.to_f64() == values_tensor(dtype, n, root).to_f64());
    }
  }
  comm->barrier();
}

TEST_CASE("host scalar helpers", "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  const int r = comm->rank();
  CHECK(comm->all_reduce_sum(r + 0.5) == p * (p - 1) / 2.0 + 0.5 * p);
  CHECK(comm->all_reduce_max(-1.0 * r) == 0.0);
  CHECK(comm->all_reduce_min(-1.0 * r) == -(p - 1.0));
  const std::int64_t big = std::int64_t{1} << 40;  // beyond 32 bits: a real i64 path
  CHECK(comm->all_reduce_sum_i64(big + r) == big * p + p * (p - 1) / 2);
  CHECK(comm->all_reduce_max_i64(big * r) == big * (p - 1));
  const std::vector<std::int64_t> all = comm->all_gather(big * r + 3);
  REQUIRE(all.size() == static_cast<std::size_t>(p));
  for (int q = 0; q < p; ++q) CHECK(all[static_cast<std::size_t>(q)] == big * q + 3);
}

TEST_CASE("split: sub-communicators by colour, ordered by key", "[mpi][communicator]") {
  auto comm = make_world();
  const int p = comm->size();
  const int r = comm->rank();
  // Odd and even ranks, each group in reverse order of world rank.
  auto sub = comm->split(r % 2, p - r, "parity");
  const int members = (p + 1 - r % 2) / 2;
  CHECK(sub->size() == members);
  CHECK(sub->name() == "parity");
  // Reverse order: the highest world rank of my parity is sub-rank 0.
  int higher = 0;
  for (int q = r + 2; q < p; q += 2) ++higher;
  CHECK(sub->rank() == higher);
  std::vector<std::int64_t> ranks = sub->all_gather(static_cast<std::int64_t>(r));
  for (std::size_t k = 0; k + 1 < ranks.size(); ++k) CHECK(ranks[k] - ranks[k + 1] == 2);
  CHECK(sub->all_reduce_sum(1.0) == members);
}
