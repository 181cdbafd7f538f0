// npu-sim against ONNX Runtime's CPU execution of the same QDQ models. The models are random
// FashionCNNs quantized with both bias styles and with float scales, models npu-sim must reject,
// and (when the data set and the checkpoint are installed) the real 10,000 test images.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "edgeq/common/error.h"
#include "edgeq/data/dataset.h"
#include "edgeq/npu/npu_sim.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/runtime/ort_session.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq::npu {
namespace {

namespace fs = std::filesystem;

// Share of images whose top-1 class npu-sim (half even) and ONNX Runtime must agree on. With
// power-of-two scales both compute the same integers; ONNX Runtime's float accumulation can
// differ only when a sum leaves float's 24-bit exact range, which flips a class rarely.
constexpr double kMinimumTop1Agreement = 0.99;
// Share of logits that must lie within one output quantization step of ONNX Runtime's. A differing
// rounding in one layer moves a logit by one step at most in most cases; "most" is taken as 95%.
constexpr double kMinimumLogitsWithinOneStep = 0.95;
// Share of logits that must be bit-identical with power-of-two scales and half-even rounding:
// npu-sim then computes exactly what ONNX Runtime's exact float arithmetic computes, apart from
// the rare float accumulation that leaves the 24-bit exact range.
constexpr double kMinimumEqualLogitsPowerOfTwo = 0.99;
// A float scale's step compared with a tolerance: one step plus float rounding of the difference.
constexpr double kStepSlack = 1e-4;
// The real test set's agreement (at least 99.9% of the 10,000 images) is checked end to end in
// tests/integration/test_deploy_cli.cpp, on the model `edgeq run` writes.

constexpr int64_t kImageCount = 300;
constexpr int64_t kBatchSize = 100;

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

onnx::ModelProto quantize_random_model(const QuantizeOptions& options, const LabelledImages& images,
                                       uint64_t seed = 11) {
    FashionCnn model = test::make_random_fashion_cnn(seed);
    const onnx::ModelProto float_model = export_fashion_cnn(export_state_dict(model));
    LabelledImagesReader reader(images, options.calibration_batch_size);
    return quantize_to_qdq(float_model, reader, options, SessionConfig{}).model;
}

// The scale of the DequantizeLinear that writes the first graph output.
float output_scale(const onnx::ModelProto& model) {
    const std::string& output = model.graph().output(0).name();
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (node.output(0) == output) {
            for (const onnx::TensorProto& tensor : model.graph().initializer()) {
                if (tensor.name() == node.input(1)) {
                    return read_float_tensor(tensor).at(0);
                }
            }
        }
    }
    ADD_FAILURE() << "no DequantizeLinear writes " << output;
    return 0;
}

int64_t argmax(const float* values, int64_t count) {
    return std::max_element(values, values + count) - values;
}

struct Comparison {
    double top1_agreement = 0;
    double logits_equal = 0;
    double logits_within_one_step = 0;
    double sim_accuracy = 0;
    double ort_accuracy = 0;
    double sim_images_per_second = 0;
};

