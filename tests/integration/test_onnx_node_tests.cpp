// ONNX's backend node tests run through npu-sim's kernels (edgeq::npu::run_node).
//
// Debian's libonnx-testdata ships them as folders test_<case>/ with model.onnx (a graph of one
// node) and test_data_set_N/ holding input_K.pb and output_K.pb (serialized TensorProtos, the
// graph's inputs and outputs in order). Every folder whose node has an op type that run_node
// supports is run. A node that needs what the kernels lack (a 3-D pool, MaxPool's Indices) is
// skipped with the reason run_node gives. One line per folder and a summary are printed.
// Hand-built nodes check what that data does not: tie rounding and the unsupported errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/npu/node_runner.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using npu::NodeTensor;
using npu::Tensor;

const fs::path kNodeTestFolder = "/usr/share/libonnx-testdata/data/node";

// The comparison of ONNX's own backend test runner (ONNX 1.12: onnx.backend.test.runner calls
// numpy.testing.assert_allclose with the rtol 1e-3 and atol 1e-7 that onnx.backend.test.loader
// sets for node tests). A float output passes when
// |output - expected| <= kAbsoluteTolerance + kRelativeTolerance * |expected|. The kernels sum
// in another order than ONNX's reference, so float results differ in their last bits.
constexpr double kRelativeTolerance = 1e-3;
constexpr double kAbsoluteTolerance = 1e-7;

// Integer outputs must be equal. QLinearConv and QLinearMatMul requantize with an exact
// fixed-point product, but a float implementation rounds acc * multiplier to float first. So
// the two could round a near tie apart, yet no element of libonnx-testdata 1.12.0 comes that
// close, and no tolerance is needed.
// Its QLinear data has no value within 0.05 of a tie (measured with numpy), so that suite cannot
// tell half-even from half-up requantization: QLinearMatMulRoundsTiesToEven below does.

// libonnx-testdata 1.12.0 has 94 folders whose node run_node supports, of which 6 need what the
// kernels lack (1-D and 3-D pools, MaxPool's Indices output). A broken discovery or tensor
// reader passes fewer than these 88.
constexpr int kMinimumPassed = 88;

enum class Outcome { kPassed, kFailed, kSkipped };

struct NodeTestResult {
    std::string name;     // the folder's name, e.g. test_maxpool_2d_pads
    std::string op_type;  // of the model's single node
    Outcome outcome = Outcome::kPassed;
    std::string detail;  // why it failed or was skipped
};

// ---------------------------------------------------------------------------------------------
// Reading the test folders

NodeTensor read_tensor_file(const fs::path& path) {
    onnx::TensorProto proto;
    if (!proto.ParseFromString(read_file(path))) {
        fail(ExitCode::kInvalidInput, "'{}' is not a serialized TensorProto", path.string());
    }
    return npu::node_tensor_from_proto(proto, path.string());
}

// The model of a folder when its graph is one node that run_node supports.
std::optional<onnx::ModelProto> supported_node_model(const fs::path& folder) {
    const fs::path model_path = folder / "model.onnx";
    if (!fs::exists(model_path)) {
        return std::nullopt;
    }
    onnx::ModelProto model = load_onnx_model(model_path);
    if (model.graph().node_size() != 1) {
        return std::nullopt;
    }
    const onnx::NodeProto& node = model.graph().node(0);
    if (!node.domain().empty() || !npu::is_supported_node_op(node.op_type())) {
        return std::nullopt;
    }
    return model;
}

std::vector<fs::path> sorted_subfolders(const fs::path& folder, const std::string& prefix) {
    std::vector<fs::path> folders;
    for (const fs::directory_entry& entry : fs::directory_iterator(folder)) {
        if (entry.is_directory() && entry.path().filename().string().starts_with(prefix)) {
            folders.push_back(entry.path());
        }
    }
    std::sort(folders.begin(), folders.end());
    return folders;
}

// The node's inputs from one data set: input_K.pb is the K-th graph input that is not an
// initializer; initializers come from the model.
std::vector<std::optional<NodeTensor>> read_node_inputs(const onnx::ModelProto& model,
                                                        const fs::path& data_set) {
    std::map<std::string, NodeTensor> values;
    for (const onnx::TensorProto& initializer : model.graph().initializer()) {
        values.emplace(initializer.name(),
                       npu::node_tensor_from_proto(initializer, initializer.name()));
    }
    int file_index = 0;
    for (const onnx::ValueInfoProto& input : model.graph().input()) {
        if (values.count(input.name()) == 0) {
            const fs::path path = data_set / fmt::format("input_{}.pb", file_index++);
            values.emplace(input.name(), read_tensor_file(path));
        }
    }

    const onnx::NodeProto& node = model.graph().node(0);
    std::vector<std::optional<NodeTensor>> inputs;
    for (const std::string& name : node.input()) {
        if (name.empty()) {
            inputs.emplace_back(std::nullopt);  // an omitted optional input
            continue;
        }
        const auto value = values.find(name);
        if (value == values.end()) {
            fail(ExitCode::kInvalidInput,
                 "node input '{}' is neither a graph input nor an initializer", name);
        }
        inputs.emplace_back(value->second);
    }
    return inputs;
}

