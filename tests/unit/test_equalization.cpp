// Cross-layer equalization: the equalized model computes the same function in ONNX Runtime, each
// pair's channel ranges meet, unsupported patterns stay untouched, and the bytes are deterministic.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/equalization.h"
#include "edgeq/runtime/ort_session.h"
#include "support/model_support.h"

namespace edgeq {
namespace {

// Largest |equalized - original| output, relative to max(1, |original|). Equalization rounds each
// rescaled weight once to float (relative error 2^-24), which moves outputs by about 1e-6
// relative. A wrong scale on one channel moves them by far more than 1e-4.
constexpr double kOutputTolerance = 1e-4;

// Relative difference allowed between r1_i / s_i and r2_i * s_i after one step: both are
// sqrt(r1_i * r2_i) up to the float rounding of the rescaled weights (2^-24 relative).
constexpr double kRangeTolerance = 1e-6;

// max |s_i - 1| that counts as converged after the default number of sweeps on a three-layer
// chain: far below what would change a quantized weight.
constexpr double kConvergedScaleChange = 1e-6;

// Relative difference allowed between the two sides of a pair after convergence: the last sweep
// still moves a middle layer by up to kConvergedScaleChange after its first pair was balanced.
constexpr double kConvergedRangeTolerance = 1e-5;

// ---------------------------------------------------------------------------------------------
// Hand-built models: input "x" of a fixed shape, output "y".

onnx::ModelProto empty_model(const std::vector<int64_t>& input_shape) {
    onnx::ModelProto model;
    model.set_ir_version(kExportIrVersion);
    model.add_opset_import()->set_version(kExportOpset);
    onnx::ValueInfoProto* input = model.mutable_graph()->add_input();
    input->set_name("x");
    onnx::TypeProto_Tensor* type = input->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx::TensorProto::FLOAT);
    for (const int64_t size : input_shape) {
        type->mutable_shape()->add_dim()->set_dim_value(size);
    }
    return model;
}

void add_output(onnx::ModelProto& model, const std::string& name) {
    onnx::ValueInfoProto* output = model.mutable_graph()->add_output();
    output->set_name(name);
    output->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
}

void add_node(onnx::ModelProto& model, const std::string& op_type, const std::string& name,
              const std::vector<std::string>& inputs, const std::string& output,
              const std::vector<onnx::AttributeProto>& attributes = {}) {
    onnx::NodeProto* node = model.mutable_graph()->add_node();
    node->set_op_type(op_type);
    node->set_name(name);
    for (const std::string& input : inputs) {
        node->add_input(input);
    }
    node->add_output(output);
    for (const onnx::AttributeProto& attribute : attributes) {
        *node->add_attribute() = attribute;
    }
}

// Normal random values whose size differs strongly between the `rows` rows (spread over three
// orders of magnitude), so that the per-channel ranges are uneven.
std::vector<float> uneven_values(int64_t count, int64_t rows, uint64_t seed) {
    std::mt19937_64 generator(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> exponent(-2.0f, 1.0f);
    std::vector<float> row_scales(static_cast<size_t>(rows));
    for (float& scale : row_scales) {
        scale = std::pow(10.0f, exponent(generator));
    }
    std::vector<float> values(static_cast<size_t>(count));
    const int64_t row_size = count / rows;
    for (int64_t e = 0; e < count; ++e) {
        values[static_cast<size_t>(e)] =
            normal(generator) * row_scales[static_cast<size_t>(e / row_size)];
    }
    return values;
}

void add_weight(onnx::ModelProto& model, const std::string& name, const std::vector<int64_t>& shape,
                uint64_t seed) {
    int64_t count = 1;
    for (const int64_t size : shape) {
        count *= size;
    }
    *model.mutable_graph()->add_initializer() =
        make_float_tensor(name, shape, uneven_values(count, shape[0], seed));
}

std::vector<float> read_initializer(const onnx::ModelProto& model, const std::string& name) {
    for (const onnx::TensorProto& tensor : model.graph().initializer()) {
        if (tensor.name() == name) {
            return read_float_tensor(tensor);
        }
    }
    ADD_FAILURE() << "no initializer " << name;
    return {};
}

// Gemm(transB 1) -> Relu -> Gemm(transB 0) -> Relu -> Gemm(transB 1): x [4, 8] -> y [4, 5].
onnx::ModelProto make_gemm_chain() {
    onnx::ModelProto model = empty_model({4, 8});
    add_weight(model, "w1", {16, 8}, 1);
    add_weight(model, "b1", {16}, 2);
    add_weight(model, "w2", {16, 12}, 3);
    add_weight(model, "b2", {12}, 4);
    add_weight(model, "w3", {5, 12}, 5);
    add_weight(model, "b3", {5}, 6);
    add_node(model, "Gemm", "fc1", {"x", "w1", "b1"}, "h1", {make_int_attribute("transB", 1)});
    add_node(model, "Relu", "relu1", {"h1"}, "a1");
    add_node(model, "Gemm", "fc2", {"a1", "w2", "b2"}, "h2", {make_int_attribute("transB", 0)});
    add_node(model, "Relu", "relu2", {"h2"}, "a2");
    add_node(model, "Gemm", "fc3", {"a2", "w3", "b3"}, "y", {make_int_attribute("transB", 1)});
    add_output(model, "y");
    return model;
}

// Depthwise Conv (group = channels = 6) -> Relu -> pointwise Conv: x [2, 6, 8, 8] -> y [2, 10, 8,
// 8].
onnx::ModelProto make_depthwise_pair() {
    onnx::ModelProto model = empty_model({2, 6, 8, 8});
    add_weight(model, "dw", {6, 1, 3, 3}, 11);
    add_weight(model, "dw_bias", {6}, 12);
    add_weight(model, "pw", {10, 6, 1, 1}, 13);
    add_weight(model, "pw_bias", {10}, 14);
    add_node(model, "Conv", "depthwise", {"x", "dw", "dw_bias"}, "h",
             {make_int_attribute("group", 6), make_ints_attribute("kernel_shape", {3, 3}),
              make_ints_attribute("pads", {1, 1, 1, 1})});
    add_node(model, "Relu", "relu", {"h"}, "a");
    add_node(model, "Conv", "pointwise", {"a", "pw", "pw_bias"}, "y",
             {make_ints_attribute("kernel_shape", {1, 1})});
    add_output(model, "y");
    return model;
}

// Pointwise Conv -> Relu -> depthwise Conv (group = channels = 6): x [2, 3, 8, 8] -> y [2, 6, 6,
// 6].
onnx::ModelProto make_pointwise_depthwise_pair() {
    onnx::ModelProto model = empty_model({2, 3, 8, 8});
    add_weight(model, "pw", {6, 3, 1, 1}, 21);
    add_weight(model, "pw_bias", {6}, 22);
    add_weight(model, "dw", {6, 1, 3, 3}, 23);
    add_node(model, "Conv", "pointwise", {"x", "pw", "pw_bias"}, "h",
             {make_ints_attribute("kernel_shape", {1, 1})});
    add_node(model, "Relu", "relu", {"h"}, "a");
    add_node(model, "Conv", "depthwise", {"a", "dw"}, "y",
             {make_int_attribute("group", 6), make_ints_attribute("kernel_shape", {3, 3})});
    add_output(model, "y");
    return model;
}

// Conv -> Relu -> MaxPool -> Flatten -> Gemm: x [2, 3, 8, 8] -> y [2, 7]; the Gemm reads 4
// channels of 4 x 4 = 16 columns each.
onnx::ModelProto make_conv_flatten_gemm() {
    onnx::ModelProto model = empty_model({2, 3, 8, 8});
    add_weight(model, "conv_w", {4, 3, 3, 3}, 31);
    add_weight(model, "conv_b", {4}, 32);
    add_weight(model, "fc_w", {7, 64}, 33);
    add_weight(model, "fc_b", {7}, 34);
    add_node(
        model, "Conv", "conv", {"x", "conv_w", "conv_b"}, "h",
        {make_ints_attribute("kernel_shape", {3, 3}), make_ints_attribute("pads", {1, 1, 1, 1})});
    add_node(model, "Relu", "relu", {"h"}, "a");
    add_node(model, "MaxPool", "pool", {"a"}, "p",
             {make_ints_attribute("kernel_shape", {2, 2}), make_ints_attribute("strides", {2, 2})});
    add_node(model, "Flatten", "flatten", {"p"}, "f");
    add_node(model, "Gemm", "fc", {"f", "fc_w", "fc_b"}, "y", {make_int_attribute("transB", 1)});
    add_output(model, "y");
    return model;
}

// Gemm -> Relu -> Gemm with `middle` ("Relu" or another single-input op) in between; used for the
// patterns that must be left alone.
onnx::ModelProto make_gemm_pair(const std::string& middle) {
    onnx::ModelProto model = empty_model({4, 8});
    add_weight(model, "w1", {16, 8}, 41);
    add_weight(model, "b1", {16}, 42);
    add_weight(model, "w2", {5, 16}, 43);
    add_node(model, "Gemm", "fc1", {"x", "w1", "b1"}, "h", {make_int_attribute("transB", 1)});
    add_node(model, middle, "middle", {"h"}, "a");
    add_node(model, "Gemm", "fc2", {"a", "w2"}, "y", {make_int_attribute("transB", 1)});
    add_output(model, "y");
    return model;
}

// ---------------------------------------------------------------------------------------------
// Checks.

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

std::vector<float> seeded_input(int64_t count, uint64_t seed) {
    std::mt19937_64 generator(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> values(static_cast<size_t>(count));
    for (float& value : values) {
        value = normal(generator);
    }
    return values;
}

// Runs both models in ONNX Runtime on `input` and checks every output against kOutputTolerance.
void expect_same_outputs(const onnx::ModelProto& original, const onnx::ModelProto& equalized,
                         const std::vector<float>& input, const std::vector<int64_t>& shape) {
    OrtModel original_session(serialize(original), "original", SessionConfig{});
    OrtModel equalized_session(serialize(equalized), "equalized", SessionConfig{});
    const std::vector<FloatOutput> expected = original_session.run(input, shape);
    const std::vector<FloatOutput> actual = equalized_session.run(input, shape);
    ASSERT_EQ(expected.size(), actual.size());
    for (size_t o = 0; o < expected.size(); ++o) {
        ASSERT_EQ(expected[o].values.size(), actual[o].values.size());
        double worst = 0;
        for (size_t i = 0; i < expected[o].values.size(); ++i) {
            const double reference = expected[o].values[i];
            const double difference = std::abs(double{actual[o].values[i]} - reference);
            worst = std::max(worst, difference / std::max(1.0, std::abs(reference)));
        }
        EXPECT_LE(worst, kOutputTolerance) << "output " << o;
    }
}

// max |w| over the rows of a row-major [rows, ...] weight.
std::vector<double> row_ranges(const std::vector<float>& weight, int64_t rows) {
    std::vector<double> ranges(static_cast<size_t>(rows), 0.0);
    const size_t row_size = weight.size() / static_cast<size_t>(rows);
    for (size_t e = 0; e < weight.size(); ++e) {
        ranges[e / row_size] = std::max(ranges[e / row_size], double{std::abs(weight[e])});
    }
    return ranges;
}

// max |w| over blocks of `block` consecutive columns of a row-major [rows, columns] weight.
std::vector<double> column_block_ranges(const std::vector<float>& weight, int64_t columns,
                                        int64_t block) {
    std::vector<double> ranges(static_cast<size_t>(columns / block), 0.0);
    for (size_t e = 0; e < weight.size(); ++e) {
        const size_t channel = (e % static_cast<size_t>(columns)) / static_cast<size_t>(block);
        ranges[channel] = std::max(ranges[channel], double{std::abs(weight[e])});
    }
    return ranges;
}

void expect_equal_ranges(const std::vector<double>& first, const std::vector<double>& second) {
    ASSERT_EQ(first.size(), second.size());
    for (size_t i = 0; i < first.size(); ++i) {
        EXPECT_NEAR(first[i], second[i], kRangeTolerance * std::max(first[i], second[i]))
            << "channel " << i;
    }
}

const EqualizedPair* find_pair(const EqualizationReport& report, const std::string& first) {
    for (const EqualizedPair& pair : report.pairs) {
        if (pair.first_layer == first) {
            return &pair;
        }
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------

TEST(Equalization, FashionCnnKeepsOutputs) {
    FashionCnn network = test::make_random_fashion_cnn(3);
    const onnx::ModelProto original = export_fashion_cnn(export_state_dict(network));
    onnx::ModelProto equalized = original;
    const EqualizationReport report = equalize_cross_layer(equalized);

    // conv1 -> conv2 through Relu and MaxPool, conv2 -> fc1 through a Reshape, fc1 -> fc2 -> fc3
    // directly; fc3 writes the graph output.
    ASSERT_EQ(report.pairs.size(), 4u);
    EXPECT_EQ(report.pairs[0].first_layer, "/layer1/Conv");
    EXPECT_EQ(report.pairs[0].second_layer, "/layer2/Conv");
    EXPECT_EQ(report.pairs[0].between, "Relu, MaxPool");
    EXPECT_EQ(report.pairs[1].second_layer, "/fc1/Gemm");
    EXPECT_EQ(report.pairs[1].between, "Relu, MaxPool, Reshape");
    EXPECT_EQ(report.pairs[2].second_layer, "/fc2/Gemm");
    EXPECT_EQ(report.pairs[3].second_layer, "/fc3/Gemm");
    ASSERT_EQ(report.unequalized.size(), 1u);
    EXPECT_EQ(report.unequalized[0].layer, "/fc3/Gemm");
    EXPECT_NE(report.unequalized[0].reason.find("graph output"), std::string::npos)
        << report.unequalized[0].reason;
    EXPECT_NE(serialize(original), serialize(equalized)) << "no weight changed";
    check_onnx_model(equalized, "equalized FashionCNN");

    const LabelledImages images = test::make_synthetic_images(16, 3);
    expect_same_outputs(original, equalized, gather_image_range(images, 0, images.size()),
                        {images.size(), 1, kImageSide, kImageSide});
}

TEST(Equalization, FashionCnnSameBytes) {
    FashionCnn network = test::make_random_fashion_cnn(4);
    const onnx::ModelProto original = export_fashion_cnn(export_state_dict(network));
    onnx::ModelProto first = original;
    onnx::ModelProto second = original;
    equalize_cross_layer(first);
    equalize_cross_layer(second);
    EXPECT_EQ(serialize(first), serialize(second));
}

TEST(Equalization, GemmChainKeepsOutputs) {
    const onnx::ModelProto original = make_gemm_chain();
    onnx::ModelProto equalized = original;
    const EqualizationReport report = equalize_cross_layer(equalized);
    ASSERT_EQ(report.pairs.size(), 2u);
    EXPECT_EQ(report.pairs[0].second_layer, "fc2");
    EXPECT_EQ(report.pairs[1].first_layer, "fc2");
    expect_same_outputs(original, equalized, seeded_input(32, 7), {4, 8});
}

TEST(Equalization, GemmChainConverges) {
    onnx::ModelProto model = make_gemm_chain();
    const EqualizationReport report = equalize_cross_layer(model);
    EXPECT_LE(report.last_iteration_max_scale_change, kConvergedScaleChange);

    // fc1 [16, 8] rows against fc2 [16, 12] rows (transB 0: input channel = row), then fc2's
    // columns (its output channels) against fc3 [5, 12] columns.
    const std::vector<float> w1 = read_initializer(model, "w1");
    const std::vector<float> w2 = read_initializer(model, "w2");
    const std::vector<float> w3 = read_initializer(model, "w3");
    for (size_t i = 0; i < 16; ++i) {
        const double first = row_ranges(w1, 16)[i];
        const double second = row_ranges(w2, 16)[i];
        EXPECT_NEAR(first, second, kConvergedRangeTolerance * first) << "fc1/fc2 channel " << i;
    }
    expect_equal_ranges(column_block_ranges(w2, 12, 1), column_block_ranges(w3, 12, 1));

    // The report agrees: at convergence both sides of a pair have the same spread.
    for (const EqualizedPair& pair : report.pairs) {
        EXPECT_NEAR(pair.first_after.smallest_to_largest, pair.second_after.smallest_to_largest,
                    kConvergedRangeTolerance)
            << pair.first_layer;
    }
}

TEST(Equalization, DepthwisePairRangesMeetInOneStep) {
    const onnx::ModelProto original = make_depthwise_pair();
    onnx::ModelProto equalized = original;
    const EqualizationReport report = equalize_cross_layer(equalized, 1);
    ASSERT_EQ(report.pairs.size(), 1u);
    EXPECT_EQ(report.pairs[0].channels, 6);

    // Depthwise [6, 1, 3, 3]: output channel = row. Pointwise [10, 6, 1, 1]: input channel =
    // column of the [10, 6] matrix.
    const std::vector<float> depthwise = read_initializer(equalized, "dw");
    const std::vector<float> pointwise = read_initializer(equalized, "pw");
    expect_equal_ranges(row_ranges(depthwise, 6), column_block_ranges(pointwise, 6, 1));

    // The report's "before" is the original model's.
    const std::vector<double> original_ranges = row_ranges(read_initializer(original, "dw"), 6);
    const double largest = *std::max_element(original_ranges.begin(), original_ranges.end());
    const double smallest = *std::min_element(original_ranges.begin(), original_ranges.end());
    EXPECT_FLOAT_EQ(report.pairs[0].first_before.tensor_range, static_cast<float>(largest));
    EXPECT_FLOAT_EQ(report.pairs[0].first_before.smallest_to_largest,
                    static_cast<float>(smallest / largest));

    expect_same_outputs(original, equalized, seeded_input(2 * 6 * 8 * 8, 8), {2, 6, 8, 8});
}

TEST(Equalization, LonePairStopsAfterTwoSweeps) {
    // The first sweep balances the pair, so the second finds every scale within double rounding
    // of 1 and stops the loop.
    onnx::ModelProto model = make_depthwise_pair();
    const EqualizationReport report = equalize_cross_layer(model);
    EXPECT_EQ(report.iterations, 2);
    EXPECT_LT(report.last_iteration_max_scale_change, kConvergedScaleChange);
}

TEST(Equalization, DepthwiseSecondLayer) {
    const onnx::ModelProto original = make_pointwise_depthwise_pair();
    onnx::ModelProto equalized = original;
    const EqualizationReport report = equalize_cross_layer(equalized, 1);
    ASSERT_EQ(report.pairs.size(), 1u);

    // Depthwise [6, 1, 3, 3]: input channel i is read only by output channel i, so by row i.
    expect_equal_ranges(row_ranges(read_initializer(equalized, "pw"), 6),
                        row_ranges(read_initializer(equalized, "dw"), 6));
    expect_same_outputs(original, equalized, seeded_input(2 * 3 * 8 * 8, 9), {2, 3, 8, 8});
}

TEST(Equalization, ConvFlattenGemmUsesColumnBlocks) {
    const onnx::ModelProto original = make_conv_flatten_gemm();
    onnx::ModelProto equalized = original;
    const EqualizationReport report = equalize_cross_layer(equalized, 1);
    ASSERT_EQ(report.pairs.size(), 1u);
    EXPECT_EQ(report.pairs[0].between, "Relu, MaxPool, Flatten");

    // fc_w [7, 64]: channel c owns columns [16c, 16c + 16).
    expect_equal_ranges(row_ranges(read_initializer(equalized, "conv_w"), 4),
                        column_block_ranges(read_initializer(equalized, "fc_w"), 64, 16));
    expect_same_outputs(original, equalized, seeded_input(2 * 3 * 8 * 8, 10), {2, 3, 8, 8});
}

TEST(Equalization, ZeroChannelLeftUnscaled) {
    onnx::ModelProto original = make_gemm_pair("Relu");
    // Output channel 3 of fc1: an all-zero row of w1 [16, 8].
    std::vector<float> w1 = read_initializer(original, "w1");
    std::fill(w1.begin() + 3 * 8, w1.begin() + 4 * 8, 0.0f);
    *original.mutable_graph()->mutable_initializer(0) = make_float_tensor("w1", {16, 8}, w1);

    onnx::ModelProto equalized = original;
    const EqualizationReport report = equalize_cross_layer(equalized);
    ASSERT_EQ(report.pairs.size(), 1u);
    EXPECT_EQ(report.pairs[0].unscaled_channels, 1);
    for (const float value : read_initializer(equalized, "w2")) {
        EXPECT_TRUE(std::isfinite(value));
    }
    // Column 3 of w2 [5, 16] keeps its values, because channel 3 was not scaled.
    const std::vector<float> before = read_initializer(original, "w2");
    const std::vector<float> after = read_initializer(equalized, "w2");
    for (size_t row = 0; row < 5; ++row) {
        EXPECT_EQ(after[row * 16 + 3], before[row * 16 + 3]) << "row " << row;
    }
    expect_same_outputs(original, equalized, seeded_input(32, 11), {4, 8});
}

// Each pattern must leave the model byte for byte as it was, with a reason naming the cause.
void expect_left_alone(const onnx::ModelProto& original, const std::string& expected_reason) {
    onnx::ModelProto model = original;
    const EqualizationReport report = equalize_cross_layer(model);
    EXPECT_TRUE(report.pairs.empty());
    EXPECT_EQ(serialize(model), serialize(original));
    ASSERT_FALSE(report.unequalized.empty());
    EXPECT_EQ(report.unequalized[0].layer, "fc1");
    EXPECT_NE(report.unequalized[0].reason.find(expected_reason), std::string::npos)
        << report.unequalized[0].reason;
}

TEST(Equalization, SigmoidBetweenLeftAlone) {
    expect_left_alone(make_gemm_pair("Sigmoid"), "does not commute");
}

TEST(Equalization, TwoConsumersLeftAlone) {
    onnx::ModelProto model = make_gemm_pair("Relu");
    add_weight(model, "w_other", {3, 16}, 44);
    add_node(model, "Gemm", "other", {"a", "w_other"}, "z", {make_int_attribute("transB", 1)});
    add_output(model, "z");
    expect_left_alone(model, "2 consumers");
}

TEST(Equalization, GraphOutputInMiddleLeftAlone) {
    onnx::ModelProto model = make_gemm_pair("Relu");
    add_output(model, "a");
    expect_left_alone(model, "'a' is a graph output");
}

TEST(Equalization, SharedWeightLeftAlone) {
    // fc2 reads fc1's weight too (as [16, 8] with transB 0 it maps 16 columns to 8).
    onnx::ModelProto model = empty_model({4, 8});
    add_weight(model, "w1", {16, 8}, 51);
    add_node(model, "Gemm", "fc1", {"x", "w1"}, "h", {make_int_attribute("transB", 1)});
    add_node(model, "Relu", "relu", {"h"}, "a");
    add_node(model, "Gemm", "fc2", {"a", "w1"}, "y");
    add_output(model, "y");
    expect_left_alone(model, "shared");
}

TEST(Equalization, ZeroIterationsChangeNothing) {
    const onnx::ModelProto original = make_gemm_chain();
    onnx::ModelProto model = original;
    const EqualizationReport report = equalize_cross_layer(model, 0);
    EXPECT_EQ(report.iterations, 0);
    EXPECT_EQ(report.pairs.size(), 2u);
    EXPECT_EQ(serialize(model), serialize(original));
    const EqualizedPair* pair = find_pair(report, "fc1");
    ASSERT_NE(pair, nullptr);
    EXPECT_EQ(pair->first_before.tensor_range, pair->first_after.tensor_range);
}

}  // namespace
}  // namespace edgeq
