// AdaRound on the QDQ model of a random FashionCNN and on a one-layer Gemm whose best rounding a
// brute-force search finds: floor-or-ceil rounding, no loss against nearest rounding, a valid
// model, determinism, and the known optimum.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <tuple>

#include "edgeq/common/error.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/adaround.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/runtime/ort_session.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

// Few steps keep the test fast; the rounding already moves away from nearest in this many.
constexpr int64_t kTestIterations = 100;
constexpr int64_t kCalibrationImages = 64;

// AdaRound's output MSE may exceed nearest rounding's by this fraction: the optimization runs on
// random batches and the hard rounding at the end can lose a little against the soft weights.
// A wrong sign or a wrong scale in the soft weight makes the error grow many times over.
constexpr double kMseIncreaseTolerance = 0.05;

// The layer-output MSE that ONNX Runtime measures must agree with the report up to float32
// rounding of the layer's sums (relative).
constexpr double kMseAgreementTolerance = 1e-3;

// Logit SQNR of the rounded model against the float model, as in test_qdq.cpp: 8-bit
// quantization of FashionCNN gives 25-35 dB; weights written with a wrong byte order or sign
// fall below 5 dB.
constexpr double kMinimumLogitSqnrDb = 15.0;

std::map<std::string, const onnx::TensorProto*> initializers_by_name(
    const onnx::ModelProto& model) {
    std::map<std::string, const onnx::TensorProto*> result;
    for (const onnx::TensorProto& tensor : model.graph().initializer()) {
        result[tensor.name()] = &tensor;
    }
    return result;
}

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

float scalar_float(const onnx::TensorProto& tensor) {
    float value = 0;
    std::memcpy(&value, tensor.raw_data().data(), sizeof(value));
    return value;
}

std::vector<int64_t> read_int8(const onnx::TensorProto& tensor) {
    std::vector<int64_t> values;
    for (const char byte : tensor.raw_data()) {
        values.push_back(static_cast<int8_t>(byte));
    }
    return values;
}

struct AdaRoundFixture {
    onnx::ModelProto float_model;
    onnx::ModelProto nearest_model;  // the QDQ model as the quantizer wrote it
    onnx::ModelProto rounded_model;  // after AdaRound
    LabelledImages images;
    AdaRoundReport report;
};

AdaRoundOptions test_options() {
    AdaRoundOptions options;
    options.iterations = kTestIterations;
    options.batch_size = 16;
    options.max_samples = kCalibrationImages;
    return options;
}

AdaRoundFixture run_adaround(uint64_t seed = 11) {
    AdaRoundFixture fixture;
    FashionCnn model = test::make_random_fashion_cnn(seed);
    fixture.float_model = export_fashion_cnn(export_state_dict(model));
    fixture.images = test::make_synthetic_images(kCalibrationImages, seed);
    LabelledImagesReader reader(fixture.images, 20);
    fixture.nearest_model = quantize_to_qdq(fixture.float_model, reader, {}, SessionConfig{}).model;
    fixture.rounded_model = fixture.nearest_model;
    fixture.report = adaround_weights(fixture.float_model, fixture.rounded_model, reader,
                                      SessionConfig{}, test_options());
    return fixture;
}

// AdaRound takes a few seconds here, so the tests share one run.
const AdaRoundFixture& shared_fixture() {
    static const AdaRoundFixture fixture = run_adaround();
    return fixture;
}

TEST(AdaRound, RoundsEveryLayer) {
    const AdaRoundReport& report = shared_fixture().report;
    ASSERT_EQ(report.layers.size(), 5u);
    int64_t flipped = 0;
    for (const AdaRoundLayerReport& layer : report.layers) {
        EXPECT_TRUE(layer.rounded) << layer.node << ": " << layer.note;
        EXPECT_EQ(layer.samples, kCalibrationImages) << layer.node;
        EXPECT_EQ(layer.iterations, kTestIterations) << layer.node;
        EXPECT_GT(layer.weight_count, 0) << layer.node;
        flipped += layer.flipped_weights;
    }
    EXPECT_EQ(report.layers[0].node, "/layer1/Conv");
    EXPECT_EQ(report.layers[0].weight, "layer1.0.weight_quantized");
    EXPECT_EQ(report.layers[4].node, "/fc3/Gemm");
    EXPECT_GT(flipped, 0) << "AdaRound kept nearest rounding everywhere";
}