Comparison compare_with_ort(const onnx::ModelProto& qdq, const NpuSimModel& sim,
                            const LabelledImages& images) {
    OrtModel ort(serialize(qdq), "qdq", SessionConfig{});
    const double step = output_scale(qdq);
    int64_t agreeing = 0;
    int64_t exact = 0;
    int64_t within = 0;
    int64_t logits = 0;
    int64_t sim_correct = 0;
    int64_t ort_correct = 0;
    double sim_seconds = 0;
    for (int64_t first = 0; first < images.size(); first += kBatchSize) {
        const int64_t count = std::min(kBatchSize, images.size() - first);
        const std::vector<float> batch = gather_image_range(images, first, count);
        const std::vector<int64_t> shape{count, 1, kImageSide, kImageSide};
        const std::vector<FloatOutput> expected = ort.run(batch, shape);
        const auto start = std::chrono::steady_clock::now();
        const std::vector<FloatOutput> actual = sim.run(batch, shape);
        sim_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        EXPECT_EQ(actual.size(), expected.size());
        EXPECT_EQ(actual.at(0).shape, expected.at(0).shape);
        const int64_t classes = expected[0].shape.back();
        for (int64_t i = 0; i < count; ++i) {
            const float* ort_row = expected[0].values.data() + i * classes;
            const float* sim_row = actual[0].values.data() + i * classes;
            const int64_t ort_class = argmax(ort_row, classes);
            const int64_t sim_class = argmax(sim_row, classes);
            agreeing += ort_class == sim_class ? 1 : 0;
            ort_correct += ort_class == images.labels[first + i] ? 1 : 0;
            sim_correct += sim_class == images.labels[first + i] ? 1 : 0;
            for (int64_t k = 0; k < classes; ++k) {
                exact += ort_row[k] == sim_row[k] ? 1 : 0;
                within += std::abs(ort_row[k] - sim_row[k]) <= step * (1 + kStepSlack) ? 1 : 0;
                ++logits;
            }
        }
    }
    const auto total = static_cast<double>(images.size());
    return {static_cast<double>(agreeing) / total,
            static_cast<double>(exact) / static_cast<double>(logits),
            static_cast<double>(within) / static_cast<double>(logits),
            static_cast<double>(sim_correct) / total,
            static_cast<double>(ort_correct) / total,
            total / sim_seconds};
}

// A float model with every other operator npu-sim runs, input [N, 1, 28, 28]:
//   Conv -> Relu = r1;  Conv(r1) + r1 -> Relu = r2;  AveragePool(r2) and MaxPool(r1), 2x2 stride 2
//   -> Concat (channels) -> GlobalAveragePool -> Flatten -> MatMul -> output [N, 10]
onnx::ModelProto make_branching_model(uint64_t seed) {
    std::mt19937_64 random(seed);
    std::normal_distribution<float> normal(0.0f, 0.4f);
    auto random_values = [&](int64_t count) {
        std::vector<float> values(static_cast<size_t>(count));
        for (float& value : values) {
            value = normal(random);
        }
        return values;
    };

    onnx::ModelProto model;
    model.set_ir_version(7);
    model.add_opset_import()->set_version(13);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("branching");
    auto add_value = [](onnx::ValueInfoProto* value, const std::string& name,
                        const std::vector<int64_t>& dims) {
        value->set_name(name);
        auto* type = value->mutable_type()->mutable_tensor_type();
        type->set_elem_type(onnx::TensorProto::FLOAT);
        auto* shape = type->mutable_shape();
        shape->add_dim()->set_dim_param("N");
        for (const int64_t dim : dims) {
            shape->add_dim()->set_dim_value(dim);
        }
    };
    add_value(graph.add_input(), "input", {1, kImageSide, kImageSide});
    add_value(graph.add_output(), "output", {10});

    *graph.add_initializer() = make_float_tensor("w1", {4, 1, 3, 3}, random_values(36));
    *graph.add_initializer() = make_float_tensor("b1", {4}, random_values(4));
    *graph.add_initializer() = make_float_tensor("w2", {4, 4, 3, 3}, random_values(144));
    *graph.add_initializer() = make_float_tensor("b2", {4}, random_values(4));
    *graph.add_initializer() = make_float_tensor("w3", {8, 10}, random_values(80));

    auto add_node = [&](const std::string& op, const std::string& name,
                        const std::vector<std::string>& inputs, const std::string& output) {
        onnx::NodeProto* node = graph.add_node();
        node->set_op_type(op);
        node->set_name(name);
        for (const std::string& input : inputs) {
            node->add_input(input);
        }
        node->add_output(output);
        return node;
    };
    const std::vector<int64_t> same_pads{1, 1, 1, 1};
    *add_node("Conv", "conv1", {"input", "w1", "b1"}, "c1")->add_attribute() =
        make_ints_attribute("pads", same_pads);
    add_node("Relu", "relu1", {"c1"}, "r1");
    *add_node("Conv", "conv2", {"r1", "w2", "b2"}, "c2")->add_attribute() =
        make_ints_attribute("pads", same_pads);
    add_node("Add", "add", {"c2", "r1"}, "sum");
    add_node("Relu", "relu2", {"sum"}, "r2");
    for (const auto& [op, name, input, output] :
         {std::tuple{"AveragePool", "average", "r2", "p1"}, {"MaxPool", "max", "r1", "p2"}}) {
        onnx::NodeProto* pool = add_node(op, name, {input}, output);
        *pool->add_attribute() = make_ints_attribute("kernel_shape", {2, 2});
        *pool->add_attribute() = make_ints_attribute("strides", {2, 2});
    }
    *add_node("Concat", "concat", {"p1", "p2"}, "joined")->add_attribute() =
        make_int_attribute("axis", 1);
    add_node("GlobalAveragePool", "global", {"joined"}, "pooled");
    add_node("Flatten", "flatten", {"pooled"}, "flat");
    add_node("MatMul", "matmul", {"flat", "w3"}, "output");
    return model;
}

