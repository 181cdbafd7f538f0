// FashionCNN in libtorch, with the same module tree (and so the same state_dict keys) as the
// PyTorch class the Ryzen AI Fashion-MNIST tutorial trains:
//
//   layer1: Conv2d(1, 32, 3, padding=1) -> BatchNorm2d(32) -> ReLU -> MaxPool2d(2)  [N,32,14,14]
//   layer2: Conv2d(32, 64, 3)           -> BatchNorm2d(64) -> ReLU -> MaxPool2d(2)  [N,64,6,6]
//   flatten                                                                          [N,2304]
//   fc1: Linear(2304, 600) -> drop: Dropout(0.25) -> fc2: Linear(600, 120) -> fc3: Linear(120, 10)
//
// There is no activation between the fully connected layers: the original class has none.
#pragma once

#include <filesystem>

#include <torch/torch.h>

#include "edgeq/model/state_dict.h"

namespace edgeq {

struct FashionCnnImpl : torch::nn::Module {
    FashionCnnImpl();
    torch::Tensor forward(torch::Tensor images);  // [N,1,28,28] float in [0,1] -> logits [N,10]

    torch::nn::Sequential layer1{nullptr};
    torch::nn::Sequential layer2{nullptr};
    torch::nn::Linear fc1{nullptr};
    torch::nn::Dropout drop{nullptr};
    torch::nn::Linear fc2{nullptr};
    torch::nn::Linear fc3{nullptr};
};
TORCH_MODULE(FashionCnn);

// The expected key set and shapes of a FashionCNN state_dict.
const std::map<std::string, std::vector<int64_t>>& fashion_cnn_state_dict_shapes();

// Copies every parameter and buffer of `model` into a framework-neutral StateDict.
StateDict export_state_dict(FashionCnn& model);

// Copies `weights` into `model`. Throws Error naming `source` and the key when a key is missing
// or extra or a shape differs.
void import_state_dict(FashionCnn& model, const StateDict& weights, const std::string& source);

// Checks `weights` against the FashionCNN keys and shapes, with the same errors as above.
void check_fashion_cnn_state_dict(const StateDict& weights, const std::string& source);

// Saves and loads edgeq's own checkpoint format (a libtorch archive of the state_dict).
// Saving is atomic. Loading throws Error naming the file when it is not such a checkpoint.
void save_checkpoint(FashionCnn& model, const std::filesystem::path& path);
FashionCnn load_checkpoint(const std::filesystem::path& path);

}  // namespace edgeq
