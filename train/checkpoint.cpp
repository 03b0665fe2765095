#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/check.h"
#include "core/log.h"

namespace linmoe {
namespace fs = std::filesystem;
namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kMetaFile = "meta.json";

std::string shape_text(const std::vector<std::int64_t>& s) {
  return Shape(s).str();
}

// Writes a small text file and fsyncs it (meta.json, latest).
void write_text_synced(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw UserError(str_cat(path, ": cannot create: ", std::strerror(errno)), false);
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw UserError(str_cat(path, ": cannot write: ", std::strerror(errno)), false);
    }
    done += static_cast<std::size_t>(n);
  }
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw UserError(str_cat(path, ": fsync failed: ", std::strerror(errno)), false);
}

// Digits after "iter_", or -1 when the name is not a checkpoint folder.
std::int64_t step_of(const std::string& name) {
  if (name.rfind("iter_", 0) != 0 || name.size() <= 5) return -1;
  std::int64_t v = 0;
  for (std::size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (std::int64_t{1} << 58)) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

std::string read_latest(const std::string& root) {
  std::ifstream in(root + "/latest");
  if (!in) return "";
  std::string name;
  std::getline(in, name);
  while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
  return name;
}

// Writes one safetensors file of snapshot tensors with their slice metadata.
FileDigest write_tensors(const std::string& path, const std::string& role,
                         const std::vector<SnapshotTensor>& tensors, const std::vector<float>& flat,
                         const SaveHook& hook, const std::string& file) {
  std::vector<SafetensorsInput> in;
  Json slices = Json::object();
  for (const SnapshotTensor& t : tensors) {
    in.push_back({t.name, t.shape, flat.data() + t.flat_offset});
    Json s = Json::object();
    s["global_shape"] = int_array(t.global_shape);
    s["offset"] = int_array(t.offset);
    slices[t.name] = s;
  }
  Json meta = Json::object();
  meta["format"] = "pt";  // what Hugging Face's loaders expect
  meta["linmoe_role"] = role;
  meta["linmoe_slices"] = dump_json(slices);
  std::function<void()> after_header;
  if (hook) after_header = [&] { hook(file + ":header"); };
  return write_safetensors(path, in, meta, after_header);
}

struct Piece {
  const SafetensorsFile* file;
  const SafetensorsEntry* entry;
  std::vector<std::int64_t> global_shape, offset;
};

// name -> pieces, over the files whose role matches ("" = any).
std::map<std::string, std::vector<Piece>> index_pieces(const LoadedCheckpoint& ckpt,
                                                       const std::string& role) {
  std::map<std::string, std::vector<Piece>> index;
  for (const SafetensorsFile& f : ckpt.files) {
    const Json* r = f.metadata().find("linmoe_role");
    if (!role.empty() && (!r || r->as_string() != role)) continue;
    Json slices = Json::object();
    if (const Json* s = f.metadata().find("linmoe_slices")) {
      slices = parse_json(s->as_string(), f.path() + " (__metadata__.linmoe_slices)");
    }
    for (const SafetensorsEntry& e : f.tensors()) {
      Piece p{&f, &e, e.shape, std::vector<std::int64_t>(e.shape.size(), 0)};
      if (const Json* s = slices.find(e.name)) {
        const std::string what = f.path() + ": slice of " + e.name;
        p.global_shape = read_int_array(s->at("global_shape"), what);
        p.offset = read_int_array(s->at("offset"), what);
        bool ok = p.global_shape.size() == e.shape.size() && p.offset.size() == e.shape.size();
        for (std::size_t d = 0; ok && d < e.shape.size(); ++d) {
          ok = p.offset[d] >= 0 && p.offset[d] + e.shape[d] <= p.global_shape[d];
        }
        if (!ok) throw UserError(str_cat(what, ": offset outside the global shape"));
      }
      index[e.name].push_back(std::move(p));
    }
  }
  return index;
}

// Fills `out` (the box [offset, offset + shape) of the global tensor) from the pieces; returns
// the number of elements copied.
std::int64_t copy_from_pieces(const std::vector<Piece>& pieces,
                              const std::vector<std::int64_t>& offset,
                              const std::vector<std::int64_t>& shape, float* out) {
  const std::size_t nd = shape.size();
  std::int64_t copied = 0;
  for (const Piece& p : pieces) {
    std::vector<std::int64_t> lo(nd), hi(nd);
    bool empty = false;
    for (std::size_t d = 0; d < nd; ++d) {
      lo[d] = std::max(offset[d], p.offset[d]);
      hi[d] = std::min(offset[d] + shape[d], p.offset[d] + p.entry->shape[d]);
      empty = empty || lo[d] >= hi[d];
    }
    if (empty) continue;
    const auto* src = reinterpret_cast<const unsigned char*>(p.file->data(*p.entry));
    if (nd == 0) {
      std::memcpy(out, src, sizeof(float));
      copied += 1;
      continue;
    }
    // Row-major walk over the overlap's leading indices; the last dimension is one run.
    std::vector<std::int64_t> idx(lo);
    const std::int64_t run = hi[nd - 1] - lo[nd - 1];
    while (true) {
      std::int64_t s = 0, t = 0;
      for (std::size_t d = 0; d < nd; ++d) {
        s = s * p.entry->shape[d] + (idx[d] - p.offset[d]);
        t = t * shape[d] + (idx[d] - offset[d]);
      }
      std::memcpy(out + t, src + static_cast<std::size_t>(s) * sizeof(float),
                  static_cast<std::size_t>(run) * sizeof(float));
      copied += run;
      int d = static_cast<int>(nd) - 2;  // advance the leading indices
      for (; d >= 0; --d) {
        if (++idx[static_cast<std::size_t>(d)] < hi[static_cast<std::size_t>(d)]) break;
        idx[static_cast<std::size_t>(d)] = lo[static_cast<std::size_t>(d)];
      }
      if (d < 0) break;
    }
  }
  return copied;
}

// Checks that the checkpoint holds `name` with the model's global shape, then copies this
// rank's slice into a host vector.
std::vector<float> gather_slice(const LoadedCheckpoint& ckpt,
                                const std::map<std::string, std::vector<Piece>>& index,
                                const std::string& name, const ParamSpec& spec) {
  const std::vector<std::int64_t> global = spec.global_shape.to_vector();
  auto it = index.find(name);
  if (it == index.end()) {
    throw UserError(str_cat("checkpoint ", ckpt.dir,
                            " does not match the model: it has no tensor '", name,
                            "' (the model's is ", shape_text(global), ")"));
  }
  for (const Piece& p : it->second) {
    if (p.global_shape != global) {
      throw UserError(str_cat("checkpoint ", ckpt.dir,
                              " does not match the model: the first tensor that differs is '", name,
                              "': ", shape_text(p.global_shape), " in the checkpoint (",
                              p.file->path(), "), ", shape_text(global), " in the model"));
    }
  }
  std::vector<float> out(static_cast<std::size_t>(spec.shape.numel()));
  const std::int64_t n =
      copy_from_pieces(it->second, spec.offset, spec.shape.to_vector(), out.data());
  if (n != spec.shape.numel()) {
    throw UserError(str_cat("checkpoint ", ckpt.dir, ": the pieces of '", name, "' cover ", n,
                            " of the ", spec.shape.numel(), " values this rank needs"));
  }
  return out;
}

void copy_to_device(Backend& backend, const std::vector<float>& host, const Tensor& dst) {
  Tensor src(const_cast<float*>(host.data()), DType::f32, Device::cpu, dst.shape);
  backend.copy(src, dst);
}

}  // namespace