TEST(AdaRound, RoundsToFloorOrCeil) {
    const AdaRoundFixture& fixture = shared_fixture();
    const auto float_initializers = initializers_by_name(fixture.float_model);
    const auto rounded_initializers = initializers_by_name(fixture.rounded_model);
    const auto nearest_initializers = initializers_by_name(fixture.nearest_model);
    for (const std::string name :
         {"layer1.0.weight", "layer2.0.weight", "fc1.weight", "fc2.weight", "fc3.weight"}) {
        const onnx::TensorProto& rounded = *rounded_initializers.at(name + "_quantized");
        const onnx::TensorProto& nearest = *nearest_initializers.at(name + "_quantized");
        EXPECT_EQ(rounded.data_type(), onnx::TensorProto::INT8) << name;
        EXPECT_TRUE(std::equal(rounded.dims().begin(), rounded.dims().end(), nearest.dims().begin(),
                               nearest.dims().end()))
            << name;
        const std::vector<float> weight = read_float_tensor(*float_initializers.at(name));
        const std::vector<int64_t> steps = read_int8(rounded);
        ASSERT_EQ(steps.size(), weight.size()) << name;
        const onnx::TensorProto& scale_tensor = *rounded_initializers.at(name + "_scale");
        ASSERT_EQ(scale_tensor.dims_size(), 0) << name << ": this test reads per-tensor scales";
        const double scale = scalar_float(scale_tensor);
        // Zero point 0 (the XINT8 weights), so the step is floor or ceil of W / s, saturated.
        int64_t outside = 0;
        for (size_t i = 0; i < weight.size(); ++i) {
            const double ratio = double{weight[i]} / scale;
            const auto low =
                std::clamp(static_cast<int64_t>(std::floor(ratio)), int64_t{-128}, int64_t{127});
            const auto high =
                std::clamp(static_cast<int64_t>(std::ceil(ratio)), int64_t{-128}, int64_t{127});
            outside += (steps[i] != low && steps[i] != high) ? 1 : 0;
        }
        EXPECT_EQ(outside, 0) << name << ": steps neither floor nor ceil of W / s";
    }
}

TEST(AdaRound, OutputMseNotAboveNearest) {
    for (const AdaRoundLayerReport& layer : shared_fixture().report.layers) {
        EXPECT_GT(layer.nearest_mse, 0.0) << layer.node;
        EXPECT_LE(layer.adaround_mse, layer.nearest_mse * (1.0 + kMseIncreaseTolerance))
            << layer.node;
    }
}

// The first layer's input does not depend on AdaRound, so ONNX Runtime can measure its output
// error in the models before and after independently of the library's own replay.
TEST(AdaRound, ReportMatchesOnnxRuntime) {
    const AdaRoundFixture& fixture = shared_fixture();
    const std::string conv_output = "/layer1/Conv_output_0";
    auto collect = [&](const onnx::ModelProto& model) {
        std::vector<float> values;
        LabelledImagesReader reader(fixture.images, 20);
        visit_calibration_outputs(model, {conv_output}, reader, SessionConfig{}, "test",
                                  [&](size_t, const FloatOutput& output) {
                                      values.insert(values.end(), output.values.begin(),
                                                    output.values.end());
                                  });
        return values;
    };
    const std::vector<float> expected = collect(fixture.float_model);
    auto mse = [&](const std::vector<float>& actual) {
        double sum = 0;
        for (size_t i = 0; i < expected.size(); ++i) {
            sum += (double{actual[i]} - expected[i]) * (double{actual[i]} - expected[i]);
        }
        return sum / static_cast<double>(expected.size());
    };
    const double nearest_mse = mse(collect(fixture.nearest_model));
    const double rounded_mse = mse(collect(fixture.rounded_model));

    const AdaRoundLayerReport& layer = fixture.report.layers.front();
    EXPECT_NEAR(layer.nearest_mse, nearest_mse, nearest_mse * kMseAgreementTolerance);
    EXPECT_NEAR(layer.adaround_mse, rounded_mse, rounded_mse * kMseAgreementTolerance);
    EXPECT_LE(rounded_mse, nearest_mse * (1.0 + kMseIncreaseTolerance));
}

