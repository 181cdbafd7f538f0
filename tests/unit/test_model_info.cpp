// describe_model on FashionCNN with random weights, in float and quantized with each preset:
// node and operator counts, parameter counts, the quantization summary, and the text and JSON.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_info.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/quant/qdq_summary.h"
#include "support/model_support.h"

namespace edgeq {
namespace {

using json = nlohmann::ordered_json;

// Images for calibration. The summary reads formats, not scale values, so a few suffice.
constexpr int64_t kCalibrationImages = 16;

// FashionCNN's layers (fashion_cnn.h): Conv 1->32 3x3, Conv 32->64 3x3, Linear 2304->600,
// 600->120, 120->10. Weights plus biases, with BatchNorm folded into the convolutions.
constexpr int64_t kFashionCnnParameters = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) +
                                          (2304 * 600 + 600) + (600 * 120 + 120) + (120 * 10 + 10);
constexpr int64_t kFashionCnnParameterTensors = 10;

onnx::ModelProto float_fashion_cnn() {
    FashionCnn model = test::make_random_fashion_cnn(3);
    return export_fashion_cnn(export_state_dict(model));
}

onnx::ModelProto quantized_fashion_cnn(const QuantizeOptions& options = {}) {
    const LabelledImages images = test::make_synthetic_images(kCalibrationImages, 5);
    LabelledImagesReader reader(images, options.calibration_batch_size);
    return quantize_to_qdq(float_fashion_cnn(), reader, options, SessionConfig{}).model;
}

int op_count(const ModelInfo& info, const std::string& op_type) {
    for (const auto& [name, count] : info.op_counts) {
        if (name == op_type) {
            return count;
        }
    }
    return 0;
}

TEST(ModelInfo, QdqNodeAndOpCounts) {
    const onnx::ModelProto model = quantized_fashion_cnn();
    const ModelInfo info = describe_model(model, "qdq.onnx");
    EXPECT_EQ(info.node_count, 38);
    EXPECT_EQ(op_count(info, "QuantizeLinear"), 9);
    EXPECT_EQ(op_count(info, "DequantizeLinear"), 19);
    EXPECT_EQ(op_count(info, "Conv"), 2);
    EXPECT_EQ(op_count(info, "Relu"), 2);
    EXPECT_EQ(op_count(info, "MaxPool"), 2);
    EXPECT_EQ(op_count(info, "Reshape"), 1);
    EXPECT_EQ(op_count(info, "Gemm"), 3);

    // Every op type once, and the counts add up to the nodes.
    EXPECT_EQ(info.op_counts.size(), count_op_types(model).size());
    int total = 0;
    for (const auto& [name, count] : info.op_counts) {
        total += count;
    }
    EXPECT_EQ(total, info.node_count);
}

TEST(ModelInfo, OpCountsSortedByCountThenName) {
    const ModelInfo info = describe_model(quantized_fashion_cnn(), "qdq.onnx");
    ASSERT_FALSE(info.op_counts.empty());
    EXPECT_EQ(info.op_counts.front().first, "DequantizeLinear");
    for (size_t i = 1; i < info.op_counts.size(); ++i) {
        const auto& previous = info.op_counts[i - 1];
        const auto& current = info.op_counts[i];
        EXPECT_GE(previous.second, current.second) << current.first;
        if (previous.second == current.second) {
            EXPECT_LT(previous.first, current.first);
        }
    }
}

TEST(ModelInfo, FloatModelParameters) {
    const ModelInfo info = describe_model(float_fashion_cnn(), "float.onnx");
    EXPECT_EQ(info.parameters.float_tensors, kFashionCnnParameterTensors);
    EXPECT_EQ(info.parameters.float_elements, kFashionCnnParameters);
    EXPECT_EQ(info.parameters.quantized_tensors, 0);
    EXPECT_EQ(info.parameters.total_elements(), kFashionCnnParameters);
    // The Reshape's int64 target shape [-1, 2304].
    EXPECT_EQ(info.parameters.other_tensors, 1);
    EXPECT_EQ(info.parameters.other_elements, 2);
}

TEST(ModelInfo, QdqParametersMatchFloat) {
    const ModelInfo float_info = describe_model(float_fashion_cnn(), "float.onnx");
    const ModelInfo info = describe_model(quantized_fashion_cnn(), "qdq.onnx");
    EXPECT_EQ(info.parameters.float_tensors, 0);
    EXPECT_EQ(info.parameters.quantized_tensors, float_info.parameters.float_tensors);
    EXPECT_EQ(info.parameters.quantized_elements, float_info.parameters.float_elements);
    EXPECT_EQ(info.parameters.total_elements(), kFashionCnnParameters);
    EXPECT_GT(info.parameters.quantization_tensors, 0);
}

TEST(ModelInfo, FloatModelHeaderAndIo) {
    const ModelInfo info = describe_model(float_fashion_cnn(), "float.onnx");
    EXPECT_EQ(info.file, "float.onnx");
    EXPECT_GT(info.file_bytes, kFashionCnnParameters * static_cast<int64_t>(sizeof(float)));
    EXPECT_EQ(info.ir_version, kExportIrVersion);
    ASSERT_EQ(info.opsets.size(), 1u);
    EXPECT_EQ(info.opsets[0].first, "ai.onnx");
    EXPECT_EQ(info.opsets[0].second, kExportOpset);
    EXPECT_EQ(info.producer, "edgeq 0.1.0");
    EXPECT_TRUE(info.checker_error.empty()) << info.checker_error;
    EXPECT_FALSE(info.quantization.has_value());
    EXPECT_EQ(info.node_count, 10);

    ASSERT_EQ(info.inputs.size(), 1u);
    EXPECT_EQ(info.inputs[0].name, "input");
    EXPECT_EQ(info.inputs[0].element_type, "float");
    EXPECT_EQ(info.inputs[0].dims, (std::vector<std::string>{"batch_size", "1", "28", "28"}));
    ASSERT_EQ(info.outputs.size(), 1u);
    EXPECT_EQ(info.outputs[0].dims, (std::vector<std::string>{"batch_size", "10"}));
}

TEST(ModelInfo, UnknownDimShownAsQuestionMark) {
    onnx::ModelProto model = float_fashion_cnn();
    model.mutable_graph()
        ->mutable_input(0)
        ->mutable_type()
        ->mutable_tensor_type()
        ->mutable_shape()
        ->mutable_dim(0)
        ->Clear();
    const ModelInfo info = describe_model(model, "float.onnx");
    ASSERT_EQ(info.inputs.size(), 1u);
    EXPECT_EQ(info.inputs[0].dims.front(), "?");
}

TEST(ModelInfo, Xint8SummaryPowerOfTwo) {
    const ModelInfo info = describe_model(quantized_fashion_cnn(), "qdq.onnx");
    ASSERT_TRUE(info.quantization.has_value());
    const QuantizationInfo& q = *info.quantization;
    EXPECT_EQ(q.quantize_nodes, 9);
    EXPECT_EQ(q.dequantize_nodes, 19);
    EXPECT_EQ(q.activation_types, std::vector<std::string>{"uint8"});
    EXPECT_TRUE(q.symmetric_activations);
    EXPECT_EQ(q.weight_types, std::vector<std::string>{"int8"});
    EXPECT_EQ(q.bias_types, std::vector<std::string>{"int8"});
    EXPECT_GT(q.scale_count, 0);
    EXPECT_TRUE(q.all_scales_power_of_two());
    // Five weights and five biases, each through its own DequantizeLinear.
    EXPECT_EQ(q.per_tensor_weights, 10);
    EXPECT_EQ(q.per_channel_weights, 0);
    EXPECT_EQ(q.granularity, "per-tensor");
    EXPECT_EQ(q.preset, "XINT8");
}

TEST(ModelInfo, OneFloatScaleBreaksPowerOfTwo) {
    onnx::ModelProto model = quantized_fashion_cnn();
    const ModelInfo before = describe_model(model, "qdq.onnx");
    ASSERT_TRUE(before.quantization.has_value());

    // 0.3 is not 2^k for any k. It replaces the first QuantizeLinear's scale.
    std::string scale_name;
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (node.op_type() == "QuantizeLinear") {
            scale_name = node.input(1);
            break;
        }
    }
    const float not_power_of_two = 0.3f;
    for (onnx::TensorProto& tensor : *model.mutable_graph()->mutable_initializer()) {
        if (tensor.name() == scale_name) {
            tensor.set_raw_data(&not_power_of_two, sizeof(not_power_of_two));
        }
    }