std::string checkpoint_name(std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "iter_%07lld", static_cast<long long>(step));
  return buf;
}

void prepare_snapshot(const ParameterStore& params, const Optimizer& optimizer,
                      CheckpointSnapshot& out) {
  const std::int64_t n = params.padded_numel();
  LINMOE_CHECK(optimizer.begin() == 0 && optimizer.end() == n,
               "checkpoints of a partial (ZeRO) optimizer range are not implemented yet");
  const std::vector<std::string> states = optimizer.state_names();
  if (out.weights.size() != params.size() || out.params.size() != static_cast<std::size_t>(n)) {
    out.weights.clear();
    out.states.clear();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const ParamSpec& s = params.spec(static_cast<int>(i));
      out.weights.push_back({s.name, s.shape.to_vector(), s.global_shape.to_vector(), s.offset,
                             params.offset_of(static_cast<int>(i))});
    }
    for (std::size_t k = 0; k < states.size(); ++k) {
      for (SnapshotTensor t : out.weights) {
        t.name += "." + states[k];
        t.flat_offset += static_cast<std::int64_t>(k) * n;
        out.states.push_back(std::move(t));
      }
    }
    out.params.assign(static_cast<std::size_t>(n), 0.0f);
    out.optimizer_state.assign(static_cast<std::size_t>(n) * states.size(), 0.0f);
  }
}

