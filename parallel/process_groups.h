// Process groups (spec/PARALLEL.md): the world of W = tp·cp·dp·pp ranks as a grid, tp fastest,
// then cp, dp, pp (Megatron-Core's order, so tensor-parallel ranks share a node):
//
//   rank = tp_rank + tp·(cp_rank + cp·(dp_rank + dp·pp_rank))
//
// Expert parallelism regroups the cp·dp ranks of one (tp_rank, pp_rank): with
// i = cp_rank + cp·dp_rank, the ep group is ep consecutive values of i (ep_rank = i mod ep) and the
// expert-data-parallel group holds the ranks with the same tp_rank, pp_rank and ep_rank
// (expert_dp_rank = i div ep), over which expert gradients are reduced.
//
// The coordinate functions are pure (no MPI), so `linmoe inspect` can print the table; the
// ProcessGroups class makes every group once with MPI_Comm_split.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "parallel/communicator.h"

namespace linmoe {

class MpiCommunicator;

struct Layout {
  int tp = 1, cp = 1, dp = 1, pp = 1, ep = 1;
  int world_size() const { return tp * cp * dp * pp; }
  std::string str() const;  // "tp2 cp1 dp2 pp1 ep2"
};

// The layout of a resolved config (parallel.data already set from the world size).
Layout layout_from_config(const ParallelConfig& parallel);

// Throws UserError naming parallel.* and the rule: every size >= 1, tp·cp·dp·pp == world_size,
// ep divides cp·dp.
void validate_layout(const Layout& layout, int world_size);

struct Coordinates {
  int tp_rank = 0, cp_rank = 0, dp_rank = 0, pp_rank = 0;
  int ep_rank = 0, expert_dp_rank = 0;
};

// Where global rank `rank` sits in the grid (the layout must be valid for its world size).
Coordinates coordinates_of(const Layout& layout, int rank);
// The inverse for the tp, cp, dp, pp coordinates.
int global_rank_of(const Layout& layout, int tp_rank, int cp_rank, int dp_rank, int pp_rank);

enum class GroupKind { world, tp, cp, dp, pp, dp_cp, tp_cp, ep, expert_dp };
// In enum order (ProcessGroups indexes its groups by kind).
constexpr GroupKind kAllGroupKinds[] = {GroupKind::world, GroupKind::tp, GroupKind::cp,
                                        GroupKind::dp,    GroupKind::pp, GroupKind::dp_cp,
                                        GroupKind::tp_cp, GroupKind::ep, GroupKind::expert_dp};
const char* group_name(GroupKind kind);

// The group of `rank` of one kind: `color` is shared exactly by its members (and names the
// group: 0 .. W/size−1), `index` is the rank's position in it (its rank in the communicator).
struct GroupSlot {
  int color = 0;
  int index = 0;
};
GroupSlot group_slot(const Layout& layout, GroupKind kind, int rank);
// The global ranks of `rank`'s group, in group-rank order.
std::vector<int> group_members(const Layout& layout, GroupKind kind, int rank);
int group_size(const Layout& layout, GroupKind kind);

// One line per rank: rank, tp, cp, dp, pp, ep, edp (the coordinates), under a header line.
std::string layout_table(const Layout& layout);

class ProcessGroups {
 public:
  // Collective over `world`: validates the layout against world.size() (UserError) and splits
  // every group. `world` itself is duplicated (split), so group traffic never meets other users
  // of the parent communicator. Destroy before MPI_Finalize (Runtime outlives it).
  ProcessGroups(const MpiCommunicator& world, const Layout& layout);
  ~ProcessGroups();
  ProcessGroups(const ProcessGroups&) = delete;
  ProcessGroups& operator=(const ProcessGroups&) = delete;

  const Layout& layout() const { return layout_; }
  const Coordinates& coords() const { return coords_; }

  Communicator& group(GroupKind kind) const;
  Communicator& world() const { return group(GroupKind::world); }
  Communicator& tp() const { return group(GroupKind::tp); }
  Communicator& cp() const { return group(GroupKind::cp); }
  Communicator& dp() const { return group(GroupKind::dp); }
  Communicator& pp() const { return group(GroupKind::pp); }
  // Gradient reduction of non-expert parameters: the cp·dp ranks with the same tp and pp.
  Communicator& dp_cp() const { return group(GroupKind::dp_cp); }
  Communicator& tp_cp() const { return group(GroupKind::tp_cp); }
  Communicator& ep() const { return group(GroupKind::ep); }
  // Gradient reduction of expert parameters.
  Communicator& expert_dp() const { return group(GroupKind::expert_dp); }

  // Device-memory communicators (NCCL), one per group, made collectively over the world (each
  // group's MPI communicator broadcasts its NCCL unique id). stream: the backend's cudaStream_t;
  // convert: the backend's device copy (bf16 widening). UserError in a build without CUDA.
  using Convert = std::function<void(const Tensor& src, const Tensor& dst)>;
  void enable_device_groups(void* stream, Allocator& allocator, const Convert& convert);
  bool has_device_groups() const { return !device_groups_.empty(); }
  // The NCCL communicator of a group (enable_device_groups first).
  Communicator& device_group(GroupKind kind) const;
  // The communicator for tensors on the compute device: NCCL when enabled, else MPI. Host
  // vectors and scalars always use group(kind).
  Communicator& tensor_group(GroupKind kind) const {
    return has_device_groups() ? device_group(kind) : group(kind);
  }

 private:
  Layout layout_;
  Coordinates coords_;
  std::vector<std::unique_ptr<MpiCommunicator>> groups_;      // indexed by GroupKind
  std::vector<std::unique_ptr<Communicator>> device_groups_;  // NCCL, indexed by GroupKind
};

}  // namespace linmoe
