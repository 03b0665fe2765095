#include "parallel/process_groups.h"

#if LINMOE_HAVE_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

#include <cstdio>
#include <sstream>

#include "core/check.h"
#include "parallel/mpi_communicator.h"

namespace linmoe {

std::string Layout::str() const {
  return str_cat("tp", tp, " cp", cp, " dp", dp, " pp", pp, " ep", ep);
}

Layout layout_from_config(const ParallelConfig& parallel) {
  Layout l;
  l.tp = parallel.tensor;
  l.cp = parallel.context;
  l.dp = parallel.data;
  l.pp = parallel.pipeline;
  l.ep = parallel.expert;
  if (l.dp < 1) {
    throw UserError(str_cat("parallel.data = ", l.dp,
                            ": not resolved; resolve it from the world size first (must be >= 1)"));
  }
  return l;
}

void validate_layout(const Layout& l, int world_size) {
  const std::pair<const char*, int> sizes[] = {{"parallel.tensor", l.tp},
                                               {"parallel.context", l.cp},
                                               {"parallel.data", l.dp},
                                               {"parallel.pipeline", l.pp},
                                               {"parallel.expert", l.ep}};
  for (const auto& [key, value] : sizes) {
    if (value < 1) throw UserError(str_cat(key, " = ", value, ": must be >= 1"));
  }
  if (l.world_size() != world_size) {
    throw UserError(str_cat("parallel.tensor·context·data·pipeline = ", l.tp, "·", l.cp, "·", l.dp,
                            "·", l.pp, " = ", l.world_size(), ": must equal the world size ",
                            world_size));
  }
  if ((l.cp * l.dp) % l.ep != 0) {
    throw UserError(str_cat("parallel.expert = ", l.ep, ": must divide parallel.context·data = ",
                            l.cp, "·", l.dp, " = ", l.cp * l.dp));
  }
}

Coordinates coordinates_of(const Layout& l, int rank) {
  LINMOE_CHECK(rank >= 0 && rank < l.world_size(), "rank ", rank, " outside layout ", l.str());
  LINMOE_CHECK(l.ep >= 1 && (l.cp * l.dp) % l.ep == 0, "invalid layout ", l.str());
  Coordinates c;
  c.tp_rank = rank % l.tp;
  c.cp_rank = (rank / l.tp) % l.cp;
  c.dp_rank = (rank / (l.tp * l.cp)) % l.dp;
  c.pp_rank = rank / (l.tp * l.cp * l.dp);
  const int i = c.cp_rank + l.cp * c.dp_rank;  // position among the cp·dp ranks
  c.ep_rank = i % l.ep;
  c.expert_dp_rank = i / l.ep;
  return c;
}

int global_rank_of(const Layout& l, int tp_rank, int cp_rank, int dp_rank, int pp_rank) {
  return tp_rank + l.tp * (cp_rank + l.cp * (dp_rank + l.dp * pp_rank));
}

const char* group_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::world:
      return "world";
    case GroupKind::tp:
      return "tp";
    case GroupKind::cp:
      return "cp";
    case GroupKind::dp:
      return "dp";
    case GroupKind::pp:
      return "pp";
    case GroupKind::dp_cp:
      return "dp_cp";
    case GroupKind::tp_cp:
      return "tp_cp";
    case GroupKind::ep:
      return "ep";
    case GroupKind::expert_dp:
      return "expert_dp";
  }
  return "?";
}

// Colour = the coordinates the members share, packed densely; index = the ones they differ in.
GroupSlot group_slot(const Layout& l, GroupKind kind, int rank) {
  const Coordinates c = coordinates_of(l, rank);
  const int i = c.cp_rank + l.cp * c.dp_rank;
  const int expert_group = c.expert_dp_rank;  // which ep group of the cp·dp ranks
  switch (kind) {
    case GroupKind::world:
      return {0, rank};
    case GroupKind::tp:
      return {rank / l.tp, c.tp_rank};
    case GroupKind::cp:
      return {c.tp_rank + l.tp * (c.dp_rank + l.dp * c.pp_rank), c.cp_rank};
    case GroupKind::dp:
      return {c.tp_rank + l.tp * (c.cp_rank + l.cp * c.pp_rank), c.dp_rank};
    case GroupKind::pp:
      return {c.tp_rank + l.tp * i, c.pp_rank};
    case GroupKind::dp_cp:
      return {c.tp_rank + l.tp * c.pp_rank, i};
    case GroupKind::tp_cp:
      return {c.dp_rank + l.dp * c.pp_rank, c.tp_rank + l.tp * c.cp_rank};
    case GroupKind::ep:
      return {c.tp_rank + l.tp * (c.pp_rank + l.pp * expert_group), c.ep_rank};
    case GroupKind::expert_dp:
      return {c.tp_rank + l.tp * (c.pp_rank + l.pp * c.ep_rank), c.expert_dp_rank};
  }
  LINMOE_CHECK(false, "unknown group kind ", static_cast<int>(kind));
  return {};
}

