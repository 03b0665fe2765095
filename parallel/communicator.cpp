#include "parallel/communicator.h"

#include <utility>

#include "core/check.h"
#include "core/log.h"

namespace linmoe {

const char* comm_op_name(CommOp op) {
  switch (op) {
    case CommOp::all_reduce:
      return "all_reduce";
    case CommOp::reduce_scatter:
      return "reduce_scatter";
    case CommOp::all_gather:
      return "all_gather";
    case CommOp::all_to_all_v:
      return "all_to_all_v";
    case CommOp::send:
      return "send";
    case CommOp::recv:
      return "recv";
    case CommOp::send_recv:
      return "send_recv";
    case CommOp::broadcast:
      return "broadcast";
    case CommOp::host:
      return "host";
  }
  return "?";
}

std::int64_t CommTraffic::bytes_out() const {
  std::int64_t n = 0;
  for (int i = 0; i < kNumCommOps; ++i) {
    if (static_cast<CommOp>(i) != CommOp::host) n += ops[static_cast<std::size_t>(i)].bytes_out;
  }
  return n;
}

std::int64_t CommTraffic::bytes_in() const {
  std::int64_t n = 0;
  for (int i = 0; i < kNumCommOps; ++i) {
    if (static_cast<CommOp>(i) != CommOp::host) n += ops[static_cast<std::size_t>(i)].bytes_in;
  }
  return n;
}

std::int64_t CommTraffic::calls() const {
  std::int64_t n = 0;
  for (int i = 0; i < kNumCommOps; ++i) {
    if (static_cast<CommOp>(i) != CommOp::host) n += ops[static_cast<std::size_t>(i)].calls;
  }
  return n;
}

CommTraffic CommTraffic::operator-(const CommTraffic& b) const {
  CommTraffic d;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    d.ops[i].calls = ops[i].calls - b.ops[i].calls;
    d.ops[i].bytes_out = ops[i].bytes_out - b.ops[i].bytes_out;
    d.ops[i].bytes_in = ops[i].bytes_in - b.ops[i].bytes_in;
  }
  return d;
}

std::string CommTraffic::str() const {
  std::string s;
  for (int i = 0; i < kNumCommOps; ++i) {
    const CommOpTraffic& t = ops[static_cast<std::size_t>(i)];
    if (t.calls == 0) continue;
    s += str_cat(comm_op_name(static_cast<CommOp>(i)), " ", t.calls, " calls, ",
                 format_bytes(double(t.bytes_out)), " out, ", format_bytes(double(t.bytes_in)),
                 " in\n");
  }
  return s;
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::max:
      return "max";
    case ReduceOp::min:
      return "min";
  }
  return "?";
}

Communicator::Communicator(int rank, int size, std::string name)
    : rank_(rank), size_(size), name_(std::move(name)) {
  LINMOE_CHECK(size_ >= 1 && rank_ >= 0 && rank_ < size_, "communicator ", name_, ": rank ", rank_,
               " of ", size_);
}

void Communicator::check_tensor(const Tensor& t, const char* op, const char* arg) const {
  check_contiguous(t, op, arg);
  LINMOE_CHECK(t.device == device(), op, " on ", name_, ": ", arg, " ", t.str(), " is not on ",
               device_name(device()));
  LINMOE_CHECK(t.data != nullptr || t.numel() == 0, op, ": ", arg, " has no data");
}

void Communicator::check_peer(int peer, const char* op) const {
  LINMOE_CHECK(peer >= 0 && peer < size_, op, " on ", name_, ": rank ", peer, " is outside [0, ",
               size_, ")");
}

// ---- raw buffers: check once here, for every backend --------------------------------------------

void Communicator::all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) {
  LINMOE_CHECK(count >= 0 && (data || count == 0), "all_reduce on ", name_, ": count ", count);
  const std::int64_t bytes = count * static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::all_reduce, bytes, bytes);
  if (count > 0) do_all_reduce(data, count, dtype, op);
}

void Communicator::reduce_scatter(const void* in, void* out, std::int64_t count, DType dtype,
                                  ReduceOp op) {
  LINMOE_CHECK(count >= 0 && ((in && out) || count == 0), "reduce_scatter on ", name_, ": count ",
               count);
  const std::int64_t bytes = count * static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::reduce_scatter, bytes * size_, bytes);
  if (count > 0) do_reduce_scatter(in, out, count, dtype, op);
}

