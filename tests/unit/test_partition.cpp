// NPU placement of QDQ models (the model of the Vitis AI EP's partitioner) and target files: the
// FashionCNN XINT8 placement the EP reported, an operator the target lacks, the two-convolution
// rule, 16-bit models, the vitisai_ep_report.json sections and target file errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/npu/partition.h"
#include "edgeq/npu/target.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq::npu {
namespace {

// What the real Vitis AI EP reported for FashionCNN XINT8 on a Strix NPU (vitisai_ep_report.json):
// 38 nodes, the first QuantizeLinear and the last DequantizeLinear on the CPU, the rest on the
// NPU in one subgraph.
constexpr int kFashionCnnNodes = 38;
constexpr int kFashionCnnCpuNodes = 2;
constexpr int kFashionCnnNpuNodes = 36;

// Images for calibration. The placement does not depend on the scales, so a few suffice.
constexpr int64_t kCalibrationImages = 16;

onnx::ModelProto quantize(const onnx::ModelProto& float_model, const QuantizeOptions& options) {
    const LabelledImages images = test::make_synthetic_images(kCalibrationImages, 5);
    LabelledImagesReader reader(images, kCalibrationImages);
    return quantize_to_qdq(float_model, reader, options, SessionConfig{}, "test model").model;
}

onnx::ModelProto make_float_fashion_cnn() {
    FashionCnn model = test::make_random_fashion_cnn(7);
    return export_fashion_cnn(export_state_dict(model));
}

onnx::ModelProto make_qdq_fashion_cnn(const QuantizeOptions& options = {}) {
    return quantize(make_float_fashion_cnn(), options);
}

// Inserts a float Sigmoid after the first MaxPool of FashionCNN: an operator the Strix target
// lacks, between the two convolution blocks.
onnx::ModelProto insert_sigmoid_after_first_max_pool(const onnx::ModelProto& float_model) {
    onnx::ModelProto model = float_model;
    onnx::GraphProto& graph = *model.mutable_graph();
    std::vector<onnx::NodeProto> nodes(graph.node().begin(), graph.node().end());
    const auto max_pool = std::ranges::find_if(
        nodes, [](const onnx::NodeProto& node) { return node.op_type() == "MaxPool"; });
    EXPECT_NE(max_pool, nodes.end());
    const std::string pooled = max_pool->output(0);
    const std::string activated = pooled + "_sigmoid";
    for (onnx::NodeProto& node : nodes) {
        for (std::string& input : *node.mutable_input()) {
            if (input == pooled) {
                input = activated;
            }
        }
    }
    onnx::NodeProto sigmoid;
    sigmoid.set_op_type("Sigmoid");
    sigmoid.set_name("/extra/Sigmoid");
    sigmoid.add_input(pooled);
    sigmoid.add_output(activated);
    nodes.insert(max_pool + 1, sigmoid);

    graph.clear_node();
    for (const onnx::NodeProto& node : nodes) {
        *graph.add_node() = node;
    }
    return model;
}

// input [batch, 1, 28, 28] -> Conv 3x3 (4 channels, same padding) -> Relu -> Reshape -> Gemm (10)
// -> output: a network with a single convolution layer.
onnx::ModelProto make_one_conv_model() {
    constexpr int64_t kChannels = 4;
    constexpr int64_t kSide = 28;
    constexpr int64_t kFeatures = kChannels * kSide * kSide;
    constexpr int64_t kClasses = 10;
    std::mt19937_64 generator(3);
    auto random_values = [&](int64_t count) {
        std::vector<float> values(count);
        for (float& value : values) {
            // Uniform in [-0.5, 0.5) from the raw 64-bit output, which the standard fixes.
            value = static_cast<float>(static_cast<double>(generator() >> 11) / 9007199254740992.0 -
                                       0.5);
        }
        return values;
    };

    onnx::ModelProto model;
    model.set_ir_version(kExportIrVersion);
    onnx::OperatorSetIdProto* opset = model.add_opset_import();
    opset->set_domain("");
    opset->set_version(kExportOpset);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("OneConv");

    auto add_io = [](onnx::ValueInfoProto* info, const std::string& name,
                     const std::vector<int64_t>& trailing_dims) {
        info->set_name(name);
        onnx::TypeProto_Tensor* tensor_type = info->mutable_type()->mutable_tensor_type();
        tensor_type->set_elem_type(onnx::TensorProto::FLOAT);
        onnx::TensorShapeProto* shape = tensor_type->mutable_shape();
        shape->add_dim()->set_dim_param("batch_size");
        for (int64_t dim : trailing_dims) {
            shape->add_dim()->set_dim_value(dim);
        }
    };
    add_io(graph.add_input(), "input", {1, kSide, kSide});
    add_io(graph.add_output(), "output", {kClasses});

    *graph.add_initializer() =
        make_float_tensor("conv.weight", {kChannels, 1, 3, 3}, random_values(kChannels * 9));
    *graph.add_initializer() =
        make_float_tensor("conv.bias", {kChannels}, random_values(kChannels));
    *graph.add_initializer() = make_int64_tensor("flatten_shape", {2}, {-1, kFeatures});
    *graph.add_initializer() =
        make_float_tensor("fc.weight", {kClasses, kFeatures}, random_values(kClasses * kFeatures));
    *graph.add_initializer() = make_float_tensor("fc.bias", {kClasses}, random_values(kClasses));

    auto add_node = [&](const std::string& op_type, const std::vector<std::string>& inputs,
                        const std::string& output) -> onnx::NodeProto& {
        onnx::NodeProto& node = *graph.add_node();
        node.set_op_type(op_type);
        node.set_name("/" + op_type);
        for (const std::string& input : inputs) {
            node.add_input(input);
        }
        node.add_output(output);
        return node;
    };
    onnx::NodeProto& conv = add_node("Conv", {"input", "conv.weight", "conv.bias"}, "conv_out");
    *conv.add_attribute() = make_ints_attribute("kernel_shape", {3, 3});
    *conv.add_attribute() = make_ints_attribute("pads", {1, 1, 1, 1});
    add_node("Relu", {"conv_out"}, "relu_out");
    add_node("Reshape", {"relu_out", "flatten_shape"}, "flat");
    onnx::NodeProto& gemm = add_node("Gemm", {"flat", "fc.weight", "fc.bias"}, "output");
    *gemm.add_attribute() = make_int_attribute("transB", 1);
    return model;
}

const onnx::NodeProto* find_node(const onnx::ModelProto& model,
                                 const std::function<bool(const onnx::NodeProto&)>& match) {
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (match(node)) {
            return &node;
        }
    }
    return nullptr;
}

