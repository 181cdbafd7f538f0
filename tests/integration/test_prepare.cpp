// Tests of prepare_for_quantization on three kinds of model, each of which must compute after
// preparation what it computed before:
// - small graphs built here, one rewrite or one rejection per test;
// - torchvision's resnet18 and mobilenet_v2 and a small x.view(x.size(0), -1) network, exported by
//   torch (tests/fixtures/export_zoo.py, skipped without python3-torchvision);
// - the pytorch-converted models of Debian's libonnx-testdata (skipped without the package).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/data/npy.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/onnx/prepare.h"
#include "edgeq/quant/qdq_summary.h"
#include "edgeq/runtime/ort_session.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

// A folded BatchNormalization computes (W * factor) * x instead of factor * (W * x), with the
// products rounded once in double. On these small graphs the prepared and the original model
// differ by 0.7e-7 to 1.6e-7 of the largest output (measured with ONNX Runtime 1.30.0). A
// tolerance of 1e-5 leaves room for other kernels summing in another order, while a wrong fold (a
// missing mean or epsilon, a wrong channel) is off by 1e-2 or more.
constexpr float kFoldRelativeTolerance = 1e-5f;

// torch and ONNX Runtime run the exported models (resnet18 and mobilenet_v2 have 20 and 52 Convs)
// with different convolution kernels, so float32 sums differ in their last bits at every layer.
// On the 8 images, the largest difference relative to the largest |output| measured 1.0e-6
// (resnet18), 6.5e-6 (mobilenet_v2, folded by torch or here) and 0.4e-6 (flatten_view) with torch
// 1.13.1 and ONNX Runtime 1.30.0. The tolerance is 15 times the largest, far below the 1e-2 that a
// wrongly folded layer gives.
constexpr float kZooRelativeTolerance = 1e-4f;

// The comparison of ONNX's own backend test runner for these models (onnx.backend.test.runner,
// numpy.testing.assert_allclose with rtol 1e-3 and atol 1e-7): |output - expected| must not exceed
// kTestDataAbsoluteTolerance + kTestDataRelativeTolerance * |expected|.
constexpr double kTestDataRelativeTolerance = 1e-3;
constexpr double kTestDataAbsoluteTolerance = 1e-7;

// Operators the quantizer handles, and the ones preparation removes or folds. A libonnx-testdata
// model is selected when it uses only these.
const std::set<std::string> kQuantizerOps = {"Conv",
                                             "Gemm",
                                             "MatMul",
                                             "Add",
                                             "Mul",
                                             "Concat",
                                             "Relu",
                                             "Clip",
                                             "LeakyRelu",
                                             "Sigmoid",
                                             "MaxPool",
                                             "AveragePool",
                                             "GlobalAveragePool",
                                             "Flatten",
                                             "Reshape",
                                             "Transpose",
                                             "Pad",
                                             "Softmax"};
const std::set<std::string> kPreparationRemovedOps = {"BatchNormalization", "Dropout", "Identity",
                                                      "Constant"};

const fs::path kTestDataFolder = "/usr/share/libonnx-testdata/data/pytorch-converted";

// ------------------------------------------------------------------------------------------------
// Helpers

struct Failure {
    ExitCode code = ExitCode::kSuccess;
    std::string message;
};

template <typename Action>
Failure expect_failure(Action action) {
    try {
        action();
    } catch (const Error& error) {
        return {error.code(), error.what()};
    }
    ADD_FAILURE() << "no edgeq::Error was thrown";
    return {};
}

Failure prepare_failure(const onnx::ModelProto& model, const std::string& label) {
    return expect_failure([&] { prepare_for_quantization(model, label); });
}

// Seeded values uniform in [low, high), from std::mt19937_64's specified output.
std::vector<float> random_values(size_t count, uint64_t seed, float low, float high) {
    std::mt19937_64 generator(seed);
    std::vector<float> values(count);
    for (float& value : values) {
        const double unit = static_cast<double>(generator() >> 11) * 0x1.0p-53;
        value = static_cast<float>(low + (high - low) * unit);
    }
    return values;
}

// A model assembled node by node with the builders of model_io.h.
class GraphBuilder {
  public:
    explicit GraphBuilder(int64_t opset = 13, int64_t ir_version = 7) {
        model_.set_ir_version(ir_version);
        model_.set_producer_name("edgeq-test");
        onnx::OperatorSetIdProto* import = model_.add_opset_import();
        import->set_domain("");
        import->set_version(opset);
        model_.mutable_graph()->set_name("test");
    }

    GraphBuilder& input(const std::string& name, const std::vector<int64_t>& shape,
                        int32_t type = onnx::TensorProto::FLOAT) {
        add_value(model_.mutable_graph()->add_input(), name, shape, type);
        return *this;
    }

    // A graph input with a symbolic first dimension `batch_name`.
    GraphBuilder& batched_input(const std::string& name, const std::string& batch_name,
                                const std::vector<int64_t>& shape) {
        onnx::ValueInfoProto* value = model_.mutable_graph()->add_input();
        add_value(value, name, shape, onnx::TensorProto::FLOAT);
        value->mutable_type()
            ->mutable_tensor_type()
            ->mutable_shape()
            ->mutable_dim(0)
            ->set_dim_param(batch_name);
        return *this;
    }

    // A graph output of unknown shape. ONNX's checker requires a shape, and only models that go
    // through the opset upgrade are checked before shape inference fills it in.
    GraphBuilder& output(const std::string& name, int32_t type = onnx::TensorProto::FLOAT) {
        onnx::ValueInfoProto* value = model_.mutable_graph()->add_output();
        value->set_name(name);
        value->mutable_type()->mutable_tensor_type()->set_elem_type(type);
        return *this;
    }

    GraphBuilder& output(const std::string& name, const std::vector<int64_t>& shape) {
        add_value(model_.mutable_graph()->add_output(), name, shape, onnx::TensorProto::FLOAT);
        return *this;
    }

    GraphBuilder& initializer(const onnx::TensorProto& tensor) {
        *model_.mutable_graph()->add_initializer() = tensor;
        return *this;
    }

    GraphBuilder& random_initializer(const std::string& name, const std::vector<int64_t>& shape,
                                     uint64_t seed, float low, float high) {
        int64_t count = 1;
        for (const int64_t size : shape) {
            count *= size;
        }
        return initializer(make_float_tensor(
            name, shape, random_values(static_cast<size_t>(count), seed, low, high)));
    }

    onnx::NodeProto& node(const std::string& op_type, const std::string& name,
                          const std::vector<std::string>& inputs,
                          const std::vector<std::string>& outputs) {
        onnx::NodeProto& node = *model_.mutable_graph()->add_node();
        node.set_op_type(op_type);
        node.set_name(name);
        for (const std::string& input : inputs) {
            node.add_input(input);
        }
        for (const std::string& output : outputs) {
            node.add_output(output);
        }
        return node;
    }

    const onnx::ModelProto& model() const { return model_; }

  private:
    static void add_value(onnx::ValueInfoProto* value, const std::string& name,
                          const std::vector<int64_t>& shape, int32_t type) {
        value->set_name(name);
        onnx::TypeProto::Tensor* tensor = value->mutable_type()->mutable_tensor_type();
        tensor->set_elem_type(type);
        for (const int64_t size : shape) {
            tensor->mutable_shape()->add_dim()->set_dim_value(size);
        }
    }

    onnx::ModelProto model_;
};