TEST(AdaRound, ModelPassesCheckerAndRuns) {
    const AdaRoundFixture& fixture = shared_fixture();
    check_onnx_model(fixture.rounded_model, "adaround");
    EXPECT_EQ(fixture.rounded_model.graph().node_size(), fixture.nearest_model.graph().node_size());
    EXPECT_EQ(fixture.rounded_model.graph().initializer_size(),
              fixture.nearest_model.graph().initializer_size());

    OrtModel float_session(serialize(fixture.float_model), "float", SessionConfig{});
    OrtModel rounded_session(serialize(fixture.rounded_model), "adaround", SessionConfig{});
    const std::vector<float> batch = gather_image_range(fixture.images, 0, fixture.images.size());
    const std::vector<int64_t> shape = {fixture.images.size(), 1, 28, 28};
    const std::vector<float> expected = float_session.run(batch, shape)[0].values;
    const std::vector<float> actual = rounded_session.run(batch, shape)[0].values;
    ASSERT_EQ(actual.size(), expected.size());
    double signal = 0;
    double noise = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        signal += double{expected[i]} * expected[i];
        noise += (double{actual[i]} - expected[i]) * (double{actual[i]} - expected[i]);
    }
    EXPECT_GE(10.0 * std::log10(signal / std::max(noise, 1e-30)), kMinimumLogitSqnrDb);
}

TEST(AdaRound, SameSeedSameBytes) {
    const AdaRoundFixture again = run_adaround();
    EXPECT_EQ(serialize(again.rounded_model), serialize(shared_fixture().rounded_model));
}

TEST(AdaRound, RejectsZeroIterations) {
    const AdaRoundFixture& fixture = shared_fixture();
    onnx::ModelProto model = fixture.nearest_model;
    LabelledImagesReader reader(fixture.images, 20);
    AdaRoundOptions options;
    options.iterations = 0;
    try {
        adaround_weights(fixture.float_model, model, reader, SessionConfig{}, options);
        FAIL() << "no error for zero iterations";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUsage);
        EXPECT_NE(std::string(error.what()).find("iterations 0"), std::string::npos)
            << error.what();
    }
}

// ------------------------------------------------------------------------------------------------
// Hand-made one-layer models, so that the scales, the per-channel layout and the Conv attributes
// are fixed by the test and not by the quantizer's presets.

struct OneLayerSpec {
    std::string op_type;                // Conv, Gemm or MatMul
    std::vector<int64_t> input_shape;   // per sample, without the batch dimension
    std::vector<int64_t> output_shape;  // per sample, without the batch dimension
    std::vector<int64_t> weight_shape;
    std::vector<float> weight;
    std::vector<float> weight_scales;  // one entry, or one per channel along weight_axis
    int64_t weight_axis = 0;
    std::vector<float> bias;  // float, not quantized; empty for none
    std::vector<onnx::AttributeProto> attributes;
    float input_scale = 1.0f;  // the input is uint8 with zero point 128
};

struct OneLayerModels {
    onnx::ModelProto float_model;  // x -> layer -> y
    onnx::ModelProto qdq_model;    // x -> Q -> DQ -> layer(DQ(w_quantized), b) -> y
};

onnx::TensorProto make_byte_tensor(const std::string& name, onnx::TensorProto::DataType type,
                                   const std::vector<int64_t>& shape,
                                   const std::vector<int64_t>& values) {
    onnx::TensorProto tensor;
    tensor.set_name(name);
    tensor.set_data_type(type);
    for (const int64_t size : shape) {
        tensor.add_dims(size);
    }
    std::string raw;
    for (const int64_t value : values) {
        raw.push_back(static_cast<char>(static_cast<uint8_t>(value)));
    }
    tensor.set_raw_data(raw);
    return tensor;
}

onnx::AttributeProto make_string_attribute(const std::string& name, const std::string& value) {
    onnx::AttributeProto attribute;
    attribute.set_name(name);
    attribute.set_type(onnx::AttributeProto::STRING);
    attribute.set_s(value);
    return attribute;
}

onnx::NodeProto make_node(const std::string& op_type, const std::string& name,
                          const std::vector<std::string>& inputs, const std::string& output) {
    onnx::NodeProto node;
    node.set_op_type(op_type);
    node.set_name(name);
    for (const std::string& input : inputs) {
        node.add_input(input);
    }
    node.add_output(output);
    return node;
}