void take_snapshot(const ParameterStore& params, const Optimizer& optimizer, Backend& backend,
                   CheckpointSnapshot& out) {
  prepare_snapshot(params, optimizer, out);
  const std::int64_t n = params.padded_numel();
  const std::vector<std::string> states = optimizer.state_names();
  LINMOE_CHECK(optimizer.begin() == 0 && optimizer.end() == n,
               "take_snapshot needs the whole store's optimizer (one rank)");
  backend.copy(optimizer.master_weights(), Tensor(out.params.data(), DType::f32, Device::cpu,
                                                  Shape{n}));  // fp32 (master) weights
  for (std::size_t k = 0; k < states.size(); ++k) {
    backend.copy(optimizer.state(states[k]),
                 Tensor(out.optimizer_state.data() + k * static_cast<std::size_t>(n), DType::f32,
                        Device::cpu, Shape{n}));
  }
  backend.synchronize();
}

std::string write_checkpoint(const CheckpointSnapshot& snap, const std::string& root,
                             const SaveHook& hook) {
  auto stage = [&](const std::string& s) {
    if (hook) hook(s);
  };
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec)
    throw UserError(str_cat(root, ": cannot create the checkpoint folder: ", ec.message()), false);
  // Leftovers of saves that were killed: never complete, never named by `latest`.
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("iter_", 0) == 0 && n.size() > 4 &&
        n.compare(n.size() - 4, 4, ".tmp") == 0) {
      fs::remove_all(e.path(), ec);
    }
  }
  const std::string name = checkpoint_name(snap.step);
  const std::string final_dir = root + "/" + name, tmp = final_dir + ".tmp";
  fs::create_directories(tmp, ec);
  if (ec) throw UserError(str_cat(tmp, ": cannot create: ", ec.message()), false);

  Json files = Json::object();
  auto record = [&](const std::string& file, const FileDigest& d) {
    Json f = Json::object();
    f["bytes"] = Json(d.bytes);
    f["checksum"] = checksum_hex(d.checksum);
    files[file] = f;
  };
  record(kModelFile, write_tensors(tmp + "/" + kModelFile, "model", snap.weights, snap.params, hook,
                                   kModelFile));
  stage(kModelFile);
  record(kOptimizerFile, write_tensors(tmp + "/" + kOptimizerFile, "optimizer", snap.states,
                                       snap.optimizer_state, hook, kOptimizerFile));
  stage(kOptimizerFile);
  for (const SnapshotPart& part : snap.parts) {
    char suffix[32];
    std::snprintf(suffix, sizeof(suffix), "-rank%05d.safetensors", part.rank);
    const std::string model_file = std::string("model") + suffix;
    const std::string optimizer_file = std::string("optimizer") + suffix;
    record(model_file, write_tensors(tmp + "/" + model_file, "model", part.weights, part.params,
                                     nullptr, model_file));
    record(optimizer_file, write_tensors(tmp + "/" + optimizer_file, "optimizer", part.states,
                                         part.optimizer_state, nullptr, optimizer_file));
  }

  Json meta = Json::object();
  meta["format"] = "linmoe-checkpoint";
  meta["version"] = kCheckpointFormatVersion;
  meta["step"] = snap.step;
  meta["consumed_samples"] = snap.consumed_samples;
  meta["tokens"] = snap.tokens;
  for (const auto& [k, v] : snap.meta.as_object()) meta[k] = v;
  meta["checksum_algorithm"] = Checksum64::kAlgorithm;
  meta["files"] = files;
  write_text_synced(tmp + "/" + kMetaFile, dump_json(meta, 2) + "\n");
  fsync_directory(tmp);
  stage(kMetaFile);

  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);  // an older run's save of this step
  fs::rename(tmp, final_dir, ec);
  if (ec)
    throw UserError(str_cat(final_dir, ": cannot rename the saved checkpoint: ", ec.message()),
                    false);
  fsync_directory(root);
  stage("renamed");
  write_text_synced(root + "/latest.tmp", name + "\n");
  fs::rename(root + "/latest.tmp", root + "/latest", ec);
  if (ec) throw UserError(str_cat(root, "/latest: cannot replace: ", ec.message()), false);
  fsync_directory(root);
  stage("latest");
  return final_dir;
}

std::vector<std::string> list_checkpoints(const std::string& root) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    const std::int64_t s = step_of(n);
    if (s >= 0 && e.is_directory()) found.emplace_back(s, n);
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(root + "/" + f.second);
  return out;
}

