// Checkpoint save/load (FORMATS.md 2): round trip into a fresh model, every refusal names the
// file, load-auto falls back past a broken newest checkpoint, incompatible models are refused
// naming the first tensor that differs, rotation, slices assembled under another layout, and a
// save killed (SIGKILL) at every stage never leaves `latest` on an incomplete checkpoint.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <algorithm>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/config.h"
#include "kernels/ops.h"
#include "layers/model.h"
#include "layers/model_spec.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"

using namespace linmoe;
namespace fs = std::filesystem;

namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = fs::temp_directory_path() / ("linmoe_ckpt_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

Config tiny_config(std::vector<std::string> extra = {}) {
  return load_config(std::string(LINMOE_SOURCE_DIR) + "/configs/tiny.yaml", extra);
}

// A model + optimizer with recognisable, seed-dependent weights and optimizer state.
struct Setup {
  std::unique_ptr<Backend> backend = make_backend(BackendKind::cpu, 1);
  Config cfg;
  std::unique_ptr<Model> model;
  std::unique_ptr<Optimizer> optimizer;
  explicit Setup(std::uint64_t seed, std::vector<std::string> extra = {})
      : cfg(tiny_config(std::move(extra))) {
    model = std::make_unique<Model>(cfg.model, *backend, DType::f32);
    model->initialize(seed);
    optimizer = std::make_unique<Optimizer>(cfg.optimizer, *backend, model->params());
    for (const std::string& n : optimizer->state_names()) {
      float* p = optimizer->state(n).ptr<float>();
      for (std::int64_t i = 0; i < optimizer->state(n).numel(); ++i) {
        p[i] = static_cast<float>(seed % 97) + 1e-3f * static_cast<float>(i % 1000) +
               (n == "exp_avg" ? 0.5f : 0.0f);
      }
    }
  }
  std::string save(const std::string& root, std::int64_t step) {
    return write_checkpoint(snapshot(step), root);
  }
  CheckpointSnapshot snapshot(std::int64_t step) {
    CheckpointSnapshot snap;
    snap.step = step;
    snap.consumed_samples = 16 * step;
    snap.tokens = 4096 * step;
    snap.meta["config"] = cfg.resolved_yaml;
    take_snapshot(model->params(), *optimizer, *backend, snap);
    return snap;
  }
  std::vector<float> flat(const Tensor& t) const {
    return std::vector<float>(t.ptr<float>(), t.ptr<float>() + t.numel());
  }
};

std::string load_error(const std::string& dir) {
  try {
    open_checkpoint(dir);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

void flip_byte(const std::string& path, std::uint64_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(at));
  f.write(&c, 1);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

}  // namespace

TEST_CASE("checkpoint: weights and optimizer state round trip into a fresh model", "[unit]") {
  const std::string root = temp_dir("roundtrip");
  Setup a(11), b(22);
  REQUIRE_FALSE(a.flat(a.model->params().flat_params()) == b.flat(b.model->params().flat_params()));
  const std::string dir = a.save(root, 7);
  CHECK(dir == root + "/iter_0000007");
  CHECK(read_text(root + "/latest") == "iter_0000007");
  LoadedCheckpoint c = open_checkpoint(dir);
  CHECK(c.step == 7);
  CHECK(c.consumed_samples == 112);
  CHECK(c.tokens == 7 * 4096);
  CHECK(c.meta.at("checksum_algorithm").as_string() == Checksum64::kAlgorithm);
  CHECK(c.meta.at("files").at("model.safetensors").at("bytes").as_int() ==
        static_cast<std::int64_t>(fs::file_size(dir + "/model.safetensors")));
  restore_parameters(c, b.model->params(), *b.backend);
  restore_optimizer(c, b.model->params(), *b.optimizer, *b.backend);
  // Bitwise, tensor by tensor (the flat buffers' alignment padding is not state).
  const ParameterStore& pa = a.model->params();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    const int id = static_cast<int>(i);
    INFO(pa.spec(id).name);
    const Tensor x = pa.param(id), y = b.model->params().param(id);
    CHECK(std::memcmp(x.data, y.data, x.nbytes()) == 0);
    for (const std::string& n : a.optimizer->state_names()) {
      const Tensor sx = a.optimizer->state(n).slice(0, pa.offset_of(id), x.numel());
      const Tensor sy = b.optimizer->state(n).slice(0, pa.offset_of(id), x.numel());
      CHECK(std::memcmp(sx.data, sy.data, sx.nbytes()) == 0);
    }
  }
  // The model file holds exactly MODEL.md's names with global shapes.
  const SafetensorsFile& model_file = c.files[0];
  const std::vector<ModelParam> expected = model_parameters(a.cfg.model);
  REQUIRE(model_file.tensors().size() == expected.size());
  for (const ModelParam& p : expected) {
    INFO(p.name);
    const auto& ts = model_file.tensors();
    const auto it =
        std::find_if(ts.begin(), ts.end(), [&](const auto& t) { return t.name == p.name; });
    REQUIRE(it != ts.end());
    CHECK(it->shape == p.shape.to_vector());
  }
}

TEST_CASE("checkpoint: a damaged checkpoint is refused naming the file", "[unit]") {
  const std::string root = temp_dir("damaged");
  Setup a(3);
  const std::string dir = a.save(root, 1);
  SECTION("missing file") {
    fs::remove(dir + "/optimizer.safetensors");
    CHECK_THAT(load_error(dir),
               Catch::Contains("optimizer.safetensors") && Catch::Contains("missing"));
  }
  SECTION("truncated file") {
    fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 100);
    CHECK_THAT(load_error(dir), Catch::Contains("model.safetensors") && Catch::Contains("bytes"));
  }
  SECTION("tampered value") {
    flip_byte(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 5);
    CHECK_THAT(load_error(dir),
               Catch::Contains("model.safetensors") && Catch::Contains("checksum"));
  }
  SECTION("tampered header") {
    flip_byte(dir + "/optimizer.safetensors", 12);
    CHECK_THAT(load_error(dir), Catch::Contains("optimizer.safetensors"));
  }
  SECTION("meta.json that does not parse") {
    std::ofstream(dir + "/meta.json", std::ios::trunc) << "{\"format\": \"linmoe-checkpoint\", ";
    CHECK_THAT(load_error(dir), Catch::Contains("meta.json"));
  }
  SECTION("meta.json without the files table") {
    std::ofstream(dir + "/meta.json", std::ios::trunc)
        << R"({"format": "linmoe-checkpoint", "version": 1, "step": 1, "consumed_samples": 0, "tokens": 0})";
    CHECK_THAT(load_error(dir), Catch::Contains("meta.json") && Catch::Contains("files"));
  }
  SECTION("meta.json missing") {
    fs::remove(dir + "/meta.json");
    CHECK_THAT(load_error(dir), Catch::Contains("meta.json") && Catch::Contains("missing"));
  }
}

