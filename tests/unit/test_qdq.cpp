// QDQ quantizer on FashionCNN with random weights and synthetic calibration images: the
// structure the NPU expects, the number formats, ONNX Runtime acceptance and determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

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

// Signal-to-quantization-noise ratio that the int8 model's logits must reach against the fp32
// logits. 8-bit per-tensor quantization of a 5-layer network typically gives 25-35 dB; 15 dB
// still catches a wrong scale or a missing zero point, which fall below 5 dB.
constexpr double kMinimumLogitSqnrDb = 15.0;

struct QuantizedFixture {
    onnx::ModelProto float_model;
    QdqModel qdq;
    LabelledImages images;
};

QuantizedFixture quantize_random_model(const QuantizeOptions& options, uint64_t seed = 11) {
    FashionCnn model = test::make_random_fashion_cnn(seed);
    QuantizedFixture fixture;
    fixture.float_model = export_fashion_cnn(export_state_dict(model));
    fixture.images = test::make_synthetic_images(64, seed);
    LabelledImagesReader reader(fixture.images, options.calibration_batch_size);
    fixture.qdq = quantize_to_qdq(fixture.float_model, reader, options, SessionConfig{});
    return fixture;
}

std::map<std::string, const onnx::TensorProto*> initializers_by_name(
    const onnx::ModelProto& model) {
    std::map<std::string, const onnx::TensorProto*> result;
    for (const onnx::TensorProto& tensor : model.graph().initializer()) {
        result[tensor.name()] = &tensor;
    }
    return result;
}

float scalar_float(const onnx::TensorProto& tensor) {
    float value = 0;
    std::memcpy(&value, tensor.raw_data().data(), sizeof(value));
    return value;
}

bool is_power_of_two(float value) {
    int exponent = 0;
    return value > 0 && std::frexp(value, &exponent) == 0.5f;
}

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

TEST(QdqQuantizer, HasThirtyEightNodes) {
    const QuantizedFixture fixture = quantize_random_model({});
    const std::map<std::string, int> counts = count_op_types(fixture.qdq.model);
    EXPECT_EQ(fixture.qdq.model.graph().node_size(), 38);
    EXPECT_EQ(counts.at("QuantizeLinear"), 9);
    EXPECT_EQ(counts.at("DequantizeLinear"), 19);
    EXPECT_EQ(counts.at("Conv"), 2);
    EXPECT_EQ(counts.at("Relu"), 2);
    EXPECT_EQ(counts.at("MaxPool"), 2);
    EXPECT_EQ(counts.at("Reshape"), 1);
    EXPECT_EQ(counts.at("Gemm"), 3);
}

TEST(QdqQuantizer, PassesCheckerKeepsNames) {
    const QuantizedFixture fixture = quantize_random_model({});
    check_onnx_model(fixture.qdq.model, "qdq");
    EXPECT_EQ(fixture.qdq.model.graph().input(0).name(), "input");
    EXPECT_EQ(fixture.qdq.model.graph().output(0).name(), "output");
    EXPECT_EQ(fixture.qdq.model.opset_import(0).version(), 13);
}

TEST(QdqQuantizer, NoPairBetweenConvAndRelu) {
    const QuantizedFixture fixture = quantize_random_model({});
    std::map<std::string, std::string> producer_op;
    for (const onnx::NodeProto& node : fixture.qdq.model.graph().node()) {
        producer_op[node.output(0)] = node.op_type();
    }
    int relu_count = 0;
    for (const onnx::NodeProto& node : fixture.qdq.model.graph().node()) {
        if (node.op_type() == "Relu") {
            ++relu_count;
            EXPECT_EQ(producer_op[node.input(0)], "Conv") << node.name();
        }
    }
    EXPECT_EQ(relu_count, 2);
}

TEST(QdqQuantizer, ActivationsUint8ZeroPoint128PowerOfTwo) {
    const QuantizedFixture fixture = quantize_random_model({});
    const auto initializers = initializers_by_name(fixture.qdq.model);
    int checked = 0;
    for (const onnx::NodeProto& node : fixture.qdq.model.graph().node()) {
        if (node.op_type() != "QuantizeLinear") {
            continue;
        }
        ASSERT_EQ(node.input_size(), 3) << node.name();
        const onnx::TensorProto& scale = *initializers.at(node.input(1));
        const onnx::TensorProto& zero_point = *initializers.at(node.input(2));
        EXPECT_EQ(scale.dims_size(), 0) << "not per-tensor: " << node.name();
        EXPECT_TRUE(is_power_of_two(scalar_float(scale))) << node.name();
        EXPECT_EQ(zero_point.data_type(), onnx::TensorProto::UINT8) << node.name();
        EXPECT_EQ(static_cast<uint8_t>(zero_point.raw_data()[0]), 128) << node.name();
        ++checked;
    }
    EXPECT_EQ(checked, 9);
}

