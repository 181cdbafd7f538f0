// Quantization of models edgeq did not write, under the XINT8 and A8W8 presets:
// - torchvision's resnet18 and mobilenet_v2 with seeded random weights, exported by
//   tests/fixtures/export_zoo.py (skipped without python3-torchvision) and calibrated on the
//   fixture's images;
// - the pytorch-converted models of Debian's libonnx-testdata whose operators the quantizer all
//   handles after preparation, each calibrated on its own test_data_set_0 input (skipped without
//   the package).
// Every QDQ model must pass ONNX's checker, run in ONNX Runtime, keep no node in float and give a
// finite SQNR of its graph output against the prepared float model, above a floor. The tests print
// the SQNR, the nodes left in float and the time of each model and preset.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/onnx/prepare.h"
#include "edgeq/quant/calibration_sources.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/quant/qdq_summary.h"
#include "edgeq/quant/quant_report.h"
#include "edgeq/quant/quantize_model.h"
#include "edgeq/runtime/ort_session.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;
using Clock = std::chrono::steady_clock;

const std::vector<Preset> kPresets = {Preset::kXint8, Preset::kA8W8};

// Every operator of resnet18 (Conv, Relu, MaxPool, Add, GlobalAveragePool, Flatten, Gemm) and of
// mobilenet_v2 (Conv, Clip, Add, GlobalAveragePool, Flatten, Gemm) is one the quantizer handles.
constexpr size_t kExpectedZooFloatNodes = 0;

// Operators the quantizer handles, and the ones preparation removes or folds. A libonnx-testdata
// model is tried when it uses only these (the same list as the preparation tests).
const std::set<std::string> kQuantizerOps = {"Conv",
                                             "Gemm",
                                             "MatMul",
                                             "Add",
                                             "Mul",
                                             "Concat",
                                             "Relu",
                                             "Clip",
                                             "LeakyRelu",
                                             "Sigmoid",
                                             "MaxPool",
                                             "AveragePool",
                                             "GlobalAveragePool",
                                             "Flatten",
                                             "Reshape",
                                             "Transpose",
                                             "Pad",
                                             "Softmax"};
const std::set<std::string> kPreparationRemovedOps = {"BatchNormalization", "Dropout", "Identity",
                                                      "Constant"};

const fs::path kTestDataFolder = "/usr/share/libonnx-testdata/data/pytorch-converted";

// ------------------------------------------------------------------------------------------------
// Helpers

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

std::string format_shape(const std::vector<int64_t>& shape) {
    return fmt::format("[{}]", fmt::join(shape, ","));
}

std::string format_op_counts(const onnx::ModelProto& model) {
    std::vector<std::string> parts;
    for (const auto& [op_type, count] : count_op_types(model)) {
        parts.push_back(fmt::format("{} {}", op_type, count));
    }
    return fmt::format("{}", fmt::join(parts, ", "));
}

// One calibration batch held in memory, yielded once per pass.
class SingleBatchReader : public CalibrationDataReader {
  public:
    explicit SingleBatchReader(CalibrationBatch batch) : batch_(std::move(batch)) {}
    std::optional<CalibrationBatch> next() override {
        if (done_) {
            return std::nullopt;
        }
        done_ = true;
        return batch_;
    }
    void rewind() override { done_ = false; }
    int64_t sample_count() const override { return batch_.shape.empty() ? 0 : batch_.shape[0]; }

  private:
    CalibrationBatch batch_;
    bool done_ = false;
};

// What one model gave under one preset.
struct PresetResult {
    Preset preset = Preset::kXint8;
    std::string error;  // the first failure of the checks below; empty when all passed
    double output_sqnr_db = std::nan("");
    std::string lowest_activation;  // the activation with the lowest SQNR, and that SQNR
    double lowest_activation_sqnr_db = std::nan("");
    std::vector<FloatNode> float_nodes;
    std::vector<std::string> warnings;
    size_t qdq_node_count = 0;
    double quantize_seconds = 0;  // preparation, calibration and rewrite (QuantizeRun::seconds)
    double calibration_seconds = 0;
    double check_and_run_seconds = 0;  // ONNX checker and one ONNX Runtime run
    double measure_seconds = 0;        // measure_tensor_errors
};

