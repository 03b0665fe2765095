#include "parallel/runtime.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <thread>

#include "core/check.h"
#include "parallel/mpi_check.h"

namespace linmoe {

Runtime::Runtime(int* argc, char*** argv) {
  int initialized = 0;
  LINMOE_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    // MPI's own errors abort here by default: nothing to report through our macro yet.
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    started_mpi_ = true;
  }
  world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world");
  set_process_identity(world_->rank(), world_->size());
  set_fatal_handler(abort_all_ranks);

  MPI_Comm node = MPI_COMM_NULL;
  LINMOE_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_->rank(),
                                       MPI_INFO_NULL, &node));
  LINMOE_MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  LINMOE_MPI_CHECK(MPI_Comm_size(node, &local_size_));
  LINMOE_MPI_CHECK(MPI_Comm_free(&node));
}

Runtime::~Runtime() {
  world_.reset();
  if (!started_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int cpu_threads_per_rank(int hardware_threads, int local_ranks) {
  return std::max(1, hardware_threads / std::max(1, local_ranks));
}

int Runtime::cpu_threads_per_rank() const {
  // The node's hardware threads, not this process's affinity mask: mpirun may bind each rank to
  // one core, and the launcher documents --bind-to none for the CPU backend.
  return linmoe::cpu_threads_per_rank(static_cast<int>(std::thread::hardware_concurrency()),
                                      local_size_);
}

int run_main(int argc, char** argv, const std::function<int(Runtime&)>& body) {
  Runtime runtime(&argc, &argv);
  try {
    return body(runtime);
  } catch (const UserError& e) {
    if (e.collective()) {
      // Every rank hit the same error; one line is enough, and nobody needs aborting.
      if (runtime.rank() == 0) {
        std::fprintf(stderr, "linmoe: error: %s\n", e.what());
        std::fflush(stderr);
      }
      return e.exit_code();
    }
    const ProcessIdentity& id = process_identity();
    std::fprintf(stderr, "linmoe: error on rank %d (%s): %s\n", id.rank, id.host.c_str(), e.what());
    std::fflush(stderr);
    // Alone, this rank can finalise and return; with peers, they may be waiting for it.
    if (runtime.world_size() == 1) return e.exit_code();
    abort_all_ranks(e.exit_code());
  } catch (const std::exception& e) {
    fatal_error(str_cat("unhandled exception: ", e.what()));
  } catch (...) {
    fatal_error("unhandled exception of unknown type");
  }
}

}  // namespace linmoe
