#include "edgeq/model/fashion_cnn.h"

#include <cmath>
#include <set>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"

namespace edgeq {
namespace fs = std::filesystem;
namespace nn = torch::nn;

namespace {

// The first line of a c10::Error: libtorch appends a multi-line C++ backtrace.
std::string first_line(const std::string& text) {
    return text.substr(0, text.find('\n'));
}

nn::Sequential make_conv_block(int64_t in_channels, int64_t out_channels, int64_t padding) {
    return nn::Sequential(
        nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, 3).padding(padding)),
        nn::BatchNorm2d(out_channels), nn::ReLU(), nn::MaxPool2d(nn::MaxPool2dOptions(2)));
}

HostTensor to_host(const torch::Tensor& tensor) {
    const torch::Tensor contiguous = tensor.detach().to(torch::kFloat32).contiguous();
    HostTensor host;
    host.shape = contiguous.sizes().vec();
    host.values.assign(contiguous.data_ptr<float>(),
                       contiguous.data_ptr<float>() + contiguous.numel());
    return host;
}

}  // namespace

FashionCnnImpl::FashionCnnImpl() {
    layer1 = register_module("layer1", make_conv_block(1, 32, 1));
    layer2 = register_module("layer2", make_conv_block(32, 64, 0));
    fc1 = register_module("fc1", nn::Linear(64 * 6 * 6, 600));
    drop = register_module("drop", nn::Dropout(0.25));
    fc2 = register_module("fc2", nn::Linear(600, 120));
    fc3 = register_module("fc3", nn::Linear(120, 10));
}

torch::Tensor FashionCnnImpl::forward(torch::Tensor images) {
    torch::Tensor x = layer2->forward(layer1->forward(images));
    x = x.reshape({x.size(0), -1});
    x = fc2->forward(drop->forward(fc1->forward(x)));
    return fc3->forward(x);
}

const std::map<std::string, std::vector<int64_t>>& fashion_cnn_state_dict_shapes() {
    static const std::map<std::string, std::vector<int64_t>> shapes = [] {
        FashionCnn model;
        std::map<std::string, std::vector<int64_t>> result;
        for (const auto& item : model->named_parameters(true)) {
            result[item.key()] = item.value().sizes().vec();
        }
        for (const auto& item : model->named_buffers(true)) {
            result[item.key()] = item.value().sizes().vec();
        }
        return result;
    }();
    return shapes;
}

StateDict export_state_dict(FashionCnn& model) {
    StateDict weights;
    for (const auto& item : model->named_parameters(true)) {
        weights[item.key()] = to_host(item.value());
    }
    for (const auto& item : model->named_buffers(true)) {
        weights[item.key()] = to_host(item.value());
    }
    return weights;
}

void check_fashion_cnn_state_dict(const StateDict& weights, const std::string& source) {
    const auto& expected = fashion_cnn_state_dict_shapes();
    for (const auto& [key, shape] : expected) {
        const auto found = weights.find(key);
        if (found == weights.end()) {
            fail(ExitCode::kInvalidInput,
                 "'{}' has no key '{}'; it is not a FashionCNN state_dict (expected keys like "
                 "layer1.0.weight, fc1.bias)",
                 source, key);
        }
        if (found->second.shape != shape) {
            fail(ExitCode::kInvalidInput, "'{}': key '{}' has shape {}, expected {}", source, key,
                 format_shape(found->second.shape), format_shape(shape));
        }
        if (static_cast<int64_t>(found->second.values.size()) != found->second.element_count()) {
            fail(ExitCode::kInvalidInput, "'{}': key '{}' holds {} values for shape {}", source,
                 key, found->second.values.size(), format_shape(shape));
        }
        for (const float value : found->second.values) {
            if (!std::isfinite(value)) {
                fail(ExitCode::kInvalidInput,
                     "'{}': key '{}' contains {}; the model diverged or the file is damaged",
                     source, key, value);
            }
            if (key.ends_with("running_var") && value < 0) {
                fail(ExitCode::kInvalidInput,
                     "'{}': key '{}' contains the negative variance {}; the file is damaged",
                     source, key, value);
            }
        }
    }
    for (const auto& [key, tensor] : weights) {
        if (!expected.contains(key)) {
            fail(ExitCode::kInvalidInput,
                 "'{}' has an unexpected key '{}' of shape {}; it is not a FashionCNN state_dict",
                 source, key, format_shape(tensor.shape));
        }
    }
}

void import_state_dict(FashionCnn& model, const StateDict& weights, const std::string& source) {
    check_fashion_cnn_state_dict(weights, source);

    torch::NoGradGuard no_grad;
    auto copy_into = [&](const std::string& key, torch::Tensor& target) {
        const HostTensor& host = weights.at(key);
        const torch::Tensor values =
            torch::from_blob(const_cast<float*>(host.values.data()), host.shape, torch::kFloat32);
        target.copy_(values.to(target.scalar_type()));
    };
    for (auto& item : model->named_parameters(true)) {
        copy_into(item.key(), item.value());
    }
    for (auto& item : model->named_buffers(true)) {
        copy_into(item.key(), item.value());
    }
}

void save_checkpoint(FashionCnn& model, const fs::path& path) {
    // A flat archive keyed by the state_dict names, so that loading can report a missing key by
    // its PyTorch name (Module::save nests one archive per submodule instead).
    torch::serialize::OutputArchive archive;
    for (const auto& item : model->named_parameters(true)) {
        archive.write(item.key(), item.value().detach());
    }
    for (const auto& item : model->named_buffers(true)) {
        archive.write(item.key(), item.value());
    }
    write_via_temporary(path, [&](const fs::path& temporary) {
        try {
            archive.save_to(temporary.string());
        } catch (const c10::Error& error) {
            fail(ExitCode::kIo, "writing checkpoint '{}' failed: {}", temporary.string(),
                 first_line(error.what()));
        }
    });
}

// NOTE: libtorch's InputArchive reads the file with torch::jit::load, which can run TorchScript
// code stored in the archive. Load only checkpoints you trust; for files from elsewhere, use a
// Python state_dict, which read_pytorch_state_dict parses without running anything.
FashionCnn load_checkpoint(const fs::path& path) {
    if (!fs::exists(path)) {
        fail(ExitCode::kIo,
             "checkpoint '{}' not found; train one with 'edgeq train' or 'edgeq run --retrain'",
             path.string());
    }

    torch::serialize::InputArchive archive;
    try {
        archive.load_from(path.string());
    } catch (const c10::Error& error) {
        fail(ExitCode::kInvalidInput,
             "checkpoint '{}' is not an edgeq checkpoint (a libtorch archive): {}; for a file "
             "from Python's torch.save use --state-dict",
             path.string(), first_line(error.what()));
    }

    // Read key by key so that a missing key or a wrong shape is reported by name.
    StateDict weights;
    for (const auto& [key, shape] : fashion_cnn_state_dict_shapes()) {
        torch::Tensor tensor;
        if (archive.try_read(key, tensor)) {
            weights[key] = to_host(tensor);
        }
    }
    FashionCnn model;
    import_state_dict(model, weights, path.string());
    return model;
}

}  // namespace edgeq