// Quantizes `model` with `preset` on `reader` and checks the QDQ model with ONNX's checker. Then
// runs it in ONNX Runtime on the first batch of `reader`, where its output must have the float
// model's shape and finite values, and measures every tensor's SQNR against the prepared float
// model on `reader`. Returns the first failure as `error` instead of throwing, so that one
// model's failure does not hide the others.
PresetResult quantize_and_measure(const onnx::ModelProto& model, CalibrationDataReader& reader,
                                  Preset preset, const std::string& label) {
    PresetResult result;
    result.preset = preset;
    const std::string qdq_label = fmt::format("{} QDQ {}", label, preset_name(preset));
    try {
        QuantizeOptions options;
        options.preset = preset;
        const SessionConfig session;
        QuantizeRun run = quantize_model(model, reader, options, Algorithms{}, session, label);
        result.quantize_seconds = run.seconds;
        result.calibration_seconds = run.qdq.calibration_seconds;
        result.float_nodes = run.qdq.float_nodes;
        result.warnings = run.qdq.warnings;
        result.qdq_node_count = static_cast<size_t>(run.qdq.model.graph().node_size());

        const auto check_start = Clock::now();
        check_onnx_model(run.qdq.model, qdq_label);
        reader.rewind();
        const std::optional<CalibrationBatch> batch = reader.next();
        if (!batch.has_value()) {
            result.error = "the calibration reader yields no batch";
            return result;
        }
        OrtModel float_runner(serialize(run.prepared_model), label, session);
        OrtModel qdq_runner(serialize(run.qdq.model), qdq_label, session);
        const std::vector<FloatOutput> float_outputs =
            float_runner.run(batch->values, batch->shape);
        const std::vector<FloatOutput> qdq_outputs = qdq_runner.run(batch->values, batch->shape);
        result.check_and_run_seconds = seconds_since(check_start);
        if (qdq_outputs.size() != float_outputs.size()) {
            result.error = fmt::format("the QDQ model has {} outputs, the float model {}",
                                       qdq_outputs.size(), float_outputs.size());
            return result;
        }
        for (size_t i = 0; i < qdq_outputs.size(); ++i) {
            if (qdq_outputs[i].shape != float_outputs[i].shape) {
                result.error = fmt::format("QDQ output {} has shape {}, the float output {}", i,
                                           format_shape(qdq_outputs[i].shape),
                                           format_shape(float_outputs[i].shape));
                return result;
            }
            if (!std::all_of(qdq_outputs[i].values.begin(), qdq_outputs[i].values.end(),
                             [](float value) { return std::isfinite(value); })) {
                result.error = fmt::format("QDQ output {} has values that are not finite", i);
                return result;
            }
        }

        const auto measure_start = Clock::now();
        const std::vector<TensorError> errors =
            measure_tensor_errors(run.prepared_model, run.qdq.model, reader, session);
        result.measure_seconds = seconds_since(measure_start);
        const std::string& output_name = run.prepared_model.graph().output(0).name();
        bool output_found = false;
        for (const TensorError& tensor : errors) {
            if (tensor.role != "activation") {
                continue;
            }
            if (tensor.name == output_name) {
                result.output_sqnr_db = tensor.sqnr_db;
                output_found = true;
            }
            if (std::isnan(result.lowest_activation_sqnr_db) ||
                tensor.sqnr_db < result.lowest_activation_sqnr_db) {
                result.lowest_activation = tensor.name;
                result.lowest_activation_sqnr_db = tensor.sqnr_db;
            }
        }
        if (!output_found) {
            result.error =
                fmt::format("the report has no row for the graph output '{}'", output_name);
        } else if (!std::isfinite(result.output_sqnr_db)) {
            result.error = fmt::format("the SQNR of the graph output '{}' is {}", output_name,
                                       result.output_sqnr_db);
        }
    } catch (const std::exception& error) {
        result.error = error.what();
    }
    return result;
}

std::string format_float_nodes(const std::vector<FloatNode>& nodes) {
    std::vector<std::string> parts;
    for (const FloatNode& node : nodes) {
        parts.push_back(fmt::format("{} ({}): {}", node.name, node.op_type, node.reason));
    }
    return fmt::format("{}", fmt::join(parts, "; "));
}

// One line per model and preset for the test log.
void print_result(const std::string& model, const PresetResult& result) {
    if (!result.error.empty()) {
        std::cout << fmt::format("[ QUANTIZE ]   {} {}: FAILED: {}\n", model,
                                 preset_name(result.preset), result.error);
        return;
    }
    std::cout << fmt::format(
        "[ QUANTIZE ]   {} {}: output SQNR {:.2f} dB (lowest activation {:.2f} dB at '{}'), "
        "{} QDQ nodes, {} float nodes, {} warnings; quantize {:.2f} s (calibration {:.2f} s), "
        "check and run {:.2f} s, measure {:.2f} s\n",
        model, preset_name(result.preset), result.output_sqnr_db, result.lowest_activation_sqnr_db,
        result.lowest_activation, result.qdq_node_count, result.float_nodes.size(),
        result.warnings.size(), result.quantize_seconds, result.calibration_seconds,
        result.check_and_run_seconds, result.measure_seconds);
    for (const FloatNode& node : result.float_nodes) {
        std::cout << fmt::format("[ QUANTIZE ]     float node {} ({}): {}\n", node.name,
                                 node.op_type, node.reason);
    }
}