NpuSimOptions half_even(bool fixed_point = false) {
    return {Rounding::kHalfEven, fixed_point};
}

// ---------------------------------------------------------------------------------------------
// Agreement with ONNX Runtime

TEST(NpuSim, Xint8Int8BiasAgreesWithOrt) {
    const LabelledImages images = test::make_synthetic_images(kImageCount, 5);
    const onnx::ModelProto qdq = quantize_random_model({}, images);
    const NpuSimModel sim(qdq, "xint8", half_even());
    const Comparison comparison = compare_with_ort(qdq, sim, images);
    EXPECT_GE(comparison.top1_agreement, kMinimumTop1Agreement);
    EXPECT_GE(comparison.logits_within_one_step, kMinimumLogitsWithinOneStep);
    EXPECT_GE(comparison.logits_equal, kMinimumEqualLogitsPowerOfTwo);
}

TEST(NpuSim, Xint8Int32BiasAgreesWithOrt) {
    const LabelledImages images = test::make_synthetic_images(kImageCount, 6);
    QuantizeOptions options;
    options.bias = BiasMode::kInt32;
    const onnx::ModelProto qdq = quantize_random_model(options, images);
    const NpuSimModel sim(qdq, "xint8-int32-bias", half_even());
    const Comparison comparison = compare_with_ort(qdq, sim, images);
    EXPECT_GE(comparison.top1_agreement, kMinimumTop1Agreement);
    EXPECT_GE(comparison.logits_within_one_step, kMinimumLogitsWithinOneStep);
    EXPECT_GE(comparison.logits_equal, kMinimumEqualLogitsPowerOfTwo);
}

TEST(NpuSim, A8w8FixedPointAgreesWithOrt) {
    const LabelledImages images = test::make_synthetic_images(kImageCount, 7);
    QuantizeOptions options;
    options.preset = Preset::kA8W8;
    const onnx::ModelProto qdq = quantize_random_model(options, images);
    const NpuSimModel sim(qdq, "a8w8", half_even(true));
    const Comparison comparison = compare_with_ort(qdq, sim, images);
    EXPECT_GE(comparison.top1_agreement, kMinimumTop1Agreement);
    EXPECT_GE(comparison.logits_within_one_step, kMinimumLogitsWithinOneStep);
}

TEST(NpuSim, PerChannelU8s8AgreesWithOrt) {
    const LabelledImages images = test::make_synthetic_images(kImageCount, 16);
    QuantizeOptions options;
    options.preset = Preset::kU8S8;
    options.per_channel = true;
    const onnx::ModelProto qdq = quantize_random_model(options, images);
    const NpuSimModel sim(qdq, "u8s8-per-channel", half_even(true));
    const Comparison comparison = compare_with_ort(qdq, sim, images);
    EXPECT_GE(comparison.top1_agreement, kMinimumTop1Agreement);
    EXPECT_GE(comparison.logits_within_one_step, kMinimumLogitsWithinOneStep);
}

