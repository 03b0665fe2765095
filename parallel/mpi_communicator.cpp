#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <numeric>
#include <utility>
#include <vector>

#include "parallel/mpi_check.h"

namespace linmoe {
namespace {

// The internal tag of the all_to_all_v fallback; user tags stop at Communicator::kMaxTag.
constexpr int kInternalTag = Communicator::kMaxTag + 1;
// bf16 reductions widen this many elements at a time, bounding the f32 scratch (16 MiB).
constexpr std::int64_t kWidenChunk = std::int64_t{1} << 22;

// The MPI type that moves a dtype. bf16 moves as its 16 raw bits; it is never reduced as such.
MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::bf16:
      return MPI_UINT16_T;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
  }
  LINMOE_CHECK(false, "no MPI type for dtype ", static_cast<int>(dtype));
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return MPI_SUM;
    case ReduceOp::max:
      return MPI_MAX;
    case ReduceOp::min:
      return MPI_MIN;
  }
  LINMOE_CHECK(false, "no MPI op for reduce op ", static_cast<int>(op));
  return MPI_OP_NULL;
}

// Calls f(offset, n) over [0, count) in pieces of at most `max` elements; once with n = 0 when
// count is 0, so a zero-length send still meets its zero-length recv.
template <class F>
void for_each_chunk(std::int64_t count, std::int64_t max, F f) {
  std::int64_t off = 0;
  do {
    const std::int64_t n = std::min(max, count - off);
    f(off, static_cast<int>(n));
    off += n;
  } while (off < count);
}

int comm_rank(MPI_Comm comm) {
  LINMOE_CHECK(comm != MPI_COMM_NULL, "MpiCommunicator of MPI_COMM_NULL");
  int rank = 0;
  LINMOE_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  return rank;
}

int comm_size(MPI_Comm comm) {
  int size = 0;
  LINMOE_MPI_CHECK(MPI_Comm_size(comm, &size));
  return size;
}

void widen(const bf16* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

void narrow(const float* in, bf16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(in[i]);
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
    : Communicator(comm_rank(comm), comm_size(comm), std::move(name)),
      comm_(comm),
      owned_(owned),
      max_count_(INT_MAX) {
  LINMOE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
}

MpiCommunicator::~MpiCommunicator() {
  if (!owned_) return;
  // A communicator that outlives MPI_Finalize has nothing left to free.
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) LINMOE_MPI_CHECK(MPI_Comm_free(&comm_));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(int color, int key,
                                                        std::string name) const {
  LINMOE_CHECK(color >= 0, "split of ", this->name(), " into ", name, ": colour ", color,
               " must be >= 0");
  MPI_Comm sub = MPI_COMM_NULL;
  LINMOE_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_unique<MpiCommunicator>(sub, std::move(name), /*owned=*/true);
}

void MpiCommunicator::set_max_count_per_call(std::int64_t n) {
  LINMOE_CHECK(n >= 1 && n <= INT_MAX, "max count per MPI call ", n, " outside [1, INT_MAX]");
  max_count_ = n;
}

void MpiCommunicator::do_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) {
  if (dtype == DType::bf16) {
    // Reduce in f32 and round once: summing bf16 pairwise would round at every step.
    const std::int64_t chunk = std::min(max_count_, kWidenChunk);
    std::vector<float> wide(static_cast<std::size_t>(std::min(count, chunk)));
    bf16* p = static_cast<bf16*>(data);
    for (std::int64_t off = 0; off < count; off += chunk) {
      const std::int64_t n = std::min(chunk, count - off);
      widen(p + off, wide.data(), n);
      do_all_reduce(wide.data(), n, DType::f32, op);
      narrow(wide.data(), p + off, n);
    }
    return;
  }
  char* bytes = static_cast<char*>(data);
  const std::size_t es = dtype_size(dtype);
  for_each_chunk(count, max_count_, [&](std::int64_t off, int n) {
    LINMOE_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, bytes + off * es, n, mpi_type(dtype), mpi_op(op), comm_));
  });
}

