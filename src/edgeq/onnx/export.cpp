#include "edgeq/onnx/export.h"

#include <cmath>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {

namespace {

const HostTensor& require(const StateDict& weights, const std::string& key) {
    const auto found = weights.find(key);
    if (found == weights.end()) {
        fail(ExitCode::kInvalidInput, "state_dict has no key '{}'; it is not a FashionCNN", key);
    }
    return found->second;
}

// Appends a node with one output; returns the output's name.
std::string add_node(onnx::GraphProto& graph, const std::string& op_type, const std::string& name,
                     const std::vector<std::string>& inputs, const std::string& output,
                     const std::vector<onnx::AttributeProto>& attributes = {}) {
    onnx::NodeProto* node = graph.add_node();
    node->set_op_type(op_type);
    node->set_name(name);
    for (const std::string& input : inputs) {
        node->add_input(input);
    }
    node->add_output(output);
    for (const onnx::AttributeProto& attribute : attributes) {
        *node->add_attribute() = attribute;
    }
    return output;
}

void add_float_io(google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>* list,
                  const std::string& name, const std::vector<int64_t>& trailing_dims) {
    onnx::ValueInfoProto* info = list->Add();
    info->set_name(name);
    onnx::TypeProto_Tensor* tensor_type = info->mutable_type()->mutable_tensor_type();
    tensor_type->set_elem_type(onnx::TensorProto::FLOAT);
    onnx::TensorShapeProto* shape = tensor_type->mutable_shape();
    shape->add_dim()->set_dim_param("batch_size");
    for (const int64_t size : trailing_dims) {
        shape->add_dim()->set_dim_value(size);
    }
}

// Adds the BatchNorm-folded weight and bias of conv block `block` ("layer1", "layer2") as
// initializers named like the PyTorch parameters; returns their names.
std::pair<std::string, std::string> add_folded_conv(onnx::GraphProto& graph,
                                                    const StateDict& weights,
                                                    const std::string& block) {
    const HostTensor& conv_weight = require(weights, block + ".0.weight");
    std::vector<float> weight = conv_weight.values;
    std::vector<float> bias = require(weights, block + ".0.bias").values;
    fold_batch_norm(weight, bias, require(weights, block + ".1.weight").values,
                    require(weights, block + ".1.bias").values,
                    require(weights, block + ".1.running_mean").values,
                    require(weights, block + ".1.running_var").values, kBatchNormEpsilon);

    const std::string weight_name = block + ".0.weight";
    const std::string bias_name = block + ".0.bias";
    *graph.add_initializer() = make_float_tensor(weight_name, conv_weight.shape, weight);
    *graph.add_initializer() =
        make_float_tensor(bias_name, {static_cast<int64_t>(bias.size())}, bias);
    return {weight_name, bias_name};
}

std::string add_conv_block(onnx::GraphProto& graph, const StateDict& weights,
                           const std::string& block, const std::string& input, int64_t padding) {
    const auto [weight_name, bias_name] = add_folded_conv(graph, weights, block);
    const std::string prefix = "/" + block;
    std::string x = add_node(
        graph, "Conv", prefix + "/Conv", {input, weight_name, bias_name}, prefix + "/Conv_output_0",
        {make_ints_attribute("dilations", {1, 1}), make_int_attribute("group", 1),
         make_ints_attribute("kernel_shape", {3, 3}),
         make_ints_attribute("pads", {padding, padding, padding, padding}),
         make_ints_attribute("strides", {1, 1})});
    x = add_node(graph, "Relu", prefix + "/Relu", {x}, prefix + "/Relu_output_0");
    return add_node(
        graph, "MaxPool", prefix + "/MaxPool", {x}, prefix + "/MaxPool_output_0",
        {make_ints_attribute("kernel_shape", {2, 2}), make_ints_attribute("pads", {0, 0, 0, 0}),
         make_ints_attribute("strides", {2, 2})});
}

std::string add_linear(onnx::GraphProto& graph, const StateDict& weights, const std::string& layer,
                       const std::string& input, const std::string& output) {
    const HostTensor& weight = require(weights, layer + ".weight");
    const HostTensor& bias = require(weights, layer + ".bias");
    *graph.add_initializer() = make_float_tensor(layer + ".weight", weight.shape, weight.values);
    *graph.add_initializer() = make_float_tensor(layer + ".bias", bias.shape, bias.values);
    // torch.nn.Linear stores the weight as [out, in], so y = x W^T + b is Gemm with transB = 1.
    return add_node(graph, "Gemm", "/" + layer + "/Gemm",
                    {input, layer + ".weight", layer + ".bias"}, output,
                    {make_float_attribute("alpha", 1.0f), make_float_attribute("beta", 1.0f),
                     make_int_attribute("transB", 1)});
}

}  // namespace

void fold_batch_norm(std::vector<float>& weight, std::vector<float>& bias,
                     const std::vector<float>& gamma, const std::vector<float>& beta,
                     const std::vector<float>& mean, const std::vector<float>& variance,
                     float epsilon) {
    const size_t channels = bias.size();
    const size_t per_channel = weight.size() / channels;
    for (size_t o = 0; o < channels; ++o) {
        const double scale = double{gamma[o]} / std::sqrt(double{variance[o]} + double{epsilon});
        for (size_t i = 0; i < per_channel; ++i) {
            float& w = weight[o * per_channel + i];
            w = static_cast<float>(double{w} * scale);
        }
        bias[o] = static_cast<float>((double{bias[o]} - double{mean[o]}) * scale + double{beta[o]});
    }
}

onnx::ModelProto export_fashion_cnn(const StateDict& weights) {
    onnx::ModelProto model;
    model.set_ir_version(kExportIrVersion);
    model.set_producer_name("edgeq");
    model.set_producer_version("0.1.0");
    model.set_model_version(1);
    model.set_doc_string("FashionCNN for Fashion-MNIST, BatchNormalization folded into Conv");
    onnx::OperatorSetIdProto* opset = model.add_opset_import();
    opset->set_domain("");
    opset->set_version(kExportOpset);

    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("FashionCNN");
    add_float_io(graph.mutable_input(), "input", {1, 28, 28});
    add_float_io(graph.mutable_output(), "output", {10});

    std::string x = add_conv_block(graph, weights, "layer1", "input", 1);
    x = add_conv_block(graph, weights, "layer2", x, 0);

    *graph.add_initializer() = make_int64_tensor("flatten_shape", {2}, {-1, 64 * 6 * 6});
    x = add_node(graph, "Reshape", "/Reshape", {x, "flatten_shape"}, "/Reshape_output_0");

    x = add_linear(graph, weights, "fc1", x, "/fc1/Gemm_output_0");
    x = add_linear(graph, weights, "fc2", x, "/fc2/Gemm_output_0");
    add_linear(graph, weights, "fc3", x, "output");
    return model;
}

}  // namespace edgeq
