// Runtime inside the test main (MPI already running): it must not start or finalise MPI again,
// and run_main must turn a collective UserError into its exit code on every rank. What happens
// when a rank dies is checked by the runtime probe (runtime_probe.cpp) under a real mpirun.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <stdexcept>

#include "common/test_util.h"
#include "parallel/runtime.h"

TEST_CASE("cpu_threads_per_rank shares the node's threads", "[mpi][runtime]") {
  CHECK(linmoe::cpu_threads_per_rank(16, 4) == 4);
  CHECK(linmoe::cpu_threads_per_rank(16, 3) == 5);
  CHECK(linmoe::cpu_threads_per_rank(2, 4) == 1);
  CHECK(linmoe::cpu_threads_per_rank(0, 1) == 1);  // hardware_concurrency may say 0
  CHECK(linmoe::cpu_threads_per_rank(8, 0) == 8);
}

TEST_CASE("Runtime joins an MPI that already runs, and leaves it running", "[mpi][runtime]") {
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  {
    int argc = 1;
    char name[] = "test_runtime";
    char* args[] = {name, nullptr};
    char** argv = args;
    linmoe::Runtime rt(&argc, &argv);
    CHECK(rt.rank() == world_rank);
    CHECK(rt.world_size() == world_size);
    CHECK(linmoe::process_identity().rank == world_rank);
    CHECK(linmoe::process_identity().world_size == world_size);
    // mpirun in ctest puts every rank on this one machine.
    CHECK(rt.local_size() == world_size);
    CHECK(rt.local_rank() >= 0);
    CHECK(rt.local_rank() < rt.local_size());
    CHECK(rt.cpu_threads_per_rank() >= 1);
    CHECK(rt.world().all_reduce_sum(1.0) == world_size);
  }
  int finalized = 1;
  MPI_Finalized(&finalized);
  CHECK(finalized == 0);
  // Put back the test main's handler (the same behaviour: end every rank).
  linmoe::testing::install_abort_handler();
}

TEST_CASE("run_main: results, and collective UserErrors as exit codes", "[mpi][runtime]") {
  char name[] = "test_runtime";
  char* argv[] = {name, nullptr};
  CHECK(linmoe::run_main(1, argv, [](linmoe::Runtime&) { return 0; }) == 0);
  int world_size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  CHECK(linmoe::run_main(1, argv, [](linmoe::Runtime& rt) { return rt.world_size() + 40; }) ==
        world_size + 40);
  // Every rank throws the same error: every rank returns its code, none aborts.
  CHECK(linmoe::run_main(1, argv, [](linmoe::Runtime&) -> int {
          throw linmoe::UserError("parallel.tensor = 3: must divide attention.num_heads = 4");
        }) == 2);
  CHECK(linmoe::run_main(1, argv, [](linmoe::Runtime&) -> int {
          throw linmoe::UserError("data.train: no such file", /*collective=*/true, 5);
        }) == 5);
  linmoe::testing::install_abort_handler();
}
