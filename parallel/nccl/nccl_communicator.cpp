#include "parallel/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <vector>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"
#include "parallel/mpi_check.h"
#include "parallel/mpi_communicator.h"

// NCCL_CHECK: names the call, file, line, rank and host, then ends every rank (the NCCL member
// of the family in kernels/cuda/cuda_check.h).
#define NCCL_CHECK(call)                                                      \
  do {                                                                        \
    ncclResult_t linmoe_nccl_res_ = (call);                                   \
    if (linmoe_nccl_res_ != ncclSuccess) {                                    \
      ::linmoe::detail::check_failed(                                         \
          #call, __FILE__, __LINE__,                                          \
          ::linmoe::str_cat("NCCL: ", ncclGetErrorString(linmoe_nccl_res_))); \
    }                                                                         \
  } while (0)

namespace linmoe {
namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
  }
  LINMOE_CHECK(false, "NCCL: unsupported dtype ", dtype_name(t));
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::max:
      return ncclMax;
    case ReduceOp::min:
      return ncclMin;
  }
  return ncclSum;
}

std::size_t bytes(std::int64_t count, DType t) {
  return static_cast<std::size_t>(count) * dtype_size(t);
}

}  // namespace

struct NcclCommunicator::State {
  MpiCommunicator& host;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  Allocator& allocator;
  Convert convert;
  Buffer scratch[2];            // f32 widening buffers (input, output)
  cudaStream_t side = nullptr;  // the non-blocking sums' stream
  cudaEvent_t main_ready = nullptr, side_done = nullptr;
  State(MpiCommunicator& h, Allocator& a, Convert c)
      : host(h), allocator(a), convert(std::move(c)) {}
};

NcclCommunicator::NcclCommunicator(MpiCommunicator& group, void* stream, Allocator& allocator,
                                   Convert convert)
    : Communicator(group.rank(), group.size(), group.name()),
      s_(std::make_unique<State>(group, allocator, std::move(convert))) {
  LINMOE_CHECK(allocator.device() == Device::cuda, "NcclCommunicator needs a device allocator");
  s_->stream = static_cast<cudaStream_t>(stream);
  ncclUniqueId id;
  if (group.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  LINMOE_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, group.comm()));
  NCCL_CHECK(ncclCommInitRank(&s_->comm, group.size(), id, group.rank()));
}

NcclCommunicator::~NcclCommunicator() {
  if (!s_) return;
  if (s_->comm) ncclCommDestroy(s_->comm);
  if (s_->side) {
    cudaEventDestroy(s_->main_ready);
    cudaEventDestroy(s_->side_done);
    cudaStreamDestroy(s_->side);
  }
}

void NcclCommunicator::side_stream_waits() {
  if (!s_->side) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&s_->side, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&s_->main_ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&s_->side_done, cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaEventRecord(s_->main_ready, s_->stream));
  CUDA_CHECK(cudaStreamWaitEvent(s_->side, s_->main_ready, 0));
}

void NcclCommunicator::do_start_all_reduce(void* data, std::int64_t count, DType dtype) {
  side_stream_waits();
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<std::size_t>(count), nccl_type(dtype), ncclSum,
                           s_->comm, s_->side));
}

void NcclCommunicator::do_start_reduce_scatter_v(const void* in, void* out,
                                                 const std::vector<std::int64_t>& counts,
                                                 DType dtype) {
  // NCCL has no uneven reduce-scatter: one reduce per rank's block, onto that rank, grouped.
  side_stream_waits();
  const char* src = static_cast<const char*>(in);
  std::size_t at = 0;
  NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size(); ++r) {
    const auto n = static_cast<std::size_t>(counts[static_cast<std::size_t>(r)]);
    if (n > 0) {
      NCCL_CHECK(ncclReduce(src + at * dtype_size(dtype), r == rank() ? out : nullptr, n,
                            nccl_type(dtype), ncclSum, r, s_->comm, s_->side));
    }
    at += n;
  }
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::do_wait_all() {
  if (!s_->side) return;
  CUDA_CHECK(cudaEventRecord(s_->side_done, s_->side));
  CUDA_CHECK(cudaStreamWaitEvent(s_->stream, s_->side_done, 0));
}

Tensor NcclCommunicator::scratch(std::int64_t n, int which) {
  Buffer& b = s_->scratch[which];
  if (b.bytes() < bytes(n, DType::f32)) {
    b = Buffer(s_->allocator, bytes(n, DType::f32), "nccl bf16 widening");
  }
  return b.view(DType::f32, Shape{n});
}

void NcclCommunicator::do_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) {
  if (count == 0) return;
  if (dtype == DType::bf16) {
    // Widen, reduce in f32, round once.
    const Tensor t(data, DType::bf16, Device::cuda, Shape{count});
    const Tensor wide = scratch(count, 0);
    s_->convert(t, wide);
    NCCL_CHECK(ncclAllReduce(wide.data, wide.data, static_cast<std::size_t>(count), ncclFloat32,
                             nccl_op(op), s_->comm, s_->stream));
    s_->convert(wide, t);
    return;
  }
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<std::size_t>(count), nccl_type(dtype),
                           nccl_op(op), s_->comm, s_->stream));
}

