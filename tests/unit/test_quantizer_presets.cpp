// The quantizer's presets and options on FashionCNN with random weights: each preset's number
// formats, per-channel weights, what XINT8 rejects, operators kept in float, --strict, --exclude,
// and results that do not depend on the calibration batch size.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "edgeq/common/error.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/quant/qdq_summary.h"
#include "edgeq/runtime/ort_session.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

// Signal-to-noise ratio of the QDQ model's logits against fp32 that every 8-bit preset must
// reach on random weights. Per-tensor 8-bit quantization of this network gives 25-35 dB; a wrong
// zero point or scale falls below 5 dB, so 15 dB separates the two with room on both sides.
constexpr double kMinimumLogitSqnrDb = 15.0;

// 16-bit activations leave only the 8-bit weights' error, so A16W8 must do clearly better than
// the 8-bit floor above.
constexpr double kMinimumA16W8LogitSqnrDb = 25.0;

constexpr int64_t kCalibrationImages = 48;

struct Quantized {
    onnx::ModelProto float_model;
    QdqModel qdq;
    LabelledImages images;
};

Quantized quantize_fashion_cnn(const QuantizeOptions& options, uint64_t seed = 5) {
    FashionCnn model = test::make_random_fashion_cnn(seed);
    Quantized result;
    result.float_model = export_fashion_cnn(export_state_dict(model));
    result.images = test::make_synthetic_images(kCalibrationImages, seed);
    LabelledImagesReader reader(result.images, options.calibration_batch_size);
    result.qdq = quantize_to_qdq(result.float_model, reader, options, SessionConfig{});
    return result;
}

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

// SQNR in dB of the QDQ model's logits against the float model's on the calibration images.
double logit_sqnr_db(const Quantized& quantized) {
    OrtModel float_session(serialize(quantized.float_model), "float", SessionConfig{});
    OrtModel qdq_session(serialize(quantized.qdq.model), "qdq", SessionConfig{});
    const std::vector<float> images =
        gather_image_range(quantized.images, 0, quantized.images.size());
    const std::vector<int64_t> shape = {quantized.images.size(), 1, kImageSide, kImageSide};
    const std::vector<float> reference = float_session.run(images, shape)[0].values;
    const std::vector<float> quantized_logits = qdq_session.run(images, shape)[0].values;
    double signal = 0;
    double noise = 0;
    for (size_t i = 0; i < reference.size(); ++i) {
        signal += double{reference[i]} * reference[i];
        const double error = double{reference[i]} - quantized_logits[i];
        noise += error * error;
    }
    return 10.0 * std::log10(signal / noise);
}

std::map<std::string, const onnx::TensorProto*> initializers_by_name(
    const onnx::ModelProto& model) {
    std::map<std::string, const onnx::TensorProto*> result;
    for (const onnx::TensorProto& tensor : model.graph().initializer()) {
        result[tensor.name()] = &tensor;
    }
    return result;
}

TEST(QuantizerPresets, EveryPresetPassesCheckerAndRuns) {
    for (const Preset preset : all_presets()) {
        QuantizeOptions options;
        options.preset = preset;
        const Quantized quantized = quantize_fashion_cnn(options);
        SCOPED_TRACE(preset_name(preset));
        check_onnx_model(quantized.qdq.model, preset_name(preset));
        const double sqnr = logit_sqnr_db(quantized);
        EXPECT_GT(sqnr, preset == Preset::kA16W8 ? kMinimumA16W8LogitSqnrDb : kMinimumLogitSqnrDb);
        EXPECT_EQ(quantized.qdq.model.graph().node_size(), 38);
    }
}

TEST(QuantizerPresets, ActivationTypesAndZeroPoints) {
    const std::map<Preset, int32_t> expected_types = {{Preset::kXint8, onnx::TensorProto::UINT8},
                                                      {Preset::kA8W8, onnx::TensorProto::INT8},
                                                      {Preset::kU8S8, onnx::TensorProto::UINT8},
                                                      {Preset::kS8S8, onnx::TensorProto::INT8},
                                                      {Preset::kA16W8, onnx::TensorProto::INT16}};
    for (const auto& [preset, type] : expected_types) {
        QuantizeOptions options;
        options.preset = preset;
        const Quantized quantized = quantize_fashion_cnn(options);
        const auto initializers = initializers_by_name(quantized.qdq.model);
        SCOPED_TRACE(preset_name(preset));
        for (const onnx::NodeProto& node : quantized.qdq.model.graph().node()) {
            if (node.op_type() != "QuantizeLinear") {
                continue;
            }
            EXPECT_EQ(initializers.at(node.input(2))->data_type(), type) << node.name();
            EXPECT_EQ(node.domain(), preset == Preset::kA16W8 ? "com.microsoft" : "")
                << "16-bit pairs use ONNX Runtime's contrib ops";
        }
        for (const QuantizedTensor& tensor : quantized.qdq.tensors) {
            if (tensor.role != "activation") {
                continue;
            }
            const bool symmetric =
                preset == Preset::kXint8 || preset == Preset::kA8W8 || preset == Preset::kA16W8;
            if (symmetric) {
                EXPECT_EQ(tensor.params.zero_point, symmetric_zero_point(tensor.params.type))
                    << tensor.name;
            }
            EXPECT_EQ(tensor.params.power_of_two, preset == Preset::kXint8) << tensor.name;
        }
    }
}