// ------------------------------------------------------------------------------------------------
// torchvision models exported by tests/fixtures/export_zoo.py

// Floors for the output SQNR of resnet18 and mobilenet_v2 (seeded random weights and random
// BatchNormalization statistics, the fixture's 8 Gaussian images). Each activation's own 8-bit
// error is 31 to 44 dB below its signal (its local SQNR in the report). These random networks
// amplify any perturbation layer by layer, in float as much as in int8. In torch 1.13.1, Gaussian
// noise at -36 dB added to the output of every Conv of the float model gave an output SQNR of 27.2
// dB (resnet18) and 12.6 dB (mobilenet_v2). Noise at -40 dB on the input alone gave 37.7 and 19.0
// dB. In mobilenet_v2 the SQNR falls by 1-3 dB per block to about 0 dB before the global average
// pool, which averages 49 positions and so gains about 11 dB back. Measured with ONNX
// Runtime 1.30.0 on CPU: resnet18 22.9 dB (XINT8) and 25.6 dB (A8W8), mobilenet_v2 11.4 dB (XINT8)
// and 11.8 dB (A8W8). The floors leave about 5 dB and 3.5 dB of margin. They catch gross errors,
// such as a wrong zero point that shifts a whole tensor, but not the loss of a bit or two in one
// layer, which the margin absorbs.
constexpr double kResnet18MinOutputSqnrDb = 18.0;
constexpr double kMobilenetV2MinOutputSqnrDb = 8.0;

class QuantizeZoo : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        python_ = test::python_with_module("torchvision");
        if (python_.empty()) {
            return;
        }
        folder_ = std::make_unique<ScratchFolder>("quantize-zoo");
        const fs::path script = test::source_dir() / "tests/fixtures/export_zoo.py";
        const auto start = Clock::now();
        fixture_run_ = test::run_command(python_ + " '" + script.string() + "' '" +
                                         folder_->path().string() + "'");
        std::cout << fmt::format("[ QUANTIZE ] export_zoo.py: {:.1f} s\n", seconds_since(start));
    }

    static void TearDownTestSuite() { folder_.reset(); }

    void SetUp() override {
        if (python_.empty()) {
            GTEST_SKIP() << "python3-torchvision is missing (no python3 imports torchvision); "
                            "install Debian's python3-torchvision to export the torchvision models";
        }
        ASSERT_EQ(fixture_run_.exit_code, 0) << "export_zoo.py failed:\n" << fixture_run_.output;
    }

    static fs::path fixture(const std::string& name) { return folder_->path() / name; }

    // Quantizes `model_file` with every preset on the fixture's calibration images and expects
    // each QDQ model to pass the checks of quantize_and_measure, with no node left in float and an
    // output SQNR of at least `min_output_sqnr_db`.
    static void quantize_fixture(const std::string& model_file, double min_output_sqnr_db) {
        const onnx::ModelProto model = load_onnx_model(fixture(model_file));
        CalibrationSourceOptions source;
        source.path = fixture("calibration_images.npy");
        const std::unique_ptr<CalibrationDataReader> reader =
            open_calibration_source(source, declared_input_shape(model));
        std::cout << fmt::format("[ QUANTIZE ] {}: {} calibration images\n", model_file,
                                 reader->sample_count());

        for (const Preset preset : kPresets) {
            SCOPED_TRACE(preset_name(preset));
            const PresetResult result = quantize_and_measure(model, *reader, preset, model_file);
            print_result(model_file, result);
            ASSERT_EQ(result.error, "");
            EXPECT_EQ(result.float_nodes.size(), kExpectedZooFloatNodes)
                << format_float_nodes(result.float_nodes);
            EXPECT_GE(result.output_sqnr_db, min_output_sqnr_db);
        }
    }

    // The model's input shape with -1 for dynamic dimensions.
    static std::vector<int64_t> declared_input_shape(const onnx::ModelProto& model) {
        std::vector<int64_t> shape;
        for (const onnx::TensorShapeProto::Dimension& dimension :
             model.graph().input(0).type().tensor_type().shape().dim()) {
            shape.push_back(dimension.has_dim_value() ? dimension.dim_value() : -1);
        }
        return shape;
    }

    static inline std::string python_;
    static inline std::unique_ptr<ScratchFolder> folder_;
    static inline test::CommandResult fixture_run_;
};

