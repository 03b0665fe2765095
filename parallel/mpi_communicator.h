// MpiCommunicator: the Communicator for host memory, over one MPI communicator. Always built, so
// every layout runs with several CPU ranks on one machine.
//
// Counts beyond INT_MAX (MPI's count type) are handled, not refused: all_reduce, broadcast and
// send/recv go in chunks; reduce_scatter and all_gather fall back to one reduce / broadcast per
// rank; all_to_all_v falls back to chunked point-to-point exchange. bf16 reductions widen to f32
// (communicator.h).
#pragma once
#include <mpi.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace linmoe {

class MpiCommunicator final : public Communicator {
 public:
  // Wraps `comm` (e.g. MPI_COMM_WORLD); frees it on destruction only when `owned`. Sets the
  // communicator's error handler to MPI_ERRORS_RETURN, so LINMOE_MPI_CHECK reports failures.
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned = false);
  ~MpiCommunicator() override;

  // A new communicator of the ranks that pass the same `color`, ordered by `key` (MPI_Comm_split;
  // collective over this communicator). The result owns its MPI_Comm.
  std::unique_ptr<MpiCommunicator> split(int color, int key, std::string name) const;

  Device device() const override { return Device::cpu; }
  MPI_Comm comm() const { return comm_; }

  // The most elements one MPI call carries (default INT_MAX). Tests lower it to exercise the
  // chunked paths with small buffers; must be the same on every rank of the group.
  void set_max_count_per_call(std::int64_t n);

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
  void do_start_all_reduce(void* data, std::int64_t count, DType dtype) override;
  void do_start_reduce_scatter_v(const void* in, void* out, const std::vector<std::int64_t>& counts,
                                 DType dtype) override;
  void do_wait_all() override;

 private:
  void all_to_all_v_pairwise(const char* send, const std::int64_t* send_counts,
                             const std::int64_t* send_displs, char* recv,
                             const std::int64_t* recv_counts, const std::int64_t* recv_displs,
                             DType dtype);

  MPI_Comm comm_;
  bool owned_;
  std::int64_t max_count_;
  // Started non-blocking collectives, and the int count arrays they read until completion.
  std::vector<MPI_Request> requests_;
  std::deque<std::vector<int>> request_counts_;
};

}  // namespace linmoe
