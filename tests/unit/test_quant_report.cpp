// Quantization report: per-tensor SQNR and clipped share against hand computations on tiny
// hand-made models, weight errors against direct computations on a random FashionCNN, and the
// single-layer models of the sensitivity measurement.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "edgeq/common/error.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/quant/qdq_summary.h"
#include "edgeq/quant/quant_report.h"
#include "support/model_support.h"

namespace edgeq {
namespace {

// The tests sum the same values in the same order as the report, in double. The tolerance only
// allows the compiler to contract a multiply and an add into one FMA in one place and not the
// other, which moves a sum by about 1e-16 relative, far below 1e-9 dB.
constexpr double kSameSumsDb = 1e-9;

// ONNX Runtime picks its Conv and Gemm kernels by the batch size, so the float outputs of batch 1
// and batch 100 may differ in the last bits. In the QDQ model such a difference can move a value
// across a rounding boundary of a QuantizeLinear. That changes one element by one quantization
// step, which moves an SQNR of 20-40 dB over ~10^5 elements by far less than 0.01 dB. A wrong
// pairing of batches or a lost batch moves it by whole dBs. (The report sums in element order
// whatever the batch size, and with ONNX Runtime 1.30 on CPU the trained FashionCNN's results
// for batch 1 and batch 100 came out bitwise equal.)
constexpr double kBatchSizeDb = 0.01;

// Same reasoning for a share of elements: one element in ~10^5 flipping sides of a range edge.
constexpr double kBatchSizeShare = 1e-4;

// Feeds fixed values in batches. `values` contains `sample_shape` elements per sample.
class VectorReader : public CalibrationDataReader {
  public:
    VectorReader(std::vector<float> values, std::vector<int64_t> sample_shape, int64_t batch_size)
        : values_(std::move(values)),
          sample_shape_(std::move(sample_shape)),
          batch_size_(batch_size) {
        for (const int64_t size : sample_shape_) {
            sample_size_ *= size;
        }
    }
    std::optional<CalibrationBatch> next() override {
        if (position_ >= sample_count()) {
            return std::nullopt;
        }
        const int64_t count = std::min(batch_size_, sample_count() - position_);
        CalibrationBatch batch;
        batch.values.assign(values_.begin() + position_ * sample_size_,
                            values_.begin() + (position_ + count) * sample_size_);
        batch.shape = {count};
        batch.shape.insert(batch.shape.end(), sample_shape_.begin(), sample_shape_.end());
        position_ += count;
        return batch;
    }
    void rewind() override { position_ = 0; }
    int64_t sample_count() const override {
        return static_cast<int64_t>(values_.size()) / sample_size_;
    }

