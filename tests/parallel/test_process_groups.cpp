// Process groups. The pure coordinate functions are checked against spec/PARALLEL.md's formulas
// for layouts up to 16 ranks (no MPI needed); then, under mpirun, every layout that fits the
// world is built with MPI_Comm_split and each group's real members are compared with the pure
// function on every rank.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"

using linmoe::Coordinates;
using linmoe::GroupKind;
using linmoe::Layout;

namespace {

Layout make_layout(int tp, int cp, int dp, int pp, int ep) {
  Layout l;
  l.tp = tp;
  l.cp = cp;
  l.dp = dp;
  l.pp = pp;
  l.ep = ep;
  return l;
}

// Every valid layout of `world` ranks (tp·cp·dp·pp = world, ep | cp·dp).
std::vector<Layout> layouts_of(int world) {
  std::vector<Layout> out;
  for (int tp = 1; tp <= world; ++tp)
    for (int cp = 1; cp <= world; ++cp)
      for (int dp = 1; dp <= world; ++dp)
        for (int pp = 1; pp <= world; ++pp) {
          if (tp * cp * dp * pp != world) continue;
          for (int ep = 1; ep <= cp * dp; ++ep) {
            if ((cp * dp) % ep == 0) out.push_back(make_layout(tp, cp, dp, pp, ep));
          }
        }
  return out;
}

// The spec's definition of each group, written independently of group_slot: whether ranks with
// coordinates a and b are in the same group, and a's index in it.
bool same_group(const Layout& l, GroupKind kind, const Coordinates& a, const Coordinates& b) {
  const int ia = a.cp_rank + l.cp * a.dp_rank, ib = b.cp_rank + l.cp * b.dp_rank;
  switch (kind) {
    case GroupKind::world:
      return true;
    case GroupKind::tp:
      return a.cp_rank == b.cp_rank && a.dp_rank == b.dp_rank && a.pp_rank == b.pp_rank;
    case GroupKind::cp:
      return a.tp_rank == b.tp_rank && a.dp_rank == b.dp_rank && a.pp_rank == b.pp_rank;
    case GroupKind::dp:
      return a.tp_rank == b.tp_rank && a.cp_rank == b.cp_rank && a.pp_rank == b.pp_rank;
    case GroupKind::pp:
      return a.tp_rank == b.tp_rank && a.cp_rank == b.cp_rank && a.dp_rank == b.dp_rank;
    case GroupKind::dp_cp:
      return a.tp_rank == b.tp_rank && a.pp_rank == b.pp_rank;
    case GroupKind::tp_cp:
      return a.dp_rank == b.dp_rank && a.pp_rank == b.pp_rank;
    case GroupKind::ep:  // ep consecutive values of i = cp_rank + cp·dp_rank
      return a.tp_rank == b.tp_rank && a.pp_rank == b.pp_rank && ia / l.ep == ib / l.ep;
    case GroupKind::expert_dp:
      return a.tp_rank == b.tp_rank && a.pp_rank == b.pp_rank && ia % l.ep == ib % l.ep;
  }
  return false;
}

int index_in_group(const Layout& l, GroupKind kind, int rank, const Coordinates& c) {
  const int i = c.cp_rank + l.cp * c.dp_rank;
  switch (kind) {
    case GroupKind::world:
      return rank;
    case GroupKind::tp:
      return c.tp_rank;
    case GroupKind::cp:
      return c.cp_rank;
    case GroupKind::dp:
      return c.dp_rank;
    case GroupKind::pp:
      return c.pp_rank;
    case GroupKind::dp_cp:
      return i;
    case GroupKind::tp_cp:
      return c.tp_rank + l.tp * c.cp_rank;
    case GroupKind::ep:
      return i % l.ep;
    case GroupKind::expert_dp:
      return i / l.ep;
  }
  return -1;
}

void check_layout_pure(const Layout& l) {
  INFO("layout " << l.str());
  const int w = l.world_size();
  REQUIRE_NOTHROW(linmoe::validate_layout(l, w));
  std::vector<Coordinates> coords;
  for (int r = 0; r < w; ++r) {
    const Coordinates c = linmoe::coordinates_of(l, r);
    // rank = tp_rank + tp·(cp_rank + cp·(dp_rank + dp·pp_rank)), each coordinate in range.
    CHECK(c.tp_rank + l.tp * (c.cp_rank + l.cp * (c.dp_rank + l.dp * c.pp_rank)) == r);
    CHECK(linmoe::global_rank_of(l, c.tp_rank, c.cp_rank, c.dp_rank, c.pp_rank) == r);
    CHECK((c.tp_rank < l.tp && c.cp_rank < l.cp && c.dp_rank < l.dp && c.pp_rank < l.pp));
    CHECK((c.ep_rank < l.ep && c.expert_dp_rank < l.cp * l.dp / l.ep));
    coords.push_back(c);
  }
  for (GroupKind kind : linmoe::kAllGroupKinds) {
    INFO("group " << linmoe::group_name(kind));
    const int size = linmoe::group_size(l, kind);
    std::set<std::vector<int>> groups;
    int bad = 0;
    for (int r = 0; r < w; ++r) {
      const std::vector<int> members = linmoe::group_members(l, kind, r);
      if (static_cast<int>(members.size()) != size) ++bad;
      const int mine = index_in_group(l, kind, r, coords[r]);
      if (mine < 0 || mine >= size || members[mine] != r) ++bad;
      if (linmoe::group_slot(l, kind, r).index != mine) ++bad;
      // Members are exactly the ranks the spec puts together, each at its own index.
      for (int q = 0; q < w; ++q) {
        const bool listed = std::find(members.begin(), members.end(), q) != members.end();
        if (listed != same_group(l, kind, coords[r], coords[q])) ++bad;
        if (listed && members[index_in_group(l, kind, q, coords[q])] != q) ++bad;
      }
      groups.insert(members);
    }
    CHECK(bad == 0);
    // The groups partition the world: W/size disjoint groups that cover every rank.
    CHECK(static_cast<int>(groups.size()) * size == w);
    std::set<int> covered;
    for (const auto& g : groups) covered.insert(g.begin(), g.end());
    CHECK(static_cast<int>(covered.size()) == w);
  }
}

}  // namespace