void Communicator::start_all_reduce(void* data, std::int64_t count, DType dtype) {
  LINMOE_CHECK(count >= 0 && (data || count == 0), "start_all_reduce on ", name_, ": count ",
               count);
  LINMOE_CHECK(dtype == DType::f32 || dtype == DType::f64, "start_all_reduce on ", name_,
               ": f32 or f64, got ", dtype_name(dtype));
  const std::int64_t bytes = count * static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::all_reduce, bytes, bytes);
  if (count == 0) return;
  do_start_all_reduce(data, count, dtype);
  ++pending_;
}

void Communicator::start_reduce_scatter_v(const void* in, void* out,
                                          const std::vector<std::int64_t>& counts, DType dtype) {
  LINMOE_CHECK(static_cast<int>(counts.size()) == size_, "start_reduce_scatter_v on ", name_, ": ",
               counts.size(), " counts for ", size_, " ranks");
  LINMOE_CHECK(dtype == DType::f32 || dtype == DType::f64, "start_reduce_scatter_v on ", name_,
               ": f32 or f64, got ", dtype_name(dtype));
  std::int64_t total = 0;
  for (std::int64_t c : counts) {
    LINMOE_CHECK(c >= 0, "start_reduce_scatter_v on ", name_, ": negative count ", c);
    total += c;
  }
  const auto es = static_cast<std::int64_t>(dtype_size(dtype));
  const std::int64_t mine = counts[static_cast<std::size_t>(rank_)];
  LINMOE_CHECK((in || total == 0) && (out || mine == 0), "start_reduce_scatter_v on ", name_,
               ": null buffer");
  record(CommOp::reduce_scatter, total * es, mine * es);
  if (total == 0) return;
  do_start_reduce_scatter_v(in, out, counts, dtype);
  ++pending_;
}

void Communicator::wait_all() {
  if (pending_ == 0) return;
  do_wait_all();
  pending_ = 0;
}

void Communicator::all_gather(const void* in, void* out, std::int64_t count, DType dtype) {
  LINMOE_CHECK(count >= 0 && ((in && out) || count == 0), "all_gather on ", name_, ": count ",
               count);
  const std::int64_t bytes = count * static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::all_gather, bytes, bytes * size_);
  if (count > 0) do_all_gather(in, out, count, dtype);
}

void Communicator::all_to_all_v(const void* send, const std::vector<std::int64_t>& send_counts,
                                const std::vector<std::int64_t>& send_displs, void* recv,
                                const std::vector<std::int64_t>& recv_counts,
                                const std::vector<std::int64_t>& recv_displs, DType dtype) {
  const std::size_t n = static_cast<std::size_t>(size_);
  LINMOE_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
                   recv_displs.size() == n,
               "all_to_all_v on ", name_, ": counts and displacements need ", n, " entries each");
  for (std::size_t q = 0; q < n; ++q) {
    LINMOE_CHECK(
        send_counts[q] >= 0 && send_displs[q] >= 0 && recv_counts[q] >= 0 && recv_displs[q] >= 0,
        "all_to_all_v on ", name_, ": negative count or displacement for rank ", q);
    LINMOE_CHECK((send || send_counts[q] == 0) && (recv || recv_counts[q] == 0), "all_to_all_v on ",
                 name_, ": null buffer with a non-zero count for rank ", q);
  }
  std::int64_t out = 0, in = 0;
  for (std::size_t q = 0; q < n; ++q) {
    if (static_cast<int>(q) == rank_) continue;  // the block to itself is a local copy
    out += send_counts[q];
    in += recv_counts[q];
  }
  const auto es = static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::all_to_all_v, out * es, in * es);
  // Collective even when this rank moves nothing: other ranks may still send to it.
  do_all_to_all_v(send, send_counts.data(), send_displs.data(), recv, recv_counts.data(),
                  recv_displs.data(), dtype);
}