  private:
    std::vector<float> values_;
    std::vector<int64_t> sample_shape_;
    int64_t batch_size_;
    int64_t sample_size_ = 1;
    int64_t position_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Hand-made models in edgeq's QDQ layout

void add_float_value_info(google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>& list,
                          const std::string& name, int64_t features) {
    onnx::ValueInfoProto* info = list.Add();
    info->set_name(name);
    onnx::TypeProto_Tensor* type = info->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx::TensorProto::FLOAT);
    type->mutable_shape()->add_dim()->set_dim_param("n");
    type->mutable_shape()->add_dim()->set_dim_value(features);
}

onnx::ModelProto make_empty_model(int64_t opset, int64_t features_in, int64_t features_out) {
    onnx::ModelProto model;
    model.set_ir_version(opset >= 21 ? 10 : 7);
    model.add_opset_import()->set_version(opset);
    onnx::GraphProto& graph = *model.mutable_graph();
    graph.set_name("toy");
    add_float_value_info(*graph.mutable_input(), "x", features_in);
    add_float_value_info(*graph.mutable_output(), "y", features_out);
    return model;
}

onnx::NodeProto& add_node(onnx::GraphProto& graph, const std::string& op_type,
                          const std::string& name, const std::vector<std::string>& inputs,
                          const std::string& output) {
    onnx::NodeProto& node = *graph.add_node();
    node.set_op_type(op_type);
    node.set_name(name);
    for (const std::string& input : inputs) {
        node.add_input(input);
    }
    node.add_output(output);
    return node;
}

// An integer initializer in raw_data, little-endian, of `onnx_type` (INT8, UINT8 or INT16).
onnx::TensorProto make_integer_initializer(const std::string& name, int onnx_type,
                                           const std::vector<int64_t>& shape,
                                           const std::vector<int64_t>& values) {
    onnx::TensorProto tensor;
    tensor.set_name(name);
    tensor.set_data_type(onnx_type);
    for (const int64_t size : shape) {
        tensor.add_dims(size);
    }
    std::string raw;
    for (const int64_t value : values) {
        if (onnx_type == onnx::TensorProto::INT16) {
            const auto value16 = static_cast<int16_t>(value);
            raw.append(reinterpret_cast<const char*>(&value16), sizeof(value16));
        } else {
            raw.push_back(static_cast<char>(value));
        }
    }
    tensor.set_raw_data(raw);
    return tensor;
}

// Adds `tensor`'s Q/DQ pair with a scalar scale and zero point; returns the dequantized name.
std::string add_activation_pair(onnx::GraphProto& graph, const std::string& tensor,
                                const std::string& input, const std::string& output, float scale,
                                int64_t zero_point, int zero_point_type) {
    *graph.add_initializer() = make_float_tensor(tensor + "_scale", {}, {scale});
    *graph.add_initializer() =
        make_integer_initializer(tensor + "_zero_point", zero_point_type, {}, {zero_point});
    const std::string quantized = tensor + "_QuantizeLinear_Output";
    add_node(graph, "QuantizeLinear", tensor + "_QuantizeLinear",
             {input, tensor + "_scale", tensor + "_zero_point"}, quantized);
    add_node(graph, "DequantizeLinear", tensor + "_DequantizeLinear",
             {quantized, tensor + "_scale", tensor + "_zero_point"}, output);
    return output;
}

struct ModelPair {
    onnx::ModelProto float_model;
    onnx::ModelProto qdq_model;
};

// Float: x [n, 4] -> Relu -> y. QDQ in edgeq's layout:
//   x -> Q/DQ (UINT8, s 0.5, z 128) -> Relu -> y_float -> Q/DQ (s 0.25, z 0) -> y
// The y pair's zero point has `y_type`: INT8 covers [-32, 31.75], INT16 [-8192, 8191.75].
// QuantizeLinear takes INT16 from opset 21 on.
ModelPair make_relu_models(int y_type) {
    const int64_t opset = y_type == onnx::TensorProto::INT16 ? 21 : 13;
    ModelPair models;
    models.float_model = make_empty_model(opset, 4, 4);
    add_node(*models.float_model.mutable_graph(), "Relu", "relu", {"x"}, "y");

    models.qdq_model = make_empty_model(opset, 4, 4);
    onnx::GraphProto& graph = *models.qdq_model.mutable_graph();
    const std::string x = add_activation_pair(graph, "x", "x", "x_DequantizeLinear_Output", 0.5f,
                                              128, onnx::TensorProto::UINT8);
    add_node(graph, "Relu", "relu", {x}, "y_float");
    add_activation_pair(graph, "y", "y_float", "y", 0.25f, 0, y_type);
    return models;
}

// Two samples of the Relu models' input, chosen so that each rounding and saturation case occurs.
const std::vector<float> kReluInput = {0.1f, 0.3f, -0.7f, 100.0f, 1.25f, 40.0f, -70.0f, 0.75f};

// x quantized with s 0.5, z 128 (UINT8, [-64, 63.5]), by hand: 0.1 / 0.5 = 0.2 -> 0;
// 0.3 -> 0.6 -> 1; -0.7 -> -1.4 -> -1; 100 saturates at 127 steps; 1.25 -> 2.5 -> 2 (ties to
// even); 40 -> 80; -70 saturates at -128 steps; 0.75 -> 1.5 -> 2.
const std::vector<double> kReluInputQuantized = {0, 0.5, -0.5, 63.5, 1.0, 40, -64, 1.0};

// What the QDQ model outputs with an INT8 y: Relu of the quantized x, quantized again with s 0.25
// (63.5 and 40 saturate at 31.75).
const std::vector<double> kReluOutputQdqInt8 = {0, 0.5, 0, 31.75, 1.0, 31.75, 0, 1.0};

// The float y quantized alone with s 0.25: 0.1 -> 0.4 -> 0; 0.3 -> 1.2 -> 1 step; 1.25 and 0.75
// are exact; 100 and 40 saturate (INT8) or are exact (INT16).
const std::vector<double> kReluOutputLocalInt8 = {0, 0.25, 0, 31.75, 1.25, 31.75, 0, 0.75};
const std::vector<double> kReluOutputLocalInt16 = {0, 0.25, 0, 100, 1.25, 40, 0, 0.75};

double hand_sqnr_db(const std::vector<double>& reference, const std::vector<double>& quantized) {
    double signal = 0;
    double noise = 0;
    for (size_t i = 0; i < reference.size(); ++i) {
        signal += reference[i] * reference[i];
        noise += (reference[i] - quantized[i]) * (reference[i] - quantized[i]);
    }
    return 10.0 * std::log10(signal / noise);
}

std::vector<double> as_double(const std::vector<float>& values) {
    return {values.begin(), values.end()};
}

// The float model's y: Relu of the float input, exact in double.
std::vector<double> relu_of_input() {
    std::vector<double> output;
    for (const float value : kReluInput) {
        output.push_back(std::max(double{value}, 0.0));
    }
    return output;
}

std::map<std::string, TensorError> by_name(const std::vector<TensorError>& tensors) {
    std::map<std::string, TensorError> result;
    for (const TensorError& tensor : tensors) {
        result[tensor.name] = tensor;
    }
    return result;
}

// ---------------------------------------------------------------------------------------------
// Random FashionCNN and its QDQ model from the quantizer

struct FashionFixture {
    onnx::ModelProto float_model;
    QdqModel qdq;
    LabelledImages images;
};

FashionFixture make_fashion_fixture(int64_t image_count, uint64_t seed = 21) {
    FashionCnn model = test::make_random_fashion_cnn(seed);
    FashionFixture fixture;
    fixture.float_model = export_fashion_cnn(export_state_dict(model));
    fixture.images = test::make_synthetic_images(image_count, seed);
    LabelledImagesReader reader(fixture.images, 32);
    fixture.qdq = quantize_to_qdq(fixture.float_model, reader, {}, SessionConfig{});
    return fixture;
}

const onnx::TensorProto& find_initializer(const onnx::ModelProto& model, const std::string& name) {
    for (const onnx::TensorProto& initializer : model.graph().initializer()) {
        if (initializer.name() == name) {
            return initializer;
        }
    }
    throw std::runtime_error("no initializer " + name);
}

// ---------------------------------------------------------------------------------------------
// Tensor errors

TEST(QuantReportTensors, SqnrMatchesHandComputation) {
    const ModelPair models = make_relu_models(onnx::TensorProto::INT8);
    VectorReader reader(kReluInput, {4}, 2);
    const auto tensors = by_name(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    ASSERT_EQ(tensors.size(), 2u);

    const TensorError& x = tensors.at("x");
    EXPECT_EQ(x.role, "activation");
    EXPECT_EQ(x.element_count, 8);
    const double x_db = hand_sqnr_db(as_double(kReluInput), kReluInputQuantized);
    EXPECT_NEAR(x.sqnr_db, x_db, kSameSumsDb);
    EXPECT_NEAR(x.local_sqnr_db, x_db, kSameSumsDb) << "a graph input inherits no error";

    const TensorError& y = tensors.at("y");
    const std::vector<double> y_float = relu_of_input();
    EXPECT_NEAR(y.sqnr_db, hand_sqnr_db(y_float, kReluOutputQdqInt8), kSameSumsDb);
    EXPECT_NEAR(y.local_sqnr_db, hand_sqnr_db(y_float, kReluOutputLocalInt8), kSameSumsDb);
    EXPECT_LT(y.sqnr_db, y.local_sqnr_db) << "y inherits the error of x";
    EXPECT_FLOAT_EQ(y.min, 0.0f);
    EXPECT_FLOAT_EQ(y.max, 100.0f);
}

TEST(QuantReportTensors, ClippedShareExact) {
    const ModelPair models = make_relu_models(onnx::TensorProto::INT8);
    VectorReader reader(kReluInput, {4}, 2);
    const auto tensors = by_name(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    // x: 100 and -70 saturate beyond [-64, 63.5]; y: 100 and 40 beyond [-32, 31.75].
    EXPECT_EQ(tensors.at("x").clipped_share, 2.0 / 8.0);
    EXPECT_EQ(tensors.at("y").clipped_share, 2.0 / 8.0);
}

TEST(QuantReportTensors, ClippedShareAtRangeEdges) {
    // x has s 0.5 and z 128, so the integers cover [-64, 63.5]. Only values that QuantizeLinear
    // saturates count. 63.5 and -64 are the edges. 63.7 / 0.5 = 127.4 and -64.25 / 0.5 = -128.5
    // round to them (ties to even). 63.75 / 0.5 = 127.5 rounds to 128 and -64.3 / 0.5 = -128.6
    // to -129, so these two saturate.
    const ModelPair models = make_relu_models(onnx::TensorProto::INT8);
    VectorReader reader({63.5f, 63.7f, 63.75f, -64.0f, -64.25f, -64.3f, 0.0f, 0.0f}, {4}, 1);
    const auto tensors = by_name(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    EXPECT_EQ(tensors.at("x").clipped_share, 2.0 / 8.0);
}

TEST(QuantReportTensors, Int16RangeFromZeroPoint) {
    const ModelPair models = make_relu_models(onnx::TensorProto::INT16);
    VectorReader reader(kReluInput, {4}, 2);
    const auto tensors = by_name(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    const TensorError& y = tensors.at("y");
    EXPECT_EQ(y.quantization.type, "INT16");
    EXPECT_EQ(y.quantization.q_min, -32768);
    EXPECT_EQ(y.quantization.q_max, 32767);
    EXPECT_EQ(y.clipped_share, 0.0) << "INT16 with scale 0.25 covers 100";

    const std::vector<double> y_float = relu_of_input();
    std::vector<double> y_qdq;  // Relu of the quantized x, which s 0.25 represents exactly
    for (const double value : kReluInputQuantized) {
        y_qdq.push_back(std::max(value, 0.0));
    }
    EXPECT_NEAR(y.sqnr_db, hand_sqnr_db(y_float, y_qdq), kSameSumsDb);
    EXPECT_NEAR(y.local_sqnr_db, hand_sqnr_db(y_float, kReluOutputLocalInt16), kSameSumsDb);
}

TEST(QuantReportTensors, ReadsScaleAndPosition) {
    const ModelPair models = make_relu_models(onnx::TensorProto::INT8);
    VectorReader reader(kReluInput, {4}, 2);
    const auto tensors = by_name(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    const TensorQuantization& x = tensors.at("x").quantization;
    EXPECT_EQ(x.type, "UINT8");
    EXPECT_FALSE(x.per_channel);
    ASSERT_EQ(x.scales.size(), 1u);
    EXPECT_EQ(x.scales[0], 0.5f);
    EXPECT_EQ(x.zero_points[0], 128);
    ASSERT_EQ(x.positions.size(), 1u);
    EXPECT_EQ(x.positions[0], 1) << "0.5 = 2^-1";
}

// Float: x [n, 2] -> Gemm(W [3, 2], transB 1) -> y. The QDQ model stores W per output channel
// (axis 0) with scales 0.5, 0.25, 0.125 and INT8 zero points 0, 1, -2.
ModelPair make_per_channel_models(const std::vector<float>& weight,
                                  const std::vector<int64_t>& stored) {
    ModelPair models;
    models.float_model = make_empty_model(13, 2, 3);
    onnx::GraphProto& float_graph = *models.float_model.mutable_graph();
    *float_graph.add_initializer() = make_float_tensor("W", {3, 2}, weight);
    onnx::NodeProto& gemm = add_node(float_graph, "Gemm", "gemm", {"x", "W"}, "y");
    *gemm.add_attribute() = make_int_attribute("transB", 1);

    models.qdq_model = make_empty_model(13, 2, 3);
    onnx::GraphProto& graph = *models.qdq_model.mutable_graph();
    const std::string x = add_activation_pair(graph, "x", "x", "x_DequantizeLinear_Output",
                                              1.0f / 64, 128, onnx::TensorProto::UINT8);
    *graph.add_initializer() =
        make_integer_initializer("W_quantized", onnx::TensorProto::INT8, {3, 2}, stored);
    *graph.add_initializer() = make_float_tensor("W_scale", {3}, {0.5f, 0.25f, 0.125f});
    *graph.add_initializer() =
        make_integer_initializer("W_zero_point", onnx::TensorProto::INT8, {3}, {0, 1, -2});
    onnx::NodeProto& dequantize =
        add_node(graph, "DequantizeLinear", "W_DequantizeLinear",
                 {"W_quantized", "W_scale", "W_zero_point"}, "W_DequantizeLinear_Output");
    *dequantize.add_attribute() = make_int_attribute("axis", 0);
    onnx::NodeProto& quantized_gemm =
        add_node(graph, "Gemm", "gemm", {x, "W_DequantizeLinear_Output"}, "y_float");
    *quantized_gemm.add_attribute() = make_int_attribute("transB", 1);
    add_activation_pair(graph, "y", "y_float", "y", 1.0f / 16, 128, onnx::TensorProto::UINT8);
    return models;
}

TEST(QuantReportTensors, PerChannelWeightMatchesHand) {
    const std::vector<float> weight = {1.2f, -0.3f, 0.6f, 40.0f, -0.05f, 0.2f};
    // By hand, q = saturate(round(w / s) + z): row 0 (s 0.5, z 0): 2.4 -> 2, -0.6 -> -1;
    // row 1 (s 0.25, z 1): 2.4 -> 2 + 1 = 3, 160 + 1 saturates at 127; row 2 (s 0.125, z -2):
    // -0.4 -> 0 - 2 = -2, 1.6 -> 2 - 2 = 0.
    const std::vector<int64_t> stored = {2, -1, 3, 127, -2, 0};
    const std::vector<double> dequantized = {1.0, -0.5, 0.5, 31.5, 0.0, 0.25};
    const ModelPair models = make_per_channel_models(weight, stored);
    check_onnx_model(models.qdq_model, "per-channel QDQ toy");

    VectorReader reader({0.5f, -0.25f, 1.0f, 0.125f}, {2}, 2);
    const auto tensors = by_name(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    const TensorError& w = tensors.at("W");
    EXPECT_EQ(w.role, "weight");
    EXPECT_TRUE(w.quantization.per_channel);
    EXPECT_EQ(w.quantization.axis, 0);
    EXPECT_EQ(w.quantization.positions, (std::vector<int>{1, 2, 3}));
    EXPECT_NEAR(w.sqnr_db, hand_sqnr_db(as_double(weight), dequantized), kSameSumsDb);
    EXPECT_EQ(w.local_sqnr_db, w.sqnr_db);
    // Only 40 saturates, beyond its channel's range [(-128 - 1) 0.25, (127 - 1) 0.25].
    EXPECT_EQ(w.clipped_share, 1.0 / 6.0);

    const nlohmann::ordered_json json = to_json(
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{}));
    const auto row = std::find_if(json.begin(), json.end(),
                                  [](const auto& item) { return item["tensor"] == "W"; });
    ASSERT_NE(row, json.end());
    EXPECT_EQ((*row)["zero_point"], nlohmann::ordered_json({0, 1, -2}));
    EXPECT_EQ((*row)["axis"], 0);
}

TEST(QuantReportTensors, WeightSqnrMatchesDirect) {
    const FashionFixture fixture = make_fashion_fixture(16);
    LabelledImagesReader reader(fixture.images, 8);
    const auto measured = by_name(
        measure_tensor_errors(fixture.float_model, fixture.qdq.model, reader, SessionConfig{}));
    int checked = 0;
    for (const QuantizedTensor& tensor : fixture.qdq.tensors) {
        if (tensor.role == "activation") {
            continue;
        }
        const std::vector<float> values =
            read_float_tensor(find_initializer(fixture.float_model, tensor.name));
        const QuantParams& params = tensor.params;
        double signal = 0;
        double noise = 0;
        int64_t clipped = 0;
        for (const float value : values) {
            const float dequantized = dequantize_value(quantize_value(value, params), params);
            signal += double{value} * double{value};
            noise += (double{value} - double{dequantized}) * (double{value} - double{dequantized});
            const double unsaturated = round_half_to_even(double{value} / params.scale()) +
                                       static_cast<double>(params.zero_point);
            clipped += (unsaturated < static_cast<double>(quant_min(params.type)) ||
                        unsaturated > static_cast<double>(quant_max(params.type)))
                           ? 1
                           : 0;
        }
        const TensorError& error = measured.at(tensor.name);
        EXPECT_EQ(error.role, tensor.role) << tensor.name;
        EXPECT_NEAR(error.sqnr_db, 10.0 * std::log10(signal / noise), kSameSumsDb) << tensor.name;
        EXPECT_EQ(error.clipped_share,
                  static_cast<double>(clipped) / static_cast<double>(values.size()))
            << tensor.name;
        EXPECT_EQ(error.quantization.positions.front(), tensor.params.position) << tensor.name;
        ++checked;
    }
    EXPECT_EQ(checked, 10) << "five layers with a weight and a bias each";
}

TEST(QuantReportTensors, ListsEveryQuantizedTensor) {
    const FashionFixture fixture = make_fashion_fixture(16);
    LabelledImagesReader reader(fixture.images, 8);
    const std::vector<TensorError> measured =
        measure_tensor_errors(fixture.float_model, fixture.qdq.model, reader, SessionConfig{});

    std::map<std::string, std::string> expected;
    for (const QuantizedTensor& tensor : fixture.qdq.tensors) {
        expected[tensor.name] = tensor.role;
    }
    std::map<std::string, std::string> actual;
    for (const TensorError& tensor : measured) {
        actual[tensor.name] = tensor.role;
        if (tensor.role == "activation") {
            EXPECT_EQ(tensor.element_count % fixture.images.size(), 0) << tensor.name;
            EXPECT_TRUE(std::isfinite(tensor.sqnr_db)) << tensor.name;
        }
    }
    EXPECT_EQ(actual, expected);
}

TEST(QuantReportTensors, BatchSizeDoesNotChangeResult) {
    const FashionFixture fixture = make_fashion_fixture(100);
    LabelledImagesReader one_at_a_time(fixture.images, 1);
    LabelledImagesReader all_at_once(fixture.images, 100);
    const std::vector<TensorError> first = measure_tensor_errors(
        fixture.float_model, fixture.qdq.model, one_at_a_time, SessionConfig{});
    const std::vector<TensorError> second =
        measure_tensor_errors(fixture.float_model, fixture.qdq.model, all_at_once, SessionConfig{});
    ASSERT_EQ(first.size(), second.size());
    for (size_t i = 0; i < first.size(); ++i) {
        ASSERT_EQ(first[i].name, second[i].name);
        EXPECT_EQ(first[i].element_count, second[i].element_count) << first[i].name;
        EXPECT_NEAR(first[i].sqnr_db, second[i].sqnr_db, kBatchSizeDb) << first[i].name;
        EXPECT_NEAR(first[i].local_sqnr_db, second[i].local_sqnr_db, kBatchSizeDb) << first[i].name;
        EXPECT_NEAR(first[i].clipped_share, second[i].clipped_share, kBatchSizeShare)
            << first[i].name;
    }
}

TEST(QuantReportTensors, RejectsUnrelatedFloatModel) {
    const FashionFixture fixture = make_fashion_fixture(4);
    const ModelPair toy = make_relu_models(onnx::TensorProto::INT8);
    LabelledImagesReader reader(fixture.images, 4);
    try {
        measure_tensor_errors(toy.float_model, fixture.qdq.model, reader, SessionConfig{});
        FAIL() << "no error for a float model that is not the QDQ model's source";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kInvalidInput);
        EXPECT_NE(std::string(error.what()).find("float model"), std::string::npos) << error.what();
    }
}

// ---------------------------------------------------------------------------------------------
// Output: JSON and tables

TEST(QuantReportOutput, ZeroErrorIsNullInJson) {
    // Inputs on the grid of x (steps of 0.5 within [-64, 63.5]) quantize without error.
    const ModelPair models = make_relu_models(onnx::TensorProto::INT8);
    VectorReader reader({0.5f, -1.0f, 3.0f, 0.0f}, {4}, 1);
    const std::vector<TensorError> tensors =
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{});
    const auto x = by_name(tensors).at("x");
    EXPECT_EQ(x.sqnr_db, std::numeric_limits<double>::infinity());

    const nlohmann::ordered_json json = to_json(tensors);
    ASSERT_EQ(json.size(), 2u);
    EXPECT_EQ(json[0]["tensor"], "x");
    EXPECT_TRUE(json[0]["sqnr_db"].is_null());
    EXPECT_TRUE(json[0]["local_sqnr_db"].is_null());
    EXPECT_EQ(json[0]["mean_squared_error"], 0.0);
    EXPECT_EQ(json[0]["scale"], 0.5);
    EXPECT_EQ(json[0]["position"], 1);
    EXPECT_EQ(json[0]["zero_point"], 128);
    EXPECT_FALSE(json[0].contains("axis"));
}

TEST(QuantReportOutput, TensorTableHasRowPerTensor) {
    const ModelPair models = make_relu_models(onnx::TensorProto::INT8);
    VectorReader reader(kReluInput, {4}, 2);
    const std::vector<TensorError> tensors =
        measure_tensor_errors(models.float_model, models.qdq_model, reader, SessionConfig{});
    const std::string table = format_tensor_table(tensors);
    const auto lines = std::count(table.begin(), table.end(), '\n');
    EXPECT_EQ(lines, 3) << table;
    EXPECT_NE(table.find("\nx "), std::string::npos) << table;
    EXPECT_NE(table.find("\ny "), std::string::npos) << table;
    EXPECT_NE(table.find("2^-1"), std::string::npos) << table;
    EXPECT_NE(table.find("25.0000"), std::string::npos) << "clipped percentage\n" << table;
}

// ---------------------------------------------------------------------------------------------
// Sensitivity

std::map<std::string, int> count_quantization_nodes(const onnx::ModelProto& model) {
    std::map<std::string, int> counts = count_op_types(model);
    return {{"QuantizeLinear", counts["QuantizeLinear"]},
            {"DequantizeLinear", counts["DequantizeLinear"]}};
}

TEST(QuantReportSensitivity, SingleLayerModelsPassChecker) {
    const FashionFixture fixture = make_fashion_fixture(8);
    int layers = 0;
    for (const onnx::NodeProto& node : fixture.qdq.model.graph().node()) {
        if (node.op_type() != "Conv" && node.op_type() != "Gemm") {
            continue;
        }
        const onnx::ModelProto model =
            make_single_layer_model(fixture.float_model, fixture.qdq.model, node.name());
        check_onnx_model(model, "only " + node.name());
        // Input pair, weight and bias, output pair.
        const std::map<std::string, int> expected = {{"QuantizeLinear", 2},
                                                     {"DequantizeLinear", 4}};
        EXPECT_EQ(count_quantization_nodes(model), expected) << node.name();
        EXPECT_EQ(count_op_types(model)["Conv"], 2) << node.name();
        EXPECT_EQ(count_op_types(model)["Gemm"], 3) << node.name();
        ++layers;
    }
    EXPECT_EQ(layers, 5);
}

TEST(QuantReportSensitivity, SingleLayerModelRestoresFloatWeights) {
    const FashionFixture fixture = make_fashion_fixture(8);
    const onnx::ModelProto model =
        make_single_layer_model(fixture.float_model, fixture.qdq.model, "/layer1/Conv");
    std::set<std::string> initializers;
    for (const onnx::TensorProto& initializer : model.graph().initializer()) {
        initializers.insert(initializer.name());
    }
    EXPECT_TRUE(initializers.contains("layer1.0.weight_quantized"));
    EXPECT_FALSE(initializers.contains("layer1.0.weight"));
    EXPECT_TRUE(initializers.contains("fc1.weight"));
    EXPECT_FALSE(initializers.contains("fc1.weight_quantized"));
    EXPECT_FALSE(initializers.contains("fc1.weight_scale")) << "an unused initializer is left";
    EXPECT_EQ(read_float_tensor(find_initializer(model, "fc1.weight")),
              read_float_tensor(find_initializer(fixture.float_model, "fc1.weight")));
}

TEST(QuantReportSensitivity, RejectsUnknownLayer) {
    const FashionFixture fixture = make_fashion_fixture(4);
    EXPECT_THROW(make_single_layer_model(fixture.float_model, fixture.qdq.model, "no-such-node"),
                 Error);
    EXPECT_THROW(make_single_layer_model(fixture.float_model, fixture.qdq.model, "/layer1/Relu"),
                 Error);
}

// Float: x [n, 3] -> Gemm A (identity) -> Gemm B -> Gemm C (identity) -> y, biases zero.
// B's weight diag(1.375, 0.625, 100) makes the quantizer choose the weight scale 2^0, because 127
// steps must cover 100. So 1.375 and 0.625 both become 1. A's and C's identity weights (scale
// 2^-6) and every activation (multiples of 1/64 below 2) stay exact.
onnx::ModelProto make_identity_chain() {
    onnx::ModelProto model = make_empty_model(13, 3, 3);
    onnx::GraphProto& graph = *model.mutable_graph();
    const std::vector<float> identity = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    const std::vector<float> coarse = {1.375f, 0, 0, 0, 0.625f, 0, 0, 0, 100};
    const std::vector<std::tuple<std::string, std::string, std::string, std::vector<float>>>
        layers = {{"A", "x", "a", identity}, {"B", "a", "b", coarse}, {"C", "b", "y", identity}};
    for (const auto& [name, input, output, weight] : layers) {
        *graph.add_initializer() = make_float_tensor(name + ".weight", {3, 3}, weight);
        *graph.add_initializer() = make_float_tensor(name + ".bias", {3}, {0, 0, 0});
        onnx::NodeProto& node =
            add_node(graph, "Gemm", name, {input, name + ".weight", name + ".bias"}, output);
        *node.add_attribute() = make_int_attribute("transB", 1);
    }
    return model;
}

int first_argmax(const std::vector<double>& logits) {
    return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST(QuantReportSensitivity, OnlyCoarseLayerCostsAccuracy) {
    // Inputs (x0, x1, 0) on a grid of 1/8 in [0, 1]; labels are the float model's classes.
    std::vector<float> inputs;
    std::vector<int64_t> labels;
    int64_t expected_correct = 0;
    for (int i = 0; i <= 8; ++i) {
        for (int j = 0; j <= 8; ++j) {
            const double x0 = i / 8.0;
            const double x1 = j / 8.0;
            inputs.insert(inputs.end(), {static_cast<float>(x0), static_cast<float>(x1), 0.0f});
            const int label = first_argmax({1.375 * x0, 0.625 * x1, 0.0});
            labels.push_back(label);
            // With B quantized the logits are (x0, x1, 0), exactly.
            expected_correct += first_argmax({x0, x1, 0.0}) == label ? 1 : 0;
        }
    }
    ASSERT_LT(expected_correct, 81) << "the test needs inputs whose class B's rounding changes";

    const onnx::ModelProto float_model = make_identity_chain();
    VectorReader reader(inputs, {3}, 10);
    // MinMax gives every activation the finest power-of-two scale that does not clip, as the
    // design needs. MinMSE could choose a finer scale for B's output, and the NPU's output-shift
    // limit would then raise B's weight position.
    QuantizeOptions options;
    options.method = CalibrationMethod::kMinMax;
    const QdqModel qdq = quantize_to_qdq(float_model, reader, options, SessionConfig{});
    for (const QuantizedTensor& tensor : qdq.tensors) {
        if (tensor.name == "B.weight") {
            ASSERT_EQ(tensor.params.position, 0) << "B's weight scale is not the designed 2^0";
        }
    }

    const SensitivityReport report =
        measure_layer_sensitivity(float_model, qdq.model, reader, labels, SessionConfig{});
    EXPECT_EQ(report.image_count, 81);
    EXPECT_EQ(report.fp32_correct, 81);
    EXPECT_EQ(report.quantized_correct, expected_correct);
    ASSERT_EQ(report.layers.size(), 3u);
    EXPECT_EQ(report.layers[0].layer, "A");
    EXPECT_EQ(report.layers[0].correct, 81);
    EXPECT_EQ(report.layers[0].drop, 0.0);
    EXPECT_EQ(report.layers[1].layer, "B");
    EXPECT_EQ(report.layers[1].correct, expected_correct);
    EXPECT_DOUBLE_EQ(report.layers[1].drop, static_cast<double>(81 - expected_correct) / 81.0);
    EXPECT_EQ(report.layers[2].layer, "C");
    EXPECT_EQ(report.layers[2].correct, 81);
    const std::vector<std::string> b_tensors = {"a", "B.weight", "B.bias", "b"};
    EXPECT_EQ(report.layers[1].quantized_tensors, b_tensors);

    for (const LayerSensitivity& layer : report.layers) {
        check_onnx_model(make_single_layer_model(float_model, qdq.model, layer.layer),
                         "only " + layer.layer);
    }
    const nlohmann::ordered_json json = to_json(report);
    EXPECT_EQ(json["layers"].size(), 3u);
    EXPECT_EQ(json["fp32"]["correct"], 81);
    const std::string table = format_sensitivity_table(report);
    EXPECT_NE(table.find("\nB "), std::string::npos) << table;
}

TEST(QuantReportSensitivity, RejectsLabelCountMismatch) {
    const onnx::ModelProto float_model = make_identity_chain();
    VectorReader reader({0.5f, 0.25f, 0.0f, 1.0f, 0.0f, 0.0f}, {3}, 2);
    const QdqModel qdq = quantize_to_qdq(float_model, reader, {}, SessionConfig{});
    try {
        measure_layer_sensitivity(float_model, qdq.model, reader, {0}, SessionConfig{});
        FAIL() << "no error for 1 label for 2 images";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kInvalidInput);
        EXPECT_NE(std::string(error.what()).find("1 labels are given for 2 images"),
                  std::string::npos)
            << error.what();
    }
}

}  // namespace
}  // namespace edgeq
