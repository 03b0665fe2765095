// Checkpoints of any layout: every slice is written exactly once, by the rank that owns it
// (Engine::owns: data-parallel rank 0 of its replicas, tp rank 0 for replicated tensors), with
// its global shape and offset, so the checkpoint loads under any other layout. The owners send
// their slices (and the matching optimizer state, gathered over the ZeRO shards) to world rank
// 0, which writes one file pair per rank in the background. Rank 0 therefore holds a host copy
// of the whole model and optimizer state during a save: fine for the CPU ranks of one machine;
// per-rank writing is the step up for clusters (docs/CHECKPOINTS.md).
#pragma once
#include "parallel/communicator.h"
#include "train/checkpoint.h"
#include "train/engine.h"

namespace linmoe {

// Collective over `world` (may be null: one rank), a host (MPI) communicator: it moves host
// vectors (ProcessGroups::group, never tensor_group). Fills `out` on world rank 0 (its own slices
// in weights/params/states/optimizer_state, the others' in parts); other ranks leave it empty.
void gather_snapshot(Engine& engine, Backend& backend, Communicator* world,
                     CheckpointSnapshot& out);

// Loads this rank's slices of the weights and, when with_optimizer, of the optimizer state.
void restore_engine(const LoadedCheckpoint& ckpt, Engine& engine, Backend& backend,
                    bool with_optimizer);

}  // namespace linmoe