void Communicator::send(const void* data, std::int64_t count, DType dtype, int peer, int tag) {
  check_peer(peer, "send");
  LINMOE_CHECK(count >= 0 && (data || count == 0) && tag >= 0 && tag <= kMaxTag, "send on ", name_,
               ": count ", count, ", tag ", tag);
  record(CommOp::send, count * static_cast<std::int64_t>(dtype_size(dtype)), 0);
  do_send(data, count, dtype, peer, tag);
}

void Communicator::recv(void* data, std::int64_t count, DType dtype, int peer, int tag) {
  check_peer(peer, "recv");
  LINMOE_CHECK(count >= 0 && (data || count == 0) && tag >= 0 && tag <= kMaxTag, "recv on ", name_,
               ": count ", count, ", tag ", tag);
  record(CommOp::recv, 0, count * static_cast<std::int64_t>(dtype_size(dtype)));
  do_recv(data, count, dtype, peer, tag);
}

void Communicator::send_recv(const void* send, std::int64_t send_count, int send_peer, void* recv,
                             std::int64_t recv_count, int recv_peer, DType dtype, int send_tag,
                             int recv_tag) {
  if (send_peer >= 0) check_peer(send_peer, "send_recv");
  if (recv_peer >= 0) check_peer(recv_peer, "send_recv");
  LINMOE_CHECK(send_count >= 0 && recv_count >= 0 && (send || send_count == 0) &&
                   (recv || recv_count == 0) && send_tag >= 0 && send_tag <= kMaxTag &&
                   recv_tag >= 0 && recv_tag <= kMaxTag,
               "send_recv on ", name_, ": counts ", send_count, "/", recv_count, ", tags ",
               send_tag, "/", recv_tag);
  const auto es = static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::send_recv, send_peer >= 0 ? send_count * es : 0,
         recv_peer >= 0 ? recv_count * es : 0);
  if (send_peer < 0 && recv_peer < 0) return;
  if (recv_peer < 0) return do_send(send, send_count, dtype, send_peer, send_tag);
  if (send_peer < 0) return do_recv(recv, recv_count, dtype, recv_peer, recv_tag);
  do_send_recv(send, send_count, send_peer, recv, recv_count, recv_peer, dtype, send_tag, recv_tag);
}

void Communicator::broadcast(void* data, std::int64_t count, DType dtype, int root) {
  check_peer(root, "broadcast");
  LINMOE_CHECK(count >= 0 && (data || count == 0), "broadcast on ", name_, ": count ", count);
  const std::int64_t bytes = count * static_cast<std::int64_t>(dtype_size(dtype));
  record(CommOp::broadcast, rank_ == root ? bytes : 0, rank_ == root ? 0 : bytes);
  if (count > 0) do_broadcast(data, count, dtype, root);
}

void Communicator::barrier() {
  do_barrier();
}

// ---- tensors ------------------------------------------------------------------------------------

void Communicator::all_reduce(const Tensor& t, ReduceOp op) {
  check_tensor(t, "all_reduce", "t");
  all_reduce(t.data, t.numel(), t.dtype, op);
}

void Communicator::reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) {
  check_tensor(in, "reduce_scatter", "in");
  check_tensor(out, "reduce_scatter", "out");
  check_same_dtype(in, out, "reduce_scatter");
  LINMOE_CHECK(in.numel() == out.numel() * size_, "reduce_scatter on ", name_, ": in ", in.str(),
               " must hold ", size_, " x out ", out.str());
  reduce_scatter(in.data, out.data, out.numel(), out.dtype, op);
}

void Communicator::all_gather(const Tensor& in, const Tensor& out) {
  check_tensor(in, "all_gather", "in");
  check_tensor(out, "all_gather", "out");
  check_same_dtype(in, out, "all_gather");
  LINMOE_CHECK(out.numel() == in.numel() * size_, "all_gather on ", name_, ": out ", out.str(),
               " must hold ", size_, " x in ", in.str());
  all_gather(in.data, out.data, in.numel(), in.dtype);
}