TEST_CASE("checkpoint: load auto falls back to the newest older complete checkpoint", "[unit]") {
  const std::string root = temp_dir("fallback");
  Setup a(5);
  a.save(root, 10);
  a.save(root, 20);
  a.save(root, 30);
  CHECK(find_checkpoint(root)->step == 30);
  flip_byte(root + "/iter_0000030/model.safetensors", 200);
  fs::remove(root + "/iter_0000020/meta.json");
  std::optional<LoadedCheckpoint> c = find_checkpoint(root);
  REQUIRE(c);
  CHECK(c->step == 10);
  // A folder given explicitly is that checkpoint or an error, never another one.
  CHECK_THROWS_WITH(find_checkpoint(root + "/iter_0000030"), Catch::Contains("model.safetensors"));
  CHECK_FALSE(find_checkpoint(temp_dir("empty")));
  fs::remove(root + "/iter_0000010/optimizer.safetensors");
  CHECK_THROWS_WITH(find_checkpoint(root), Catch::Contains("no loadable checkpoint"));
}

TEST_CASE("checkpoint: a different model is refused naming the first tensor that differs",
          "[unit]") {
  const std::string root = temp_dir("incompatible");
  Setup a(5);
  a.save(root, 1);
  LoadedCheckpoint c = open_checkpoint(root + "/iter_0000001");
  SECTION("different expert width") {
    Setup b(5, {"model.moe.ffn_hidden_size=64"});
    CHECK_THROWS_WITH(restore_parameters(c, b.model->params(), *b.backend),
                      Catch::Contains("'layers.0.ffn.experts.w1'") &&
                          Catch::Contains("[8, 128, 128]") && Catch::Contains("[8, 64, 128]"));
  }
  SECTION("fewer layers: the checkpoint has tensors the model lacks") {
    Setup b(5, {"model.num_layers=2"});
    CHECK_THROWS_WITH(restore_parameters(c, b.model->params(), *b.backend),
                      Catch::Contains("layers.2.") && Catch::Contains("model does not"));
  }
  SECTION("more layers: the model has tensors the checkpoint lacks") {
    Setup b(5, {"model.num_layers=8"});
    CHECK_THROWS_WITH(restore_parameters(c, b.model->params(), *b.backend),
                      Catch::Contains("no tensor 'layers.4."));
  }
  SECTION("another optimizer") {
    Setup b(5);
    b.cfg.optimizer.type = OptimizerType::sgd;
    b.optimizer = std::make_unique<Optimizer>(b.cfg.optimizer, *b.backend, b.model->params());
    CHECK_THROWS_WITH(restore_optimizer(c, b.model->params(), *b.optimizer, *b.backend),
                      Catch::Contains("momentum_buffer"));
  }
}

