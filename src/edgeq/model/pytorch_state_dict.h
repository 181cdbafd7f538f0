// Reader for state_dict files that Python wrote with `torch.save(model.state_dict(), path)`.
//
// libtorch 1.13's torch::pickle_load aborts on these files because the OrderedDict carries a
// `_metadata` attribute, so edgeq reads them itself. The reader understands only what a state_dict
// contains (tensors, their storages and the OrderedDict around them) and never executes code from
// the file: a pickle that references any other Python global is rejected.
#pragma once

#include <filesystem>

#include "edgeq/model/state_dict.h"

namespace edgeq {

// Reads a torch.save zip archive (the default format since PyTorch 1.6) whose top-level object
// is a dict of tensors. Every tensor is converted to float32 and made contiguous, whatever its
// dtype (float32/64, float16, bfloat16, int8/16/32/64, uint8, bool), strides and storage offset.
//
// Throws Error(kIo) when the file is missing and Error(kUnsupported) for a tensor dtype that has
// no float conversion (complex, quantized). Every other problem throws Error(kInvalidInput) with a
// one-line message that names the file: the legacy pre-1.6 format, a truncated or corrupt
// archive, a pickle that references a global other than the tensor-rebuilding ones, or a
// top-level object that is not a dict of tensors (for example a whole model saved with
// torch.save(model)).
StateDict read_pytorch_state_dict(const std::filesystem::path& path);

}  // namespace edgeq