int group_size(const Layout& l, GroupKind kind) {
  switch (kind) {
    case GroupKind::world:
      return l.world_size();
    case GroupKind::tp:
      return l.tp;
    case GroupKind::cp:
      return l.cp;
    case GroupKind::dp:
      return l.dp;
    case GroupKind::pp:
      return l.pp;
    case GroupKind::dp_cp:
      return l.cp * l.dp;
    case GroupKind::tp_cp:
      return l.tp * l.cp;
    case GroupKind::ep:
      return l.ep;
    case GroupKind::expert_dp:
      return l.cp * l.dp / l.ep;
  }
  LINMOE_CHECK(false, "unknown group kind ", static_cast<int>(kind));
  return 0;
}

std::vector<int> group_members(const Layout& l, GroupKind kind, int rank) {
  const GroupSlot mine = group_slot(l, kind, rank);
  std::vector<int> members(static_cast<std::size_t>(group_size(l, kind)), -1);
  for (int r = 0; r < l.world_size(); ++r) {
    const GroupSlot s = group_slot(l, kind, r);
    if (s.color != mine.color) continue;
    LINMOE_CHECK(s.index >= 0 && s.index < static_cast<int>(members.size()) &&
                     members[static_cast<std::size_t>(s.index)] == -1,
                 group_name(kind), " group of rank ", rank, " in ", l.str(), ": bad index ",
                 s.index, " for rank ", r);
    members[static_cast<std::size_t>(s.index)] = r;
  }
  return members;
}

std::string layout_table(const Layout& l) {
  std::ostringstream os;
  char line[96];
  std::snprintf(line, sizeof(line), "%6s %4s %4s %4s %4s %4s %4s\n", "rank", "tp", "cp", "dp", "pp",
                "ep", "edp");
  os << line;
  for (int r = 0; r < l.world_size(); ++r) {
    const Coordinates c = coordinates_of(l, r);
    std::snprintf(line, sizeof(line), "%6d %4d %4d %4d %4d %4d %4d\n", r, c.tp_rank, c.cp_rank,
                  c.dp_rank, c.pp_rank, c.ep_rank, c.expert_dp_rank);
    os << line;
  }
  return os.str();
}

ProcessGroups::ProcessGroups(const MpiCommunicator& world, const Layout& layout) : layout_(layout) {
  validate_layout(layout_, world.size());
  coords_ = coordinates_of(layout_, world.rank());
  for (GroupKind kind : kAllGroupKinds) {
    const GroupSlot slot = group_slot(layout_, kind, world.rank());
    groups_.push_back(world.split(slot.color, slot.index, group_name(kind)));
    const MpiCommunicator& g = *groups_.back();
    LINMOE_CHECK(g.size() == group_size(layout_, kind) && g.rank() == slot.index, "group ",
                 group_name(kind), ": rank ", g.rank(), " of ", g.size(), ", expected ", slot.index,
                 " of ", group_size(layout_, kind));
  }
}

ProcessGroups::~ProcessGroups() = default;

Communicator& ProcessGroups::group(GroupKind kind) const {
  const auto k = static_cast<std::size_t>(kind);
  LINMOE_CHECK(k < groups_.size(), "unknown group kind ", k);
  return *groups_[k];
}

void ProcessGroups::enable_device_groups(void* stream, Allocator& allocator,
                                         const Convert& convert) {
#if LINMOE_HAVE_NCCL
  if (!device_groups_.empty()) return;
  for (const auto& g : groups_) {
    device_groups_.push_back(std::make_unique<NcclCommunicator>(*g, stream, allocator, convert));
  }
#else
  (void)stream;
  (void)allocator;
  (void)convert;
  throw UserError("device communicators (NCCL) need a build with the CUDA backend");
#endif
}

Communicator& ProcessGroups::device_group(GroupKind kind) const {
  const auto k = static_cast<std::size_t>(kind);
  LINMOE_CHECK(k < device_groups_.size(), "device communicators are not enabled (group ",
               group_name(kind), ")");
  return *device_groups_[k];
}

}  // namespace linmoe
