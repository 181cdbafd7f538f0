// ONNX exporter: graph structure, checker, dynamic batch, numerics against libtorch, and
// byte-identical output.
#include <gtest/gtest.h>

#include <cmath>

#include "edgeq/common/files.h"
#include "edgeq/model/train.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/runtime/ort_session.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

// BatchNorm folding and ONNX Runtime's kernels reorder float32 sums; logits of random-weight
// models are O(1), so differences stay near 1e-6. 1e-4 leaves room, and a wrong fold or layout
// is off by far more.
constexpr float kLogitTolerance = 1e-4f;

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

TEST(Exporter, GraphHasTenNodesInOrder) {
    FashionCnn model = test::make_random_fashion_cnn(1);
    const onnx::ModelProto exported = export_fashion_cnn(export_state_dict(model));

    std::vector<std::string> op_types;
    for (const onnx::NodeProto& node : exported.graph().node()) {
        op_types.push_back(node.op_type());
    }
    const std::vector<std::string> expected = {"Conv",    "Relu",    "MaxPool", "Conv", "Relu",
                                               "MaxPool", "Reshape", "Gemm",    "Gemm", "Gemm"};
    EXPECT_EQ(op_types, expected);
}

TEST(Exporter, OpsetNamesAndDynamicBatch) {
    FashionCnn model = test::make_random_fashion_cnn(1);
    const onnx::ModelProto exported = export_fashion_cnn(export_state_dict(model));

    ASSERT_EQ(exported.opset_import_size(), 1);
    EXPECT_EQ(exported.opset_import(0).version(), 13);
    ASSERT_EQ(exported.graph().input_size(), 1);
    ASSERT_EQ(exported.graph().output_size(), 1);
    const auto& input = exported.graph().input(0);
    const auto& output = exported.graph().output(0);
    EXPECT_EQ(input.name(), "input");
    EXPECT_EQ(output.name(), "output");

    const auto& input_shape = input.type().tensor_type().shape();
    ASSERT_EQ(input_shape.dim_size(), 4);
    EXPECT_FALSE(input_shape.dim(0).dim_param().empty()) << "batch axis is not dynamic";
    EXPECT_EQ(input_shape.dim(1).dim_value(), 1);
    EXPECT_EQ(input_shape.dim(2).dim_value(), 28);
    const auto& output_shape = output.type().tensor_type().shape();
    ASSERT_EQ(output_shape.dim_size(), 2);
    EXPECT_EQ(output_shape.dim(0).dim_param(), input_shape.dim(0).dim_param());
    EXPECT_EQ(output_shape.dim(1).dim_value(), 10);
}

TEST(Exporter, PassesCheckerAndShapeInference) {
    FashionCnn model = test::make_random_fashion_cnn(2);
    const onnx::ModelProto exported = export_fashion_cnn(export_state_dict(model));
    const onnx::ModelProto checked = check_onnx_model(exported, "exported");
    // Shape inference fills in the intermediate tensors: the flatten gives [batch, 2304].
    bool found_reshape = false;
    for (const onnx::ValueInfoProto& info : checked.graph().value_info()) {
        if (info.name() == "/Reshape_output_0") {
            found_reshape = true;
            EXPECT_EQ(info.type().tensor_type().shape().dim(1).dim_value(), 2304);
        }
    }
    EXPECT_TRUE(found_reshape);
}

TEST(Exporter, NoBatchNormOrDropout) {
    FashionCnn model = test::make_random_fashion_cnn(1);
    const onnx::ModelProto exported = export_fashion_cnn(export_state_dict(model));
    for (const onnx::NodeProto& node : exported.graph().node()) {
        EXPECT_NE(node.op_type(), "BatchNormalization");
        EXPECT_NE(node.op_type(), "Dropout");
        EXPECT_NE(node.op_type(), "Shape");
    }
}

TEST(Exporter, MatchesLibtorchInOnnxRuntime) {
    FashionCnn model = test::make_random_fashion_cnn(3);
    const LabelledImages images = test::make_synthetic_images(37, 5);
    const std::vector<float> expected = predict_logits(model, images);

    test::ScratchFolder folder("export");
    save_onnx_model(export_fashion_cnn(export_state_dict(model)), folder / "model.onnx");
    OrtModel session(folder / "model.onnx", SessionConfig{});
    const std::vector<float> batch = gather_image_range(images, 0, images.size());
    const std::vector<FloatOutput> outputs = session.run(batch, {images.size(), 1, 28, 28});

    ASSERT_EQ(outputs.size(), 1u);
    ASSERT_EQ(outputs[0].values.size(), expected.size());
    float max_difference = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        max_difference = std::max(max_difference, std::abs(outputs[0].values[i] - expected[i]));
    }
    EXPECT_LE(max_difference, kLogitTolerance);
}

TEST(Exporter, RunsWithBatchOfOne) {
    FashionCnn model = test::make_random_fashion_cnn(3);
    const LabelledImages images = test::make_synthetic_images(1, 9);
    test::ScratchFolder folder("export");
    save_onnx_model(export_fashion_cnn(export_state_dict(model)), folder / "model.onnx");
    OrtModel session(folder / "model.onnx", SessionConfig{});
    const std::vector<FloatOutput> outputs =
        session.run(gather_image_range(images, 0, 1), {1, 1, 28, 28});
    EXPECT_EQ(outputs[0].shape, (std::vector<int64_t>{1, 10}));
}

TEST(Exporter, SameWeightsSameBytes) {
    FashionCnn model = test::make_random_fashion_cnn(4);
    const std::string first = serialize(export_fashion_cnn(export_state_dict(model)));
    const std::string second = serialize(export_fashion_cnn(export_state_dict(model)));
    EXPECT_EQ(first, second);

    test::ScratchFolder folder("export");
    save_onnx_model(export_fashion_cnn(export_state_dict(model)), folder / "a.onnx");
    save_onnx_model(export_fashion_cnn(export_state_dict(model)), folder / "b.onnx");
    EXPECT_EQ(read_file(folder / "a.onnx"), read_file(folder / "b.onnx"));
}

TEST(FoldBatchNorm, MatchesFormula) {
    std::vector<float> weight = {1.0f, 2.0f, -1.0f, 0.5f};  // two output channels, 2 values each
    std::vector<float> bias = {0.1f, -0.2f};
    fold_batch_norm(weight, bias, /*gamma=*/{2.0f, 0.5f}, /*beta=*/{0.3f, 0.0f},
                    /*mean=*/{1.0f, -1.0f}, /*variance=*/{3.0f, 0.25f}, /*epsilon=*/1.0f);
    // Channel 0: scale 2 / sqrt(4) = 1. Channel 1: scale 0.5 / sqrt(1.25).
    const float scale1 = 0.5f / std::sqrt(1.25f);
    EXPECT_FLOAT_EQ(weight[0], 1.0f);
    EXPECT_FLOAT_EQ(weight[1], 2.0f);
    EXPECT_FLOAT_EQ(weight[2], -scale1);
    EXPECT_FLOAT_EQ(weight[3], 0.5f * scale1);
    EXPECT_FLOAT_EQ(bias[0], (0.1f - 1.0f) * 1.0f + 0.3f);
    EXPECT_FLOAT_EQ(bias[1], (-0.2f + 1.0f) * scale1);
}

}  // namespace
}  // namespace edgeq
