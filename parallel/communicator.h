// Communicator: the one interface every parallel algorithm is written against (spec/PARALLEL.md,
// "Backends for communication"). MPI implements it for host memory (mpi_communicator.h) and is
// always built; NCCL will implement it for device memory with the CUDA backend.
//
// Every call is collective over the group unless it says otherwise (send/recv are
// point-to-point). Counts are in elements of `dtype`, never bytes. Buffers of a collective must
// not overlap unless the call is in place (all_reduce, broadcast).
//
// The public methods are non-virtual: they check their arguments once, for every backend, and
// then call the protected do_* hooks a backend implements (so a backend's overrides never hide the
// Tensor overloads).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace linmoe {

enum class ReduceOp : std::uint8_t { sum, max, min };
const char* reduce_op_name(ReduceOp op);

// Reductions of bf16 are done in f32: the backend widens the inputs, reduces in f32 and rounds
// once at the end (spec/CONFIG.md: reductions are fp32). i32/i64 sums wrap like MPI's do.
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The group's role ("world", "tp", "dp", ...), for messages.
  const std::string& name() const { return name_; }
  // Where the buffers must live: host memory for MPI, device memory for NCCL.
  virtual Device device() const = 0;

  // ---- raw buffers ---------------------------------------------------------------------------
  // data[count] on every rank  ->  data[i] = op over ranks of data[i], identical on every rank.
  void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op = ReduceOp::sum);
  // in[size·count] on every rank, viewed as `size` rank-major blocks of `count`  ->
  // out[count] on rank r = op over ranks of block r. The inverse of all_gather for the layout.
  void reduce_scatter(const void* in, void* out, std::int64_t count, DType dtype,
                      ReduceOp op = ReduceOp::sum);
  // in[count] on every rank  ->  out[size·count], block r = rank r's in (rank-major).
  void all_gather(const void* in, void* out, std::int64_t count, DType dtype);
  // Rank p sends send[send_displs[q] .. + send_counts[q]) to every rank q, and receives rank q's
  // block for it at recv[recv_displs[q] .. + recv_counts[q]). Each array has size() entries;
  // recv_counts[q] on rank p must equal send_counts[p] on rank q. Zero counts are fine.
  void all_to_all_v(const void* send, const std::vector<std::int64_t>& send_counts,
                    const std::vector<std::int64_t>& send_displs, void* recv,
                    const std::vector<std::int64_t>& recv_counts,
                    const std::vector<std::int64_t>& recv_displs, DType dtype);
  // Point-to-point (blocking): data[count] to / from `peer` (a rank of this group). A send
  // matches the recv with the same tag and the same count; tags are 0..kMaxTag. The caller
  // orders pairs so that they cannot deadlock (send may block until the recv is posted).
  static constexpr int kMaxTag = 32766;  // MPI guarantees 32767; that one is ours (internal)
  void send(const void* data, std::int64_t count, DType dtype, int peer, int tag = 0);
  void recv(void* data, std::int64_t count, DType dtype, int peer, int tag = 0);
  // Both at once (MPI_Sendrecv): send[send_count] to send_peer while receiving recv[recv_count]
  // from recv_peer. Pairs of ranks exchanging in both directions cannot deadlock (the pipeline
  // schedule's send-forward-receive-backward). A peer of -1 skips that half.
  void send_recv(const void* send, std::int64_t send_count, int send_peer, void* recv,
                 std::int64_t recv_count, int recv_peer, DType dtype, int send_tag = 0,
                 int recv_tag = 0);
  // data[count] of `root` is copied to every rank's data[count].
  void broadcast(void* data, std::int64_t count, DType dtype, int root);
  void barrier();

  // ---- tensors (contiguous views on device(); same shapes and dtype on every rank) ----------
  void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::sum);
  // in: [size·n, ...] or any shape with size·count elements; out: count elements.
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op = ReduceOp::sum);
  // in: count elements; out: size·count elements (e.g. [size, ...in.shape]).
  void all_gather(const Tensor& in, const Tensor& out);
  // send and recv: 1-D views of the flat buffers (any shape; counts index their elements). Checks
  // that every block lies inside its tensor.
  void all_to_all_v(const Tensor& send, const std::vector<std::int64_t>& send_counts,
                    const std::vector<std::int64_t>& send_displs, const Tensor& recv,
                    const std::vector<std::int64_t>& recv_counts,
                    const std::vector<std::int64_t>& recv_displs);
  void send(const Tensor& t, int peer, int tag = 0);
  void recv(const Tensor& t, int peer, int tag = 0);
  // Undefined tensors (or peer -1) skip that half.
  void send_recv(const Tensor& send, int send_peer, const Tensor& recv, int recv_peer,
                 int send_tag = 0, int recv_tag = 0);
  void broadcast(const Tensor& t, int root);

  // ---- host scalars (trainer bookkeeping: losses, token counts, norms) ----------------------
  // Values on the host whatever device() is; a device backend stages them itself.
  double all_reduce_sum(double v);
  double all_reduce_max(double v);
  double all_reduce_min(double v);
  std::int64_t all_reduce_sum_i64(std::int64_t v);
  std::int64_t all_reduce_max_i64(std::int64_t v);
  // v of every rank, indexed by rank.
  std::vector<std::int64_t> all_gather(std::int64_t v);
  // Element-wise sum over ranks of a small host vector (same length everywhere), in place.
  void all_reduce_sum(std::vector<double>& v);

 protected:
  Communicator(int rank, int size, std::string name);

  // Arguments are already checked: counts >= 0, peers and roots in range, size() entries in the
  // all_to_all_v arrays.
  virtual void do_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) = 0;
  virtual void do_reduce_scatter(const void* in, void* out, std::int64_t count, DType dtype,
                                 ReduceOp op) = 0;
  virtual void do_all_gather(const void* in, void* out, std::int64_t count, DType dtype) = 0;
  virtual void do_all_to_all_v(const void* send, const std::int64_t* send_counts,
                               const std::int64_t* send_displs, void* recv,
                               const std::int64_t* recv_counts, const std::int64_t* recv_displs,
                               DType dtype) = 0;
  virtual void do_send(const void* data, std::int64_t count, DType dtype, int peer, int tag) = 0;
  virtual void do_recv(void* data, std::int64_t count, DType dtype, int peer, int tag) = 0;
  virtual void do_send_recv(const void* send, std::int64_t send_count, int send_peer, void* recv,
                            std::int64_t recv_count, int recv_peer, DType dtype, int send_tag,
                            int recv_tag) = 0;
  virtual void do_broadcast(void* data, std::int64_t count, DType dtype, int root) = 0;
  virtual void do_barrier() = 0;
  // The host-scalar helpers go through these: host buffers of `count` (small) elements.
  virtual void do_host_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) = 0;
  virtual void do_host_all_gather(const void* in, void* out, std::int64_t count, DType dtype) = 0;

 private:
  void check_tensor(const Tensor& t, const char* op, const char* arg) const;
  void check_peer(int peer, const char* op) const;

  int rank_;
  int size_;
  std::string name_;
};

}  // namespace linmoe