void MpiCommunicator::do_reduce_scatter(const void* in, void* out, std::int64_t count, DType dtype,
                                        ReduceOp op) {
  if (dtype == DType::bf16) {
    std::vector<float> wide_in(static_cast<std::size_t>(count * size()));
    std::vector<float> wide_out(static_cast<std::size_t>(count));
    widen(static_cast<const bf16*>(in), wide_in.data(), count * size());
    do_reduce_scatter(wide_in.data(), wide_out.data(), count, DType::f32, op);
    narrow(wide_out.data(), static_cast<bf16*>(out), count);
    return;
  }
  if (count <= max_count_) {
    LINMOE_MPI_CHECK(MPI_Reduce_scatter_block(in, out, static_cast<int>(count), mpi_type(dtype),
                                              mpi_op(op), comm_));
    return;
  }
  // Too big for one call: reduce block r onto rank r, chunk by chunk.
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  const std::size_t es = dtype_size(dtype);
  for (int r = 0; r < size(); ++r) {
    for_each_chunk(count, max_count_, [&](std::int64_t off, int n) {
      LINMOE_MPI_CHECK(MPI_Reduce(src + (r * count + off) * es,
                                  r == rank() ? dst + off * es : nullptr, n, mpi_type(dtype),
                                  mpi_op(op), r, comm_));
    });
  }
}

void MpiCommunicator::do_start_all_reduce(void* data, std::int64_t count, DType dtype) {
  if (count > max_count_) {  // beyond one call: blocking, in chunks (correct, not overlapped)
    do_all_reduce(data, count, dtype, ReduceOp::sum);
    return;
  }
  requests_.emplace_back();
  LINMOE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(count), mpi_type(dtype),
                                  MPI_SUM, comm_, &requests_.back()));
}

void MpiCommunicator::do_start_reduce_scatter_v(const void* in, void* out,
                                                const std::vector<std::int64_t>& counts,
                                                DType dtype) {
  const std::int64_t total = std::accumulate(counts.begin(), counts.end(), std::int64_t{0});
  if (total > max_count_) {  // beyond one call: block r reduced onto rank r, blocking
    const char* src = static_cast<const char*>(in);
    const std::size_t es = dtype_size(dtype);
    std::int64_t at = 0;
    for (int r = 0; r < size(); ++r) {
      const std::int64_t n = counts[static_cast<std::size_t>(r)];
      for_each_chunk(n, max_count_, [&](std::int64_t off, int c) {
        LINMOE_MPI_CHECK(MPI_Reduce(src + (at + off) * es,
                                    r == rank() ? static_cast<char*>(out) + off * es : nullptr, c,
                                    mpi_type(dtype), MPI_SUM, r, comm_));
      });
      at += n;
    }
    return;
  }
  std::vector<int>& n = request_counts_.emplace_back();
  for (std::int64_t c : counts) n.push_back(static_cast<int>(c));
  requests_.emplace_back();
  LINMOE_MPI_CHECK(
      MPI_Ireduce_scatter(in, out, n.data(), mpi_type(dtype), MPI_SUM, comm_, &requests_.back()));
}