// ---------------------------------------------------------------------------------------------
// Comparing outputs

bool floats_close(float actual, float expected) {
    if (std::isnan(expected) || std::isnan(actual)) {
        return std::isnan(expected) && std::isnan(actual);
    }
    if (actual == expected) {
        return true;  // equal infinities included
    }
    const double difference = std::abs(static_cast<double>(actual) - expected);
    return difference <= kAbsoluteTolerance + kRelativeTolerance * std::abs(expected);
}

// Compares element by element (integers exactly). Returns why they differ, or empty.
template <typename T>
std::string compare_values(const Tensor<T>& actual, const Tensor<T>& expected) {
    int64_t mismatches = 0;
    std::string first;
    for (size_t i = 0; i < expected.data.size(); ++i) {
        bool close = false;
        if constexpr (std::is_floating_point_v<T>) {
            close = floats_close(actual.data[i], expected.data[i]);
        } else {
            close = actual.data[i] == expected.data[i];
        }
        if (!close) {
            if (mismatches == 0) {
                first = fmt::format("element {} is {}, expected {}", i, +actual.data[i],
                                    +expected.data[i]);
            }
            ++mismatches;
        }
    }
    if (mismatches == 0) {
        return "";
    }
    return fmt::format("{} of {} elements differ; {}", mismatches, expected.data.size(), first);
}

// Returns why `actual` differs from `expected` (element type, shape or values), or empty.
std::string compare_output(const NodeTensor& actual, const NodeTensor& expected) {
    if (npu::element_type(actual) != npu::element_type(expected)) {
        return fmt::format("element type {}, expected {}",
                           npu::element_type_name(npu::element_type(actual)),
                           npu::element_type_name(npu::element_type(expected)));
    }
    if (npu::tensor_shape(actual) != npu::tensor_shape(expected)) {
        return fmt::format("shape [{}], expected [{}]", fmt::join(npu::tensor_shape(actual), ", "),
                           fmt::join(npu::tensor_shape(expected), ", "));
    }
    return std::visit(
        [&](const auto& typed_expected) {
            using Typed = std::decay_t<decltype(typed_expected)>;
            return compare_values(std::get<Typed>(actual), typed_expected);
        },
        expected);
}

// ---------------------------------------------------------------------------------------------
// Running one folder

// Runs every data set of one folder; the first mismatch or error ends it.
NodeTestResult run_node_test(const fs::path& folder, const onnx::ModelProto& model) {
    const onnx::NodeProto& node = model.graph().node(0);
    NodeTestResult result{folder.filename().string(), node.op_type(), Outcome::kPassed, ""};

    const std::vector<fs::path> data_sets = sorted_subfolders(folder, "test_data_set_");
    if (data_sets.empty()) {
        return {result.name, result.op_type, Outcome::kFailed, "no test_data_set_* folder"};
    }
    for (const fs::path& data_set : data_sets) {
        const std::string set_name = data_set.filename().string();
        try {
            const std::vector<NodeTensor> outputs =
                npu::run_node(node, read_node_inputs(model, data_set));
            for (int k = 0; k < model.graph().output_size(); ++k) {
                if (static_cast<size_t>(k) >= outputs.size()) {
                    return {result.name, result.op_type, Outcome::kFailed,
                            fmt::format("{}: run_node returned {} outputs, the graph has {}",
                                        set_name, outputs.size(), model.graph().output_size())};
                }
                const NodeTensor expected =
                    read_tensor_file(data_set / fmt::format("output_{}.pb", k));
                const std::string mismatch =
                    compare_output(outputs[static_cast<size_t>(k)], expected);
                if (!mismatch.empty()) {
                    return {result.name, result.op_type, Outcome::kFailed,
                            fmt::format("{} output {}: {}", set_name, k, mismatch)};
                }
            }
        } catch (const Error& error) {
            const Outcome outcome =
                error.code() == ExitCode::kUnsupported ? Outcome::kSkipped : Outcome::kFailed;
            return {result.name, result.op_type, outcome, error.what()};
        }
    }
    return result;
}

std::string outcome_line(const NodeTestResult& result) {
    switch (result.outcome) {
        case Outcome::kPassed:
            return "passed";
        case Outcome::kFailed:
            return "FAILED: " + result.detail;
        case Outcome::kSkipped:
            return "skipped: " + result.detail;
    }
    return "?";
}

