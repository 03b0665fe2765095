// Checkpoints (FORMATS.md 2; docs/CHECKPOINTS.md):
//
//   <root>/latest                      the newest complete checkpoint's folder name, written last
//   <root>/iter_0000100/model.safetensors       fp32 master weights, names of MODEL.md 7
//   <root>/iter_0000100/optimizer.safetensors   "<param>.exp_avg", "<param>.exp_avg_sq" (AdamW)
//                                               or "<param>.momentum_buffer" (SGD)
//   <root>/iter_0000100/meta.json      step, samples, tokens, config, layout, scheduler, RNG and
//                                      data-iterator state, size + checksum of every other file
//
// A save writes iter_N.tmp/ (each file fsynced, meta.json last), renames it to iter_N, then
// replaces `latest` by write + fsync + rename: a process killed at any point leaves `latest` on
// a complete checkpoint (or absent). Every tensor is stored as this rank's slice with its global
// shape and slice offset (safetensors __metadata__ "linmoe_slices"), and the loader assembles
// the slices a parameter needs from any set of pieces, so a checkpoint loads under another
// layout (resharding).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/json.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"
#include "train/optimizer.h"
#include "train/safetensors.h"

namespace linmoe {

constexpr int kCheckpointFormatVersion = 1;

// "iter_0000100"
std::string checkpoint_name(std::int64_t step);

// One tensor of a snapshot: this rank's slice of a parameter (or of its optimizer state).
struct SnapshotTensor {
  std::string name;
  std::vector<std::int64_t> shape, global_shape, offset;
  std::int64_t flat_offset = 0;  // element offset in the snapshot's flat buffer
};

// The slices another rank owns (several ranks): written as model-rank<R>.safetensors and
// optimizer-rank<R>.safetensors beside rank 0's model.safetensors / optimizer.safetensors.
struct SnapshotPart {
  int rank = 0;
  std::vector<SnapshotTensor> weights;
  std::vector<float> params;
  std::vector<SnapshotTensor> states;
  std::vector<float> optimizer_state;
};

// A host copy of everything a checkpoint holds, taken between steps; written in the background
// while training goes on. Buffers are reused from save to save.
struct CheckpointSnapshot {
  std::int64_t step = 0, consumed_samples = 0, tokens = 0;
  Json meta = Json::object();  // the caller's meta.json fields (config, layout, scheduler, ...)
  std::vector<SnapshotTensor> weights;  // into params
  std::vector<float> params;            // flat, as the parameter store's buffer
  std::vector<SnapshotTensor> states;   // into optimizer_state
  std::vector<float> optimizer_state;   // the optimizer's state tensors, back to back
  std::vector<SnapshotPart> parts;      // the other ranks' slices (several ranks)
};

// Allocates (and first-touches) the snapshot's host buffers, so the first save does not pay for
// it while training waits. take_snapshot calls it too (a no-op once done).
void prepare_snapshot(const ParameterStore& params, const Optimizer& optimizer,
                      CheckpointSnapshot& out);
// Copies the parameters and the optimizer state (whole store: the one-rank layout) to the host.
void take_snapshot(const ParameterStore& params, const Optimizer& optimizer, Backend& backend,
                   CheckpointSnapshot& out);

// Called between the stages of a save ("model.safetensors:header", "model.safetensors",
// "optimizer.safetensors:header", "optimizer.safetensors", "meta.json", "renamed", "latest");
// tests kill the process there.
using SaveHook = std::function<void(const std::string& stage)>;

// Writes the snapshot as <root>/iter_<step> and points `latest` at it; removes leftover
// iter_*.tmp folders of interrupted saves first. Returns the checkpoint's folder.
std::string write_checkpoint(const CheckpointSnapshot& snapshot, const std::string& root,
                             const SaveHook& hook = nullptr);

// Deletes complete checkpoints beyond the newest keep_last (never the one `latest` names, never
// the newest). Returns the folders removed.
std::vector<std::string> rotate_checkpoints(const std::string& root, int keep_last);

// A checkpoint whose meta.json parsed and whose every file exists with the recorded size and
// checksum; its safetensors files are open (validated).
struct LoadedCheckpoint {
  std::string dir;
  Json meta;
  std::int64_t step = 0, consumed_samples = 0, tokens = 0;
  std::vector<SafetensorsFile> files;  // model and optimizer files
};

// Opens and verifies the checkpoint folder `dir`. UserError naming the file on any problem.
LoadedCheckpoint open_checkpoint(const std::string& dir);

// The checkpoint folders under root (iter_<digits>, no .tmp), newest step first.
std::vector<std::string> list_checkpoints(const std::string& root);

// The newest loadable checkpoint under `root`: the one `latest` names, else (saying why, with a
// warning) the newest older one that verifies. nullopt when root holds no checkpoint at all;
// UserError when there are checkpoints but none verifies. `dir` may also name one checkpoint
// folder (it holds meta.json): that one, without fallback.
std::optional<LoadedCheckpoint> find_checkpoint(const std::string& dir);

// Copies the checkpoint's weights into `params` (this rank's slices, assembled from whatever
// pieces the checkpoint holds). UserError naming the first tensor whose global shape differs,
// that is missing, or that the model does not have.
// model_names: every tensor name of the whole model (pipeline stages hold a part of it); null:
// the names in `params`.
void restore_parameters(const LoadedCheckpoint& ckpt, ParameterStore& params, Backend& backend,
                        const std::vector<std::string>* model_names = nullptr);
// The same for the optimizer state ("<param>.<state>" per state name).
void restore_optimizer(const LoadedCheckpoint& ckpt, const ParameterStore& params,
                       Optimizer& optimizer, Backend& backend);

// The tensors "<param><suffix>" of one role of every parameter in `params`, as the store's flat
// [padded_numel] fp32 host vector (padding 0), assembled from the checkpoint's pieces: role
// "model" and suffix "" for the (master) weights, "optimizer" and ".exp_avg" for a state.
std::vector<float> restore_flat_values(const LoadedCheckpoint& ckpt, const ParameterStore& params,
                                       const std::string& role, const std::string& suffix);

// Every model tensor of the checkpoint, whole (global shape), in the order of `names`
// (tests and `linmoe convert`). UserError when a tensor is missing or not fully covered.
// role "optimizer" for an optimizer state ("<param>.exp_avg").
std::vector<float> assemble_tensor(const LoadedCheckpoint& ckpt, const std::string& name,
                                   const std::vector<std::int64_t>& global_shape,
                                   const std::string& role = "model");

// Saves in a background thread: begin() waits for the previous save and hands out the snapshot
// to fill; submit() starts writing it. wait() blocks until the running save ends and rethrows
// its error. The destructor waits too (errors are then logged).
class CheckpointWriter {
 public:
  CheckpointWriter(std::string root, int keep_last);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  CheckpointSnapshot& begin();
  void submit();
  bool busy() const { return thread_.joinable(); }
  bool finished() const;  // a save ran and is done (wait() returns at once)
  // Waits; returns the folder written by the save that ran ("" when none).
  std::string wait();
  const std::string& root() const { return root_; }
  double last_write_seconds() const { return write_seconds_; }

 private:
  std::string root_;
  int keep_last_;
  CheckpointSnapshot snapshot_;
  std::thread thread_;
  std::shared_ptr<std::atomic<bool>> done_;
  std::string written_;
  std::exception_ptr error_;
  double write_seconds_ = 0;
};

}  // namespace linmoe
