// Framework-neutral weights of a model: a PyTorch-style state_dict of named float tensors.
//
// The ONNX exporter and the Python state_dict reader work on this type, so neither needs
// libtorch; fashion_cnn.h converts between it and the libtorch module.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace edgeq {

struct HostTensor {
    std::vector<int64_t> shape;
    std::vector<float> values;  // row-major; integer buffers (num_batches_tracked) are converted

    int64_t element_count() const {
        int64_t count = 1;
        for (const int64_t size : shape) {
            count *= size;
        }
        return count;
    }
};

// Keys are the PyTorch module paths, for example "layer1.0.weight" or "fc1.bias".
using StateDict = std::map<std::string, HostTensor>;

std::string format_shape(const std::vector<int64_t>& shape);

}  // namespace edgeq