TEST_CASE("checkpoint: rotation keeps keep_last and never the newest complete one", "[unit]") {
  const std::string root = temp_dir("rotate");
  Setup a(5);
  for (int s = 1; s <= 5; ++s) a.save(root, s);
  rotate_checkpoints(root, 2);
  CHECK(list_checkpoints(root) ==
        std::vector<std::string>{root + "/iter_0000005", root + "/iter_0000004"});
  // `latest` on an older checkpoint (a newer folder whose save did not commit): both stay.
  a.save(root, 6);
  a.save(root, 7);
  std::ofstream(root + "/latest", std::ios::trunc) << "iter_0000004\n";
  rotate_checkpoints(root, 1);
  CHECK(list_checkpoints(root) ==
        std::vector<std::string>{root + "/iter_0000007", root + "/iter_0000004"});
  CHECK(find_checkpoint(root)->step == 4);
}

TEST_CASE("checkpoint: slices stored under one layout load under another", "[unit]") {
  // Two "ranks" each wrote half of the rows of w [6, 5]; a reader holding columns 1..3 of every
  // row, and one holding the whole tensor, both assemble their slice from the pieces.
  const std::string dir = temp_dir("reshard");
  std::vector<float> whole(30);
  for (std::size_t i = 0; i < whole.size(); ++i) whole[i] = static_cast<float>(i) + 0.25f;
  for (int r = 0; r < 2; ++r) {
    Json slices = Json::object();
    slices["w"]["global_shape"] = Json::array({Json(6), Json(5)});
    slices["w"]["offset"] = Json::array({Json(3 * r), Json(0)});
    Json meta = Json::object();
    meta["linmoe_role"] = "model";
    meta["linmoe_slices"] = dump_json(slices);
    write_safetensors(dir + "/model_rank" + std::to_string(r) + ".safetensors",
                      {{"w", {3, 5}, whole.data() + 15 * r}}, meta);
  }
  LoadedCheckpoint c;
  c.dir = dir;
  c.files.push_back(SafetensorsFile::open(dir + "/model_rank0.safetensors"));
  c.files.push_back(SafetensorsFile::open(dir + "/model_rank1.safetensors"));
  CHECK(assemble_tensor(c, "w", {6, 5}) == whole);

  auto backend = make_backend(BackendKind::cpu, 1);
  ParameterStore store;
  ParamSpec spec;
  spec.name = "w";
  spec.global_shape = Shape{6, 5};
  spec.shape = Shape{6, 3};
  spec.offset = {0, 1};
  store.add(spec);
  store.allocate(backend->allocator(), DType::f32, DType::f32);
  restore_parameters(c, store, *backend);
  const float* p = store.param(0).ptr<float>();
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 3; ++j)
      CHECK(p[i * 3 + j] == whole[static_cast<std::size_t>(i * 5 + 1 + j)]);
  }
  // A missing piece is reported, not filled with garbage.
  c.files.pop_back();
  CHECK_THROWS_WITH(restore_parameters(c, store, *backend), Catch::Contains("cover 9 of the 18"));
}

TEST_CASE("checkpoint: SIGKILL at any stage of a save leaves `latest` on a complete one", "[e2e]") {
  const std::vector<std::string> stages = {"model.safetensors:header",
                                           "model.safetensors",
                                           "optimizer.safetensors:header",
                                           "optimizer.safetensors",
                                           "meta.json",
                                           "renamed",
                                           "latest"};
  Setup a(9);
  for (std::size_t k = 0; k < stages.size(); ++k) {
    INFO("killed after stage " << stages[k]);
    const std::string root = temp_dir("kill");
    a.save(root, 1);
    const CheckpointSnapshot snap = a.snapshot(2);  // before fork: the child only writes files
    std::fflush(nullptr);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // the child saves step 2 and is killed by a real SIGKILL mid-save
      try {
        write_checkpoint(snap, root, [&](const std::string& s) {
          if (s == stages[k]) ::kill(::getpid(), SIGKILL);
        });
      } catch (...) {
      }
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    const std::string latest = read_text(root + "/latest");
    CHECK((latest == "iter_0000001" || latest == "iter_0000002"));
    CHECK(load_error(root + "/" + latest).empty());
    const std::int64_t expect = k + 1 == stages.size() ? 2 : 1;
    CHECK(find_checkpoint(root)->step == expect);
    // The next save clears the leftovers and commits.
    a.save(root, 3);
    CHECK(find_checkpoint(root)->step == 3);
    CHECK_FALSE(fs::exists(root + "/iter_0000002.tmp"));
  }
}