    const ModelInfo after = describe_model(model, "qdq.onnx");
    ASSERT_TRUE(after.quantization.has_value());
    EXPECT_EQ(after.quantization->power_of_two_scales,
              before.quantization->power_of_two_scales - 1);
    EXPECT_FALSE(after.quantization->all_scales_power_of_two());
    EXPECT_NE(after.quantization->preset, "XINT8");
}

TEST(ModelInfo, PresetsRecognized) {
    for (const Preset preset : {Preset::kU8S8, Preset::kS8S8, Preset::kA8W8, Preset::kA16W8}) {
        QuantizeOptions options;
        options.preset = preset;
        const ModelInfo info = describe_model(quantized_fashion_cnn(options), "qdq.onnx");
        ASSERT_TRUE(info.quantization.has_value()) << preset_name(preset);
        EXPECT_EQ(info.quantization->preset, preset_name(preset));
        EXPECT_FALSE(info.quantization->all_scales_power_of_two()) << preset_name(preset);
        EXPECT_EQ(info.quantization->weight_types, std::vector<std::string>{"int8"})
            << preset_name(preset);
    }
}

TEST(ModelInfo, PerChannelWeights) {
    QuantizeOptions options;
    options.preset = Preset::kA8W8;
    options.per_channel = true;
    const ModelInfo info = describe_model(quantized_fashion_cnn(options), "qdq.onnx");
    ASSERT_TRUE(info.quantization.has_value());
    EXPECT_GT(info.quantization->per_channel_weights, 0);
    EXPECT_NE(info.quantization->granularity, "per-tensor");
    EXPECT_EQ(info.quantization->activation_types, std::vector<std::string>{"int8"});
}