TEST_F(QuantizeZoo, Resnet18) {
    quantize_fixture("resnet18.onnx", kResnet18MinOutputSqnrDb);
}

TEST_F(QuantizeZoo, MobilenetV2) {
    quantize_fixture("mobilenet_v2.onnx", kMobilenetV2MinOutputSqnrDb);
}

// ------------------------------------------------------------------------------------------------
// Debian's libonnx-testdata: models PyTorch exported, each with one test input

onnx::TensorProto read_tensor_file(const fs::path& path) {
    onnx::TensorProto tensor;
    if (!tensor.ParseFromString(read_file(path))) {
        ADD_FAILURE() << path << " does not parse as an ONNX TensorProto";
    }
    return tensor;
}

// A libonnx-testdata model, with why it is not tried (empty when it is).
struct TestDataModel {
    fs::path folder;
    std::string name;
    std::string skip_reason;
    std::vector<int64_t> input_shape;  // of test_data_set_0/input_0.pb
    std::string operators;             // after preparation
};

// Reads `folder` and decides whether its model is tried: one float input, operators from the
// list above, and after preparation only operators the quantizer handles.
TestDataModel inspect_test_data_model(const fs::path& folder) {
    TestDataModel result;
    result.folder = folder;
    result.name = folder.filename().string();
    const fs::path input_file = folder / "test_data_set_0/input_0.pb";
    if (!fs::exists(input_file)) {
        result.skip_reason = "no test_data_set_0/input_0.pb";
        return result;
    }
    if (fs::exists(folder / "test_data_set_0/input_1.pb")) {
        result.skip_reason = "more than one input";
        return result;
    }
    const onnx::TensorProto input = read_tensor_file(input_file);
    result.input_shape.assign(input.dims().begin(), input.dims().end());
    if (input.data_type() != onnx::TensorProto::FLOAT) {
        result.skip_reason = "input is not float";
        return result;
    }

    const onnx::ModelProto model = load_onnx_model(folder / "model.onnx");
    std::set<std::string> other_ops;
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (!kQuantizerOps.contains(node.op_type()) &&
            !kPreparationRemovedOps.contains(node.op_type())) {
            other_ops.insert(node.op_type());
        }
    }
    if (!other_ops.empty()) {
        result.skip_reason =
            fmt::format("operators outside the list: {}", fmt::join(other_ops, ", "));
        return result;
    }

    // A preparation failure is the preparation tests' concern; here it only skips the model.
    PreparedModel prepared;
    try {
        prepared = prepare_for_quantization(model, result.name);
    } catch (const Error& error) {
        result.skip_reason = fmt::format("preparation failed: {}", error.what());
        return result;
    }
    result.operators = format_op_counts(prepared.model);
    const std::vector<std::string>& quantizable = quantizable_op_types();
    std::set<std::string> unhandled;
    for (const onnx::NodeProto& node : prepared.model.graph().node()) {
        if (std::find(quantizable.begin(), quantizable.end(), node.op_type()) ==
            quantizable.end()) {
            unhandled.insert(node.op_type());
        }
    }
    if (!unhandled.empty()) {
        result.skip_reason = fmt::format(
            "after preparation the quantizer does not handle: {} (preparation warnings: {})",
            fmt::join(unhandled, ", "), fmt::join(prepared.warnings, "; "));
    }
    return result;
}

std::vector<TestDataModel> inspect_test_data_models() {
    std::vector<fs::path> folders;
    for (const fs::directory_entry& entry : fs::directory_iterator(kTestDataFolder)) {
        if (fs::exists(entry.path() / "model.onnx")) {
            folders.push_back(entry.path());
        }
    }
    std::sort(folders.begin(), folders.end());
    std::vector<TestDataModel> models;
    for (const fs::path& folder : folders) {
        models.push_back(inspect_test_data_model(folder));
    }
    return models;
}

// Floor for the output SQNR of a libonnx-testdata model: one operator between 8-bit Q/DQ pairs,
// calibrated on the very input it is measured on. Measured with ONNX Runtime 1.30.0: 35.0 dB
// (test_Conv2d_padding, XINT8) to 69.4 dB. The floor is 10 dB below the lowest, more than the
// 6 dB that rounding a scale to a power of two can cost. A scale 8 times too coarse (18 dB less)
// or a wrong zero point, which shifts the whole tensor, takes a typical model (about 40 dB) below
// it.
constexpr double kTestDataMinOutputSqnrDb = 25.0;

