// linmoe convert --load DIR --output FILE.safetensors: one consolidated file with every model
// tensor whole (global shape), fp32, under MODEL.md 7's names, in the model's order, for
// PyTorch / Hugging Face safetensors. The model comes from the config stored in meta.json.
#include <cstdio>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/config.h"
#include "layers/model_spec.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

namespace linmoe {

int cmd_convert(int argc, char** argv) {
  std::string load, output;
  ArgParser args("linmoe convert",
                 "Writes a checkpoint's model as one consolidated safetensors file (every tensor "
                 "whole, fp32, named as MODEL.md section 7).");
  args.option("--load", &load, "DIR",
              "a checkpoint folder (iter_N) or a checkpoint.dir (its newest complete checkpoint)",
              true);
  args.option("--output", &output, "FILE", "the .safetensors file to write", true);
  if (!args.parse(argc, argv)) return 0;
  std::optional<LoadedCheckpoint> ckpt = find_checkpoint(load);
  if (!ckpt) throw UserError(str_cat("linmoe convert: no checkpoint in ", load));
  const Config cfg = load_config_from_string(ckpt->meta.at("config").as_string("config"), {},
                                             ckpt->dir + "/meta.json (config)");
  const std::vector<ModelParam> params = model_parameters(cfg.model);
  std::vector<std::vector<float>> values;
  std::vector<SafetensorsInput> tensors;
  values.reserve(params.size());
  std::int64_t total = 0;
  for (const ModelParam& p : params) {
    values.push_back(assemble_tensor(*ckpt, p.name, p.shape.to_vector()));
    tensors.push_back({p.name, p.shape.to_vector(), values.back().data()});
    total += p.shape.numel();
  }
  Json meta = Json::object();
  meta["format"] = "pt";
  meta["linmoe_step"] = std::to_string(ckpt->step);
  const std::string tmp = output + ".tmp";
  const FileDigest d = write_safetensors(tmp, tensors, meta);
  if (std::rename(tmp.c_str(), output.c_str()) != 0) {
    throw UserError(str_cat(output, ": cannot write (rename from ", tmp, " failed)"));
  }
  std::printf("wrote %s: %zu tensors, %lld fp32 values, %llu bytes, from %s (step %lld)\n",
              output.c_str(), tensors.size(), static_cast<long long>(total),
              static_cast<unsigned long long>(d.bytes), ckpt->dir.c_str(),
              static_cast<long long>(ckpt->step));
  return 0;
}

}  // namespace linmoe