TEST(ModelInfo, TextListsEveryOpType) {
    const ModelInfo info = describe_model(quantized_fashion_cnn(), "qdq.onnx");
    const std::string text = format_model_info(info);
    for (const auto& [op_type, count] : info.op_counts) {
        EXPECT_NE(text.find(op_type), std::string::npos) << op_type << "\n" << text;
    }
    EXPECT_NE(text.find("qdq.onnx"), std::string::npos) << text;
    EXPECT_NE(text.find("XINT8"), std::string::npos) << text;
}

TEST(ModelInfo, JsonFields) {
    const ModelInfo info = describe_model(quantized_fashion_cnn(), "qdq.onnx");
    const json parsed = json::parse(model_info_json(info).dump());
    EXPECT_EQ(parsed.at("file"), "qdq.onnx");
    EXPECT_EQ(parsed.at("node_count"), 38);
    EXPECT_EQ(parsed.at("op_counts").at("QuantizeLinear"), 9);
    EXPECT_EQ(parsed.at("op_counts").at("DequantizeLinear"), 19);
    EXPECT_EQ(parsed.at("op_counts").begin().key(), "DequantizeLinear");
    EXPECT_EQ(parsed.at("opsets").at("ai.onnx"), kExportOpset);
    EXPECT_EQ(parsed.at("inputs").at(0).at("shape").at(0), "batch_size");
    EXPECT_EQ(parsed.at("inputs").at(0).at("shape").at(1), 1);
    EXPECT_EQ(parsed.at("parameters").at("total_elements"), kFashionCnnParameters);
    EXPECT_EQ(parsed.at("quantization").at("preset"), "XINT8");
    EXPECT_EQ(parsed.at("quantization").at("all_scales_power_of_two"), true);
    EXPECT_TRUE(parsed.at("placement").is_null());
}

TEST(ModelInfo, JsonFloatModelHasNoQuantization) {
    const json parsed = model_info_json(describe_model(float_fashion_cnn(), "float.onnx"));
    EXPECT_TRUE(parsed.at("quantization").is_null());
    EXPECT_EQ(parsed.at("parameters").at("float").at("tensors"), kFashionCnnParameterTensors);
}

}  // namespace
}  // namespace edgeq
