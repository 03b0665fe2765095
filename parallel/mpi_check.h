// LINMOE_MPI_CHECK: the MPI member of the check-macro family (core/check.h). A failing MPI call
// prints the call, file, line, rank, host and MPI's own error string, then ends every rank
// (MPI_Abort), so no rank is left waiting in a collective. Named with the LINMOE_ prefix like
// LINMOE_CHECK, because MPI reserves the MPI_ prefix for its own names.
//
// Communicators made here return errors instead of aborting inside MPI (MPI_ERRORS_RETURN), so
// the macro, not MPI's default handler, decides what is printed.
#pragma once
#include <mpi.h>

namespace linmoe {

// Ends the job with `exit_code`: MPI_Abort(MPI_COMM_WORLD) when MPI is running with more than one
// rank, std::exit otherwise. The fatal handler the runtime installs (core/check.h).
[[noreturn]] void abort_all_ranks(int exit_code);

namespace detail {
[[noreturn]] void mpi_check_failed(const char* call, const char* file, int line, int error_code);
}  // namespace detail

}  // namespace linmoe

#define LINMOE_MPI_CHECK(call)                                                       \
  do {                                                                               \
    const int linmoe_mpi_rc_ = (call);                                               \
    if (linmoe_mpi_rc_ != MPI_SUCCESS) {                                             \
      ::linmoe::detail::mpi_check_failed(#call, __FILE__, __LINE__, linmoe_mpi_rc_); \
    }                                                                                \
  } while (0)