const NodePlacement& placement_of(const PartitionReport& report, const std::string& node_name) {
    for (const NodePlacement& node : report.nodes) {
        if (node.node_name == node_name) {
            return node;
        }
    }
    ADD_FAILURE() << "no node named " << node_name;
    static const NodePlacement kMissing;
    return kMissing;
}

std::set<std::string> op_types_on(const PartitionReport& report, const std::string& device) {
    std::set<std::string> op_types;
    for (const NodePlacement& node : report.nodes) {
        if (node.device == device) {
            op_types.insert(node.op_type);
        }
    }
    return op_types;
}

// Runs `action` and returns the message of the edgeq::Error it throws, or "" when it does not.
std::string error_message(const std::function<void()>& action, ExitCode expected_code) {
    try {
        action();
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), expected_code) << error.what();
        return error.what();
    }
    ADD_FAILURE() << "no Error thrown";
    return "";
}

// ---------------------------------------------------------------------------------------------
// Placement

TEST(NpuPartition, FashionCnnXint8MatchesEpReport) {
    const onnx::ModelProto model = make_qdq_fashion_cnn();
    ASSERT_EQ(model.graph().node_size(), kFashionCnnNodes);
    const PartitionReport report = partition_model(model, builtin_target());

    EXPECT_EQ(report.node_count(), kFashionCnnNodes);
    EXPECT_EQ(report.cpu_nodes, kFashionCnnCpuNodes);
    EXPECT_EQ(report.npu_nodes, kFashionCnnNpuNodes);
    EXPECT_EQ(report.npu_subgraphs, 1);
    EXPECT_EQ(report.cpu_subgraphs, 2) << "the two CPU nodes are not connected";
    EXPECT_TRUE(report.model_rule.empty()) << report.model_rule;

    const std::set<std::string> expected_npu_ops = {
        "Conv", "DequantizeLinear", "Gemm", "MaxPool", "QuantizeLinear", "Relu", "Reshape"};
    EXPECT_EQ(op_types_on(report, "NPU"), expected_npu_ops);

    // The CPU converts the float input to int8 and the int8 logits back to float.
    const std::string& input = model.graph().input(0).name();
    const std::string& output = model.graph().output(0).name();
    const onnx::NodeProto* first_quantize = find_node(model, [&](const onnx::NodeProto& node) {
        return node.op_type() == "QuantizeLinear" && node.input(0) == input;
    });
    const onnx::NodeProto* last_dequantize = find_node(model, [&](const onnx::NodeProto& node) {
        return node.op_type() == "DequantizeLinear" && node.output(0) == output;
    });
    ASSERT_NE(first_quantize, nullptr);
    ASSERT_NE(last_dequantize, nullptr);
    const NodePlacement& quantize_placement = placement_of(report, first_quantize->name());
    const NodePlacement& dequantize_placement = placement_of(report, last_dequantize->name());
    EXPECT_EQ(quantize_placement.device, kCpuDevice);
    EXPECT_NE(quantize_placement.reason.find("graph input"), std::string::npos)
        << quantize_placement.reason;
    EXPECT_EQ(dequantize_placement.device, kCpuDevice);
    EXPECT_NE(dequantize_placement.reason.find("graph output"), std::string::npos)
        << dequantize_placement.reason;

    for (const NodePlacement& node : report.nodes) {
        EXPECT_EQ(node.reason.empty(), node.device == "NPU") << node.node_name;
    }
}

