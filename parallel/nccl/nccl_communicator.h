// NcclCommunicator: the Communicator for device memory (spec/PARALLEL.md "Backends for
// communication"), one per process group. Built collectively from the group's MPI
// communicator: its rank 0 makes the NCCL unique id, MPI broadcasts it, every rank joins.
//
// Every collective is enqueued on the CUDA stream the backend runs its kernels on, so it is
// ordered with them and returns without waiting. bf16 reductions widen to f32, reduce and round
// once (the interface's contract) through `convert` (the backend's device copy). NCCL matches
// point-to-point messages in order per peer: tags are accepted and ignored. The host-scalar
// helpers and barrier() go through the group's MPI communicator.
//
// Plain C++ header (no CUDA or NCCL types); built only with the CUDA backend.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "core/memory.h"
#include "parallel/communicator.h"

namespace linmoe {

class MpiCommunicator;

class NcclCommunicator final : public Communicator {
 public:
  // dst = src on the device, converting float dtypes (Backend::copy).
  using Convert = std::function<void(const Tensor& src, const Tensor& dst)>;
  // Collective over `group`. stream: the cudaStream_t the backend runs on (as void*); allocator:
  // device memory for the bf16 widening scratch.
  NcclCommunicator(MpiCommunicator& group, void* stream, Allocator& allocator, Convert convert);
  ~NcclCommunicator() override;

  Device device() const override { return Device::cuda; }

 protected:
  void do_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override;
  void do_reduce_scatter(const void* in, void* out, std::int64_t count, DType dtype,
                         ReduceOp op) override;
  void do_all_gather(const void* in, void* out, std::int64_t count, DType dtype) override;
  void do_all_to_all_v(const void* send, const std::int64_t* send_counts,
                       const std::int64_t* send_displs, void* recv, const std::int64_t* recv_counts,
                       const std::int64_t* recv_displs, DType dtype) override;
  void do_send(const void* data, std::int64_t count, DType dtype, int peer, int tag) override;
  void do_recv(void* data, std::int64_t count, DType dtype, int peer, int tag) override;
  void do_send_recv(const void* send, std::int64_t send_count, int send_peer, void* recv,
                    std::int64_t recv_count, int recv_peer, DType dtype, int send_tag,
                    int recv_tag) override;
  void do_broadcast(void* data, std::int64_t count, DType dtype, int root) override;
  void do_barrier() override;
  void do_host_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override;
  void do_host_all_gather(const void* in, void* out, std::int64_t count, DType dtype) override;
  // The non-blocking sums run on a side stream that first waits for the backend's stream (the
  // gradients are written), so the backward's kernels go on meanwhile; wait_all makes the
  // backend's stream wait for the side stream.
  void do_start_all_reduce(void* data, std::int64_t count, DType dtype) override;
  void do_start_reduce_scatter_v(const void* in, void* out, const std::vector<std::int64_t>& counts,
                                 DType dtype) override;
  void do_wait_all() override;

 private:
  void side_stream_waits();  // the side stream (created on first use) waits for the main one
  struct State;
  // An f32 device scratch of at least n elements (grown on demand).
  Tensor scratch(std::int64_t n, int which);
  std::unique_ptr<State> s_;
};

}  // namespace linmoe