TEST(QuantizerPresets, FloatPresetsUseInt32Bias) {
    QuantizeOptions options;
    options.preset = Preset::kU8S8;
    const Quantized quantized = quantize_fashion_cnn(options);
    std::map<std::string, QuantizedTensor> by_name;
    for (const QuantizedTensor& tensor : quantized.qdq.tensors) {
        by_name[tensor.name] = tensor;
    }
    const QuantizedTensor& bias = by_name.at("fc1.bias");
    EXPECT_EQ(bias.params.type, QuantType::kInt32);
    // s_bias = s_input * s_weight, in float as ONNX Runtime's quantizer computes it.
    EXPECT_EQ(bias.params.scale(), by_name.at("/Reshape_output_0").params.scale() *
                                       by_name.at("fc1.weight").params.scale());
}

TEST(QuantizerPresets, PerChannelWeights) {
    QuantizeOptions options;
    options.preset = Preset::kA8W8;
    options.per_channel = true;
    const Quantized quantized = quantize_fashion_cnn(options);
    check_onnx_model(quantized.qdq.model, "per-channel");
    const auto initializers = initializers_by_name(quantized.qdq.model);
    EXPECT_EQ(initializers.at("layer1.0.weight_scale")->dims(0), 32);
    EXPECT_EQ(initializers.at("layer2.0.weight_scale")->dims(0), 64);
    EXPECT_EQ(initializers.at("fc1.weight_scale")->dims(0), 600);
    EXPECT_EQ(initializers.at("fc1.bias_scale")->dims(0), 600);
    for (const onnx::NodeProto& node : quantized.qdq.model.graph().node()) {
        if (node.name() == "fc1.weight_DequantizeLinear") {
            ASSERT_EQ(node.attribute_size(), 1);
            EXPECT_EQ(node.attribute(0).name(), "axis");
            EXPECT_EQ(node.attribute(0).i(), 0) << "Gemm transB = 1: rows are output channels";
        }
    }
    EXPECT_GT(logit_sqnr_db(quantized), kMinimumLogitSqnrDb);
}

TEST(QuantizerPresets, Xint8RejectsNpuUnsupportedOptions) {
    QuantizeOptions per_channel;
    per_channel.per_channel = true;
    QuantizeOptions float_scales;
    float_scales.power_of_two = false;
    QuantizeOptions int8_bias_float_scales;
    int8_bias_float_scales.preset = Preset::kA8W8;
    int8_bias_float_scales.bias = BiasMode::kInt8PowerOfTwo;
    for (const QuantizeOptions& options : {per_channel, float_scales, int8_bias_float_scales}) {
        try {
            resolve_scheme(options);
            FAIL() << "no error";
        } catch (const Error& error) {
            EXPECT_EQ(error.code(), ExitCode::kUsage);
            EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos);
        }
    }
}

TEST(QuantizerPresets, Xint8DefaultsToMinMseAndInt8Bias) {
    const QuantScheme scheme = resolve_scheme({});
    EXPECT_EQ(scheme.method.method, CalibrationMethod::kMinMse);
    EXPECT_EQ(scheme.bias, BiasMode::kInt8PowerOfTwo);
    EXPECT_TRUE(scheme.power_of_two);
    EXPECT_FALSE(scheme.per_channel);
}

// Calibration batch size 1 and 100 give identical scales for every method. The test compares the
// whole QDQ model's bytes, which contain every scale.
TEST(QuantizerPresets, BatchSizeDoesNotChangeAnyMethod) {
    for (const CalibrationMethod method :
         {CalibrationMethod::kMinMax, CalibrationMethod::kNonOverflow, CalibrationMethod::kMinMse,
          CalibrationMethod::kPercentile, CalibrationMethod::kEntropy}) {
        for (const Preset preset : {Preset::kXint8, Preset::kU8S8}) {
            QuantizeOptions one;
            one.preset = preset;
            one.method = method;
            one.calibration_batch_size = 1;
            QuantizeOptions hundred = one;
            hundred.calibration_batch_size = 100;
            const Quantized a = quantize_fashion_cnn(one);
            const Quantized b = quantize_fashion_cnn(hundred);
            EXPECT_EQ(serialize(a.qdq.model), serialize(b.qdq.model))
                << calibration_method_name(method) << " " << preset_name(preset);
        }
    }
}