// BatchNormalization parameters [channels] with statistics far from the identity (mean 0,
// variance 1, scale 1, shift 0), so that a wrong fold shows.
void add_batch_norm_parameters(GraphBuilder& graph, const std::string& prefix, int64_t channels,
                               uint64_t seed) {
    graph.random_initializer(prefix + ".weight", {channels}, seed, 0.5f, 1.5f)
        .random_initializer(prefix + ".bias", {channels}, seed + 1, -0.5f, 0.5f)
        .random_initializer(prefix + ".running_mean", {channels}, seed + 2, -1.0f, 1.0f)
        .random_initializer(prefix + ".running_var", {channels}, seed + 3, 0.2f, 2.0f);
}

onnx::NodeProto& add_batch_norm(GraphBuilder& graph, const std::string& name,
                                const std::string& prefix, const std::string& input,
                                const std::string& output) {
    onnx::NodeProto& node = graph.node("BatchNormalization", name,
                                       {input, prefix + ".weight", prefix + ".bias",
                                        prefix + ".running_mean", prefix + ".running_var"},
                                       {output});
    *node.add_attribute() = make_float_attribute("epsilon", 1e-3f);
    return node;
}

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

std::vector<FloatOutput> run_model(const onnx::ModelProto& model, const std::string& label,
                                   const std::vector<float>& input,
                                   const std::vector<int64_t>& shape) {
    OrtModel session(serialize(model), label, SessionConfig{});
    return session.run(input, shape);
}

float max_abs(const std::vector<float>& values) {
    float result = 0;
    for (const float value : values) {
        result = std::max(result, std::abs(value));
    }
    return result;
}

// Largest |actual - expected| divided by the largest |expected|.
float max_relative_difference(const std::vector<float>& actual,
                              const std::vector<float>& expected) {
    EXPECT_EQ(actual.size(), expected.size());
    float difference = 0;
    for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
        difference = std::max(difference, std::abs(actual[i] - expected[i]));
    }
    return difference / std::max(max_abs(expected), 1e-30f);
}

// Runs the original and the prepared model on seeded inputs of `shape` and expects every output
// to agree within `tolerance` of the largest |original output|.
void expect_same_outputs(const onnx::ModelProto& original, const onnx::ModelProto& prepared,
                         const std::vector<int64_t>& shape, float tolerance) {
    int64_t count = 1;
    for (const int64_t size : shape) {
        count *= size;
    }
    const std::vector<float> input = random_values(static_cast<size_t>(count), 5, -2.0f, 2.0f);
    const std::vector<FloatOutput> expected = run_model(original, "original", input, shape);
    const std::vector<FloatOutput> actual = run_model(prepared, "prepared", input, shape);
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < actual.size(); ++i) {
        EXPECT_EQ(actual[i].shape, expected[i].shape) << "output " << i;
        EXPECT_LE(max_relative_difference(actual[i].values, expected[i].values), tolerance)
            << "output " << i;
    }
}

std::map<std::string, int> op_counts(const onnx::ModelProto& model) {
    return count_op_types(model);
}

bool has_initializer(const onnx::ModelProto& model, const std::string& name) {
    return std::any_of(model.graph().initializer().begin(), model.graph().initializer().end(),
                       [&](const onnx::TensorProto& tensor) { return tensor.name() == name; });
}

const onnx::NodeProto* find_node(const onnx::ModelProto& model, const std::string& name) {
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (node.name() == name) {
            return &node;
        }
    }
    return nullptr;
}

bool contains_line(const std::vector<std::string>& lines, const std::string& text) {
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& line) {
        return line.find(text) != std::string::npos;
    });
}

std::string joined(const std::vector<std::string>& lines) {
    return fmt::format("{}", fmt::join(lines, "\n"));
}

// x [1, 3, 8, 8] -> Conv 'conv1' (4 filters 3x3, pad 1, no bias) -> BatchNormalization 'bn1' -> y
GraphBuilder make_conv_batch_norm_graph() {
    GraphBuilder graph;
    graph.input("x", {1, 3, 8, 8}).output("y");
    graph.random_initializer("conv1.weight", {4, 3, 3, 3}, 1, -0.5f, 0.5f);
    add_batch_norm_parameters(graph, "bn1", 4, 10);
    onnx::NodeProto& conv = graph.node("Conv", "conv1", {"x", "conv1.weight"}, {"conv1_out"});
    *conv.add_attribute() = make_ints_attribute("pads", {1, 1, 1, 1});
    add_batch_norm(graph, "bn1", "bn1", "conv1_out", "y");
    return graph;
}

// ------------------------------------------------------------------------------------------------
// Rejected models