TEST(QdqQuantizer, WeightsAndBiasesInt8ThroughDequantize) {
    const QuantizedFixture fixture = quantize_random_model({});
    const auto initializers = initializers_by_name(fixture.qdq.model);
    std::map<std::string, const onnx::NodeProto*> producer;
    for (const onnx::NodeProto& node : fixture.qdq.model.graph().node()) {
        producer[node.output(0)] = &node;
    }
    for (const onnx::NodeProto& node : fixture.qdq.model.graph().node()) {
        if (node.op_type() != "Conv" && node.op_type() != "Gemm") {
            continue;
        }
        for (int i = 1; i <= 2; ++i) {
            const onnx::NodeProto* dequantize = producer[node.input(i)];
            ASSERT_NE(dequantize, nullptr) << node.name() << " input " << i;
            EXPECT_EQ(dequantize->op_type(), "DequantizeLinear");
            const onnx::TensorProto& stored = *initializers.at(dequantize->input(0));
            EXPECT_EQ(stored.data_type(), onnx::TensorProto::INT8) << stored.name();
            EXPECT_TRUE(is_power_of_two(scalar_float(*initializers.at(dequantize->input(1)))));
            const onnx::TensorProto& zero_point = *initializers.at(dequantize->input(2));
            EXPECT_EQ(zero_point.raw_data()[0], 0) << "weights and biases are symmetric";
        }
    }
}

TEST(QdqQuantizer, Int32BiasUsesProductScale) {
    QuantizeOptions options;
    options.bias = BiasMode::kInt32;
    const QuantizedFixture fixture = quantize_random_model(options);
    std::map<std::string, QuantParams> params;
    for (const QuantizedTensor& tensor : fixture.qdq.tensors) {
        params[tensor.name] = tensor.params;
    }
    // fc2 reads fc1's output; its bias scale is s_input * s_weight.
    const QuantParams& bias = params.at("fc2.bias");
    EXPECT_EQ(bias.type, QuantType::kInt32);
    EXPECT_EQ(bias.position,
              params.at("fc2.weight").position + params.at("/fc1/Gemm_output_0").position);
    const auto summary = summarize_qdq_model(fixture.qdq.model);
    for (const OpTypeQuantization& row : summary) {
        if (row.op_type == "Gemm") {
            EXPECT_EQ(row.bias.at("INT32"), 3);
        }
    }
}

TEST(QdqQuantizer, MaxPoolAndReshapeShareInputScale) {
    const QuantizedFixture fixture = quantize_random_model({});
    std::map<std::string, QuantParams> params;
    for (const QuantizedTensor& tensor : fixture.qdq.tensors) {
        params[tensor.name] = tensor.params;
    }
    EXPECT_EQ(params.at("/layer1/MaxPool_output_0").position,
              params.at("/layer1/Relu_output_0").position);
    EXPECT_EQ(params.at("/Reshape_output_0").position,
              params.at("/layer2/MaxPool_output_0").position);
}

TEST(QdqQuantizer, BiasShiftsWithinNpuLimits) {
    const QuantizedFixture fixture = quantize_random_model({});
    std::map<std::string, QuantParams> params;
    for (const QuantizedTensor& tensor : fixture.qdq.tensors) {
        params[tensor.name] = tensor.params;
    }
    struct Layer {
        std::string input, weight, bias, output;
    };
    const std::vector<Layer> layers = {
        {"input", "layer1.0.weight", "layer1.0.bias", "/layer1/Relu_output_0"},
        {"/layer1/MaxPool_output_0", "layer2.0.weight", "layer2.0.bias", "/layer2/Relu_output_0"},
        {"/Reshape_output_0", "fc1.weight", "fc1.bias", "/fc1/Gemm_output_0"},
        {"/fc1/Gemm_output_0", "fc2.weight", "fc2.bias", "/fc2/Gemm_output_0"},
        {"/fc2/Gemm_output_0", "fc3.weight", "fc3.bias", "output"},
    };
    for (const Layer& layer : layers) {
        const int product = params.at(layer.weight).position + params.at(layer.input).position;
        const int shift_cut = product - params.at(layer.output).position;
        const int bias_shift = product - params.at(layer.bias).position;
        EXPECT_GE(shift_cut, 0) << layer.weight;
        EXPECT_LE(shift_cut, kMaxOutputShift) << layer.weight;
        EXPECT_GE(bias_shift, std::min(0, shift_cut - kMaxOutputShift)) << layer.bias;
        EXPECT_LE(bias_shift, kMaxBiasShift) << layer.bias;
    }
}