TEST(OnnxNodeTests, SupportedOperatorsMatchOnnx) {
    if (!fs::is_directory(kNodeTestFolder)) {
        GTEST_SKIP() << kNodeTestFolder << " is missing; install Debian's libonnx-testdata "
                     << "(scripts/setup.sh does)";
    }

    std::vector<NodeTestResult> results;
    for (const fs::path& folder : sorted_subfolders(kNodeTestFolder, "test_")) {
        const std::optional<onnx::ModelProto> model = supported_node_model(folder);
        if (model.has_value()) {
            results.push_back(run_node_test(folder, *model));
        }
    }

    int passed = 0;
    int failed = 0;
    int skipped = 0;
    std::map<std::string, int> passed_per_op;
    for (const NodeTestResult& result : results) {
        std::cout << "[ NODE     ] " << result.name << ": " << outcome_line(result) << "\n";
        switch (result.outcome) {
            case Outcome::kPassed:
                ++passed;
                ++passed_per_op[result.op_type];
                break;
            case Outcome::kFailed:
                ++failed;
                ADD_FAILURE() << result.name << " (" << result.op_type << "): " << result.detail;
                break;
            case Outcome::kSkipped:
                ++skipped;
                break;
        }
    }
    std::cout << fmt::format("[ NODE     ] onnx node tests: {} passed, {} failed, {} skipped\n",
                             passed, failed, skipped);

    EXPECT_GE(passed, kMinimumPassed) << "fewer node tests passed than libonnx-testdata 1.12.0 has";
    for (const std::string& op_type : npu::supported_node_ops()) {
        EXPECT_GT(passed_per_op[op_type], 0) << "no node test of " << op_type << " passed";
    }
}

// A node of `op_type` with inputs in0, in1, ... and the outputs y (and `extra_outputs` more).
onnx::NodeProto make_node(const std::string& op_type, int input_count, int extra_outputs = 0) {
    onnx::NodeProto node;
    node.set_name("hand_built");
    node.set_op_type(op_type);
    for (int i = 0; i < input_count; ++i) {
        node.add_input(fmt::format("in{}", i));
    }
    node.add_output("y");
    for (int i = 0; i < extra_outputs; ++i) {
        node.add_output(fmt::format("extra{}", i));
    }
    return node;
}

// a * b with all scales 1 and y_scale 2 puts every odd accumulator on an exact tie, so the output
// shows how QLinearMatMul breaks ties: ONNX rounds half to even (2.5 -> 2, -2.5 -> -2,
// 3.5 -> 4), where half up would give 3 for 2.5.
TEST(OnnxNodeTests, QLinearMatMulRoundsTiesToEven) {
    const onnx::NodeProto node = make_node("QLinearMatMul", 8);
    const Tensor<float> unit_scale{{}, {1.0f}};
    const Tensor<int8_t> zero{{}, {0}};
    const std::vector<std::optional<NodeTensor>> inputs = {
        Tensor<int8_t>{{4, 1}, {5, -5, 7, -7}},
        unit_scale,
        zero,
        Tensor<int8_t>{{1, 1}, {1}},
        unit_scale,
        zero,
        Tensor<float>{{}, {2.0f}},
        zero,
    };

    const std::vector<NodeTensor> outputs = npu::run_node(node, inputs);

    ASSERT_EQ(outputs.size(), 1u);
    const auto* y = std::get_if<Tensor<int8_t>>(&outputs[0]);
    ASSERT_NE(y, nullptr) << "QLinearMatMul must return the element type of y_zero_point";
    EXPECT_EQ(y->shape, (std::vector<int64_t>{4, 1}));
    EXPECT_EQ(y->data, (std::vector<int8_t>{2, -2, 4, -4}));
}

// What the kernels cannot compute is rejected as unsupported, naming the node and the gap.
TEST(OnnxNodeTests, UnsupportedNodesNameTheGap) {
    const Tensor<float> volume{{1, 1, 2, 2, 2}, std::vector<float>(8, 1.0f)};
    onnx::NodeProto pool = make_node("MaxPool", 1);
    *pool.add_attribute() = make_ints_attribute("kernel_shape", {2, 2, 2});
    try {
        npu::run_node(pool, {volume});
        ADD_FAILURE() << "a 3-D MaxPool ran";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUnsupported);
        EXPECT_NE(std::string(error.what()).find("'hand_built' (MaxPool)"), std::string::npos)
            << error.what();
        EXPECT_NE(std::string(error.what()).find("3-D spatial inputs"), std::string::npos)
            << error.what();
    }

    const Tensor<float> image{{1, 1, 2, 2}, std::vector<float>(4, 1.0f)};
    onnx::NodeProto with_indices = make_node("MaxPool", 1, 1);
    *with_indices.add_attribute() = make_ints_attribute("kernel_shape", {2, 2});
    try {
        npu::run_node(with_indices, {image});
        ADD_FAILURE() << "a MaxPool with the Indices output ran";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUnsupported);
        EXPECT_NE(std::string(error.what()).find("Indices"), std::string::npos) << error.what();
    }

    try {
        npu::run_node(make_node("Softmax", 1), {image});
        ADD_FAILURE() << "an operator outside supported_node_ops() ran";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUnsupported);
        EXPECT_NE(std::string(error.what()).find("Softmax"), std::string::npos) << error.what();
    }
}

}  // namespace
}  // namespace edgeq