TEST(QuantizerPresets, ExcludedLayerStaysFloat) {
    QuantizeOptions options;
    options.exclude = {"/fc3/Gemm"};
    const Quantized quantized = quantize_fashion_cnn(options);
    check_onnx_model(quantized.qdq.model, "excluded");
    ASSERT_EQ(quantized.qdq.float_nodes.size(), 1u);
    EXPECT_EQ(quantized.qdq.float_nodes[0].name, "/fc3/Gemm");
    const auto initializers = initializers_by_name(quantized.qdq.model);
    EXPECT_TRUE(initializers.contains("fc3.weight")) << "the float weight stays";
    EXPECT_FALSE(initializers.contains("fc3.weight_quantized"));
    // The Gemm's input keeps its Q/DQ pair (fc2's output), its own output has none.
    EXPECT_FALSE(initializers.contains("output_scale"));
    EXPECT_TRUE(initializers.contains("/fc2/Gemm_output_0_scale"));
    EXPECT_GT(logit_sqnr_db(quantized), kMinimumLogitSqnrDb);
}

TEST(QuantizerPresets, ExcludeByOpTypeAndUnknownName) {
    QuantizeOptions by_type;
    by_type.exclude = {"Gemm"};
    const Quantized quantized = quantize_fashion_cnn(by_type);
    EXPECT_EQ(quantized.qdq.float_nodes.size(), 3u);

    QuantizeOptions unknown;
    unknown.exclude = {"/no/such/node"};
    try {
        quantize_fashion_cnn(unknown);
        FAIL() << "no error for an --exclude entry that matches nothing";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUsage);
        EXPECT_NE(std::string(error.what()).find("/no/such/node"), std::string::npos);
    }
}

// x -> Relu -> Erf -> Relu -> y: Erf is not quantizable. It stays in float between a
// DequantizeLinear and a QuantizeLinear, with a warning; --strict makes it an error.
onnx::ModelProto relu_erf_relu_model() {
    onnx::ModelProto model;
    model.set_ir_version(7);
    model.add_opset_import()->set_version(13);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("relu_erf_relu");
    auto add_value = [](onnx::ValueInfoProto* value, const std::string& name) {
        value->set_name(name);
        auto* type = value->mutable_type()->mutable_tensor_type();
        type->set_elem_type(onnx::TensorProto::FLOAT);
        auto* shape = type->mutable_shape();
        shape->add_dim()->set_dim_param("N");
        for (const int64_t size : {1, 28, 28}) {
            shape->add_dim()->set_dim_value(size);
        }
    };
    add_value(graph.add_input(), "x");
    add_value(graph.add_output(), "y");
    const std::vector<std::tuple<std::string, std::string, std::string, std::string>> nodes = {
        {"Relu", "first_relu", "x", "a"},
        {"Erf", "my_erf", "a", "b"},
        {"Relu", "second_relu", "b", "y"}};
    for (const auto& [op, name, input, output] : nodes) {
        onnx::NodeProto* node = graph.add_node();
        node->set_op_type(op);
        node->set_name(name);
        node->add_input(input);
        node->add_output(output);
    }
    return model;
}

TEST(QuantizerPresets, UnsupportedOperatorStaysFloat) {
    const onnx::ModelProto model = relu_erf_relu_model();
    const LabelledImages images = test::make_synthetic_images(8, 3);
    LabelledImagesReader reader(images, 4);
    const QdqModel qdq = quantize_to_qdq(model, reader, {}, SessionConfig{});
    check_onnx_model(qdq.model, "relu_erf_relu");
    ASSERT_EQ(qdq.float_nodes.size(), 1u);
    EXPECT_EQ(qdq.float_nodes[0].name, "my_erf");
    ASSERT_FALSE(qdq.warnings.empty());
    EXPECT_NE(qdq.warnings[0].find("my_erf"), std::string::npos);

    // Erf reads a DequantizeLinear output and its output is quantized for the second Relu.
    const std::map<std::string, int> counts = count_op_types(qdq.model);
    EXPECT_EQ(counts.at("QuantizeLinear"), 4);  // x, a, b, y
    OrtModel session(serialize(qdq.model), "relu_erf_relu", SessionConfig{});
    const std::vector<float> input = gather_image_range(images, 0, 2);
    EXPECT_EQ(session.run(input, {2, 1, 28, 28})[0].values.size(), input.size());
}

TEST(QuantizerPresets, StrictRejectsUnsupportedOperator) {
    const onnx::ModelProto model = relu_erf_relu_model();
    const LabelledImages images = test::make_synthetic_images(2, 1);
    LabelledImagesReader reader(images, 1);
    QuantizeOptions options;
    options.strict = true;
    try {
        quantize_to_qdq(model, reader, options, SessionConfig{});
        FAIL() << "no error for an unsupported operator under --strict";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUnsupported);
        const std::string message = error.what();
        EXPECT_NE(message.find("my_erf"), std::string::npos) << message;
        EXPECT_NE(message.find("Erf"), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
}

}  // namespace
}  // namespace edgeq