TEST(QdqQuantizer, RunsInOnnxRuntimeCloseToFloat) {
    const QuantizedFixture fixture = quantize_random_model({});
    test::ScratchFolder folder("qdq");
    save_onnx_model(fixture.float_model, folder / "float.onnx");
    save_onnx_model(fixture.qdq.model, folder / "qdq.onnx");
    OrtModel float_session(folder / "float.onnx", SessionConfig{});
    OrtModel qdq_session(folder / "qdq.onnx", SessionConfig{});

    const std::vector<float> batch = gather_image_range(fixture.images, 0, fixture.images.size());
    const std::vector<int64_t> shape = {fixture.images.size(), 1, 28, 28};
    const std::vector<float> expected = float_session.run(batch, shape)[0].values;
    const std::vector<float> actual = qdq_session.run(batch, shape)[0].values;
    ASSERT_EQ(actual.size(), expected.size());

    double signal = 0;
    double noise = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        signal += double{expected[i]} * expected[i];
        noise += (double{actual[i]} - expected[i]) * (double{actual[i]} - expected[i]);
    }
    const double sqnr_db = 10.0 * std::log10(signal / std::max(noise, 1e-30));
    EXPECT_GE(sqnr_db, kMinimumLogitSqnrDb);
}

TEST(QdqQuantizer, MinMseStaysNearNonOverflow) {
    QuantizeOptions min_max;
    min_max.method = CalibrationMethod::kMinMax;
    QuantizeOptions min_mse;
    min_mse.method = CalibrationMethod::kMinMse;
    const QuantizedFixture reference = quantize_random_model(min_max);
    const QuantizedFixture fixture = quantize_random_model(min_mse);
    std::map<std::string, int> reference_positions;
    for (const QuantizedTensor& tensor : reference.qdq.tensors) {
        reference_positions[tensor.name] = tensor.params.position;
    }
    for (const QuantizedTensor& tensor : fixture.qdq.tensors) {
        if (tensor.role != "activation") {
            continue;
        }
        // MinMSE only searches one position below to three above the non-overflow one.
        const int reference_position = reference_positions.at(tensor.name);
        EXPECT_GE(tensor.params.position, reference_position - 1) << tensor.name;
        EXPECT_LE(tensor.params.position, reference_position + 3) << tensor.name;
    }
    EXPECT_EQ(fixture.qdq.model.graph().node_size(), 38);
}

TEST(QdqQuantizer, MinMseBatchSizeDoesNotMatter) {
    QuantizeOptions one_at_a_time;
    one_at_a_time.method = CalibrationMethod::kMinMse;
    one_at_a_time.calibration_batch_size = 1;
    QuantizeOptions uneven = one_at_a_time;
    uneven.calibration_batch_size = 27;
    EXPECT_EQ(serialize(quantize_random_model(one_at_a_time).qdq.model),
              serialize(quantize_random_model(uneven).qdq.model));
}

TEST(QdqQuantizer, SameInputsSameBytes) {
    const QuantizedFixture first = quantize_random_model({});
    const QuantizedFixture second = quantize_random_model({});
    EXPECT_EQ(serialize(first.qdq.model), serialize(second.qdq.model));
}

TEST(QdqQuantizer, BatchSizeDoesNotChangeResult) {
    QuantizeOptions one_at_a_time;
    one_at_a_time.calibration_batch_size = 1;
    QuantizeOptions uneven;
    uneven.calibration_batch_size = 27;  // 64 images: batches of 27, 27 and 10
    EXPECT_EQ(serialize(quantize_random_model(one_at_a_time).qdq.model),
              serialize(quantize_random_model(uneven).qdq.model));
}

TEST(QdqQuantizer, SummaryTableMatchesReport) {
    const QuantizedFixture fixture = quantize_random_model({});
    std::map<std::string, OpTypeQuantization> rows;
    for (const OpTypeQuantization& row : summarize_qdq_model(fixture.qdq.model)) {
        rows[row.op_type] = row;
    }
    EXPECT_EQ(rows.at("Conv").count, 2);
    EXPECT_EQ(rows.at("Conv").activation.at("UINT8"), 2);
    EXPECT_EQ(rows.at("Conv").weights.at("INT8"), 2);
    EXPECT_EQ(rows.at("Conv").bias.at("INT8"), 2);
    EXPECT_EQ(rows.at("MaxPool").activation.at("UINT8"), 2);
    EXPECT_EQ(rows.at("Gemm").weights.at("INT8"), 3);
    EXPECT_EQ(rows.at("Reshape").activation.at("UINT8"), 1);
}