onnx::ModelProto make_empty_model(const OneLayerSpec& spec) {
    onnx::ModelProto model;
    model.set_ir_version(8);
    model.add_opset_import()->set_version(13);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("one_layer");
    onnx::ValueInfoProto* input = graph.add_input();
    input->set_name("x");
    auto* input_type = input->mutable_type()->mutable_tensor_type();
    input_type->set_elem_type(onnx::TensorProto::FLOAT);
    input_type->mutable_shape()->add_dim()->set_dim_param("batch");
    for (const int64_t size : spec.input_shape) {
        input_type->mutable_shape()->add_dim()->set_dim_value(size);
    }
    onnx::ValueInfoProto* output = graph.add_output();
    output->set_name("y");
    auto* output_type = output->mutable_type()->mutable_tensor_type();
    output_type->set_elem_type(onnx::TensorProto::FLOAT);
    output_type->mutable_shape()->add_dim()->set_dim_param("batch");
    for (const int64_t size : spec.output_shape) {
        output_type->mutable_shape()->add_dim()->set_dim_value(size);
    }
    return model;
}

OneLayerModels make_one_layer_models(const OneLayerSpec& spec) {
    OneLayerModels models{make_empty_model(spec), make_empty_model(spec)};
    std::vector<std::string> layer_inputs = {"x", "w"};
    if (!spec.bias.empty()) {
        layer_inputs.push_back("b");
        const std::vector<int64_t> bias_shape = {static_cast<int64_t>(spec.bias.size())};
        *models.float_model.mutable_graph()->add_initializer() =
            make_float_tensor("b", bias_shape, spec.bias);
        *models.qdq_model.mutable_graph()->add_initializer() =
            make_float_tensor("b", bias_shape, spec.bias);
    }

    onnx::GraphProto& float_graph = *models.float_model.mutable_graph();
    *float_graph.add_initializer() = make_float_tensor("w", spec.weight_shape, spec.weight);
    onnx::NodeProto layer = make_node(spec.op_type, "layer", layer_inputs, "y");
    for (const onnx::AttributeProto& attribute : spec.attributes) {
        *layer.add_attribute() = attribute;
    }
    *float_graph.add_node() = layer;

    // The weight rounded to nearest (ties to even), as a quantizer would store it.
    int64_t inner = 1;
    for (size_t d = static_cast<size_t>(spec.weight_axis) + 1; d < spec.weight_shape.size(); ++d) {
        inner *= spec.weight_shape[d];
    }
    std::vector<int64_t> steps;
    for (size_t i = 0; i < spec.weight.size(); ++i) {
        const size_t channel =
            spec.weight_scales.size() == 1 ? 0 : (i / inner) % spec.weight_scales.size();
        steps.push_back(static_cast<int64_t>(
            std::nearbyint(double{spec.weight[i]} / spec.weight_scales[channel])));
    }
    const std::vector<int64_t> scale_shape =
        spec.weight_scales.size() == 1
            ? std::vector<int64_t>{}
            : std::vector<int64_t>{static_cast<int64_t>(spec.weight_scales.size())};

    onnx::GraphProto& qdq_graph = *models.qdq_model.mutable_graph();
    *qdq_graph.add_initializer() = make_float_tensor("x_scale", {}, {spec.input_scale});
    *qdq_graph.add_initializer() =
        make_byte_tensor("x_zero_point", onnx::TensorProto::UINT8, {}, {128});
    *qdq_graph.add_initializer() =
        make_byte_tensor("w_quantized", onnx::TensorProto::INT8, spec.weight_shape, steps);
    *qdq_graph.add_initializer() = make_float_tensor("w_scale", scale_shape, spec.weight_scales);
    *qdq_graph.add_initializer() =
        make_byte_tensor("w_zero_point", onnx::TensorProto::INT8, scale_shape,
                         std::vector<int64_t>(spec.weight_scales.size(), 0));
    *qdq_graph.add_node() = make_node("QuantizeLinear", "x_QuantizeLinear",
                                      {"x", "x_scale", "x_zero_point"}, "x_QuantizeLinear_Output");
    *qdq_graph.add_node() = make_node("DequantizeLinear", "x_DequantizeLinear",
                                      {"x_QuantizeLinear_Output", "x_scale", "x_zero_point"},
                                      "x_DequantizeLinear_Output");
    onnx::NodeProto weight_dequantize =
        make_node("DequantizeLinear", "w_DequantizeLinear",
                  {"w_quantized", "w_scale", "w_zero_point"}, "w_DequantizeLinear_Output");
    *weight_dequantize.add_attribute() = make_int_attribute("axis", spec.weight_axis);
    *qdq_graph.add_node() = weight_dequantize;
    layer.set_input(0, "x_DequantizeLinear_Output");
    layer.set_input(1, "w_DequantizeLinear_Output");
    *qdq_graph.add_node() = layer;
    return models;
}

