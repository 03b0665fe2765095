#include "train/checkpoint_gather.h"

#include <cstring>
#include <string>
#include <vector>

#include "core/json.h"
#include "layers/model_spec.h"
#include "parallel/host_text.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

constexpr int kHeaderTag = 101, kIndexTag = 102, kParamsTag = 103, kStateTag = 104;

// The tensors of one rank, as a JSON index (sent as bytes) and their values.
Json index_of(const std::vector<SnapshotTensor>& ts) {
  Json a = Json::array();
  for (const SnapshotTensor& t : ts) {
    Json o = Json::object();
    o["name"] = t.name;
    o["shape"] = int_array(t.shape);
    o["global_shape"] = int_array(t.global_shape);
    o["offset"] = int_array(t.offset);
    o["flat_offset"] = t.flat_offset;
    a.push_back(o);
  }
  return a;
}

std::vector<SnapshotTensor> tensors_of(const Json& a) {
  std::vector<SnapshotTensor> ts;
  for (const Json& o : a.as_array()) {
    ts.push_back({o.at("name").as_string(), read_int_array(o.at("shape"), "shape"),
                  read_int_array(o.at("global_shape"), "global_shape"),
                  read_int_array(o.at("offset"), "offset"), o.at("flat_offset").as_int()});
  }
  return ts;
}

// This rank's owned slices as views into the whole store's flat host vectors (no second copy):
// a weight at offset_of(i) of the parameters, state k at k·padded_numel + offset_of(i). In
// MODEL.md's order (the store keeps the experts last), as one rank's files always were.
void list_owned(Engine& engine, std::vector<SnapshotTensor>& weights,
                std::vector<SnapshotTensor>& states) {
  const ParameterStore& params = engine.model().params();
  const std::vector<std::string> names = engine.optimizer_state_names();
  weights.clear();
  states.clear();
  for (const ModelParam& mp : model_parameters(engine.config().model)) {
    const int id = params.find(mp.name);
    if (id < 0 || !engine.owns(id)) continue;
    const ParamSpec& s = params.spec(id);
    weights.push_back(
        {s.name, s.shape.to_vector(), s.global_shape.to_vector(), s.offset, params.offset_of(id)});
    for (std::size_t k = 0; k < names.size(); ++k) {
      states.push_back({s.name + "." + names[k], s.shape.to_vector(), s.global_shape.to_vector(),
                        s.offset,
                        static_cast<i64>(k) * params.padded_numel() + params.offset_of(id)});
    }
  }
}

// The listed tensors copied out of `flat` back to back (what a rank sends to rank 0); their
// flat offsets are rewritten to the packed positions.
std::vector<float> pack(std::vector<SnapshotTensor>& ts, const std::vector<float>& flat) {
  std::vector<float> out;
  for (SnapshotTensor& t : ts) {
    i64 n = 1;
    for (i64 d : t.shape) n *= d;
    const i64 at = t.flat_offset;
    t.flat_offset = static_cast<i64>(out.size());
    out.insert(out.end(), flat.begin() + at, flat.begin() + at + n);
  }
  return out;
}

}  // namespace

void gather_snapshot(Engine& engine, Backend& backend, Communicator* world,
                     CheckpointSnapshot& out) {
  const int rank = world ? world->rank() : 0;
  // Rank 0 fills the writer's snapshot in place: its vectors keep their capacity (and their
  // first-touched pages) from save to save, so a save costs one copy of each value.
  std::vector<float> local_params, local_state;
  std::vector<float>& params = rank == 0 ? out.params : local_params;
  std::vector<float>& state = rank == 0 ? out.optimizer_state : local_state;
  engine.gather_master_weights(params);  // fp32 (the master copy under bf16); collective
  engine.gather_optimizer_state(state);  // collective over the data-parallel groups
  std::vector<SnapshotTensor> weights, states;
  list_owned(engine, weights, states);
  out.parts.clear();
  if (rank != 0) {
    SnapshotPart mine;
    mine.params = pack(weights, params);
    mine.optimizer_state = pack(states, state);
    send_text(*world, dump_json(index_of(weights)) + "\n" + dump_json(index_of(states)), 0,
              kIndexTag);
    const std::vector<i64> sizes{static_cast<i64>(mine.params.size()),
                                 static_cast<i64>(mine.optimizer_state.size())};
    world->send(sizes.data(), 2, DType::i64, 0, kHeaderTag);
    world->send(mine.params.data(), sizes[0], DType::f32, 0, kParamsTag);
    world->send(mine.optimizer_state.data(), sizes[1], DType::f32, 0, kStateTag);
    return;
  }
  out.weights = std::move(weights);
  out.states = std::move(states);
  for (int r = 1; world && r < world->size(); ++r) {
    const std::string index = recv_text(*world, r, kIndexTag);
    std::vector<i64> sizes(2);
    world->recv(sizes.data(), 2, DType::i64, r, kHeaderTag);
    SnapshotPart p;
    p.rank = r;
    p.params.resize(static_cast<std::size_t>(sizes[0]));
    p.optimizer_state.resize(static_cast<std::size_t>(sizes[1]));
    world->recv(p.params.data(), sizes[0], DType::f32, r, kParamsTag);
    world->recv(p.optimizer_state.data(), sizes[1], DType::f32, r, kStateTag);
    const std::size_t cut = index.find('\n');
    p.weights = tensors_of(parse_json(index.substr(0, cut), "checkpoint index"));
    p.states = tensors_of(parse_json(index.substr(cut + 1), "checkpoint index"));
    if (!p.weights.empty()) out.parts.push_back(std::move(p));
  }
}

void restore_engine(const LoadedCheckpoint& ckpt, Engine& engine, Backend& backend,
                    bool with_optimizer) {
  ParameterStore& params = engine.model().params();
  std::vector<std::string> names;
  for (const ModelParam& p : model_parameters(engine.config().model)) names.push_back(p.name);
  restore_parameters(ckpt, params, backend, &names);
  // bf16 weights: the optimizer's master copy takes the checkpoint's fp32 values, not the
  // store's rounded ones.
  if (engine.compute_dtype() != DType::f32) {
    engine.scatter_master_weights(restore_flat_values(ckpt, params, "model", ""));
  }
  if (!with_optimizer) return;
  std::vector<std::vector<float>> state;
  for (const std::string& name : engine.optimizer_state_names()) {
    state.push_back(restore_flat_values(ckpt, params, "optimizer", "." + name));
  }
  engine.scatter_optimizer_state(state);
}

}  // namespace linmoe
