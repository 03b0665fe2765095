#include "parallel/host_text.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/check.h"

namespace linmoe {
namespace {

std::vector<std::int32_t> pack(const std::string& text) {
  std::vector<std::int32_t> words((text.size() + 3) / 4, 0);
  if (!text.empty()) std::memcpy(words.data(), text.data(), text.size());
  return words;
}

std::string unpack(const std::vector<std::int32_t>& words, std::int64_t n) {
  return std::string(reinterpret_cast<const char*>(words.data()), static_cast<std::size_t>(n));
}

void check_host(const Communicator& comm, const char* op) {
  LINMOE_CHECK(comm.device() == Device::cpu, op, " needs a host-memory communicator, ", comm.name(),
               " is on the device");
}

}  // namespace

void send_text(Communicator& comm, const std::string& text, int peer, int tag) {
  check_host(comm, "send_text");
  const auto n = static_cast<std::int64_t>(text.size());
  const std::vector<std::int32_t> words = pack(text);
  comm.send(&n, 1, DType::i64, peer, tag);
  comm.send(words.data(), static_cast<std::int64_t>(words.size()), DType::i32, peer, tag);
}

std::string recv_text(Communicator& comm, int peer, int tag) {
  check_host(comm, "recv_text");
  std::int64_t n = 0;
  comm.recv(&n, 1, DType::i64, peer, tag);
  std::vector<std::int32_t> words(static_cast<std::size_t>((n + 3) / 4));
  comm.recv(words.data(), static_cast<std::int64_t>(words.size()), DType::i32, peer, tag);
  return unpack(words, n);
}

void broadcast_text(Communicator& comm, std::string& text, int root) {
  check_host(comm, "broadcast_text");
  auto n = static_cast<std::int64_t>(text.size());
  comm.broadcast(&n, 1, DType::i64, root);
  std::vector<std::int32_t> words =
      comm.rank() == root ? pack(text) : std::vector<std::int32_t>((n + 3) / 4);
  comm.broadcast(words.data(), static_cast<std::int64_t>(words.size()), DType::i32, root);
  text = unpack(words, n);
}

}  // namespace linmoe
