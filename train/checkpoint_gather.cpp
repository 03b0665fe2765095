#include "train/checkpoint_gather.h"

#include <cstring>
#include <string>
#include <vector>

#include "core/json.h"
#include "layers/model_spec.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

constexpr int kHeaderTag = 101, kIndexTag = 102, kParamsTag = 103, kStateTag = 104;

std::vector<i64> shape_vector(const Shape& s) {
  return s.to_vector();
}

Json int_array(const std::vector<i64>& v) {
  Json a = Json::array();
  for (i64 x : v) a.push_back(x);
  return a;
}

std::vector<i64> ints(const Json& j) {
  std::vector<i64> v;
  for (const Json& x : j.as_array()) v.push_back(x.as_int());
  return v;
}

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
    ts.push_back({o.at("name").as_string(), ints(o.at("shape")), ints(o.at("global_shape")),
                  ints(o.at("offset")), o.at("flat_offset").as_int()});
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
    weights.push_back({s.name, shape_vector(s.shape), shape_vector(s.global_shape), s.offset,
                       params.offset_of(id)});
    for (std::size_t k = 0; k < names.size(); ++k) {
      states.push_back({s.name + "." + names[k], shape_vector(s.shape),
                        shape_vector(s.global_shape), s.offset,
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
  const ParameterStore& store = engine.model().params();
  params.resize(static_cast<std::size_t>(store.padded_numel()));
  backend.copy(store.flat_params(),
               Tensor(params.data(), DType::f32, Device::cpu, Shape{store.padded_numel()}));
  engine.gather_optimizer_state(state);  // collective over the data-parallel groups
  std::vector<SnapshotTensor> weights, states;
  list_owned(engine, weights, states);
  out.parts.clear();
  if (rank != 0) {
    SnapshotPart mine;
    mine.params = pack(weights, params);
    mine.optimizer_state = pack(states, state);
    const std::string index = dump_json(index_of(weights)) + "\n" + dump_json(index_of(states));
    std::vector<i64> header{static_cast<i64>(index.size()), static_cast<i64>(mine.params.size()),
                            static_cast<i64>(mine.optimizer_state.size())};
    world->send(header.data(), 3, DType::i64, 0, kHeaderTag);
    // The index text as bytes in i32 words (the Communicator moves typed elements).
    std::vector<std::int32_t> words((index.size() + 3) / 4, 0);
    std::memcpy(words.data(), index.data(), index.size());
    world->send(words.data(), static_cast<i64>(words.size()), DType::i32, 0, kIndexTag);
    world->send(mine.params.data(), header[1], DType::f32, 0, kParamsTag);
    world->send(mine.optimizer_state.data(), header[2], DType::f32, 0, kStateTag);
    return;
  }
  out.weights = std::move(weights);
  out.states = std::move(states);
  for (int r = 1; world && r < world->size(); ++r) {
    std::vector<i64> header(3);
    world->recv(header.data(), 3, DType::i64, r, kHeaderTag);
    std::vector<std::int32_t> words(static_cast<std::size_t>((header[0] + 3) / 4));
    world->recv(words.data(), static_cast<i64>(words.size()), DType::i32, r, kIndexTag);
    std::string index(static_cast<std::size_t>(header[0]), '\0');
    std::memcpy(index.data(), words.data(), index.size());
    SnapshotPart p;
    p.rank = r;
    p.params.resize(static_cast<std::size_t>(header[1]));
    p.optimizer_state.resize(static_cast<std::size_t>(header[2]));
    world->recv(p.params.data(), header[1], DType::f32, r, kParamsTag);
    world->recv(p.optimizer_state.data(), header[2], DType::f32, r, kStateTag);
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
  if (!with_optimizer) return;
  std::vector<std::vector<float>> state;
  for (const std::string& name : engine.optimizer_state_names()) {
    state.push_back(restore_optimizer_state(ckpt, params, name));
  }
  engine.scatter_optimizer_state(state);
}

}  // namespace linmoe