// Quantizes every selected model whose input rank `rank_selected` accepts with every preset,
// calibrating on its own test input as one batch, and expects every check of quantize_and_measure
// to pass. Prints the models tried, passed and skipped.
void quantize_test_data_models(const std::string& title, bool (*rank_selected)(size_t)) {
    if (!fs::exists(kTestDataFolder)) {
        GTEST_SKIP() << kTestDataFolder << " is missing; install Debian's libonnx-testdata";
    }
    const std::vector<TestDataModel> models = inspect_test_data_models();

    std::vector<std::string> passed;
    std::vector<std::string> failed;
    std::vector<std::string> skipped;
    size_t tried = 0;
    const auto start = Clock::now();
    std::cout << fmt::format("[ QUANTIZE ] libonnx-testdata, {}:\n", title);
    for (const TestDataModel& model : models) {
        if (!model.skip_reason.empty()) {
            skipped.push_back(model.name + ": " + model.skip_reason);
            continue;
        }
        if (!rank_selected(model.input_shape.size())) {
            skipped.push_back(fmt::format("{}: input {} has rank {}", model.name,
                                          format_shape(model.input_shape),
                                          model.input_shape.size()));
            continue;
        }
        ++tried;
        SCOPED_TRACE(model.name);
        std::cout << fmt::format("[ QUANTIZE ]   {}: input {}, {}\n", model.name,
                                 format_shape(model.input_shape), model.operators);
        const onnx::ModelProto float_model = load_onnx_model(model.folder / "model.onnx");
        const onnx::TensorProto input =
            read_tensor_file(model.folder / "test_data_set_0/input_0.pb");
        SingleBatchReader reader(CalibrationBatch{read_float_tensor(input), model.input_shape});

        bool all_passed = true;
        for (const Preset preset : kPresets) {
            const PresetResult result =
                quantize_and_measure(float_model, reader, preset, model.name);
            print_result(model.name, result);
            EXPECT_EQ(result.error, "") << preset_name(preset);
            if (!result.error.empty()) {
                failed.push_back(
                    fmt::format("{} {}: {}", model.name, preset_name(preset), result.error));
                all_passed = false;
                continue;
            }
            EXPECT_EQ(result.float_nodes.size(), 0u)
                << preset_name(preset) << ": " << format_float_nodes(result.float_nodes);
            EXPECT_GE(result.output_sqnr_db, kTestDataMinOutputSqnrDb) << preset_name(preset);
            if (!result.float_nodes.empty() || result.output_sqnr_db < kTestDataMinOutputSqnrDb) {
                failed.push_back(fmt::format("{} {}: {} float nodes, output SQNR {:.2f} dB",
                                             model.name, preset_name(preset),
                                             result.float_nodes.size(), result.output_sqnr_db));
                all_passed = false;
            }
        }
        if (all_passed) {
            passed.push_back(model.name);
        }
    }

    std::cout << fmt::format(
        "[ QUANTIZE ] libonnx-testdata, {}: {} of {} models tried, {} passed "
        "under both presets, {} failures, {} skipped; {:.1f} s\n",
        title, tried, models.size(), passed.size(), failed.size(), skipped.size(),
        seconds_since(start));
    std::cout << fmt::format("[ QUANTIZE ]   passed: {}\n", fmt::join(passed, ", "));
    for (const std::string& line : failed) {
        std::cout << "[ QUANTIZE ]   failed " << line << "\n";
    }
    for (const std::string& line : skipped) {
        std::cout << "[ QUANTIZE ]   skipped " << line << "\n";
    }
    EXPECT_GT(tried, 0u) << "no libonnx-testdata model was selected";
}

TEST(QuantizeZooTestData, ImageModelsQuantize) {
    quantize_test_data_models("4-D (N,C,H,W) inputs", [](size_t rank) { return rank == 4; });
}

// Conv and pooling over 1-D and 3-D data (3-D and 5-D inputs), LeakyRelu on a 3-D input, and
// Gemm, MatMul and Softmax on a 2-D [batch, features] input.
TEST(QuantizeZooTestData, OtherRankModelsQuantize) {
    quantize_test_data_models("inputs of rank other than 4", [](size_t rank) { return rank != 4; });
}

}  // namespace
}  // namespace edgeq