TEST(NpuSim, BranchingModelAgreesWithOrt) {
    const LabelledImages images = test::make_synthetic_images(kImageCount, 17);
    const onnx::ModelProto float_model = make_branching_model(17);
    for (const Preset preset : {Preset::kXint8, Preset::kA8W8}) {
        QuantizeOptions options;
        options.preset = preset;
        LabelledImagesReader reader(images, options.calibration_batch_size);
        const onnx::ModelProto qdq =
            quantize_to_qdq(float_model, reader, options, SessionConfig{}).model;
        const bool fixed_point = preset != Preset::kXint8;
        const NpuSimModel sim(qdq, "branching", half_even(fixed_point));
        const Comparison comparison = compare_with_ort(qdq, sim, images);
        EXPECT_GE(comparison.top1_agreement, kMinimumTop1Agreement) << preset_name(preset);
        EXPECT_GE(comparison.logits_within_one_step, kMinimumLogitsWithinOneStep)
            << preset_name(preset);
    }
}

TEST(NpuSim, HalfUpStaysCloseToOrt) {
    // Half up differs from ONNX Runtime only on exact ties, so its classes stay close too.
    const LabelledImages images = test::make_synthetic_images(kImageCount, 8);
    const onnx::ModelProto qdq = quantize_random_model({}, images);
    const NpuSimModel sim(qdq, "xint8", NpuSimOptions{});
    const Comparison comparison = compare_with_ort(qdq, sim, images);
    EXPECT_GE(comparison.logits_within_one_step, kMinimumLogitsWithinOneStep);
}

// ---------------------------------------------------------------------------------------------
// Models npu-sim rejects

// Runs `load` and returns the Error it throws (ExitCode::kSuccess and no message when none).
template <typename Load>
Error load_error(Load&& load) {
    try {
        load();
    } catch (const Error& error) {
        return error;
    }
    ADD_FAILURE() << "loading succeeded";
    return Error(ExitCode::kSuccess, "");
}