void MpiCommunicator::do_wait_all() {
  if (!requests_.empty()) {
    LINMOE_MPI_CHECK(
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
  }
  requests_.clear();
  request_counts_.clear();
}

void MpiCommunicator::do_all_gather(const void* in, void* out, std::int64_t count, DType dtype) {
  if (count <= max_count_) {
    const int n = static_cast<int>(count);
    LINMOE_MPI_CHECK(MPI_Allgather(in, n, mpi_type(dtype), out, n, mpi_type(dtype), comm_));
    return;
  }
  // Too big for one call: every rank broadcasts its block, chunk by chunk.
  char* dst = static_cast<char*>(out);
  const std::size_t es = dtype_size(dtype);
  std::memcpy(dst + rank() * count * es, in, count * es);
  for (int r = 0; r < size(); ++r) {
    for_each_chunk(count, max_count_, [&](std::int64_t off, int n) {
      LINMOE_MPI_CHECK(MPI_Bcast(dst + (r * count + off) * es, n, mpi_type(dtype), r, comm_));
    });
  }
}

void MpiCommunicator::do_all_to_all_v(const void* send, const std::int64_t* send_counts,
                                      const std::int64_t* send_displs, void* recv,
                                      const std::int64_t* recv_counts,
                                      const std::int64_t* recv_displs, DType dtype) {
  const int p = size();
  int too_big = 0;
  for (int q = 0; q < p; ++q) {
    if (std::max({send_counts[q], send_displs[q], recv_counts[q], recv_displs[q]}) > max_count_) {
      too_big = 1;
    }
  }
  // Only this rank sees its counts, so the ranks agree on the path first (one small all-reduce).
  if (p > 1) {
    LINMOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &too_big, 1, MPI_INT, MPI_MAX, comm_));
  }
  if (too_big) {
    all_to_all_v_pairwise(static_cast<const char*>(send), send_counts, send_displs,
                          static_cast<char*>(recv), recv_counts, recv_displs, dtype);
    return;
  }
  std::vector<int> sc(static_cast<std::size_t>(p)), sd(sc.size()), rc(sc.size()), rd(sc.size());
  for (std::size_t q = 0; q < sc.size(); ++q) {
    sc[q] = static_cast<int>(send_counts[q]);
    sd[q] = static_cast<int>(send_displs[q]);
    rc[q] = static_cast<int>(recv_counts[q]);
    rd[q] = static_cast<int>(recv_displs[q]);
  }
  // A rank with nothing to move may pass null buffers; give MPI a valid address anyway.
  char dummy = 0;
  LINMOE_MPI_CHECK(MPI_Alltoallv(send ? send : &dummy, sc.data(), sd.data(), mpi_type(dtype),
                                 recv ? recv : &dummy, rc.data(), rd.data(), mpi_type(dtype),
                                 comm_));
}