TEST(PrepareGraph, RejectsTwoInputs) {
    GraphBuilder graph;
    graph.input("a", {1, 4}).input("b", {1, 4}).output("y");
    graph.node("Add", "add", {"a", "b"}, {"y"});
    const Failure failure = prepare_failure(graph.model(), "two.onnx");
    EXPECT_EQ(failure.code, ExitCode::kUnsupported);
    EXPECT_NE(failure.message.find("two.onnx"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("'a', 'b'"), std::string::npos) << failure.message;
}

TEST(PrepareGraph, RejectsIntegerInput) {
    GraphBuilder graph;
    graph.input("tokens", {1, 4}, onnx::TensorProto::INT64).output("y");
    graph.node("Identity", "copy", {"tokens"}, {"y"});
    const Failure failure = prepare_failure(graph.model(), "tokens.onnx");
    EXPECT_EQ(failure.code, ExitCode::kUnsupported);
    EXPECT_NE(failure.message.find("tokens.onnx"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("INT64"), std::string::npos) << failure.message;
}

TEST(PrepareGraph, RejectsModelWithoutInput) {
    GraphBuilder graph;
    graph.input("w", {2}).output("y");
    graph.initializer(make_float_tensor("w", {2}, {1.0f, 2.0f}));
    graph.node("Relu", "relu", {"w"}, {"y"});
    const Failure failure = prepare_failure(graph.model(), "constant.onnx");
    EXPECT_EQ(failure.code, ExitCode::kUnsupported);
    EXPECT_NE(failure.message.find("constant.onnx"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("no graph input"), std::string::npos) << failure.message;
}

TEST(PrepareGraph, RejectsSubgraph) {
    GraphBuilder graph;
    graph.input("x", {1}).output("y");
    onnx::NodeProto& node = graph.node("If", "branch", {"x"}, {"y"});
    onnx::AttributeProto* branch = node.add_attribute();
    branch->set_name("then_branch");
    branch->set_type(onnx::AttributeProto::GRAPH);
    branch->mutable_g()->set_name("then");
    const Failure failure = prepare_failure(graph.model(), "branch.onnx");
    EXPECT_EQ(failure.code, ExitCode::kUnsupported);
    EXPECT_NE(failure.message.find("'branch'"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("branch.onnx"), std::string::npos) << failure.message;
}

TEST(PrepareGraph, RejectsOpsetTheConverterCannotUpgrade) {
    // Pad of opset 1 (attribute "paddings") has no adapter to opset 2 in ONNX 1.12.
    GraphBuilder graph(/*opset=*/1, /*ir_version=*/3);
    graph.input("x", {1, 2}).output("y", {1, 4});
    onnx::NodeProto& pad = graph.node("Pad", "pad", {"x"}, {"y"});
    *pad.add_attribute() = make_ints_attribute("paddings", {0, 1, 0, 1});
    const Failure failure = prepare_failure(graph.model(), "old_pad.onnx");
    EXPECT_EQ(failure.code, ExitCode::kUnsupported);
    EXPECT_NE(failure.message.find("old_pad.onnx"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("opset 1 "), std::string::npos) << failure.message;
    EXPECT_EQ(failure.message.find('\n'), std::string::npos) << failure.message;
}

TEST(PrepareGraph, RejectsInvalidOldModel) {
    // Scatter without its indices and updates: ONNX 1.12's converter crashes on it unchecked.
    GraphBuilder graph(/*opset=*/9, /*ir_version=*/4);
    graph.input("x", {2, 2}).output("y", {2, 2});
    graph.node("Scatter", "scatter", {"x"}, {"y"});
    const Failure failure = prepare_failure(graph.model(), "scatter.onnx");
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("scatter.onnx"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("checker"), std::string::npos) << failure.message;
}

TEST(PrepareGraph, RejectsShapeInferenceError) {
    GraphBuilder graph;
    graph.input("x", {1, 3, 4, 4}).output("y");
    graph.initializer(make_float_tensor("offsets", {5}, {1, 2, 3, 4, 5}));
    graph.node("Add", "add", {"x", "offsets"}, {"y"});
    const Failure failure = prepare_failure(graph.model(), "broadcast.onnx");
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("broadcast.onnx"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("shape inference"), std::string::npos) << failure.message;
    EXPECT_EQ(failure.message.find('\n'), std::string::npos) << failure.message;
}

// ------------------------------------------------------------------------------------------------
// Opset upgrade, Constant nodes, initializer inputs and node names

// An opset 9 graph with most operators of the quantizer's list, BatchNormalization, Dropout,
// Identity and Clip in their old attribute forms.
TEST(PrepareGraph, UpgradesOpsetNineModel) {
    GraphBuilder graph(/*opset=*/9, /*ir_version=*/4);
    graph.input("x", {2, 3, 8, 8}).output("y", {2, 5});
    graph.random_initializer("conv.weight", {4, 3, 3, 3}, 1, -0.5f, 0.5f)
        .random_initializer("conv.bias", {4}, 2, -0.1f, 0.1f)
        .random_initializer("scale", {1, 4, 1, 1}, 3, 0.5f, 1.5f)
        .random_initializer("fc.weight", {5, 8}, 4, -0.5f, 0.5f)
        .random_initializer("fc.bias", {5}, 5, -0.1f, 0.1f);
    add_batch_norm_parameters(graph, "bn", 4, 20);
    onnx::NodeProto& conv =
        graph.node("Conv", "conv", {"x", "conv.weight", "conv.bias"}, {"conv_out"});
    *conv.add_attribute() = make_ints_attribute("pads", {1, 1, 1, 1});
    add_batch_norm(graph, "bn", "bn", "conv_out", "bn_out");
    graph.node("Dropout", "drop", {"bn_out"}, {"drop_out"});
    onnx::NodeProto& clip = graph.node("Clip", "relu_clip", {"drop_out"}, {"clip_out"});
    *clip.add_attribute() = make_float_attribute("min", 0.0f);
    onnx::NodeProto& relu6 = graph.node("Clip", "relu6", {"clip_out"}, {"relu6_out"});
    *relu6.add_attribute() = make_float_attribute("min", 0.0f);
    *relu6.add_attribute() = make_float_attribute("max", 6.0f);
    graph.node("Mul", "mul", {"relu6_out", "scale"}, {"mul_out"});
    graph.node("Add", "add", {"mul_out", "clip_out"}, {"add_out"});
    onnx::NodeProto& leaky = graph.node("LeakyRelu", "leaky", {"add_out"}, {"leaky_out"});
    *leaky.add_attribute() = make_float_attribute("alpha", 0.1f);
    onnx::NodeProto& concat = graph.node("Concat", "concat", {"leaky_out", "mul_out"}, {"cat"});
    *concat.add_attribute() = make_int_attribute("axis", 1);
    graph.node("Identity", "copy", {"cat"}, {"cat_copy"});
    graph.node("GlobalAveragePool", "pool", {"cat_copy"}, {"pooled"});
    graph.node("Flatten", "flatten", {"pooled"}, {"flat"});
    onnx::NodeProto& gemm = graph.node("Gemm", "fc", {"flat", "fc.weight", "fc.bias"}, {"logits"});
    *gemm.add_attribute() = make_int_attribute("transB", 1);
    graph.node("Sigmoid", "sigmoid", {"logits"}, {"y"});

    const PreparedModel prepared = prepare_for_quantization(graph.model(), "opset9.onnx");
    check_onnx_model(prepared.model, "prepared opset9.onnx");
    EXPECT_EQ(prepared.model.opset_import(0).version(), 13);
    EXPECT_GE(prepared.model.ir_version(), 7);
    EXPECT_TRUE(contains_line(prepared.changes, "upgraded from opset 9"))
        << joined(prepared.changes);
    const std::map<std::string, int> counts = op_counts(prepared.model);
    EXPECT_FALSE(counts.contains("BatchNormalization"));
    EXPECT_FALSE(counts.contains("Dropout"));
    EXPECT_FALSE(counts.contains("Identity"));
    EXPECT_EQ(counts.at("Relu"), 1);
    EXPECT_EQ(counts.at("Clip"), 1);
    EXPECT_TRUE(prepared.warnings.empty()) << joined(prepared.warnings);
    expect_same_outputs(graph.model(), prepared.model, {2, 3, 8, 8}, kFoldRelativeTolerance);
}

TEST(PrepareGraph, TurnsConstantsIntoInitializers) {
    GraphBuilder graph;
    graph.input("x", {1, 2, 3, 4}).output("y");
    onnx::NodeProto& shape = graph.node("Constant", "shape_constant", {}, {"shape"});
    onnx::AttributeProto* value = shape.add_attribute();
    value->set_name("value");
    value->set_type(onnx::AttributeProto::TENSOR);
    *value->mutable_t() = make_int64_tensor("", {2}, {1, 24});
    *graph.node("Constant", "pads_constant", {}, {"pads"}).add_attribute() =
        make_ints_attribute("value_ints", {0, 1, 0, 2});
    *graph.node("Constant", "min_constant", {}, {"min"}).add_attribute() =
        make_float_attribute("value_float", -0.5f);
    *graph.node("Constant", "max_constant", {}, {"max"}).add_attribute() =
        make_float_attribute("value_float", 0.75f);
    graph.node("Reshape", "reshape", {"x", "shape"}, {"flat"});
    graph.node("Pad", "pad", {"flat", "pads"}, {"padded"});
    graph.node("Clip", "clip", {"padded", "min", "max"}, {"y"});

    const PreparedModel prepared = prepare_for_quantization(graph.model(), "constants.onnx");
    check_onnx_model(prepared.model, "prepared constants.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("Constant"));
    for (const std::string name : {"shape", "pads", "min", "max"}) {
        EXPECT_TRUE(has_initializer(prepared.model, name)) << name;
    }
    EXPECT_TRUE(contains_line(prepared.changes, "turned 4 Constant nodes into initializers"))
        << joined(prepared.changes);
    expect_same_outputs(graph.model(), prepared.model, {1, 2, 3, 4}, 0.0f);
}

TEST(PrepareGraph, KeepsConstantGraphOutput) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y").output("fixed");
    graph.node("Relu", "relu", {"x"}, {"y"});
    *graph.node("Constant", "fixed_constant", {}, {"fixed"}).add_attribute() =
        make_float_attribute("value_float", 2.0f);
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "fixed.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("Constant"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings, "'fixed_constant'")) << joined(prepared.warnings);
}

TEST(PrepareGraph, DropsInitializersFromInputs) {
    GraphBuilder graph(/*opset=*/10, /*ir_version=*/3);
    graph.input("x", {1, 2, 4, 4}).input("w", {3, 2, 1, 1}).output("y");
    graph.random_initializer("w", {3, 2, 1, 1}, 1, -1.0f, 1.0f);
    graph.node("Conv", "conv", {"x", "w"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "inputs.onnx");
    check_onnx_model(prepared.model, "prepared inputs.onnx");
    ASSERT_EQ(prepared.model.graph().input_size(), 1);
    EXPECT_EQ(prepared.model.graph().input(0).name(), "x");
    EXPECT_EQ(prepared.model.ir_version(), 4);
    EXPECT_TRUE(contains_line(prepared.changes, "removed 1 initializers from the graph inputs"))
        << joined(prepared.changes);
    EXPECT_TRUE(contains_line(prepared.changes, "raised the IR version from 3 to 4"))
        << joined(prepared.changes);
    expect_same_outputs(graph.model(), prepared.model, {1, 2, 4, 4}, 0.0f);
}

TEST(PrepareGraph, RaisesIrVersionForConstants) {
    // IR version 3 requires every initializer to be a graph input, and a Constant node becomes an
    // initializer that is not one.
    GraphBuilder graph(/*opset=*/10, /*ir_version=*/3);
    graph.input("x", {1, 4}).output("y");
    *graph.node("Constant", "offset_constant", {}, {"offset"}).add_attribute() =
        make_float_attribute("value_float", 0.5f);
    graph.node("Add", "add", {"x", "offset"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "ir3.onnx");
    check_onnx_model(prepared.model, "prepared ir3.onnx");
    EXPECT_EQ(prepared.model.ir_version(), 4);
    EXPECT_TRUE(has_initializer(prepared.model, "offset"));
    expect_same_outputs(graph.model(), prepared.model, {1, 4}, 0.0f);
}

TEST(PrepareGraph, NamesUnnamedNodes) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y");
    graph.node("Relu", "", {"x"}, {"a"});
    graph.node("Sigmoid", "Sigmoid_1", {"a"}, {"b"});
    graph.node("Sigmoid", "", {"b"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "names.onnx");
    std::set<std::string> names;
    for (const onnx::NodeProto& node : prepared.model.graph().node()) {
        EXPECT_FALSE(node.name().empty());
        names.insert(node.name());
    }
    EXPECT_EQ(names.size(), 3u);
    EXPECT_TRUE(names.contains("Relu_0"));
    EXPECT_TRUE(contains_line(prepared.changes, "named 2 unnamed nodes"))
        << joined(prepared.changes);
}

// ------------------------------------------------------------------------------------------------
// Identity and Dropout

TEST(PrepareGraph, RemovesIdentityBeforeConsumer) {
    GraphBuilder graph;
    graph.input("x", {1, 2, 4, 4}).output("y");
    graph.random_initializer("w", {3, 2, 1, 1}, 1, -1.0f, 1.0f);
    graph.node("Identity", "weight_copy", {"w"}, {"w_copy"});
    graph.node("Conv", "conv", {"x", "w_copy"}, {"conv_out"});
    graph.node("Identity", "copy", {"conv_out"}, {"copied"});
    graph.node("Relu", "relu", {"copied"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "identity.onnx");
    check_onnx_model(prepared.model, "prepared identity.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("Identity"));
    EXPECT_EQ(find_node(prepared.model, "conv")->input(1), "w");
    EXPECT_EQ(find_node(prepared.model, "relu")->input(0), "conv_out");
    EXPECT_TRUE(contains_line(prepared.changes, "removed 2 Identity nodes"))
        << joined(prepared.changes);
    expect_same_outputs(graph.model(), prepared.model, {1, 2, 4, 4}, 0.0f);
}

TEST(PrepareGraph, RemovesIdentityOnGraphOutput) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y");
    graph.node("Relu", "relu", {"x"}, {"relu_out"});
    graph.node("Sigmoid", "sigmoid", {"relu_out"}, {"sigmoid_out"});
    graph.node("Identity", "copy", {"relu_out"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "output.onnx");
    check_onnx_model(prepared.model, "prepared output.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("Identity"));
    // The Relu writes the graph output itself, and its other consumer follows the rename.
    EXPECT_EQ(find_node(prepared.model, "relu")->output(0), "y");
    EXPECT_EQ(find_node(prepared.model, "sigmoid")->input(0), "y");
    expect_same_outputs(graph.model(), prepared.model, {1, 4}, 0.0f);
}

TEST(PrepareGraph, KeepsIdentityFromInputToOutput) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y");
    graph.node("Identity", "copy", {"x"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "passthrough.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("Identity"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings, "Identity 'copy' stays"))
        << joined(prepared.warnings);
}

TEST(PrepareGraph, RemovesInferenceDropout) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y");
    graph.initializer(make_float_tensor("ratio", {}, {0.5f}));
    onnx::TensorProto training = make_int64_tensor("training", {}, {0});
    training.set_data_type(onnx::TensorProto::BOOL);
    training.set_raw_data(std::string(1, '\0'));
    graph.initializer(training);
    graph.node("Dropout", "drop", {"x", "ratio", "training"}, {"dropped", "mask"});
    graph.node("Relu", "relu", {"dropped"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "dropout.onnx");
    check_onnx_model(prepared.model, "prepared dropout.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("Dropout"));
    EXPECT_EQ(find_node(prepared.model, "relu")->input(0), "x");
    // The ratio and training_mode initializers go with the node.
    EXPECT_EQ(prepared.model.graph().initializer_size(), 0);
    expect_same_outputs(graph.model(), prepared.model, {1, 4}, 0.0f);
}

TEST(PrepareGraph, KeepsDropoutInTrainingMode) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y");
    graph.initializer(make_float_tensor("ratio", {}, {0.5f}));
    onnx::TensorProto training = make_int64_tensor("training", {}, {0});
    training.set_data_type(onnx::TensorProto::BOOL);
    training.set_raw_data(std::string(1, '\1'));
    graph.initializer(training);
    graph.node("Dropout", "drop", {"x", "ratio", "training"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "training.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("Dropout"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings, "training_mode")) << joined(prepared.warnings);
}

TEST(PrepareGraph, KeepsDropoutWithReadMask) {
    GraphBuilder graph;
    graph.input("x", {1, 4}).output("y").output("mask", onnx::TensorProto::BOOL);
    graph.node("Dropout", "drop", {"x"}, {"dropped", "mask"});
    graph.node("Relu", "relu", {"dropped"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "mask.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("Dropout"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings, "mask output 'mask'"))
        << joined(prepared.warnings);
}

// ------------------------------------------------------------------------------------------------
// Reshape shapes computed with Shape

// Adds Unsqueeze(Gather(Shape(`source`), `index`), axes=[0]) as torch exports x.size(index), with
// Constant nodes for the index and the axes. Returns the Unsqueeze output.
std::string add_shape_dimension(GraphBuilder& graph, const std::string& source, int64_t index,
                                int64_t opset, const std::string& prefix) {
    graph.node("Shape", prefix + "_shape", {source}, {prefix + "_dims"});
    onnx::AttributeProto* value =
        graph.node("Constant", prefix + "_index_constant", {}, {prefix + "_index"}).add_attribute();
    value->set_name("value");
    value->set_type(onnx::AttributeProto::TENSOR);
    *value->mutable_t() = make_int64_tensor("", {}, {index});
    graph.node("Gather", prefix + "_gather", {prefix + "_dims", prefix + "_index"},
               {prefix + "_dim"});
    if (opset >= 13) {
        *graph.node("Constant", prefix + "_axes_constant", {}, {prefix + "_axes"}).add_attribute() =
            make_ints_attribute("value_ints", {0});
        graph.node("Unsqueeze", prefix + "_unsqueeze", {prefix + "_dim", prefix + "_axes"},
                   {prefix + "_entry"});
    } else {
        *graph.node("Unsqueeze", prefix + "_unsqueeze", {prefix + "_dim"}, {prefix + "_entry"})
             .add_attribute() = make_ints_attribute("axes", {0});
    }
    return prefix + "_entry";
}

// x [N, 4, 3, 3] -> Relu -> Reshape to [x.size(0), -1] -> Gemm (5 outputs) -> y, as torch 1.13
// exports x.view(x.size(0), -1) with a dynamic batch.
GraphBuilder make_flatten_view_graph(int64_t opset) {
    GraphBuilder graph(opset, opset >= 13 ? 7 : 6);
    graph.batched_input("x", "N", {1, 4, 3, 3}).output("y");
    graph.random_initializer("fc.weight", {5, 36}, 1, -0.5f, 0.5f);
    graph.initializer(make_int64_tensor("minus_one", {1}, {-1}));
    graph.node("Relu", "relu", {"x"}, {"activated"});
    const std::string batch = add_shape_dimension(graph, "activated", 0, opset, "batch");
    *graph.node("Concat", "concat", {batch, "minus_one"}, {"flat_shape"}).add_attribute() =
        make_int_attribute("axis", 0);
    graph.node("Reshape", "flatten", {"activated", "flat_shape"}, {"flat"});
    *graph.node("Gemm", "fc", {"flat", "fc.weight"}, {"y"}).add_attribute() =
        make_int_attribute("transB", 1);
    return graph;
}

std::vector<int64_t> reshape_shape(const onnx::ModelProto& model, const std::string& reshape) {
    const std::string& name = find_node(model, reshape)->input(1);
    for (const onnx::TensorProto& tensor : model.graph().initializer()) {
        if (tensor.name() == name) {
            std::vector<int64_t> values(static_cast<size_t>(element_count(tensor.dims())));
            std::memcpy(values.data(), tensor.raw_data().data(), values.size() * sizeof(int64_t));
            return values;
        }
    }
    ADD_FAILURE() << "the shape of Reshape '" << reshape << "' is not an initializer";
    return {};
}

TEST(PrepareGraph, FoldsFlattenViewShape) {
    for (const int64_t opset : {11, 13}) {
        SCOPED_TRACE(fmt::format("opset {}", opset));
        const GraphBuilder graph = make_flatten_view_graph(opset);
        const PreparedModel prepared = prepare_for_quantization(graph.model(), "view.onnx");
        check_onnx_model(prepared.model, "prepared view.onnx");
        const std::map<std::string, int> counts = op_counts(prepared.model);
        for (const std::string op_type : {"Shape", "Gather", "Unsqueeze", "Concat", "Constant"}) {
            EXPECT_FALSE(counts.contains(op_type)) << op_type;
        }
        // 0 copies the batch dimension, so the batch stays dynamic.
        EXPECT_EQ(reshape_shape(prepared.model, "flatten"), (std::vector<int64_t>{0, -1}));
        EXPECT_TRUE(contains_line(prepared.changes,
                                  "replaced the computed shape of Reshape 'flatten' by the "
                                  "constant [0,-1]"))
            << joined(prepared.changes);
        EXPECT_TRUE(prepared.warnings.empty()) << joined(prepared.warnings);
        expect_same_outputs(graph.model(), prepared.model, {1, 4, 3, 3}, 0.0f);
        expect_same_outputs(graph.model(), prepared.model, {3, 4, 3, 3}, 0.0f);
    }
}

TEST(PrepareGraph, FoldsStaticAndDynamicDimensions) {
    // Reshape(relu(x), [x.size(0), x.size(1), 9]): x is not the Reshape's data, so its static
    // dimension 1 becomes 4 and its dynamic batch dimension becomes -1.
    GraphBuilder graph;
    graph.batched_input("x", "N", {1, 4, 3, 3}).output("y");
    graph.initializer(make_int64_tensor("nine", {1}, {9}));
    graph.node("Relu", "relu", {"x"}, {"activated"});
    const std::string batch = add_shape_dimension(graph, "x", 0, 13, "batch");
    const std::string channels = add_shape_dimension(graph, "x", 1, 13, "channels");
    *graph.node("Concat", "concat", {batch, channels, "nine"}, {"view_shape"}).add_attribute() =
        make_int_attribute("axis", 0);
    graph.node("Reshape", "view", {"activated", "view_shape"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "view.onnx");
    check_onnx_model(prepared.model, "prepared view.onnx");
    EXPECT_EQ(reshape_shape(prepared.model, "view"), (std::vector<int64_t>{-1, 4, 9}));
    EXPECT_FALSE(op_counts(prepared.model).contains("Shape"));
    expect_same_outputs(graph.model(), prepared.model, {2, 4, 3, 3}, 0.0f);
}

TEST(PrepareGraph, KeepsShapeNeedingTwoMinusOnes) {
    // Reshape(relu(x), [x.size(0), -1]): x is not the Reshape's data, so its dynamic batch
    // dimension could only become a second -1.
    GraphBuilder graph;
    graph.batched_input("x", "N", {1, 4, 6}).output("y");
    graph.initializer(make_int64_tensor("minus_one", {1}, {-1}));
    graph.node("Relu", "relu", {"x"}, {"activated"});
    const std::string batch = add_shape_dimension(graph, "x", 0, 13, "batch");
    *graph.node("Concat", "concat", {batch, "minus_one"}, {"view_shape"}).add_attribute() =
        make_int_attribute("axis", 0);
    graph.node("Reshape", "view", {"activated", "view_shape"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "dynamic.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("Shape"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings,
                              "Reshape 'view' keeps its computed shape because its shape would "
                              "need 2 entries of -1"))
        << joined(prepared.warnings);
    expect_same_outputs(graph.model(), prepared.model, {2, 4, 6}, 0.0f);
}

// ------------------------------------------------------------------------------------------------
// BatchNormalization folding

TEST(PrepareGraph, FoldsBatchNormIntoConvWithoutBias) {
    const GraphBuilder graph = make_conv_batch_norm_graph();
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "fold.onnx");
    check_onnx_model(prepared.model, "prepared fold.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("BatchNormalization"));
    const onnx::NodeProto* conv = find_node(prepared.model, "conv1");
    ASSERT_NE(conv, nullptr);
    ASSERT_EQ(conv->input_size(), 3);
    EXPECT_EQ(conv->input(2), "conv1.bias");
    EXPECT_EQ(conv->output(0), "y");
    EXPECT_FALSE(has_initializer(prepared.model, "bn1.running_var"));
    EXPECT_TRUE(
        contains_line(prepared.changes, "folded BatchNormalization 'bn1' into Conv 'conv1'"))
        << joined(prepared.changes);
    expect_same_outputs(graph.model(), prepared.model, {1, 3, 8, 8}, kFoldRelativeTolerance);
}

TEST(PrepareGraph, FoldsBatchNormIntoDepthwiseConv) {
    GraphBuilder graph;
    graph.input("x", {2, 4, 9, 9}).output("y");
    graph.random_initializer("dw.weight", {4, 1, 3, 3}, 1, -0.5f, 0.5f)
        .random_initializer("dw.bias", {4}, 2, -0.5f, 0.5f);
    add_batch_norm_parameters(graph, "bn", 4, 30);
    onnx::NodeProto& conv = graph.node("Conv", "dw", {"x", "dw.weight", "dw.bias"}, {"dw_out"});
    *conv.add_attribute() = make_int_attribute("group", 4);
    *conv.add_attribute() = make_ints_attribute("strides", {2, 2});
    *conv.add_attribute() = make_ints_attribute("pads", {2, 2, 2, 2});
    *conv.add_attribute() = make_ints_attribute("dilations", {2, 2});
    add_batch_norm(graph, "bn", "bn", "dw_out", "bn_out");
    graph.node("Relu", "relu", {"bn_out"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "depthwise.onnx");
    check_onnx_model(prepared.model, "prepared depthwise.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("BatchNormalization"));
    EXPECT_EQ(find_node(prepared.model, "dw")->input(2), "dw.bias");
    expect_same_outputs(graph.model(), prepared.model, {2, 4, 9, 9}, kFoldRelativeTolerance);
}

TEST(PrepareGraph, FoldsBatchNormsSharingWeights) {
    GraphBuilder graph;
    graph.input("x", {1, 3, 6, 6}).output("y");
    graph.random_initializer("shared.weight", {4, 3, 3, 3}, 1, -0.5f, 0.5f);
    add_batch_norm_parameters(graph, "bn_a", 4, 40);
    add_batch_norm_parameters(graph, "bn_b", 4, 50);
    graph.node("Conv", "conv_a", {"x", "shared.weight"}, {"a"});
    graph.node("Conv", "conv_b", {"x", "shared.weight"}, {"b"});
    add_batch_norm(graph, "bn_a", "bn_a", "a", "a_normalized");
    add_batch_norm(graph, "bn_b", "bn_b", "b", "b_normalized");
    graph.node("Add", "add", {"a_normalized", "b_normalized"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "shared.onnx");
    check_onnx_model(prepared.model, "prepared shared.onnx");
    EXPECT_FALSE(op_counts(prepared.model).contains("BatchNormalization"));
    // Each Conv gets its own folded weights.
    EXPECT_NE(find_node(prepared.model, "conv_a")->input(1),
              find_node(prepared.model, "conv_b")->input(1));
    EXPECT_NE(find_node(prepared.model, "conv_a")->input(2),
              find_node(prepared.model, "conv_b")->input(2));
    expect_same_outputs(graph.model(), prepared.model, {1, 3, 6, 6}, kFoldRelativeTolerance);
}

TEST(PrepareGraph, KeepsBatchNormWhenConvOutputIsShared) {
    GraphBuilder graph;
    graph.input("x", {1, 3, 8, 8}).output("y");
    graph.random_initializer("conv1.weight", {4, 3, 3, 3}, 1, -0.5f, 0.5f);
    add_batch_norm_parameters(graph, "bn1", 4, 10);
    graph.node("Conv", "conv1", {"x", "conv1.weight"}, {"conv1_out"});
    add_batch_norm(graph, "bn1", "bn1", "conv1_out", "normalized");
    graph.node("Relu", "relu", {"conv1_out"}, {"activated"});
    graph.node("Add", "add", {"normalized", "activated"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "shared_out.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("BatchNormalization"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings,
                              "BatchNormalization 'bn1' stays in float because the output "
                              "'conv1_out' of Conv 'conv1' is also read elsewhere"))
        << joined(prepared.warnings);
    expect_same_outputs(graph.model(), prepared.model, {1, 3, 8, 8}, 0.0f);
}

TEST(PrepareGraph, KeepsBatchNormAfterRelu) {
    GraphBuilder graph;
    graph.input("x", {1, 4, 5, 5}).output("y");
    add_batch_norm_parameters(graph, "bn", 4, 60);
    graph.node("Relu", "relu", {"x"}, {"activated"});
    add_batch_norm(graph, "bn", "bn", "activated", "y");
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "relu_bn.onnx");
    check_onnx_model(prepared.model, "prepared relu_bn.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("BatchNormalization"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings, "is not written by a Conv"))
        << joined(prepared.warnings);
    expect_same_outputs(graph.model(), prepared.model, {1, 4, 5, 5}, 0.0f);
}

TEST(PrepareGraph, KeepsBatchNormWhenConvWritesGraphOutput) {
    GraphBuilder graph;
    graph.input("x", {1, 3, 8, 8}).output("y").output("conv1_out");
    graph.random_initializer("conv1.weight", {4, 3, 3, 3}, 1, -0.5f, 0.5f);
    add_batch_norm_parameters(graph, "bn1", 4, 10);
    graph.node("Conv", "conv1", {"x", "conv1.weight"}, {"conv1_out"});
    add_batch_norm(graph, "bn1", "bn1", "conv1_out", "y");
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "conv_output.onnx");
    EXPECT_EQ(op_counts(prepared.model).at("BatchNormalization"), 1);
    EXPECT_TRUE(contains_line(prepared.warnings, "also read elsewhere"))
        << joined(prepared.warnings);
}

// ------------------------------------------------------------------------------------------------
// Clip

TEST(PrepareGraph, ReplacesReluClipKeepsReluSix) {
    GraphBuilder graph;
    graph.input("x", {1, 8}).output("y");
    graph.initializer(make_float_tensor("zero", {}, {0.0f}))
        .initializer(make_float_tensor("six", {}, {6.0f}))
        .initializer(make_float_tensor("minus_one", {}, {-1.0f}))
        .initializer(make_float_tensor("infinity", {}, {std::numeric_limits<float>::infinity()}));
    graph.node("Clip", "relu_clip", {"x", "zero"}, {"a"});
    graph.node("Clip", "relu_clip_empty_max", {"a", "zero", ""}, {"b"});
    graph.node("Clip", "relu_clip_infinite_max", {"b", "zero", "infinity"}, {"c"});
    graph.node("Clip", "relu6", {"c", "zero", "six"}, {"d"});
    graph.node("Clip", "clip_minus_one", {"d", "minus_one"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "clips.onnx");
    check_onnx_model(prepared.model, "prepared clips.onnx");
    for (const std::string name : {"relu_clip", "relu_clip_empty_max", "relu_clip_infinite_max"}) {
        const onnx::NodeProto* node = find_node(prepared.model, name);
        ASSERT_NE(node, nullptr) << name;
        EXPECT_EQ(node->op_type(), "Relu") << name;
        EXPECT_EQ(node->input_size(), 1) << name;
    }
    EXPECT_EQ(find_node(prepared.model, "relu6")->op_type(), "Clip");
    EXPECT_EQ(find_node(prepared.model, "clip_minus_one")->op_type(), "Clip");
    EXPECT_FALSE(has_initializer(prepared.model, "infinity"));
    expect_same_outputs(graph.model(), prepared.model, {1, 8}, 0.0f);
}

TEST(PrepareGraph, ReplacesReluClipOpsetTen) {
    GraphBuilder graph(/*opset=*/10, /*ir_version=*/5);
    graph.input("x", {1, 8}).output("y");
    *graph.node("Clip", "relu_clip", {"x"}, {"a"}).add_attribute() =
        make_float_attribute("min", 0.0f);
    onnx::NodeProto& relu6 = graph.node("Clip", "relu6", {"a"}, {"y"});
    *relu6.add_attribute() = make_float_attribute("min", 0.0f);
    *relu6.add_attribute() = make_float_attribute("max", 6.0f);
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "clips10.onnx");
    check_onnx_model(prepared.model, "prepared clips10.onnx");
    EXPECT_EQ(prepared.model.opset_import(0).version(), 10);
    EXPECT_EQ(find_node(prepared.model, "relu_clip")->op_type(), "Relu");
    EXPECT_EQ(find_node(prepared.model, "relu_clip")->attribute_size(), 0);
    EXPECT_EQ(find_node(prepared.model, "relu6")->op_type(), "Clip");
    expect_same_outputs(graph.model(), prepared.model, {1, 8}, 0.0f);
}

// ------------------------------------------------------------------------------------------------
// Shapes and determinism

TEST(PrepareGraph, ReportsInputShapeAndInfersShapes) {
    GraphBuilder graph;
    graph.batched_input("x", "N", {1, 3, 8, 8}).output("y");
    graph.random_initializer("conv1.weight", {4, 3, 3, 3}, 1, -0.5f, 0.5f);
    graph.node("Conv", "conv1", {"x", "conv1.weight"}, {"conv1_out"});
    graph.node("Relu", "relu", {"conv1_out"}, {"y"});
    const PreparedModel prepared = prepare_for_quantization(graph.model(), "shapes.onnx");
    EXPECT_EQ(prepared.input_name, "x");
    EXPECT_EQ(prepared.input_shape, (std::vector<int64_t>{-1, 3, 8, 8}));
    EXPECT_EQ(prepared.input_shape_text, "[N,3,8,8]");
    ASSERT_EQ(prepared.model.graph().value_info_size(), 1);
    const onnx::ValueInfoProto& inferred = prepared.model.graph().value_info(0);
    EXPECT_EQ(inferred.name(), "conv1_out");
    const onnx::TensorShapeProto& shape = inferred.type().tensor_type().shape();
    ASSERT_EQ(shape.dim_size(), 4);
    EXPECT_EQ(shape.dim(0).dim_param(), "N");
    EXPECT_EQ(shape.dim(1).dim_value(), 4);
    EXPECT_EQ(shape.dim(2).dim_value(), 6);
}

TEST(PrepareGraph, SameModelSameBytes) {
    const GraphBuilder graph = make_conv_batch_norm_graph();
    const PreparedModel first = prepare_for_quantization(graph.model(), "fold.onnx");
    const PreparedModel second = prepare_for_quantization(graph.model(), "fold.onnx");
    ScratchFolder folder("prepare-bytes");
    save_onnx_model(first.model, folder / "first.onnx");
    save_onnx_model(second.model, folder / "second.onnx");
    EXPECT_EQ(read_file(folder / "first.onnx"), read_file(folder / "second.onnx"));
    EXPECT_EQ(first.changes, second.changes);

    // A prepared model needs no further rewrite.
    const PreparedModel again = prepare_for_quantization(first.model, "prepared fold.onnx");
    EXPECT_TRUE(again.changes.empty()) << joined(again.changes);
    EXPECT_EQ(serialize(again.model), serialize(first.model));
}

// ------------------------------------------------------------------------------------------------
// torchvision models exported by tests/fixtures/export_zoo.py

std::string format_op_counts(const std::map<std::string, int>& counts) {
    std::vector<std::string> parts;
    for (const auto& [op_type, count] : counts) {
        parts.push_back(fmt::format("{} {}", op_type, count));
    }
    return fmt::format("{}", fmt::join(parts, ", "));
}

class PrepareZoo : public ::testing::Test {
  protected:
    // Changes listed in the test log per model; mobilenet_v2_batchnorm has 54.
    static constexpr size_t kPrintedChanges = 3;

    static void SetUpTestSuite() {
        python_ = test::python_with_module("torchvision");
        if (python_.empty()) {
            return;
        }
        folder_ = std::make_unique<ScratchFolder>("prepare-zoo");
        const fs::path script = test::source_dir() / "tests/fixtures/export_zoo.py";
        fixture_run_ = test::run_command(python_ + " '" + script.string() + "' '" +
                                         folder_->path().string() + "'");
    }

    static void TearDownTestSuite() { folder_.reset(); }

    void SetUp() override {
        if (python_.empty()) {
            GTEST_SKIP() << "python3-torchvision is missing (no python3 imports torchvision); "
                            "install Debian's python3-torchvision to export the torchvision models";
        }
        ASSERT_EQ(fixture_run_.exit_code, 0) << "export_zoo.py failed:\n" << fixture_run_.output;
    }

    static fs::path fixture(const std::string& name) { return folder_->path() / name; }

    static std::vector<float> read_npy(const std::string& name, std::vector<int64_t>& shape) {
        NpyFile file(fixture(name));
        shape = file.shape();
        std::vector<float> values;
        file.read_rows(0, file.row_count(), values);
        return values;
    }

    // Prepares `model_file`, checks it and expects its outputs on the calibration images to match
    // torch's `reference_file` and the original model's. Returns the prepared model.
    static PreparedModel prepare_and_compare(const std::string& model_file,
                                             const std::string& reference_file) {
        const onnx::ModelProto original = load_onnx_model(fixture(model_file));
        PreparedModel prepared = prepare_for_quantization(original, model_file);
        check_onnx_model(prepared.model, "prepared " + model_file);
        std::cout << "[ PREPARE  ] " << model_file << ": input " << prepared.input_name << " "
                  << prepared.input_shape_text << "; changes: " << prepared.changes.size()
                  << ", warnings: " << prepared.warnings.size() << "\n";
        for (size_t i = 0; i < std::min<size_t>(prepared.changes.size(), kPrintedChanges); ++i) {
            std::cout << "[ PREPARE  ]   " << prepared.changes[i] << "\n";
        }
        if (prepared.changes.size() > kPrintedChanges) {
            std::cout << "[ PREPARE  ]   ... and " << prepared.changes.size() - kPrintedChanges
                      << " more, the last: " << prepared.changes.back() << "\n";
        }
        std::cout << "[ PREPARE  ]   operators: " << format_op_counts(op_counts(prepared.model))
                  << "\n";

        std::vector<int64_t> image_shape;
        const std::vector<float> images = read_npy("calibration_images.npy", image_shape);
        std::vector<int64_t> reference_shape;
        const std::vector<float> reference = read_npy(reference_file, reference_shape);

        const std::vector<FloatOutput> actual =
            run_model(prepared.model, "prepared " + model_file, images, image_shape);
        const std::vector<FloatOutput> original_output =
            run_model(original, model_file, images, image_shape);
        EXPECT_EQ(actual.front().shape, reference_shape);
        const float torch_difference = max_relative_difference(actual.front().values, reference);
        const float original_difference =
            max_relative_difference(actual.front().values, original_output.front().values);
        std::cout << "[ PREPARE  ]   largest difference relative to the largest |output|: "
                  << torch_difference << " to torch, " << original_difference
                  << " to the original model in ONNX Runtime\n";
        EXPECT_LE(torch_difference, kZooRelativeTolerance);
        EXPECT_LE(original_difference, kZooRelativeTolerance);
        return prepared;
    }

    static inline std::string python_;
    static inline std::unique_ptr<ScratchFolder> folder_;
    static inline test::CommandResult fixture_run_;
};

// Expects every operator of `model` to be one the quantizer handles.
void expect_only_quantizer_ops(const onnx::ModelProto& model) {
    for (const auto& [op_type, count] : op_counts(model)) {
        EXPECT_TRUE(kQuantizerOps.contains(op_type)) << op_type << " (" << count << " nodes)";
    }
}

TEST_F(PrepareZoo, Resnet18MatchesTorch) {
    const PreparedModel prepared = prepare_and_compare("resnet18.onnx", "resnet18_output.npy");
    expect_only_quantizer_ops(prepared.model);
    EXPECT_TRUE(prepared.warnings.empty()) << joined(prepared.warnings);
}

TEST_F(PrepareZoo, MobilenetV2MatchesTorch) {
    const PreparedModel prepared =
        prepare_and_compare("mobilenet_v2.onnx", "mobilenet_v2_output.npy");
    expect_only_quantizer_ops(prepared.model);
    EXPECT_TRUE(prepared.warnings.empty()) << joined(prepared.warnings);
}

// torch folds BatchNormalization itself in an eval-mode export. The export that keeps the nodes,
// prepared, must give the same graph and the same outputs.
TEST_F(PrepareZoo, MobilenetV2BatchNormFoldMatchesTorchFold) {
    const onnx::ModelProto original = load_onnx_model(fixture("mobilenet_v2_batchnorm.onnx"));
    const int batch_norm_count = op_counts(original).at("BatchNormalization");
    const PreparedModel prepared =
        prepare_and_compare("mobilenet_v2_batchnorm.onnx", "mobilenet_v2_output.npy");
    const PreparedModel torch_folded =
        prepare_for_quantization(load_onnx_model(fixture("mobilenet_v2.onnx")), "mobilenet_v2");
    EXPECT_EQ(op_counts(prepared.model), op_counts(torch_folded.model));
    const auto folds = std::count_if(
        prepared.changes.begin(), prepared.changes.end(),
        [](const std::string& line) { return line.starts_with("folded BatchNormalization"); });
    EXPECT_EQ(folds, batch_norm_count);
    EXPECT_TRUE(prepared.warnings.empty()) << joined(prepared.warnings);

    const PreparedModel again = prepare_for_quantization(original, "mobilenet_v2_batchnorm.onnx");
    EXPECT_EQ(serialize(again.model), serialize(prepared.model));
}

// torch 1.13 exports x.view(x.size(0), -1) with a dynamic batch as a computed Reshape shape.
TEST_F(PrepareZoo, FlattenViewShapeFolded) {
    const PreparedModel prepared =
        prepare_and_compare("flatten_view.onnx", "flatten_view_output.npy");
    expect_only_quantizer_ops(prepared.model);
    EXPECT_TRUE(prepared.warnings.empty()) << joined(prepared.warnings);
    const onnx::NodeProto* reshape = nullptr;
    for (const onnx::NodeProto& node : prepared.model.graph().node()) {
        if (node.op_type() == "Reshape") {
            reshape = &node;
        }
    }
    ASSERT_NE(reshape, nullptr);
    EXPECT_EQ(reshape_shape(prepared.model, reshape->name()), (std::vector<int64_t>{0, -1}));
}

// ------------------------------------------------------------------------------------------------
// Debian's libonnx-testdata: models PyTorch exported, with PyTorch's outputs

onnx::TensorProto read_tensor_file(const fs::path& path) {
    onnx::TensorProto tensor;
    if (!tensor.ParseFromString(read_file(path))) {
        ADD_FAILURE() << path << " does not parse as an ONNX TensorProto";
    }
    return tensor;
}

// Why a libonnx-testdata model is not used, or empty when it is.
std::string testdata_skip_reason(const fs::path& folder) {
    if (!fs::exists(folder / "test_data_set_0/input_0.pb") ||
        !fs::exists(folder / "test_data_set_0/output_0.pb")) {
        return "no test_data_set_0/input_0.pb and output_0.pb";
    }
    const onnx::ModelProto model = load_onnx_model(folder / "model.onnx");
    std::set<std::string> other_ops;
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (!kQuantizerOps.contains(node.op_type()) &&
            !kPreparationRemovedOps.contains(node.op_type())) {
            other_ops.insert(node.op_type());
        }
    }
    if (!other_ops.empty()) {
        return fmt::format("operators outside the list: {}", fmt::join(other_ops, ", "));
    }
    if (fs::exists(folder / "test_data_set_0/input_1.pb")) {
        return "more than one input";
    }
    if (read_tensor_file(folder / "test_data_set_0/input_0.pb").data_type() !=
        onnx::TensorProto::FLOAT) {
        return "input is not float";
    }
    return {};
}

TEST(PrepareTestData, SelectedModelsMatchReference) {
    if (!fs::exists(kTestDataFolder)) {
        GTEST_SKIP() << kTestDataFolder << " is missing; install Debian's libonnx-testdata";
    }
    std::vector<fs::path> folders;
    for (const fs::directory_entry& entry : fs::directory_iterator(kTestDataFolder)) {
        if (fs::exists(entry.path() / "model.onnx")) {
            folders.push_back(entry.path());
        }
    }
    std::sort(folders.begin(), folders.end());

    std::vector<fs::path> selected;
    std::vector<std::string> skipped;
    for (const fs::path& folder : folders) {
        const std::string reason = testdata_skip_reason(folder);
        if (reason.empty()) {
            selected.push_back(folder);
        } else {
            skipped.push_back(folder.filename().string() + ": " + reason);
        }
    }
    std::cout << "[ PREPARE  ] libonnx-testdata: " << selected.size() << " of " << folders.size()
              << " pytorch-converted models selected\n";
    for (const std::string& line : skipped) {
        std::cout << "[ PREPARE  ]   skipped " << line << "\n";
    }
    ASSERT_FALSE(selected.empty());

    for (const fs::path& folder : selected) {
        const std::string name = folder.filename().string();
        SCOPED_TRACE(name);
        const onnx::ModelProto original = load_onnx_model(folder / "model.onnx");
        PreparedModel prepared;
        try {
            prepared = prepare_for_quantization(original, name);
            check_onnx_model(prepared.model, "prepared " + name);
        } catch (const Error& error) {
            ADD_FAILURE() << error.what();
            continue;
        }

        const onnx::TensorProto input = read_tensor_file(folder / "test_data_set_0/input_0.pb");
        const onnx::TensorProto expected = read_tensor_file(folder / "test_data_set_0/output_0.pb");
        const std::vector<int64_t> input_shape(input.dims().begin(), input.dims().end());
        const std::vector<int64_t> expected_shape(expected.dims().begin(), expected.dims().end());
        const std::vector<float> expected_values = read_float_tensor(expected);

        const std::vector<FloatOutput> outputs =
            run_model(prepared.model, name, read_float_tensor(input), input_shape);
        ASSERT_EQ(outputs.size(), 1u);
        EXPECT_EQ(outputs.front().shape, expected_shape);
        ASSERT_EQ(outputs.front().values.size(), expected_values.size());
        size_t mismatches = 0;
        double largest_difference = 0;
        for (size_t i = 0; i < expected_values.size(); ++i) {
            const double difference =
                std::abs(static_cast<double>(outputs.front().values[i]) - expected_values[i]);
            largest_difference = std::max(largest_difference, difference);
            if (difference > kTestDataAbsoluteTolerance +
                                 kTestDataRelativeTolerance * std::abs(expected_values[i])) {
                ++mismatches;
            }
        }
        EXPECT_EQ(mismatches, 0u) << "largest difference " << largest_difference;
        std::cout << "[ PREPARE  ]   " << name << ": " << prepared.input_shape_text << ", "
                  << format_op_counts(op_counts(prepared.model)) << "; largest difference "
                  << largest_difference << "\n";
    }
}

}  // namespace
}  // namespace edgeq