TEST_CASE("coordinates and groups of every layout up to 16 ranks", "[mpi][process_groups]") {
  for (int world : {1, 2, 3, 4, 6, 8, 12, 16}) {
    for (const Layout& l : layouts_of(world)) check_layout_pure(l);
  }
}

TEST_CASE("tp2 cp2 dp2 pp2: hand-computed groups of rank 13", "[mpi][process_groups]") {
  // 13 = 1 + 2·(0 + 2·(1 + 2·1)): tp 1, cp 0, dp 1, pp 1; i = cp + 2·dp = 2.
  Layout l = make_layout(2, 2, 2, 2, 2);
  const Coordinates c = linmoe::coordinates_of(l, 13);
  CHECK(c.tp_rank == 1);
  CHECK(c.cp_rank == 0);
  CHECK(c.dp_rank == 1);
  CHECK(c.pp_rank == 1);
  CHECK(c.ep_rank == 0);
  CHECK(c.expert_dp_rank == 1);
  CHECK(linmoe::group_members(l, GroupKind::tp, 13) == std::vector<int>{12, 13});
  CHECK(linmoe::group_members(l, GroupKind::cp, 13) == std::vector<int>{13, 15});
  CHECK(linmoe::group_members(l, GroupKind::dp, 13) == std::vector<int>{9, 13});
  CHECK(linmoe::group_members(l, GroupKind::pp, 13) == std::vector<int>{5, 13});
  CHECK(linmoe::group_members(l, GroupKind::dp_cp, 13) == std::vector<int>{9, 11, 13, 15});
  CHECK(linmoe::group_members(l, GroupKind::tp_cp, 13) == std::vector<int>{12, 13, 14, 15});
  CHECK(linmoe::group_members(l, GroupKind::ep, 13) == std::vector<int>{13, 15});
  CHECK(linmoe::group_members(l, GroupKind::expert_dp, 13) == std::vector<int>{9, 13});
  // ep 4: the expert group spans all four cp·dp ranks; each expert-dp group is one rank.
  l.ep = 4;
  const Coordinates c4 = linmoe::coordinates_of(l, 13);
  CHECK(c4.ep_rank == 2);
  CHECK(c4.expert_dp_rank == 0);
  CHECK(linmoe::group_members(l, GroupKind::ep, 13) == std::vector<int>{9, 11, 13, 15});
  CHECK(linmoe::group_members(l, GroupKind::expert_dp, 13) == std::vector<int>{13});
}