TEST(NpuPartition, SummaryLineAndCounts) {
    const PartitionReport report = partition_model(make_qdq_fashion_cnn(), builtin_target());
    EXPECT_EQ(partition_summary_line(report),
              "[Vitis AI EP model] operators: 38, on CPU: 2, on NPU: 36 (94.7%)");
    const nlohmann::ordered_json counts = partition_counts_json(report);
    EXPECT_EQ(counts.dump(), R"({"all":38,"CPU":2,"NPU":36})");
    EXPECT_EQ(cpu_placement_lines(report).size(), 2u);
}

TEST(NpuPartition, Int32BiasStillPlaced) {
    QuantizeOptions options;
    options.bias = BiasMode::kInt32;
    const PartitionReport report = partition_model(make_qdq_fashion_cnn(options), builtin_target());
    EXPECT_EQ(report.npu_nodes, kFashionCnnNpuNodes);
    EXPECT_EQ(report.cpu_nodes, kFashionCnnCpuNodes);
}

TEST(NpuPartition, UnsupportedOpSplitsNpu) {
    const onnx::ModelProto float_model =
        insert_sigmoid_after_first_max_pool(make_float_fashion_cnn());
    const onnx::ModelProto model = quantize(float_model, {});
    const PartitionReport report = partition_model(model, builtin_target());

    const NodePlacement& sigmoid = placement_of(report, "/extra/Sigmoid");
    EXPECT_EQ(sigmoid.device, kCpuDevice);
    EXPECT_NE(sigmoid.reason.find("Sigmoid"), std::string::npos) << sigmoid.reason;

    // The DequantizeLinear in front of the Sigmoid and the QuantizeLinear after it follow it to
    // the CPU. The QuantizeLinear before and the DequantizeLinear after stay on the NPU.
    const onnx::NodeProto* sigmoid_node = find_node(
        model, [](const onnx::NodeProto& node) { return node.name() == "/extra/Sigmoid"; });
    ASSERT_NE(sigmoid_node, nullptr);
    const onnx::NodeProto* dequantize_in = find_node(model, [&](const onnx::NodeProto& node) {
        return node.op_type() == "DequantizeLinear" && node.output(0) == sigmoid_node->input(0);
    });
    const onnx::NodeProto* quantize_out = find_node(model, [&](const onnx::NodeProto& node) {
        return node.op_type() == "QuantizeLinear" && node.input(0) == sigmoid_node->output(0);
    });
    ASSERT_NE(dequantize_in, nullptr);
    ASSERT_NE(quantize_out, nullptr);
    EXPECT_EQ(placement_of(report, dequantize_in->name()).device, kCpuDevice);
    EXPECT_EQ(placement_of(report, quantize_out->name()).device, kCpuDevice);
    const onnx::NodeProto* quantize_in = find_node(model, [&](const onnx::NodeProto& node) {
        return node.op_type() == "QuantizeLinear" && node.output(0) == dequantize_in->input(0);
    });
    ASSERT_NE(quantize_in, nullptr);
    EXPECT_EQ(placement_of(report, quantize_in->name()).device, "NPU");
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (node.op_type() == "DequantizeLinear" && node.input(0) == quantize_out->output(0)) {
            EXPECT_EQ(placement_of(report, node.name()).device, "NPU") << node.name();
        }
    }

    // Every float operator but the Sigmoid stays on the NPU, which now contains two subgraphs.
    for (const NodePlacement& node : report.nodes) {
        if (node.op_type != "QuantizeLinear" && node.op_type != "DequantizeLinear" &&
            node.op_type != "Sigmoid") {
            EXPECT_EQ(node.device, "NPU") << node.node_name << ": " << node.reason;
        }
    }
    const std::string cpu_lines = fmt::format("{}", fmt::join(cpu_placement_lines(report), "\n"));
    EXPECT_EQ(report.npu_subgraphs, 2) << cpu_lines;
    EXPECT_EQ(report.cpu_nodes, 5) << "input Q, DQ + Sigmoid + Q, output DQ:\n" << cpu_lines;
    EXPECT_EQ(report.cpu_subgraphs, 3);
}

