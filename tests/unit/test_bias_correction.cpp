// Empirical bias correction on QDQ models of FashionCNN with random weights: the per-channel shift
// of each layer's output shrinks to at most half a bias step, only bias integers change, and
// layers without a bias are reported and left alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/bias_correction.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "support/model_support.h"

namespace edgeq {
namespace {

// Absolute error allowed on a per-channel output mean between two passes of the same layer.
// Moving a bias by d moves every output of its channel by d, up to the float32 rounding of the
// output. The layer outputs of these models stay within +-2^6 (about +-31 on the calibration
// images), where float32 values are 2^-18 (3.8e-6) apart, and the two passes round once each.
constexpr double kMeanNoise = 1e-5;

// The coarse first layer must start at least this many int32 bias steps away from the float
// model, so that the test shows a correction and not rounding noise (which stays below half a
// step). This fixture starts about 14 steps away.
constexpr double kMinimumShiftInSteps = 5.0;

// Factor by which conv1's largest weight is raised above the others: the per-tensor int8 weight
// scale then grows by the same factor and most of conv1's weights round to 0 or +-1 steps.
constexpr float kOutlierFactor = 40.0f;

constexpr int64_t kCalibrationImages = 64;

struct CorrectionFixture {
    onnx::ModelProto float_model;
    QdqModel qdq;
    LabelledImages images;
};

onnx::TensorProto& find_initializer(onnx::ModelProto& model, const std::string& name) {
    for (onnx::TensorProto& tensor : *model.mutable_graph()->mutable_initializer()) {
        if (tensor.name() == name) {
            return tensor;
        }
    }
    throw std::runtime_error("no initializer " + name);
}

// FashionCNN with random weights, conv1's first weight made kOutlierFactor times the largest.
onnx::ModelProto make_coarse_fashion_cnn(uint64_t seed) {
    FashionCnn network = test::make_random_fashion_cnn(seed);
    onnx::ModelProto model = export_fashion_cnn(export_state_dict(network));
    onnx::TensorProto& weight = find_initializer(model, "layer1.0.weight");
    std::vector<float> values = read_float_tensor(weight);
    float largest = 0;
    for (const float value : values) {
        largest = std::max(largest, std::abs(value));
    }
    values[0] = kOutlierFactor * largest;
    const std::vector<int64_t> shape(weight.dims().begin(), weight.dims().end());
    weight = make_float_tensor(weight.name(), shape, values);
    return model;
}

CorrectionFixture quantize_fixture(onnx::ModelProto float_model, BiasMode bias_mode,
                                   uint64_t seed = 17) {
    CorrectionFixture fixture;
    fixture.float_model = std::move(float_model);
    fixture.images = test::make_synthetic_images(kCalibrationImages, seed);
    QuantizeOptions options;
    options.bias = bias_mode;
    LabelledImagesReader reader(fixture.images, 16);
    fixture.qdq = quantize_to_qdq(fixture.float_model, reader, options, SessionConfig{});
    return fixture;
}

BiasCorrectionReport correct(CorrectionFixture& fixture) {
    LabelledImagesReader reader(fixture.images, 16);
    return correct_biases(fixture.float_model, fixture.qdq.model, reader, SessionConfig{});
}

std::string serialize(const google::protobuf::MessageLite& message) {
    std::string bytes;
    message.SerializeToString(&bytes);
    return bytes;
}

std::map<std::string, std::string> initializer_bytes(const onnx::ModelProto& model) {
    std::map<std::string, std::string> bytes;
    for (const onnx::TensorProto& tensor : model.graph().initializer()) {
        bytes[tensor.name()] = serialize(tensor);
    }
    return bytes;
}

TEST(BiasCorrection, ShrinksShiftOfCoarseLayer) {
    CorrectionFixture fixture = quantize_fixture(make_coarse_fashion_cnn(21), BiasMode::kInt32);
    const BiasCorrectionReport report = correct(fixture);
    ASSERT_FALSE(report.layers.empty());
    const CorrectedLayer& conv1 = report.layers[0];
    EXPECT_EQ(conv1.layer, "/layer1/Conv");
    EXPECT_EQ(conv1.bias, "layer1.0.bias_quantized");
    EXPECT_EQ(conv1.bias_type, "INT32");
    EXPECT_EQ(conv1.channels, 32);
    EXPECT_GT(conv1.mean_abs_shift_before, kMinimumShiftInSteps * conv1.max_bias_step);
    EXPECT_LT(conv1.mean_abs_shift_after, conv1.mean_abs_shift_before);
    EXPECT_LE(conv1.mean_abs_shift_after, 0.5 * conv1.max_bias_step + kMeanNoise);
    EXPECT_EQ(conv1.saturated_entries, 0);
}

TEST(BiasCorrection, LeavesHalfStepAtMost) {
    for (const BiasMode mode : {BiasMode::kInt32, BiasMode::kInt8PowerOfTwo}) {
        SCOPED_TRACE(bias_mode_name(mode));
        CorrectionFixture fixture = quantize_fixture(make_coarse_fashion_cnn(22), mode);
        const BiasCorrectionReport report = correct(fixture);
        // conv1, conv2, fc1, fc2, fc3; one float pass, one pass per layer and a last one.
        ASSERT_EQ(report.layers.size(), 5u);
        EXPECT_TRUE(report.uncorrected.empty());
        EXPECT_EQ(report.model_passes, 7);
        int checked_layers = 0;
        for (const CorrectedLayer& layer : report.layers) {
            if (mode == BiasMode::kInt32) {
                // Corrections of a few units of the output are far inside 2^31 int32 steps.
                EXPECT_EQ(layer.saturated_entries, 0) << layer.layer;
            }
            if (layer.saturated_entries > 0) {
                continue;  // a clamped entry may leave any shift
            }
            // The new bias is the exact target rounded to its grid, so each channel is left at
            // most half a step away.
            EXPECT_LE(layer.mean_abs_shift_after, 0.5 * layer.max_bias_step + kMeanNoise)
                << layer.layer;
            ++checked_layers;
        }
        EXPECT_GT(checked_layers, 0) << "every layer saturated; nothing was checked";
    }
}

TEST(BiasCorrection, ChangesOnlyBiasIntegers) {
    CorrectionFixture fixture = quantize_fixture(make_coarse_fashion_cnn(23), BiasMode::kInt32);
    const onnx::ModelProto before = fixture.qdq.model;
    const BiasCorrectionReport report = correct(fixture);
    check_onnx_model(fixture.qdq.model, "bias-corrected QDQ model");

    const std::map<std::string, std::string> old_bytes = initializer_bytes(before);
    const std::map<std::string, std::string> new_bytes = initializer_bytes(fixture.qdq.model);
    ASSERT_EQ(old_bytes.size(), new_bytes.size());
    std::set<std::string> corrected;
    for (const CorrectedLayer& layer : report.layers) {
        corrected.insert(layer.bias);
    }
    int changed = 0;
    for (const auto& [name, bytes] : old_bytes) {
        ASSERT_TRUE(new_bytes.contains(name)) << name;
        if (new_bytes.at(name) != bytes) {
            ++changed;
            EXPECT_TRUE(corrected.contains(name)) << "changed but not a corrected bias: " << name;
        }
    }
    EXPECT_GT(changed, 0);

    ASSERT_EQ(before.graph().node_size(), fixture.qdq.model.graph().node_size());
    for (int n = 0; n < before.graph().node_size(); ++n) {
        EXPECT_EQ(serialize(before.graph().node(n)), serialize(fixture.qdq.model.graph().node(n)));
    }
}

TEST(BiasCorrection, SameBytes) {
    CorrectionFixture first = quantize_fixture(make_coarse_fashion_cnn(24), BiasMode::kInt32);
    CorrectionFixture second = quantize_fixture(make_coarse_fashion_cnn(24), BiasMode::kInt32);
    correct(first);
    correct(second);
    EXPECT_EQ(serialize(first.qdq.model), serialize(second.qdq.model));
}

TEST(BiasCorrection, ReportsLayerWithoutBias) {
    onnx::ModelProto float_model = make_coarse_fashion_cnn(25);
    for (onnx::NodeProto& node : *float_model.mutable_graph()->mutable_node()) {
        if (node.name() == "/fc2/Gemm") {
            node.mutable_input()->RemoveLast();
        }
    }
    auto& initializers = *float_model.mutable_graph()->mutable_initializer();
    initializers.erase(
        std::remove_if(initializers.begin(), initializers.end(),
                       [](const onnx::TensorProto& tensor) { return tensor.name() == "fc2.bias"; }),
        initializers.end());

    CorrectionFixture fixture = quantize_fixture(float_model, BiasMode::kInt32);
    const BiasCorrectionReport report = correct(fixture);
    EXPECT_EQ(report.layers.size(), 4u);
    ASSERT_EQ(report.uncorrected.size(), 1u);
    EXPECT_EQ(report.uncorrected[0].layer, "/fc2/Gemm");
    EXPECT_NE(report.uncorrected[0].reason.find("no bias"), std::string::npos)
        << report.uncorrected[0].reason;
}

TEST(BiasCorrection, CountsSaturatedEntries) {
    CorrectionFixture fixture =
        quantize_fixture(make_coarse_fashion_cnn(26), BiasMode::kInt8PowerOfTwo);

    // Raise the float model's conv1 bias by 1000 int8 steps after quantization, so that the
    // corrected integers of every channel land far above 127.
    const onnx::TensorProto& scale = find_initializer(fixture.qdq.model, "layer1.0.bias_scale");
    const float step = read_float_tensor(scale)[0];
    onnx::TensorProto& bias = find_initializer(fixture.float_model, "layer1.0.bias");
    std::vector<float> values = read_float_tensor(bias);
    for (float& value : values) {
        value += 1000.0f * step;
    }
    bias = make_float_tensor(bias.name(), {static_cast<int64_t>(values.size())}, values);

    const BiasCorrectionReport report = correct(fixture);
    ASSERT_FALSE(report.layers.empty());
    EXPECT_EQ(report.layers[0].layer, "/layer1/Conv");
    EXPECT_EQ(report.layers[0].saturated_entries, 32);
    const onnx::TensorProto& stored =
        find_initializer(fixture.qdq.model, "layer1.0.bias_quantized");
    ASSERT_EQ(stored.data_type(), onnx::TensorProto::INT8);
    for (const char byte : stored.raw_data()) {
        EXPECT_EQ(static_cast<int8_t>(byte), 127);
    }
}

}  // namespace
}  // namespace edgeq
