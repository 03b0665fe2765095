#include "core/check.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace linmoe {
namespace {

ProcessIdentity& identity() {
  static ProcessIdentity id = [] {
    ProcessIdentity p;
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) == 0) p.host = host;
    return p;
  }();
  return id;
}

void default_fatal_handler(int exit_code) {
  std::exit(exit_code);
}
FatalHandler g_fatal_handler = default_fatal_handler;

}  // namespace

const ProcessIdentity& process_identity() {
  return identity();
}

void set_process_identity(int rank, int world_size) {
  identity().rank = rank;
  identity().world_size = world_size;
}

void set_fatal_handler(FatalHandler handler) {
  g_fatal_handler = handler ? handler : default_fatal_handler;
}

void fatal_error(const std::string& message, int exit_code) {
  const ProcessIdentity& id = process_identity();
  std::fprintf(stderr, "linmoe: fatal error on rank %d (%s): %s\n", id.rank, id.host.c_str(),
               message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  g_fatal_handler(exit_code);
  std::abort();  // a handler that returns is a bug; never continue past a fatal error
}

namespace detail {
void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  fatal_error(
      concat("check failed: ", expr, " at ", file, ":", line, msg.empty() ? "" : ": ", msg));
}
}  // namespace detail

}  // namespace linmoe
