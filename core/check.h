// Checks and errors. One family of macros that names the expression, file, line, rank and host.
//
//   LINMOE_CHECK(cond, "message parts ", value, ...)   internal invariant: fatal, ends every rank
//   throw UserError(...)                                bad input: one clear line, exit status 2
//
// Core stays free of MPI: the parallel runtime installs the hook that aborts every rank.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace linmoe {

// Bad input from the user (config, data, checkpoint, command line). Carries the exit status.
// `collective` means every rank finds the same error (e.g. the config): ranks then exit together
// without MPI_Abort; otherwise the failing rank aborts the job.
class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& msg, bool collective = true, int exit_code = 2)
      : std::runtime_error(msg), collective_(collective), exit_code_(exit_code) {}
  bool collective() const { return collective_; }
  int exit_code() const { return exit_code_; }

 private:
  bool collective_;
  int exit_code_;
};

// Who we are, for messages. Set by the runtime after MPI starts.
struct ProcessIdentity {
  int rank = 0;
  int world_size = 1;
  std::string host;
};
const ProcessIdentity& process_identity();
void set_process_identity(int rank, int world_size);

// Called on a fatal error after the message is printed; must not return. The default exits 1;
// the MPI runtime installs one that calls MPI_Abort so no rank hangs in a collective.
using FatalHandler = void (*)(int exit_code);
void set_fatal_handler(FatalHandler handler);

[[noreturn]] void fatal_error(const std::string& message, int exit_code = 1);

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void check_failed(const char* expr, const char* file, int line,
                               const std::string& msg);
}  // namespace detail

template <class... Args>
std::string str_cat(const Args&... args) {
  return detail::concat(args...);
}

}  // namespace linmoe

// LINMOE_CHECK(cond) or LINMOE_CHECK(cond, "message parts ", value, ...). The trailing "" keeps
// the variadic part non-empty in C++17 without __VA_OPT__.
#define LINMOE_CHECK(...) LINMOE_CHECK_IMPL(__VA_ARGS__, "")
#define LINMOE_CHECK_IMPL(cond, ...)                                         \
  do {                                                                       \
    if (!(cond)) {                                                           \
      ::linmoe::detail::check_failed(#cond, __FILE__, __LINE__,              \
                                     ::linmoe::detail::concat(__VA_ARGS__)); \
    }                                                                        \
  } while (0)