TEST(QdqQuantizer, DropsInitializersFromGraphInputs) {
    // Exporters before IR version 4 list every initializer as a graph input too.
    FashionCnn model = test::make_random_fashion_cnn(5);
    onnx::ModelProto float_model = export_fashion_cnn(export_state_dict(model));
    for (const onnx::TensorProto& initializer : float_model.graph().initializer()) {
        onnx::ValueInfoProto* input = float_model.mutable_graph()->add_input();
        input->set_name(initializer.name());
        onnx::TypeProto_Tensor* type = input->mutable_type()->mutable_tensor_type();
        type->set_elem_type(initializer.data_type());
        for (const int64_t size : initializer.dims()) {
            type->mutable_shape()->add_dim()->set_dim_value(size);
        }
    }
    const LabelledImages images = test::make_synthetic_images(8, 5);
    LabelledImagesReader reader(images, 4);
    const QdqModel qdq = quantize_to_qdq(float_model, reader, {}, SessionConfig{});

    std::set<std::string> inputs;
    for (const onnx::ValueInfoProto& input : qdq.model.graph().input()) {
        inputs.insert(input.name());
    }
    EXPECT_TRUE(inputs.contains("input"));
    EXPECT_FALSE(inputs.contains("fc1.weight")) << "a quantized weight is still a graph input";
    EXPECT_TRUE(inputs.contains("flatten_shape")) << "an untouched initializer lost its entry";
    check_onnx_model(qdq.model, "qdq");
}

TEST(QdqQuantizer, WarnsWhenWeightSaturates) {
    // Weights of 1e5 need a scale above 2^8, the coarsest the quantizer allows.
    FashionCnn model = test::make_random_fashion_cnn(6);
    StateDict weights = export_state_dict(model);
    for (float& value : weights.at("fc3.weight").values) {
        value *= 1e6f;
    }
    const onnx::ModelProto float_model = export_fashion_cnn(weights);
    const LabelledImages images = test::make_synthetic_images(8, 6);
    LabelledImagesReader reader(images, 8);
    const QdqModel qdq = quantize_to_qdq(float_model, reader, {}, SessionConfig{});

    bool flagged = false;
    for (const QuantizedTensor& tensor : qdq.tensors) {
        if (tensor.name == "fc3.weight") {
            flagged = tensor.saturates;
        }
    }
    EXPECT_TRUE(flagged);
    bool warned = false;
    for (const std::string& warning : qdq.warnings) {
        warned = warned || warning.find("fc3.weight") != std::string::npos;
    }
    EXPECT_TRUE(warned);
}

// A graph with no operator the quantizer handles has nothing to quantize. (An unsupported
// operator among supported ones stays in float: see test_quantizer_presets.cpp.)
TEST(QdqQuantizer, RejectsModelWithNothingToQuantize) {
    onnx::ModelProto model;
    model.set_ir_version(7);
    model.add_opset_import()->set_version(13);
    onnx::GraphProto& graph = *model.mutable_graph();
    auto* input = graph.add_input();
    input->set_name("x");
    input->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
    auto* output = graph.add_output();
    output->set_name("y");
    output->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
    onnx::NodeProto* node = graph.add_node();
    node->set_op_type("Erf");
    node->set_name("my_erf");
    node->add_input("x");
    node->add_output("y");

    const LabelledImages images = test::make_synthetic_images(2, 1);
    LabelledImagesReader reader(images, 1);
    try {
        quantize_to_qdq(model, reader, {}, SessionConfig{});
        FAIL() << "no error for a model with nothing to quantize";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUnsupported);
        EXPECT_NE(std::string(error.what()).find("nothing to quantize"), std::string::npos)
            << error.what();
    }
}

TEST(QdqQuantizer, RejectsEmptyCalibrationSet) {
    FashionCnn model = test::make_random_fashion_cnn(1);
    const onnx::ModelProto float_model = export_fashion_cnn(export_state_dict(model));
    const LabelledImages empty;
    LabelledImagesReader reader(empty, 10);
    try {
        quantize_to_qdq(float_model, reader, {}, SessionConfig{});
        FAIL() << "no error for empty calibration data";
    } catch (const Error& error) {
        EXPECT_NE(std::string(error.what()).find("calibration data is empty"), std::string::npos)
            << error.what();
    }
}

}  // namespace
}  // namespace edgeq