// Serves one fixed batch of samples.
class FixedBatchReader : public CalibrationDataReader {
  public:
    explicit FixedBatchReader(CalibrationBatch batch) : batch_(std::move(batch)) {}
    std::optional<CalibrationBatch> next() override {
        if (done_) {
            return std::nullopt;
        }
        done_ = true;
        return batch_;
    }
    void rewind() override { done_ = false; }
    int64_t sample_count() const override { return batch_.shape.front(); }

  private:
    CalibrationBatch batch_;
    bool done_ = false;
};

// All values of `tensor` over the reader's samples, from ONNX Runtime.
std::vector<float> collect_values(const onnx::ModelProto& model, const std::string& tensor,
                                  CalibrationDataReader& reader) {
    std::vector<float> values;
    visit_calibration_outputs(
        model, {tensor}, reader, SessionConfig{}, "test", [&](size_t, const FloatOutput& output) {
            values.insert(values.end(), output.values.begin(), output.values.end());
        });
    return values;
}

double mean_squared_difference(const std::vector<float>& actual,
                               const std::vector<float>& expected) {
    double sum = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        sum += (double{actual[i]} - expected[i]) * (double{actual[i]} - expected[i]);
    }
    return sum / static_cast<double>(expected.size());
}

// ------------------------------------------------------------------------------------------------
// y = x W^T + b (Gemm) or y = x W (MatMul) with 4 inputs and 2 outputs: 8 weights, so the best of
// the 2^4 roundings of each output channel is found by trying them all.

constexpr int64_t kToyInputs = 4;
constexpr int64_t kToyOutputs = 2;
constexpr int64_t kToySamples = 256;
// Adam moves V by about the learning rate (1e-3) per step at most, and rounding down a weight 0.8
// steps above its floor takes V from 1.1 to below 0, so the toy runs longer than the default. The
// whole batch in every step keeps the direction steady, and 8 weights make the steps cheap.
constexpr int64_t kToyIterations = 3000;

// W / s of the toy weights, per output channel. On inputs that move together, nearest rounding
// adds up its errors. Channel 0 rounds every weight down (by 0.45 + 0.15 + 0.2 + 0.1 steps) and
// channel 1 every weight up. Rounding one weight of a channel the other way leaves a tenth of the
// summed error.
constexpr std::array<double, kToyInputs* kToyOutputs> kToySteps = {100.45, 30.15, -20.8, 10.1,
                                                                   -90.45, 40.85, 12.9,  -7.2};
// Per output channel, so the per-channel path is what the toy checks.
const std::vector<float> kToyScales = {1.0f / 64, 1.0f / 32};

// AdaRound is a relaxation and does not promise the exact optimum: on this toy it ends 1.4 % and
// 0.5 % above the brute-force optimum of the two channels. Nearest rounding is about 5.7 times
// the optimum, so this bound still separates the two.
constexpr double kToyOptimumTolerance = 0.05;

// The fixture must keep nearest rounding far from the optimum, or the toy tests nothing.
constexpr double kToyNearestMinimumRatio = 3.0;

// Rows of kToyInputs values: a common level in [0, 30) plus small independent noise, so that the
// inputs are strongly correlated.
CalibrationBatch make_correlated_rows() {
    std::mt19937_64 generator(3);
    std::uniform_real_distribution<float> level(0.0f, 30.0f);
    std::uniform_real_distribution<float> noise(-0.75f, 0.75f);
    CalibrationBatch batch{{}, {kToySamples, kToyInputs}};
    for (int64_t n = 0; n < kToySamples; ++n) {
        const float common = level(generator);
        for (int64_t k = 0; k < kToyInputs; ++k) {
            batch.values.push_back(common + noise(generator));
        }
    }
    return batch;
}

