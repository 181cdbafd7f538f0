#include "support/model_support.h"

#include <array>
#include <cmath>
#include <random>

#include "edgeq/onnx/model_io.h"

namespace edgeq::test {

FashionCnn make_random_fashion_cnn(uint64_t seed) {
    torch::manual_seed(seed);
    FashionCnn model;
    torch::NoGradGuard no_grad;
    for (auto& item : model->named_buffers(true)) {
        const std::string& key = item.key();
        torch::Tensor& buffer = item.value();
        if (key.ends_with("running_mean")) {
            buffer.copy_(torch::randn_like(buffer) * 0.3);
        } else if (key.ends_with("running_var")) {
            buffer.copy_(torch::rand_like(buffer) * 2.0 + 0.2);
        }
    }
    for (auto& item : model->named_parameters(true)) {
        const std::string& key = item.key();
        if (key.ends_with(".1.weight")) {
            item.value().copy_(torch::rand_like(item.value()) + 0.5);  // BatchNorm gamma
        } else if (key.ends_with(".1.bias")) {
            item.value().copy_(torch::randn_like(item.value()) * 0.2);  // BatchNorm beta
        }
    }
    model->eval();
    return model;
}

LabelledImages make_synthetic_images(int64_t count, uint64_t seed) {
    std::mt19937_64 generator(seed);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    LabelledImages images;
    images.pixels.resize(static_cast<size_t>(count * kImageSize));
    images.labels.resize(static_cast<size_t>(count));
    for (int64_t n = 0; n < count; ++n) {
        const double center_x = 6 + 16 * uniform(generator);
        const double center_y = 6 + 16 * uniform(generator);
        const double radius = 3 + 6 * uniform(generator);
        for (int64_t y = 0; y < kImageSide; ++y) {
            for (int64_t x = 0; x < kImageSide; ++x) {
                const double distance = std::hypot(static_cast<double>(x) - center_x,
                                                   static_cast<double>(y) - center_y);
                const double value = 255.0 * std::exp(-distance * distance / (radius * radius));
                images.pixels[static_cast<size_t>(n * kImageSize + y * kImageSide + x)] =
                    static_cast<uint8_t>(std::lround(value));
            }
        }
        images.labels[static_cast<size_t>(n)] = static_cast<uint8_t>(n % kFashionClassCount);
    }
    return images;
}

void write_erf_model(const std::filesystem::path& path, int64_t channels) {
    onnx::ModelProto model;
    model.set_ir_version(7);
    model.add_opset_import()->set_version(13);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("erf");
    auto add_value = [channels](onnx::ValueInfoProto* value, const std::string& name) {
        value->set_name(name);
        auto* type = value->mutable_type()->mutable_tensor_type();
        type->set_elem_type(onnx::TensorProto::FLOAT);
        auto* shape = type->mutable_shape();
        shape->add_dim()->set_dim_param("N");
        for (const int64_t size : {channels, int64_t{28}, int64_t{28}}) {
            shape->add_dim()->set_dim_value(size);
        }
    };
    add_value(graph.add_input(), "x");
    add_value(graph.add_output(), "y");
    const std::vector<std::array<std::string, 4>> nodes = {
        {"Relu", "first_relu", "x", "a"}, {"Erf", "my_erf", "a", "b"}, {"Relu", "last", "b", "y"}};
    for (const auto& [op, name, input, output] : nodes) {
        onnx::NodeProto* node = graph.add_node();
        node->set_op_type(op);
        node->set_name(name);
        node->add_input(input);
        node->add_output(output);
    }
    save_onnx_model(model, path);
}

}  // namespace edgeq::test
