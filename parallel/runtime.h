// Runtime: MPI for the life of the program (RAII), and what the launcher needs from it.
//
//   int main(int argc, char** argv) {
//     return linmoe::run_main(argc, argv, [&](linmoe::Runtime& rt) { ...; return 0; });
//   }
//
// Starting it initialises MPI (MPI_THREAD_FUNNELED: only the main thread calls MPI, OpenMP
// threads compute), unless MPI already runs (tests), sets core's process identity and installs
// the fatal handler that ends every rank (abort_all_ranks), so a fatal error never leaves a rank
// hanging in a collective. Destroying it finalises MPI if it started it.
#pragma once
#include <functional>
#include <memory>

#include "parallel/mpi_communicator.h"

namespace linmoe {

class Runtime {
 public:
  Runtime(int* argc, char*** argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  // This rank's place among the ranks on its node (MPI_COMM_TYPE_SHARED).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // CPU backend threads for this rank: the node's hardware threads shared by its ranks.
  int cpu_threads_per_rank() const;
  // MPI_COMM_WORLD (not owned). ProcessGroups splits its own copy from it.
  MpiCommunicator& world() { return *world_; }

 private:
  bool started_mpi_ = false;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::unique_ptr<MpiCommunicator> world_;
};

// max(1, hardware_threads / local_ranks): the pure rule behind Runtime::cpu_threads_per_rank.
int cpu_threads_per_rank(int hardware_threads, int local_ranks);

// Runs `body` under a Runtime and turns errors into exit codes:
//  - UserError, collective (every rank finds it): rank 0 prints "linmoe: error: <msg>" to
//    stderr; every rank finalises and returns its exit_code.
//  - UserError, not collective: this rank prints the message and ends the job with exit_code.
//  - any other exception: a fatal error, every rank ends (exit 1).
// Otherwise returns what `body` returns.
int run_main(int argc, char** argv, const std::function<int(Runtime&)>& body);

}  // namespace linmoe