void Communicator::all_to_all_v(const Tensor& send, const std::vector<std::int64_t>& send_counts,
                                const std::vector<std::int64_t>& send_displs, const Tensor& recv,
                                const std::vector<std::int64_t>& recv_counts,
                                const std::vector<std::int64_t>& recv_displs) {
  check_tensor(send, "all_to_all_v", "send");
  check_tensor(recv, "all_to_all_v", "recv");
  check_same_dtype(send, recv, "all_to_all_v");
  // Sizes are checked by the raw call; here only that each block fits its tensor.
  for (std::size_t q = 0; q < send_counts.size() && q < send_displs.size(); ++q) {
    LINMOE_CHECK(send_displs[q] + send_counts[q] <= send.numel(), "all_to_all_v on ", name_,
                 ": block for rank ", q, " ends at ", send_displs[q] + send_counts[q],
                 ", past send ", send.str());
  }
  for (std::size_t q = 0; q < recv_counts.size() && q < recv_displs.size(); ++q) {
    LINMOE_CHECK(recv_displs[q] + recv_counts[q] <= recv.numel(), "all_to_all_v on ", name_,
                 ": block from rank ", q, " ends at ", recv_displs[q] + recv_counts[q],
                 ", past recv ", recv.str());
  }
  all_to_all_v(send.data, send_counts, send_displs, recv.data, recv_counts, recv_displs,
               send.dtype);
}

void Communicator::send(const Tensor& t, int peer, int tag) {
  check_tensor(t, "send", "t");
  send(t.data, t.numel(), t.dtype, peer, tag);
}

void Communicator::recv(const Tensor& t, int peer, int tag) {
  check_tensor(t, "recv", "t");
  recv(t.data, t.numel(), t.dtype, peer, tag);
}

void Communicator::send_recv(const Tensor& send, int send_peer, const Tensor& recv, int recv_peer,
                             int send_tag, int recv_tag) {
  const bool s = send.data && send_peer >= 0, r = recv.data && recv_peer >= 0;
  if (s) check_tensor(send, "send_recv", "send");
  if (r) check_tensor(recv, "send_recv", "recv");
  LINMOE_CHECK(!s || !r || send.dtype == recv.dtype, "send_recv on ", name_, ": dtypes ",
               dtype_name(send.dtype), " and ", dtype_name(recv.dtype), " differ");
  send_recv(s ? send.data : nullptr, s ? send.numel() : 0, s ? send_peer : -1,
            r ? recv.data : nullptr, r ? recv.numel() : 0, r ? recv_peer : -1,
            s ? send.dtype : recv.dtype, send_tag, recv_tag);
}

void Communicator::broadcast(const Tensor& t, int root) {
  check_tensor(t, "broadcast", "t");
  broadcast(t.data, t.numel(), t.dtype, root);
}

// ---- host scalars -------------------------------------------------------------------------------

void Communicator::all_reduce_sum(std::vector<double>& v) {
  const auto n = static_cast<std::int64_t>(v.size());
  record(CommOp::host, n * 8, n * 8);
  if (!v.empty()) do_host_all_reduce(v.data(), n, DType::f64, ReduceOp::sum);
}

double Communicator::all_reduce_sum(double v) {
  record(CommOp::host, 8, 8);
  do_host_all_reduce(&v, 1, DType::f64, ReduceOp::sum);
  return v;
}

double Communicator::all_reduce_max(double v) {
  record(CommOp::host, 8, 8);
  do_host_all_reduce(&v, 1, DType::f64, ReduceOp::max);
  return v;
}

double Communicator::all_reduce_min(double v) {
  record(CommOp::host, 8, 8);
  do_host_all_reduce(&v, 1, DType::f64, ReduceOp::min);
  return v;
}

std::int64_t Communicator::all_reduce_sum_i64(std::int64_t v) {
  record(CommOp::host, 8, 8);
  do_host_all_reduce(&v, 1, DType::i64, ReduceOp::sum);
  return v;
}

std::int64_t Communicator::all_reduce_max_i64(std::int64_t v) {
  record(CommOp::host, 8, 8);
  do_host_all_reduce(&v, 1, DType::i64, ReduceOp::max);
  return v;
}

std::vector<std::int64_t> Communicator::all_gather(std::int64_t v) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(size_));
  record(CommOp::host, 8, 8 * static_cast<std::int64_t>(size_));
  do_host_all_gather(&v, out.data(), 1, DType::i64);
  return out;
}

}  // namespace linmoe
