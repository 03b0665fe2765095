#include "ops/ops_testing.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "core/check.h"

namespace linmoe::testing {

HostTensor random_tensor(DType dt, const Shape& s, std::uint64_t seed, double lo, double hi) {
  HostTensor t(dt, s);
  fill_uniform(t.t(), seed, lo, hi);
  return t;
}

HostTensor poisoned_tensor(DType dt, const Shape& s) {
  HostTensor t(dt, s);
  poison(t.t());
  return t;
}

namespace {
void exit_child(int code) {
  _exit(code == 0 ? 1 : code);
}
}  // namespace

std::string run_expecting_failure(const std::function<void()>& call, bool* exited_nonzero) {
  int fds[2];
  LINMOE_CHECK(pipe(fds) == 0, "pipe");
  pid_t pid = fork();
  LINMOE_CHECK(pid >= 0, "fork");
  if (pid == 0) {  // child: report fatal errors by exit status, never through MPI
    close(fds[0]);
    dup2(fds[1], 2);
    set_fatal_handler(exit_child);
    call();
    _exit(0);
  }
  close(fds[1]);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  *exited_nonzero = WIFEXITED(status) && WEXITSTATUS(status) != 0;
  return err;
}

}  // namespace linmoe::testing
