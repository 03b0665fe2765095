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
#include <array>
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
// Communication accounting: every public call below records, per operation kind, how many calls
// this rank made and how many bytes it moved. The bytes are LOGICAL payloads (elements × dtype
// size), independent of the algorithm the backend uses (a ring all-reduce puts about 2·(n−1)/n
// of its buffer on the wire, a tree something else):
//
//   kind            bytes_out (what this rank hands in)      bytes_in (what it gets back)
//   all_reduce      count                                    count
//   reduce_scatter  size·count (its whole input)             count
//   all_gather      count (its block)                        size·count
//   all_to_all_v    Σ_{q≠rank} send_counts[q]                Σ_{q≠rank} recv_counts[q]
//                   (the block to itself is a local copy and is not counted)
//   send / recv     count / 0                                0 / count
//   send_recv       send_count if send_peer ≥ 0              recv_count if recv_peer ≥ 0
//   broadcast       count on the root, 0 elsewhere           count off the root, 0 on it
//   host            the host-scalar helpers (all_reduce_sum/max/min, all_reduce_*_i64,
//                   all_gather(int64)): trainer bookkeeping, kept apart from tensor traffic;
//                   counted like all_reduce / all_gather
//
// A call with count 0 still counts as a call (all_to_all_v and send_recv are collective or paired
// even when empty). barrier is not counted. The counters are plain integers: MPI is driven from
// one thread (MPI_THREAD_FUNNELED), so no locks.
enum class CommOp : std::uint8_t {
  all_reduce,
  reduce_scatter,
  all_gather,
  all_to_all_v,
  send,
  recv,
  send_recv,
  broadcast,
  host,
};
constexpr int kNumCommOps = 9;
const char* comm_op_name(CommOp op);

struct CommOpTraffic {
  std::int64_t calls = 0;
  std::int64_t bytes_out = 0;  // see the table above
  std::int64_t bytes_in = 0;
};

struct CommTraffic {
  std::array<CommOpTraffic, kNumCommOps> ops{};
  const CommOpTraffic& operator[](CommOp op) const { return ops[static_cast<std::size_t>(op)]; }
  CommOpTraffic& operator[](CommOp op) { return ops[static_cast<std::size_t>(op)]; }
  // Sums over every kind but `host` (tensor traffic only).
  std::int64_t bytes_out() const;
  std::int64_t bytes_in() const;
  std::int64_t calls() const;
  // Element-wise difference (a − b): the traffic between two snapshots.
  CommTraffic operator-(const CommTraffic& b) const;
  // One line per kind with calls: "all_gather 2 calls, 1.5 KiB out, 3.0 KiB in".
  std::string str() const;
};

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

  // What this rank has moved through this communicator since construction or the last reset
  // (the table above CommOp).
  const CommTraffic& traffic() const { return traffic_; }
  void reset_traffic() { traffic_ = CommTraffic{}; }

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

  // ---- non-blocking sums (the gradient reduction overlapping the backward pass) ----------------
  // start_* begins a sum over the group and returns; the buffers must stay untouched until
  // wait_all(), which completes every started one (MPI: requests progressed by MPI calls; NCCL: a
  // side stream the backend's stream then waits for). f32 and f64 only. Counted as their
  // blocking kinds when started.
  // data[count] summed over ranks, in place.
  void start_all_reduce(void* data, std::int64_t count, DType dtype);
  // in[Σ counts] on every rank, rank-major blocks of counts[r] (zeros allowed)  ->
  // out[counts[rank]] = the sum over ranks of block `rank`. reduce_scatter with uneven blocks.
  void start_reduce_scatter_v(const void* in, void* out, const std::vector<std::int64_t>& counts,
                              DType dtype);
  void wait_all();
  bool has_pending() const { return pending_ > 0; }

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
  virtual void do_start_all_reduce(void* data, std::int64_t count, DType dtype) = 0;
  virtual void do_start_reduce_scatter_v(const void* in, void* out,
                                         const std::vector<std::int64_t>& counts, DType dtype) = 0;
  virtual void do_wait_all() = 0;
  // The host-scalar helpers go through these: host buffers of `count` (small) elements.
  virtual void do_host_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) = 0;
  virtual void do_host_all_gather(const void* in, void* out, std::int64_t count, DType dtype) = 0;

 private:
  void check_tensor(const Tensor& t, const char* op, const char* arg) const;
  void check_peer(int peer, const char* op) const;
  void record(CommOp op, std::int64_t out, std::int64_t in) {
    CommOpTraffic& t = traffic_[op];
    t.calls += 1;
    t.bytes_out += out;
    t.bytes_in += in;
  }

  int rank_;
  int size_;
  std::string name_;
  CommTraffic traffic_;
  int pending_ = 0;  // started and not yet waited for
};

}  // namespace linmoe