OneLayerSpec make_toy_spec(const std::string& op_type) {
    OneLayerSpec spec;
    spec.op_type = op_type;
    spec.input_shape = {kToyInputs};
    spec.output_shape = {kToyOutputs};
    spec.weight_scales = kToyScales;
    spec.input_scale = 1.0f / 4;                // uint8 around 128 covers [-32, 31.75]
    const bool transposed = op_type == "Gemm";  // Gemm with transB = 1 stores W as [out, in]
    spec.weight_shape = transposed ? std::vector<int64_t>{kToyOutputs, kToyInputs}
                                   : std::vector<int64_t>{kToyInputs, kToyOutputs};
    spec.weight_axis = transposed ? 0 : 1;
    spec.weight.resize(kToySteps.size());
    for (int64_t c = 0; c < kToyOutputs; ++c) {
        for (int64_t k = 0; k < kToyInputs; ++k) {
            const size_t index =
                static_cast<size_t>(transposed ? c * kToyInputs + k : k * kToyOutputs + c);
            spec.weight[index] =
                static_cast<float>(kToySteps[static_cast<size_t>(c * kToyInputs + k)] *
                                   kToyScales[static_cast<size_t>(c)]);
        }
    }
    if (transposed) {
        spec.bias = {0.25f, -0.5f};
        spec.attributes = {make_int_attribute("transB", 1)};
    }
    return spec;
}

// Squared error of output channel `channel` summed over the samples, for that channel's
// kToyInputs integer steps.
double toy_channel_error(const OneLayerSpec& spec, const std::vector<float>& inputs,
                         const std::vector<float>& targets, int64_t channel,
                         const std::array<int64_t, kToyInputs>& steps) {
    const double scale = kToyScales[static_cast<size_t>(channel)];
    double sum = 0;
    for (int64_t n = 0; n < kToySamples; ++n) {
        double output = spec.bias.empty() ? 0.0 : spec.bias[static_cast<size_t>(channel)];
        for (int64_t k = 0; k < kToyInputs; ++k) {
            output += inputs[static_cast<size_t>(n * kToyInputs + k)] *
                      (scale * static_cast<double>(steps[static_cast<size_t>(k)]));
        }
        const double error = output - targets[static_cast<size_t>(n * kToyOutputs + channel)];
        sum += error * error;
    }
    return sum;
}

std::array<int64_t, kToyInputs> channel_steps(const OneLayerSpec& spec,
                                              const std::vector<int64_t>& weight, int64_t channel) {
    std::array<int64_t, kToyInputs> steps{};
    for (int64_t k = 0; k < kToyInputs; ++k) {
        steps[static_cast<size_t>(k)] = weight[static_cast<size_t>(
            spec.op_type == "Gemm" ? channel * kToyInputs + k : k * kToyOutputs + channel)];
    }
    return steps;
}

void check_toy_finds_optimum(const std::string& op_type) {
    const OneLayerSpec spec = make_toy_spec(op_type);
    const OneLayerModels models = make_one_layer_models(spec);
    check_onnx_model(models.qdq_model, "toy");
    FixedBatchReader reader(make_correlated_rows());
    onnx::ModelProto rounded_model = models.qdq_model;
    AdaRoundOptions options;
    options.batch_size = kToySamples;
    options.iterations = kToyIterations;
    const AdaRoundReport report =
        adaround_weights(models.float_model, rounded_model, reader, SessionConfig{}, options);
    ASSERT_EQ(report.layers.size(), 1u);
    ASSERT_TRUE(report.layers[0].rounded) << report.layers[0].note;

    // What the layer reads in the QDQ model, and the float layer's output.
    const std::vector<float> inputs =
        collect_values(models.qdq_model, "x_DequantizeLinear_Output", reader);
    const std::vector<float> targets = collect_values(models.float_model, "y", reader);
    const std::vector<int64_t> adaround_weight =
        read_int8(*initializers_by_name(rounded_model).at("w_quantized"));
    const std::vector<int64_t> nearest_weight =
        read_int8(*initializers_by_name(models.qdq_model).at("w_quantized"));

    for (int64_t channel = 0; channel < kToyOutputs; ++channel) {
        double best = std::numeric_limits<double>::infinity();
        for (int mask = 0; mask < (1 << kToyInputs); ++mask) {
            std::array<int64_t, kToyInputs> steps{};
            for (int64_t k = 0; k < kToyInputs; ++k) {
                const double ratio = kToySteps[static_cast<size_t>(channel * kToyInputs + k)];
                steps[static_cast<size_t>(k)] =
                    static_cast<int64_t>(std::floor(ratio)) + ((mask >> k) & 1);
            }
            best = std::min(best, toy_channel_error(spec, inputs, targets, channel, steps));
        }
        const double nearest = toy_channel_error(spec, inputs, targets, channel,
                                                 channel_steps(spec, nearest_weight, channel));
        const double adaround = toy_channel_error(spec, inputs, targets, channel,
                                                  channel_steps(spec, adaround_weight, channel));
        EXPECT_GT(nearest, best * kToyNearestMinimumRatio)
            << "channel " << channel << ": nearest rounding is close to optimal, so the toy "
            << "tests nothing";
        EXPECT_LE(adaround, best * (1.0 + kToyOptimumTolerance))
            << "channel " << channel << ": nearest " << nearest << ", optimum " << best;
    }
}