TEST_CASE("validate_layout names the key and the rule", "[mpi][process_groups]") {
  auto message_of = [](const Layout& l, int world) -> std::string {
    try {
      linmoe::validate_layout(l, world);
    } catch (const linmoe::UserError& e) {
      return e.what();
    }
    return "";
  };
  using Catch::Matchers::Contains;
  CHECK_THAT(message_of(make_layout(2, 1, 2, 1, 1), 8), Contains("world size 8"));
  CHECK_THAT(message_of(make_layout(2, 1, 2, 1, 1), 8), Contains("parallel.tensor"));
  CHECK_THAT(message_of(make_layout(1, 1, 4, 1, 3), 4), Contains("parallel.expert = 3"));
  CHECK_THAT(message_of(make_layout(1, 1, 4, 1, 3), 4), Contains("must divide"));
  CHECK_THAT(message_of(make_layout(0, 1, 4, 1, 1), 4), Contains("parallel.tensor = 0"));
  CHECK_THAT(message_of(make_layout(1, 1, 4, 1, 0), 4), Contains("parallel.expert = 0"));
  CHECK(message_of(make_layout(1, 2, 2, 1, 4), 4).empty());
  // A config whose parallel.data is still "auto" (0) is refused, not divided by.
  linmoe::ParallelConfig pc;
  CHECK_THROWS_AS(linmoe::layout_from_config(pc), linmoe::UserError);
  pc.data = 2;
  pc.expert = 2;
  const Layout from = linmoe::layout_from_config(pc);
  CHECK((from.tp == 1 && from.cp == 1 && from.dp == 2 && from.pp == 1 && from.ep == 2));
}

TEST_CASE("layout_table: a header and one row per rank", "[mpi][process_groups]") {
  const std::string table = linmoe::layout_table(make_layout(2, 2, 2, 2, 4));
  CHECK(std::count(table.begin(), table.end(), '\n') == 17);
  const std::string header = table.substr(0, table.find('\n'));
  for (const char* col : {"rank", "tp", "cp", "dp", "pp", "ep", "edp"}) {
    CHECK(header.find(col) != std::string::npos);
  }
  // Rank 13: tp 1, cp 0, dp 1, pp 1, ep 2, edp 0.
  CHECK(table.find("    13    1    0    1    1    2    0\n") != std::string::npos);
}

TEST_CASE("ProcessGroups: every layout of this world, real groups match the formulas",
          "[mpi][process_groups]") {
  linmoe::MpiCommunicator world(MPI_COMM_WORLD, "world");
  const int me = world.rank();
  for (const Layout& l : layouts_of(world.size())) {
    INFO("layout " << l.str());
    linmoe::ProcessGroups groups(world, l);
    const Coordinates expect = linmoe::coordinates_of(l, me);
    const Coordinates& got = groups.coords();
    CHECK((got.tp_rank == expect.tp_rank && got.cp_rank == expect.cp_rank &&
           got.dp_rank == expect.dp_rank && got.pp_rank == expect.pp_rank &&
           got.ep_rank == expect.ep_rank && got.expert_dp_rank == expect.expert_dp_rank));
    for (GroupKind kind : linmoe::kAllGroupKinds) {
      INFO("group " << linmoe::group_name(kind));
      linmoe::Communicator& g = groups.group(kind);
      CHECK(g.name() == linmoe::group_name(kind));
      CHECK(g.size() == linmoe::group_size(l, kind));
      CHECK(g.rank() == linmoe::group_slot(l, kind, me).index);
      // The world ranks this communicator really holds, in its rank order.
      const std::vector<std::int64_t> real = g.all_gather(static_cast<std::int64_t>(me));
      const std::vector<int> want = linmoe::group_members(l, kind, me);
      CHECK(std::vector<int>(real.begin(), real.end()) == want);
    }
    CHECK(&groups.tp() == &groups.group(GroupKind::tp));
    CHECK(&groups.expert_dp() == &groups.group(GroupKind::expert_dp));
  }
}

TEST_CASE("ProcessGroups refuses a layout that does not fit the world, on every rank",
          "[mpi][process_groups]") {
  linmoe::MpiCommunicator world(MPI_COMM_WORLD, "world");
  CHECK_THROWS_AS(linmoe::ProcessGroups(world, make_layout(1, 1, world.size() * 2, 1, 1)),
                  linmoe::UserError);
  CHECK_THROWS_AS(linmoe::ProcessGroups(world, make_layout(1, 1, world.size(), 1, 3)),
                  linmoe::UserError);
  // Nothing was split: the world still works.
  CHECK(world.all_reduce_sum(1.0) == world.size());
}
