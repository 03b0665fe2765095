// A tiny program under run_main for the runtime's failure tests (tests/parallel/CMakeLists.txt
// runs it under mpirun and checks the exit status and the messages). The mode is argv[1]:
//   ok          every rank returns 0
//   fatal       the last rank fails a LINMOE_CHECK while the others wait in a barrier
//   mpi-error   the last rank makes a bad MPI call (LINMOE_MPI_CHECK) while the others wait
//   user-error  every rank throws the same UserError (exit 2, printed once)
//   rank-error  the last rank throws a non-collective UserError (exit 3) while the others wait
//   exit-early  the last rank leaves with exit(0) without MPI_Finalize while the others wait
//   killed      the last rank dies of SIGKILL (as under the OOM killer) while the others wait
#include <mpi.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "parallel/mpi_check.h"
#include "parallel/runtime.h"

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "ok";
  return linmoe::run_main(argc, argv, [&](linmoe::Runtime& rt) {
    const bool last = rt.rank() == rt.world_size() - 1;
    if (mode == "ok") {
      rt.world().barrier();
      if (rt.rank() == 0) std::printf("probe ok on %d ranks\n", rt.world_size());
      return 0;
    }
    if (mode == "user-error") throw linmoe::UserError("probe: a collective user error");
    if (last) {
      if (mode == "fatal") LINMOE_CHECK(false, "probe: a fatal error");
      if (mode == "mpi-error") {
        int x = 0;
        LINMOE_MPI_CHECK(MPI_Send(&x, 1, MPI_INT, rt.world_size() + 5, 0, MPI_COMM_WORLD));
      }
      if (mode == "rank-error") throw linmoe::UserError("probe: one rank's error", false, 3);
      if (mode == "exit-early") std::_Exit(0);
      if (mode == "killed") std::raise(SIGKILL);
    }
    // The other ranks would wait here forever if the failing rank did not end the job.
    rt.world().barrier();
    return 0;
  });
}