TEST(NpuPartition, OneConvModelStaysOnCpu) {
    const onnx::ModelProto model = quantize(make_one_conv_model(), {});
    const TargetDescription target = builtin_target();
    ASSERT_EQ(target.min_conv_layers, 2);
    const PartitionReport report = partition_model(model, target);

    EXPECT_EQ(report.npu_nodes, 0);
    EXPECT_EQ(report.cpu_nodes, model.graph().node_size());
    EXPECT_EQ(report.npu_subgraphs, 0);
    EXPECT_NE(report.model_rule.find("at least 2 convolution layers"), std::string::npos)
        << report.model_rule;
    EXPECT_EQ(placement_of(report, "/Conv").reason, report.model_rule);
    EXPECT_EQ(placement_of(report, "/Gemm").reason, report.model_rule);
    EXPECT_NE(partition_summary_line(report).find("on NPU: 0 (0.0%)"), std::string::npos);

    // The same model without the rule goes to the NPU: the rule alone moved it.
    TargetDescription without_rule = target;
    without_rule.min_conv_layers = 0;
    const PartitionReport placed = partition_model(model, without_rule);
    EXPECT_EQ(placement_of(placed, "/Conv").device, "NPU");
    EXPECT_EQ(placed.cpu_nodes, 2);
    EXPECT_TRUE(placed.model_rule.empty());
}

TEST(NpuPartition, Int16ModelGoesToCpu) {
    QuantizeOptions options;
    options.preset = Preset::kA16W8;
    const PartitionReport report = partition_model(make_qdq_fashion_cnn(options), builtin_target());
    const NodePlacement* conv = nullptr;
    for (const NodePlacement& node : report.nodes) {
        if (node.op_type == "Conv" && conv == nullptr) {
            conv = &node;
        }
    }
    ASSERT_NE(conv, nullptr);
    EXPECT_EQ(conv->device, kCpuDevice);
    EXPECT_EQ(report.npu_nodes, 0) << "no float operator reads an 8-bit tensor";
}

TEST(NpuPartition, FloatModelGoesToCpu) {
    const onnx::ModelProto model = make_float_fashion_cnn();
    const PartitionReport report = partition_model(model, builtin_target());
    EXPECT_EQ(report.npu_nodes, 0);
    const NodePlacement& conv = placement_of(report, model.graph().node(0).name());
    EXPECT_NE(conv.reason.find("without a DequantizeLinear"), std::string::npos) << conv.reason;
}