std::vector<std::string> rotate_checkpoints(const std::string& root, int keep_last) {
  const std::string latest = read_latest(root);
  std::vector<std::string> removed;
  int kept = 0;
  for (const std::string& dir : list_checkpoints(root)) {
    const bool named = fs::path(dir).filename().string() == latest;
    if (kept < std::max(keep_last, 1) || named) {
      ++kept;
      continue;
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (!ec) removed.push_back(dir);
  }
  return removed;
}

LoadedCheckpoint open_checkpoint(const std::string& dir) {
  LoadedCheckpoint c;
  c.dir = dir;
  const std::string meta_path = dir + "/" + kMetaFile;
  if (!fs::exists(meta_path)) {
    throw UserError(str_cat(meta_path, ": missing (not a checkpoint, or an incomplete one)"));
  }
  try {
    c.meta = read_json_file(meta_path);
    if (!c.meta.is_object() || !c.meta.find("format") ||
        c.meta.at("format").as_string("format") != "linmoe-checkpoint") {
      throw UserError("not a linmoe checkpoint's meta.json (format)");
    }
    const std::int64_t version = c.meta.at("version").as_int("version");
    if (version != kCheckpointFormatVersion) {
      throw UserError(str_cat("format version ", version, "; this linmoe reads version ",
                              kCheckpointFormatVersion));
    }
    c.step = c.meta.at("step").as_int("step");
    c.consumed_samples = c.meta.at("consumed_samples").as_int("consumed_samples");
    c.tokens = c.meta.at("tokens").as_int("tokens");
    c.meta.at("files").as_object("files");
  } catch (const UserError& e) {
    const std::string what = e.what();
    throw UserError(what.rfind(meta_path, 0) == 0 ? what : str_cat(meta_path, ": ", what));
  }
  for (const auto& [name, f] : c.meta.at("files").as_object()) {
    const std::string path = dir + "/" + name;
    if (name.empty() || name.find('/') != std::string::npos || name == "..") {
      throw UserError(str_cat(meta_path, ": bad file name '", name, "'"));
    }
    std::uint64_t bytes = 0;
    std::string checksum;
    try {
      bytes = static_cast<std::uint64_t>(f.at("bytes").as_int("bytes"));
      checksum = f.at("checksum").as_string("checksum");
    } catch (const UserError& e) {
      throw UserError(str_cat(meta_path, ": files.", name, ": ", e.what()));
    }
    std::error_code ec;
    if (!fs::exists(path, ec)) throw UserError(str_cat(path, ": missing (meta.json lists it)"));
    const std::uint64_t size = fs::file_size(path, ec);
    if (ec || size != bytes) {
      throw UserError(str_cat(path, ": ", size, " bytes, meta.json records ", bytes,
                              " (truncated or replaced)"));
    }
    SafetensorsFile file = SafetensorsFile::open(path);
    if (checksum_hex(file.digest().checksum) != checksum) {
      throw UserError(str_cat(path, ": checksum ", checksum_hex(file.digest().checksum),
                              " differs from meta.json's ", checksum, " (corrupted or tampered)"));
    }
    c.files.push_back(std::move(file));
  }
  return c;
}

std::optional<LoadedCheckpoint> find_checkpoint(const std::string& dir) {
  if (fs::exists(dir + "/" + kMetaFile)) return open_checkpoint(dir);
  std::vector<std::string> all = list_checkpoints(dir);
  const std::string latest = read_latest(dir);
  if (all.empty() && latest.empty()) return std::nullopt;
  std::vector<std::string> candidates;
  if (!latest.empty()) {
    const std::int64_t latest_step = step_of(latest);
    if (latest_step < 0) {
      log_warn(dir, "/latest names '", latest, "', not a checkpoint folder; trying the folders");
      candidates = all;
    } else {
      candidates.push_back(dir + "/" + latest);
      for (const std::string& d : all) {
        if (step_of(fs::path(d).filename().string()) < latest_step) candidates.push_back(d);
      }
    }
  } else {
    log_warn(dir, " has checkpoint folders but no `latest`; trying the newest first");
    candidates = all;
  }
  std::string first_error;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    try {
      LoadedCheckpoint c = open_checkpoint(candidates[i]);
      if (i > 0) {
        log_warn("falling back to ", candidates[i],
                 ", the newest older complete checkpoint (the newer one is refused: ", first_error,
                 ")");
      }
      return c;
    } catch (const UserError& e) {
      if (first_error.empty()) first_error = e.what();
      log_warn("checkpoint ", candidates[i], " is refused: ", e.what());
    }
  }
  throw UserError(str_cat("no loadable checkpoint under ", dir, ": ",
                          first_error.empty() ? "none found" : first_error));
}

