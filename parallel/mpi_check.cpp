#include "parallel/mpi_check.h"

#include <cstdio>
#include <cstdlib>

#include "core/check.h"

namespace linmoe {

void abort_all_ranks(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) {
      std::fflush(stdout);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, exit_code);
    }
  }
  std::exit(exit_code);
}

namespace detail {

void mpi_check_failed(const char* call, const char* file, int line, int error_code) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(error_code, text, &length) != MPI_SUCCESS) {
    std::snprintf(text, sizeof(text), "unknown MPI error %d", error_code);
  }
  // Whatever handler is installed, an MPI failure must end every rank: a peer may already be
  // waiting for this one in a collective.
  set_fatal_handler(abort_all_ranks);
  fatal_error(str_cat("MPI call failed: ", call, " at ", file, ":", line, ": ", text));
}

}  // namespace detail
}  // namespace linmoe