TEST(AdaRoundToy, GemmFindsBruteForceOptimum) {
    check_toy_finds_optimum("Gemm");
}

TEST(AdaRoundToy, MatMulFindsBruteForceOptimum) {
    check_toy_finds_optimum("MatMul");
}

// ------------------------------------------------------------------------------------------------
// Conv layers whose padding libtorch's convolution cannot take directly: the layer AdaRound
// replays must compute what ONNX Runtime computes, or its errors are measured on another layer.

void check_conv_replay(const std::vector<onnx::AttributeProto>& attributes, int64_t group,
                       const std::vector<int64_t>& output_shape) {
    OneLayerSpec spec;
    spec.op_type = "Conv";
    spec.input_shape = {2, 7, 6};
    spec.output_shape = output_shape;
    spec.weight_shape = {4, 2 / group, 3, 3};
    spec.weight_scales = {1.0f / 64, 1.0f / 128, 1.0f / 64, 1.0f / 32};
    spec.input_scale = 1.0f / 128;  // uint8 around 128 covers [-1, 0.99]
    spec.bias = {0.1f, -0.2f, 0.05f, 0.0f};
    spec.attributes = attributes;
    std::mt19937_64 generator(5);
    std::uniform_real_distribution<float> weight_value(-0.5f, 0.5f);
    for (int64_t i = 0; i < 4 * (2 / group) * 9; ++i) {
        spec.weight.push_back(weight_value(generator));
    }
    std::uniform_real_distribution<float> pixel(0.0f, 0.99f);
    CalibrationBatch batch{{}, {16, 2, 7, 6}};
    for (int64_t i = 0; i < 16 * 2 * 7 * 6; ++i) {
        batch.values.push_back(pixel(generator));
    }
    const OneLayerModels models = make_one_layer_models(spec);
    check_onnx_model(models.qdq_model, "conv");
    FixedBatchReader reader(batch);
    onnx::ModelProto rounded_model = models.qdq_model;
    AdaRoundOptions options = test_options();
    const AdaRoundReport report =
        adaround_weights(models.float_model, rounded_model, reader, SessionConfig{}, options);
    ASSERT_EQ(report.layers.size(), 1u);
    ASSERT_TRUE(report.layers[0].rounded) << report.layers[0].note;

    const std::vector<float> expected = collect_values(models.float_model, "y", reader);
    const double nearest_mse =
        mean_squared_difference(collect_values(models.qdq_model, "y", reader), expected);
    const double rounded_mse =
        mean_squared_difference(collect_values(rounded_model, "y", reader), expected);
    EXPECT_NEAR(report.layers[0].nearest_mse, nearest_mse, nearest_mse * kMseAgreementTolerance);
    EXPECT_NEAR(report.layers[0].adaround_mse, rounded_mse, rounded_mse * kMseAgreementTolerance);
}

TEST(AdaRoundToy, ConvAsymmetricPadsMatchOnnxRuntime) {
    // pads = [top, left, bottom, right]: 0 rows on top but 2 at the bottom.
    check_conv_replay(
        {make_ints_attribute("pads", {0, 1, 2, 1}), make_ints_attribute("strides", {1, 2})}, 1,
        {4, 7, 3});
}

TEST(AdaRoundToy, ConvSameLowerGroupsMatchOnnxRuntime) {
    // On 7 x 6 inputs with stride 2 and a width dilation of 2, SAME_LOWER pads 1 row at each end
    // and 2 columns on the left but 1 on the right.
    check_conv_replay({make_string_attribute("auto_pad", "SAME_LOWER"),
                       make_ints_attribute("strides", {2, 2}), make_int_attribute("group", 2)},
                      2, {4, 4, 3});
}

}  // namespace
}  // namespace edgeq