void NcclCommunicator::do_reduce_scatter(const void* in, void* out, std::int64_t count, DType dtype,
                                         ReduceOp op) {
  if (count == 0) return;
  if (dtype == DType::bf16) {
    const Tensor tin(const_cast<void*>(in), DType::bf16, Device::cuda, Shape{count * size()});
    const Tensor tout(out, DType::bf16, Device::cuda, Shape{count});
    const Tensor wide_in = scratch(count * size(), 0), wide_out = scratch(count, 1);
    s_->convert(tin, wide_in);
    NCCL_CHECK(ncclReduceScatter(wide_in.data, wide_out.data, static_cast<std::size_t>(count),
                                 ncclFloat32, nccl_op(op), s_->comm, s_->stream));
    s_->convert(wide_out, tout);
    return;
  }
  NCCL_CHECK(ncclReduceScatter(in, out, static_cast<std::size_t>(count), nccl_type(dtype),
                               nccl_op(op), s_->comm, s_->stream));
}

void NcclCommunicator::do_all_gather(const void* in, void* out, std::int64_t count, DType dtype) {
  if (count == 0) return;
  NCCL_CHECK(ncclAllGather(in, out, static_cast<std::size_t>(count), nccl_type(dtype), s_->comm,
                           s_->stream));
}

void NcclCommunicator::do_all_to_all_v(const void* send, const std::int64_t* send_counts,
                                       const std::int64_t* send_displs, void* recv,
                                       const std::int64_t* recv_counts,
                                       const std::int64_t* recv_displs, DType dtype) {
  const auto* s = static_cast<const char*>(send);
  auto* r = static_cast<char*>(recv);
  const ncclDataType_t t = nccl_type(dtype);
  NCCL_CHECK(ncclGroupStart());
  for (int q = 0; q < size(); ++q) {
    if (send_counts[q] > 0) {
      NCCL_CHECK(ncclSend(s + bytes(send_displs[q], dtype),
                          static_cast<std::size_t>(send_counts[q]), t, q, s_->comm, s_->stream));
    }
    if (recv_counts[q] > 0) {
      NCCL_CHECK(ncclRecv(r + bytes(recv_displs[q], dtype),
                          static_cast<std::size_t>(recv_counts[q]), t, q, s_->comm, s_->stream));
    }
  }
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::do_send(const void* data, std::int64_t count, DType dtype, int peer,
                               int /*tag*/) {
  if (count == 0) return;
  NCCL_CHECK(ncclSend(data, static_cast<std::size_t>(count), nccl_type(dtype), peer, s_->comm,
                      s_->stream));
}

void NcclCommunicator::do_recv(void* data, std::int64_t count, DType dtype, int peer, int /*tag*/) {
  if (count == 0) return;
  NCCL_CHECK(ncclRecv(data, static_cast<std::size_t>(count), nccl_type(dtype), peer, s_->comm,
                      s_->stream));
}

void NcclCommunicator::do_send_recv(const void* send, std::int64_t send_count, int send_peer,
                                    void* recv, std::int64_t recv_count, int recv_peer, DType dtype,
                                    int /*send_tag*/, int /*recv_tag*/) {
  // Grouped, so the pair of transfers between neighbours cannot deadlock.
  NCCL_CHECK(ncclGroupStart());
  if (send_count > 0) {
    NCCL_CHECK(ncclSend(send, static_cast<std::size_t>(send_count), nccl_type(dtype), send_peer,
                        s_->comm, s_->stream));
  }
  if (recv_count > 0) {
    NCCL_CHECK(ncclRecv(recv, static_cast<std::size_t>(recv_count), nccl_type(dtype), recv_peer,
                        s_->comm, s_->stream));
  }
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::do_broadcast(void* data, std::int64_t count, DType dtype, int root) {
  NCCL_CHECK(ncclBroadcast(data, data, static_cast<std::size_t>(count), nccl_type(dtype), root,
                           s_->comm, s_->stream));
}

void NcclCommunicator::do_barrier() {
  // Every rank's enqueued work is done, then the ranks meet.
  CUDA_CHECK(cudaStreamSynchronize(s_->stream));
  s_->host.barrier();
}

void NcclCommunicator::do_host_all_reduce(void* data, std::int64_t count, DType dtype,
                                          ReduceOp op) {
  // Host values: device work they may depend on must be finished first.
  CUDA_CHECK(cudaStreamSynchronize(s_->stream));
  s_->host.all_reduce(data, count, dtype, op);
}

void NcclCommunicator::do_host_all_gather(const void* in, void* out, std::int64_t count,
                                          DType dtype) {
  CUDA_CHECK(cudaStreamSynchronize(s_->stream));
  s_->host.all_gather(in, out, count, dtype);
}

}  // namespace linmoe