// x -> Q -> DQ -> Q -> DQ -> Sigmoid -> y: the middle DequantizeLinear and QuantizeLinear (a
// requantization) have no CPU neighbour that would move them, but compute nothing on the NPU.
onnx::ModelProto make_requantize_chain_model() {
    onnx::ModelProto model;
    model.set_ir_version(kExportIrVersion);
    onnx::OperatorSetIdProto* opset = model.add_opset_import();
    opset->set_domain("");
    opset->set_version(kExportOpset);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("RequantizeChain");
    graph.add_input()->set_name("x");
    graph.add_output()->set_name("y");
    for (onnx::ValueInfoProto* info : {graph.mutable_input(0), graph.mutable_output(0)}) {
        onnx::TypeProto_Tensor* tensor_type = info->mutable_type()->mutable_tensor_type();
        tensor_type->set_elem_type(onnx::TensorProto::FLOAT);
        tensor_type->mutable_shape()->add_dim()->set_dim_value(4);
    }
    *graph.add_initializer() = make_float_tensor("scale", {}, {0.5f});
    onnx::TensorProto zero_point;
    zero_point.set_name("zero_point");
    zero_point.set_data_type(onnx::TensorProto::UINT8);
    zero_point.set_raw_data(std::string(1, static_cast<char>(128)));
    *graph.add_initializer() = zero_point;

    const std::vector<std::vector<std::string>> nodes = {
        {"QuantizeLinear", "q1", "x", "x_q"},
        {"DequantizeLinear", "dq1", "x_q", "x_dq"},
        {"QuantizeLinear", "q2", "x_dq", "x_q2"},
        {"DequantizeLinear", "dq2", "x_q2", "x_dq2"},
    };
    for (const std::vector<std::string>& fields : nodes) {
        onnx::NodeProto& node = *graph.add_node();
        node.set_op_type(fields[0]);
        node.set_name(fields[1]);
        node.add_input(fields[2]);
        node.add_input("scale");
        node.add_input("zero_point");
        node.add_output(fields[3]);
    }
    onnx::NodeProto& sigmoid = *graph.add_node();
    sigmoid.set_op_type("Sigmoid");
    sigmoid.set_name("sigmoid");
    sigmoid.add_input("x_dq2");
    sigmoid.add_output("y");
    return model;
}

TEST(NpuPartition, QuantizationOnlySubgraphToCpu) {
    const onnx::ModelProto model = make_requantize_chain_model();
    check_onnx_model(model, "requantize chain");
    TargetDescription target = builtin_target();
    target.min_conv_layers = 0;
    const PartitionReport report = partition_model(model, target);

    EXPECT_EQ(report.npu_nodes, 0);
    EXPECT_EQ(report.npu_subgraphs, 0);
    EXPECT_EQ(report.cpu_subgraphs, 1);
    for (const std::string& name : {std::string("dq1"), std::string("q2")}) {
        const NodePlacement& node = placement_of(report, name);
        EXPECT_EQ(node.device, kCpuDevice) << name;
        EXPECT_NE(node.reason.find("only QuantizeLinear and DequantizeLinear"), std::string::npos)
            << name << ": " << node.reason;
    }
}

// ---------------------------------------------------------------------------------------------
// vitisai_ep_report.json