void restore_parameters(const LoadedCheckpoint& ckpt, ParameterStore& params, Backend& backend,
                        const std::vector<std::string>* model_names) {
  const auto index = index_pieces(ckpt, "model");
  for (std::size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& spec = params.spec(static_cast<int>(i));
    copy_to_device(backend, gather_slice(ckpt, index, spec.name, spec),
                   params.param(static_cast<int>(i)));
  }
  for (const auto& [name, pieces] : index) {
    const bool known = model_names ? std::find(model_names->begin(), model_names->end(), name) !=
                                         model_names->end()
                                   : params.find(name) >= 0;
    if (!known) {
      throw UserError(str_cat("checkpoint ", ckpt.dir, " does not match the model: it has tensor '",
                              name, "' ", shape_text(pieces.front().global_shape),
                              ", which the model does not"));
    }
  }
  backend.synchronize();
}

void restore_optimizer(const LoadedCheckpoint& ckpt, const ParameterStore& params,
                       Optimizer& optimizer, Backend& backend) {
  LINMOE_CHECK(optimizer.begin() == 0 && optimizer.end() == params.padded_numel(),
               "checkpoints of a partial (ZeRO) optimizer range are not implemented yet");
  const auto index = index_pieces(ckpt, "optimizer");
  for (const std::string& state : optimizer.state_names()) {
    const Tensor flat = optimizer.state(state);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const ParamSpec& spec = params.spec(static_cast<int>(i));
      const Tensor dst = flat.slice(0, params.offset_of(static_cast<int>(i)), spec.shape.numel());
      copy_to_device(backend, gather_slice(ckpt, index, spec.name + "." + state, spec),
                     dst.reshape(spec.shape));
    }
  }
  if (optimizer.has_master_copy()) {  // the full-precision weights behind a bf16 store
    const std::vector<float> master = restore_flat_values(ckpt, params, "model", "");
    optimizer.set_master_weights(Tensor(const_cast<float*>(master.data()), DType::f32, Device::cpu,
                                        Shape{params.padded_numel()}));
  }
  backend.synchronize();
}

std::vector<float> restore_flat_values(const LoadedCheckpoint& ckpt, const ParameterStore& params,
                                       const std::string& role, const std::string& suffix) {
  const auto index = index_pieces(ckpt, role);
  std::vector<float> flat(static_cast<std::size_t>(params.padded_numel()), 0.0f);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& spec = params.spec(static_cast<int>(i));
    const std::vector<float> v = gather_slice(ckpt, index, spec.name + suffix, spec);
    std::copy(v.begin(), v.end(), flat.begin() + params.offset_of(static_cast<int>(i)));
  }
  return flat;
}

std::vector<float> assemble_tensor(const LoadedCheckpoint& ckpt, const std::string& name,
                                   const std::vector<std::int64_t>& global_shape,
                                   const std::string& role) {
  ParamSpec whole;
  whole.name = name;
  whole.shape = Shape(global_shape);
  whole.global_shape = Shape(global_shape);
  whole.offset.assign(global_shape.size(), 0);
  return gather_slice(ckpt, index_pieces(ckpt, role), name, whole);
}

CheckpointWriter::CheckpointWriter(std::string root, int keep_last)
    : root_(std::move(root)), keep_last_(keep_last) {}

CheckpointWriter::~CheckpointWriter() {
  try {
    wait();
  } catch (const std::exception& e) {
    log_error("checkpoint save failed: ", e.what());
  }
}

CheckpointSnapshot& CheckpointWriter::begin() {
  wait();
  return snapshot_;
}

void CheckpointWriter::submit() {
  LINMOE_CHECK(!thread_.joinable(), "CheckpointWriter::submit while a save runs");
  done_ = std::make_shared<std::atomic<bool>>(false);
  written_.clear();
  error_ = nullptr;
  auto done = done_;
  thread_ = std::thread([this, done] {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      written_ = write_checkpoint(snapshot_, root_);
      rotate_checkpoints(root_, keep_last_);
    } catch (...) {
      error_ = std::current_exception();
    }
    write_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    done->store(true);
  });
}

bool CheckpointWriter::finished() const {
  return thread_.joinable() && done_ && done_->load();
}

std::string CheckpointWriter::wait() {
  if (!thread_.joinable()) return "";
  thread_.join();
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
  return written_;
}

}  // namespace linmoe