TEST(NpuSim, A8w8RejectedWithoutFixedPoint) {
    const LabelledImages images = test::make_synthetic_images(64, 9);
    QuantizeOptions options;
    options.preset = Preset::kA8W8;
    const onnx::ModelProto qdq = quantize_random_model(options, images);
    const Error error = load_error([&] { NpuSimModel sim(qdq, "a8w8", half_even()); });
    EXPECT_EQ(error.code(), ExitCode::kUnsupported);
    const std::string message = error.what();
    EXPECT_NE(message.find("input_scale"), std::string::npos) << message;
    EXPECT_NE(message.find("XINT8"), std::string::npos) << message;
    EXPECT_NE(message.find("--fixed-point"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
}

TEST(NpuSim, UnsupportedOpNamesNode) {
    const LabelledImages images = test::make_synthetic_images(64, 10);
    onnx::ModelProto qdq = quantize_random_model({}, images);
    for (onnx::NodeProto& node : *qdq.mutable_graph()->mutable_node()) {
        if (node.name() == "/layer1/MaxPool") {
            node.set_op_type("Sigmoid");
            node.clear_attribute();
        }
    }
    const Error error = load_error([&] { NpuSimModel sim(qdq, "sigmoid", half_even()); });
    EXPECT_EQ(error.code(), ExitCode::kUnsupported);
    const std::string message = error.what();
    EXPECT_NE(message.find("/layer1/MaxPool"), std::string::npos) << message;
    EXPECT_NE(message.find("Sigmoid"), std::string::npos) << message;
    EXPECT_NE(message.find("Conv, Gemm"), std::string::npos) << "lists what is supported";
}

TEST(NpuSim, PoolPadAsLargeAsWindowRejected) {
    // FashionCNN's MaxPool has a 2x2 window; a pad of 2 leaves windows wholly in the padding.
    const LabelledImages images = test::make_synthetic_images(64, 11);
    onnx::ModelProto qdq = quantize_random_model({}, images);
    for (onnx::NodeProto& node : *qdq.mutable_graph()->mutable_node()) {
        if (node.name() != "/layer1/MaxPool") {
            continue;
        }
        // Replaces the exporter's pads (all zero) with 2 on every side.
        for (int a = 0; a < node.attribute_size(); ++a) {
            if (node.attribute(a).name() == "pads") {
                node.mutable_attribute()->DeleteSubrange(a, 1);
                break;
            }
        }
        onnx::AttributeProto* pads = node.add_attribute();
        pads->set_name("pads");
        pads->set_type(onnx::AttributeProto::INTS);
        for (int i = 0; i < 4; ++i) {
            pads->add_ints(2);
        }
    }
    const Error error = load_error([&] { NpuSimModel sim(qdq, "pads", half_even()); });
    EXPECT_EQ(error.code(), ExitCode::kInvalidInput);
    const std::string message = error.what();
    EXPECT_NE(message.find("/layer1/MaxPool"), std::string::npos) << message;
    EXPECT_NE(message.find("kernel_shape"), std::string::npos) << message;
}

TEST(NpuSim, FloatNodeNamesNode) {
    const LabelledImages images = test::make_synthetic_images(64, 12);
    QuantizeOptions options;
    options.exclude = {"/fc3/Gemm"};
    const onnx::ModelProto qdq = quantize_random_model(options, images);
    const Error error = load_error([&] { NpuSimModel sim(qdq, "float-fc3", half_even()); });
    EXPECT_EQ(error.code(), ExitCode::kUnsupported);
    const std::string message = error.what();
    EXPECT_NE(message.find("/fc3/Gemm"), std::string::npos) << message;
}

TEST(NpuSim, GemmAlphaRejected) {
    const LabelledImages images = test::make_synthetic_images(64, 13);
    onnx::ModelProto qdq = quantize_random_model({}, images);
    for (onnx::NodeProto& node : *qdq.mutable_graph()->mutable_node()) {
        if (node.name() != "/fc2/Gemm") {
            continue;
        }
        for (onnx::AttributeProto& attribute : *node.mutable_attribute()) {
            if (attribute.name() == "alpha") {
                attribute.set_f(2.0f);
            }
        }
    }
    const Error error = load_error([&] { NpuSimModel sim(qdq, "alpha", half_even()); });
    EXPECT_EQ(error.code(), ExitCode::kUnsupported);
    EXPECT_NE(std::string(error.what()).find("/fc2/Gemm"), std::string::npos) << error.what();
}

// ---------------------------------------------------------------------------------------------
// Program listing

TEST(NpuSim, ListingHasOneLinePerStep) {
    const LabelledImages images = test::make_synthetic_images(64, 14);
    const onnx::ModelProto qdq = quantize_random_model({}, images);
    const NpuSimModel sim(qdq, "xint8", NpuSimOptions{});
    const std::vector<std::string> lines = sim.program_listing();
    // Input QuantizeLinear, Conv+Relu, MaxPool, Conv+Relu, MaxPool, Reshape, 3 Gemm, output
    // DequantizeLinear.
    ASSERT_EQ(lines.size(), 10u);
    EXPECT_NE(lines[0].find("QuantizeLinear"), std::string::npos) << lines[0];
    EXPECT_NE(lines[1].find("Conv /layer1/Conv"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("fused Relu"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("requantize shift"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("half-up"), std::string::npos) << lines[1];
    EXPECT_NE(lines[9].find("DequantizeLinear"), std::string::npos) << lines[9];
    EXPECT_EQ(sim.input_name(), "input");
    EXPECT_EQ(sim.output_names(), std::vector<std::string>{"output"});
}

TEST(NpuSim, RunIsDeterministic) {
    const LabelledImages images = test::make_synthetic_images(20, 15);
    const onnx::ModelProto qdq = quantize_random_model({}, images);
    const NpuSimModel sim(qdq, "xint8", NpuSimOptions{});
    const std::vector<float> batch = gather_image_range(images, 0, 20);
    const std::vector<int64_t> shape{20, 1, kImageSide, kImageSide};
    EXPECT_EQ(sim.run(batch, shape)[0].values, sim.run(batch, shape)[0].values);
}

// ---------------------------------------------------------------------------------------------
// Acceptance on the real data

}  // namespace
}  // namespace edgeq::npu