TEST(NpuEpReport, SectionsConsistent) {
    const onnx::ModelProto model = make_qdq_fashion_cnn();
    const PartitionReport report = partition_model(model, builtin_target());
    const nlohmann::ordered_json document = vitisai_ep_report_json(model, report);

    ASSERT_TRUE(document.contains("deviceStat"));
    ASSERT_TRUE(document.contains("nodeStat"));
    ASSERT_TRUE(document.contains("shapeInfo"));
    ASSERT_TRUE(document.contains("subgraphStat"));

    const auto& devices = document["deviceStat"];
    ASSERT_EQ(devices.size(), 3u);
    EXPECT_EQ(devices[0]["name"], "all");
    EXPECT_EQ(devices[0]["nodeNum"], kFashionCnnNodes);
    EXPECT_EQ(devices[1]["name"], "CPU");
    EXPECT_EQ(devices[2]["name"], "NPU");
    EXPECT_EQ(devices[1]["nodeNum"].get<int>() + devices[2]["nodeNum"].get<int>(),
              devices[0]["nodeNum"].get<int>());
    const std::vector<std::string> npu_ops = devices[2]["supportedOpType"];
    const std::vector<std::string> expected_npu_ops = {"::Conv",    "::DequantizeLinear", "::Gemm",
                                                       "::MaxPool", "::QuantizeLinear",   "::Relu",
                                                       "::Reshape"};
    EXPECT_EQ(npu_ops, expected_npu_ops);
    const std::vector<std::string> cpu_ops = devices[1]["supportedOpType"];
    EXPECT_EQ(cpu_ops, (std::vector<std::string>{"::DequantizeLinear", "::QuantizeLinear"}));

    const auto& nodes = document["nodeStat"];
    ASSERT_EQ(static_cast<int>(nodes.size()), model.graph().node_size());
    for (int n = 0; n < model.graph().node_size(); ++n) {
        const onnx::NodeProto& node = model.graph().node(n);
        EXPECT_EQ(nodes[n]["opType"], node.op_type());
        EXPECT_EQ(nodes[n]["opDomain"], node.domain());
        EXPECT_EQ(nodes[n]["output"][0], node.output(0));
        EXPECT_EQ(nodes[n]["input"].size(), static_cast<size_t>(node.input_size()));
        EXPECT_EQ(nodes[n]["device"], report.nodes[n].device);
        const std::string comment = nodes[n]["comment"];
        EXPECT_NE(comment.find(node.op_type()), std::string::npos) << comment;
        EXPECT_EQ(comment.find('\n'), std::string::npos) << comment;
    }

    // Every tensor a node mentions has a shape entry. The batch dimension is symbolic (-1) and
    // scales are scalars.
    std::map<std::string, nlohmann::ordered_json> shapes;
    for (const auto& entry : document["shapeInfo"]) {
        shapes[entry["name"]] = entry;
    }
    for (const onnx::NodeProto& node : model.graph().node()) {
        for (const std::string& tensor : node.input()) {
            EXPECT_TRUE(shapes.contains(tensor)) << tensor;
        }
        EXPECT_TRUE(shapes.contains(node.output(0))) << node.output(0);
    }
    EXPECT_EQ(shapes.at("input")["shape"].get<std::vector<int64_t>>(),
              (std::vector<int64_t>{-1, 1, 28, 28}));
    EXPECT_EQ(shapes.at("output")["shape"].get<std::vector<int64_t>>(),
              (std::vector<int64_t>{-1, 10}));
    EXPECT_EQ(shapes.at("input_scale")["isScalar"], true);

    const auto& subgraphs = document["subgraphStat"];
    ASSERT_EQ(subgraphs.size(), 2u);
    EXPECT_EQ(subgraphs[0]["name"], "CPU");
    EXPECT_EQ(subgraphs[0]["subgraphNum"], 2);
    EXPECT_EQ(subgraphs[1]["name"], "NPU");
    EXPECT_EQ(subgraphs[1]["subgraphNum"], 1);
}

TEST(NpuEpReport, WritesSameJson) {
    const onnx::ModelProto model = make_qdq_fashion_cnn();
    const PartitionReport report = partition_model(model, builtin_target());
    test::ScratchFolder folder("partition-report");
    const std::filesystem::path path = folder / "vitisai_ep_report.json";
    write_vitisai_ep_report(path, model, report);
    const nlohmann::ordered_json written = nlohmann::ordered_json::parse(read_file(path));
    EXPECT_EQ(written, vitisai_ep_report_json(model, report));
}

// ---------------------------------------------------------------------------------------------
// Target files

TEST(NpuTarget, BuiltinHasOperatorTable) {
    const TargetDescription target = builtin_target("strix-xint8");
    EXPECT_EQ(target.name, "strix-xint8");
    EXPECT_EQ(target.device, "NPU");
    EXPECT_EQ(target.min_conv_layers, 2);
    // The Ryzen AI operator table for XINT8 CNNs.
    const std::vector<std::string> table = {"Add",
                                            "AveragePool",
                                            "BatchNormalization",
                                            "Clip",
                                            "Concat",
                                            "Conv",
                                            "DepthToSpace",
                                            "Div",
                                            "Flatten",
                                            "Gemm",
                                            "GlobalAveragePool",
                                            "GlobalMaxPool",
                                            "HardSwish",
                                            "LeakyRelu",
                                            "MatMul",
                                            "Max",
                                            "Min",
                                            "MaxPool",
                                            "Mul",
                                            "Pad",
                                            "Relu",
                                            "Reshape",
                                            "Resize",
                                            "Slice",
                                            "Softmax",
                                            "Sub",
                                            "Tanh",
                                            "Transpose",
                                            "Squeeze",
                                            "Unsqueeze",
                                            "QuantizeLinear",
                                            "DequantizeLinear"};
    for (const std::string& op_type : table) {
        EXPECT_NE(target.find_op(op_type), nullptr) << op_type;
    }
    EXPECT_EQ(target.ops.size(), table.size());
    EXPECT_EQ(target.find_op("Sigmoid"), nullptr);
}