void MpiCommunicator::all_to_all_v_pairwise(const char* send, const std::int64_t* send_counts,
                                            const std::int64_t* send_displs, char* recv,
                                            const std::int64_t* recv_counts,
                                            const std::int64_t* recv_displs, DType dtype) {
  const std::size_t es = dtype_size(dtype);
  const int me = rank();
  LINMOE_CHECK(send_counts[me] == recv_counts[me], "all_to_all_v on ", name(), ": rank ", me,
               " sends itself ", send_counts[me], " elements but expects ", recv_counts[me]);
  if (send_counts[me] > 0) {
    std::memcpy(recv + recv_displs[me] * es, send + send_displs[me] * es, send_counts[me] * es);
  }
  // Both sides cut a message into the same chunks, and MPI keeps messages between two ranks with
  // one tag in order, so chunk k meets chunk k.
  std::vector<MPI_Request> requests;
  for (int q = 0; q < size(); ++q) {
    if (q == me) continue;
    for_each_chunk(recv_counts[q], max_count_, [&](std::int64_t off, int n) {
      requests.emplace_back();
      LINMOE_MPI_CHECK(MPI_Irecv(recv + (recv_displs[q] + off) * es, n, mpi_type(dtype), q,
                                 kInternalTag, comm_, &requests.back()));
    });
  }
  for (int q = 0; q < size(); ++q) {
    if (q == me) continue;
    for_each_chunk(send_counts[q], max_count_, [&](std::int64_t off, int n) {
      requests.emplace_back();
      LINMOE_MPI_CHECK(MPI_Isend(send + (send_displs[q] + off) * es, n, mpi_type(dtype), q,
                                 kInternalTag, comm_, &requests.back()));
    });
  }
  LINMOE_MPI_CHECK(
      MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
}

void MpiCommunicator::do_send(const void* data, std::int64_t count, DType dtype, int peer,
                              int tag) {
  const char* bytes = static_cast<const char*>(data);
  const std::size_t es = dtype_size(dtype);
  for_each_chunk(count, max_count_, [&](std::int64_t off, int n) {
    LINMOE_MPI_CHECK(MPI_Send(bytes + off * es, n, mpi_type(dtype), peer, tag, comm_));
  });
}

void MpiCommunicator::do_send_recv(const void* send, std::int64_t send_count, int send_peer,
                                   void* recv, std::int64_t recv_count, int recv_peer, DType dtype,
                                   int send_tag, int recv_tag) {
  if (send_count > max_count_ || recv_count > max_count_) {
    // Beyond one MPI call: chunk by chunk, each receive posted before its send, so the exchange
    // still cannot deadlock.
    const std::size_t es = dtype_size(dtype);
    std::int64_t s_off = 0, r_off = 0;
    while (s_off < send_count || r_off < recv_count) {
      const int sn = static_cast<int>(std::min(max_count_, send_count - s_off));
      const int rn = static_cast<int>(std::min(max_count_, recv_count - r_off));
      MPI_Request rr = MPI_REQUEST_NULL;
      if (rn > 0) {
        LINMOE_MPI_CHECK(MPI_Irecv(static_cast<char*>(recv) + r_off * es, rn, mpi_type(dtype),
                                   recv_peer, recv_tag, comm_, &rr));
      }
      if (sn > 0) {
        LINMOE_MPI_CHECK(MPI_Send(static_cast<const char*>(send) + s_off * es, sn, mpi_type(dtype),
                                  send_peer, send_tag, comm_));
      }
      if (rn > 0) LINMOE_MPI_CHECK(MPI_Wait(&rr, MPI_STATUS_IGNORE));
      s_off += sn;
      r_off += rn;
    }
    return;
  }
  MPI_Status status;
  LINMOE_MPI_CHECK(MPI_Sendrecv(send, static_cast<int>(send_count), mpi_type(dtype), send_peer,
                                send_tag, recv, static_cast<int>(recv_count), mpi_type(dtype),
                                recv_peer, recv_tag, comm_, &status));
  int got = 0;
  LINMOE_MPI_CHECK(MPI_Get_count(&status, mpi_type(dtype), &got));
  LINMOE_CHECK(got == recv_count, "send_recv on ", name(), " from rank ", recv_peer, " tag ",
               recv_tag, ": got ", got, " elements, expected ", recv_count);
}

void MpiCommunicator::do_recv(void* data, std::int64_t count, DType dtype, int peer, int tag) {
  char* bytes = static_cast<char*>(data);
  const std::size_t es = dtype_size(dtype);
  for_each_chunk(count, max_count_, [&](std::int64_t off, int n) {
    MPI_Status status;
    LINMOE_MPI_CHECK(MPI_Recv(bytes + off * es, n, mpi_type(dtype), peer, tag, comm_, &status));
    // A shorter message than expected is a protocol bug MPI would not report.
    int got = 0;
    LINMOE_MPI_CHECK(MPI_Get_count(&status, mpi_type(dtype), &got));
    LINMOE_CHECK(got == n, "recv on ", name(), " from rank ", peer, " tag ", tag, ": got ", got,
                 " elements, expected ", n);
  });
}

void MpiCommunicator::do_broadcast(void* data, std::int64_t count, DType dtype, int root) {
  char* bytes = static_cast<char*>(data);
  const std::size_t es = dtype_size(dtype);
  for_each_chunk(count, max_count_, [&](std::int64_t off, int n) {
    LINMOE_MPI_CHECK(MPI_Bcast(bytes + off * es, n, mpi_type(dtype), root, comm_));
  });
}

void MpiCommunicator::do_barrier() {
  LINMOE_MPI_CHECK(MPI_Barrier(comm_));
}

void MpiCommunicator::do_host_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) {
  do_all_reduce(data, count, dtype, op);
}

void MpiCommunicator::do_host_all_gather(const void* in, void* out, std::int64_t count,
                                         DType dtype) {
  do_all_gather(in, out, count, dtype);
}

}  // namespace linmoe
