// The main of every test executable. Under mpirun it starts MPI, runs Catch2 on every rank,
// and makes the exit status the failure count reduced over all ranks, so a failure on any rank
// fails the test on every rank (nothing passes because only rank 0 was looked at).
#define CATCH_CONFIG_RUNNER
#include <mpi.h>
#include <catch2/catch.hpp>

#include "common/test_util.h"
#include "core/check.h"
#include "core/log.h"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  linmoe::set_process_identity(rank, size);
  linmoe::log_init(rank, linmoe::LogLevel::warn);
  linmoe::testing::install_abort_handler();

  Catch::Session session;
  int rc = session.applyCommandLine(argc, argv);
  if (rc != 0) {
    MPI_Finalize();
    return rc;
  }
  // Other ranks keep quiet unless something fails; rank 0 prints the summary.
  if (rank != 0) session.configData().showSuccessfulTests = false;
  int failures = session.run();
  int skip = linmoe::testing::skipped() ? 1 : 0;
  int total_failures = 0, any_skip = 0;
  MPI_Allreduce(&failures, &total_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&skip, &any_skip, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && size > 1) {
    std::printf("%d ranks: %d failed assertions in total\n", size, total_failures);
  }
  MPI_Finalize();
  if (total_failures > 0) return 1;
  return any_skip ? 77 : 0;
}