TEST(NpuTarget, SourceFileLoadsLikeBuiltin) {
    const std::filesystem::path path =
        test::source_dir() / "src" / "edgeq" / "npu" / "targets" / "strix-xint8.json";
    const TargetDescription loaded = load_target(path);
    const TargetDescription builtin = builtin_target();
    EXPECT_EQ(loaded.name, builtin.name);
    EXPECT_EQ(loaded.ops.size(), builtin.ops.size());
    EXPECT_EQ(loaded.quantized_types, builtin.quantized_types);
    EXPECT_EQ(loaded.bias_types, builtin.bias_types);
}

TEST(NpuTarget, UnknownBuiltinListsNames) {
    const std::string message = error_message([] { builtin_target("phoenix"); }, ExitCode::kUsage);
    EXPECT_NE(message.find("strix-xint8"), std::string::npos) << message;
}

class NpuTargetFile : public ::testing::Test {
  protected:
    test::ScratchFolder folder_{"partition-target"};

    // Writes `text` to a target file and returns the message load_target throws for it.
    std::string load_error(const std::string& text) {
        const std::filesystem::path path = folder_ / "target.json";
        write_file_atomic(path, text);
        const std::string message =
            error_message([&] { load_target(path); }, ExitCode::kInvalidInput);
        EXPECT_NE(message.find(path.string()), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        return message;
    }
};

constexpr const char* kMinimalTarget = R"({
  "name": "tiny", "device": "NPU", "quantized_types": ["int8"],
  "ops": {"Relu": {"quantized_inputs": [0]}}
})";

TEST_F(NpuTargetFile, MinimalLoads) {
    const std::filesystem::path path = folder_ / "target.json";
    write_file_atomic(path, kMinimalTarget);
    const TargetDescription target = load_target(path);
    EXPECT_EQ(target.name, "tiny");
    EXPECT_EQ(target.min_conv_layers, 0);
    EXPECT_EQ(target.bias_types, target.quantized_types);
    ASSERT_NE(target.find_op("Relu"), nullptr);
    EXPECT_EQ(target.find_op("Relu")->quantized_inputs, std::vector<int>{0});
}

TEST_F(NpuTargetFile, InvalidJsonGivesLine) {
    const std::string message = load_error("{\n  \"name\": \"tiny\",\n  \"device\" \"NPU\"\n}");
    EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;
    EXPECT_NE(message.find("line 3"), std::string::npos) << message;
}

TEST_F(NpuTargetFile, MissingFieldNamed) {
    const std::string message =
        load_error(R"({"name": "tiny", "device": "NPU", "quantized_types": ["int8"]})");
    EXPECT_NE(message.find("missing field 'ops'"), std::string::npos) << message;
}

TEST_F(NpuTargetFile, UnknownConditionNamed) {
    const std::string message = load_error(R"({
      "name": "tiny", "device": "NPU", "quantized_types": ["int8"],
      "ops": {"Conv": {"quantised_inputs": [0, 1]}}
    })");
    EXPECT_NE(message.find("unknown condition 'quantised_inputs'"), std::string::npos) << message;
    EXPECT_NE(message.find("'Conv'"), std::string::npos) << message;
}

TEST_F(NpuTargetFile, WrongTypesRejected) {
    const std::string count = load_error(R"({
      "name": "tiny", "device": "NPU", "quantized_types": ["int8"], "min_conv_layers": "two",
      "ops": {"Relu": {}}
    })");
    EXPECT_NE(count.find("'min_conv_layers' must be an integer"), std::string::npos) << count;

    const std::string type = load_error(R"({
      "name": "tiny", "device": "NPU", "quantized_types": ["int4"], "ops": {"Relu": {}}
    })");
    EXPECT_NE(type.find("unknown type 'int4'"), std::string::npos) << type;

    const std::string fused = load_error(R"({
      "name": "tiny", "device": "NPU", "quantized_types": ["int8"],
      "ops": {"Relu": {"fuses_after": ["Conv"]}}
    })");
    EXPECT_NE(fused.find("fuses after 'Conv'"), std::string::npos) << fused;

    const std::string field = load_error(R"({
      "name": "tiny", "device": "NPU", "quantized_types": ["int8"], "ops": {"Relu": {}},
      "min_conv_layer": 2
    })");
    EXPECT_NE(field.find("unknown field 'min_conv_layer'"), std::string::npos) << field;
}

TEST_F(NpuTargetFile, MissingFileIsIoError) {
    const std::filesystem::path path = folder_ / "absent.json";
    const std::string message = error_message([&] { load_target(path); }, ExitCode::kIo);
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
}

}  // namespace
}  // namespace edgeq::npu
