// `edgeq info` on models the test writes itself: the text lists every op type with its count,
// --json parses and carries the same counts, and bad input fails with one line.
#include <gtest/gtest.h>

#include <algorithm>
#include <regex>

#include <nlohmann/json.hpp>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_quantizer.h"
#include "edgeq/quant/qdq_summary.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::ScratchFolder;

// Images for calibration. `edgeq info` reads formats, not scale values, so a few suffice.
constexpr int64_t kCalibrationImages = 16;

std::string cli() {
    return test::cli_path().string();
}

onnx::ModelProto float_fashion_cnn() {
    FashionCnn model = test::make_random_fashion_cnn(9);
    return export_fashion_cnn(export_state_dict(model));
}

// FashionCNN quantized with the default XINT8 preset.
onnx::ModelProto qdq_fashion_cnn() {
    const LabelledImages images = test::make_synthetic_images(kCalibrationImages, 9);
    LabelledImagesReader reader(images, QuantizeOptions{}.calibration_batch_size);
    return quantize_to_qdq(float_fashion_cnn(), reader, QuantizeOptions{}, SessionConfig{}).model;
}

// Runs a command that must fail: one line on stderr that names `must_mention`, exit `exit_code`.
void expect_one_line_failure(const std::string& command, int exit_code,
                             const std::string& must_mention) {
    const test::CommandResult result = test::run_command_stderr(command);
    EXPECT_EQ(result.exit_code, exit_code) << command << "\n" << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1)
        << "not one line: " << result.output;
    EXPECT_NE(result.output.find(must_mention), std::string::npos) << result.output;
}

TEST(InfoCli, TextListsOpCounts) {
    const ScratchFolder folder("info-text");
    const onnx::ModelProto model = qdq_fashion_cnn();
    const fs::path path = folder / "qdq.onnx";
    save_onnx_model(model, path);

    const test::CommandResult result = test::run_command(cli() + " info " + path.string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find(path.string()), std::string::npos) << result.output;
    for (const auto& [op_type, count] : count_op_types(model)) {
        const std::regex line("\n +" + op_type + " +" + std::to_string(count) + "\n");
        EXPECT_TRUE(std::regex_search(result.output, line))
            << op_type << " " << count << " missing in\n"
            << result.output;
    }
    EXPECT_NE(result.output.find("nodes         38"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("looks like XINT8"), std::string::npos) << result.output;
    // The placement summary is on by default for a QDQ model.
    EXPECT_NE(result.output.find("operators: 38"), std::string::npos) << result.output;
}

TEST(InfoCli, JsonParses) {
    const ScratchFolder folder("info-json");
    const onnx::ModelProto model = qdq_fashion_cnn();
    const fs::path path = folder / "qdq.onnx";
    save_onnx_model(model, path);

    // stdout only: a warning on stderr would break the JSON.
    const test::CommandResult result =
        test::run_command(cli() + " info --json " + path.string() + " 2>/dev/null");
    ASSERT_EQ(result.exit_code, 0) << result.output;
    const json parsed = json::parse(result.output);
    EXPECT_EQ(parsed.at("file"), path.string());
    EXPECT_EQ(parsed.at("file_bytes"), static_cast<int64_t>(fs::file_size(path)));
    EXPECT_EQ(parsed.at("node_count"), 38);
    for (const auto& [op_type, count] : count_op_types(model)) {
        EXPECT_EQ(parsed.at("op_counts").at(op_type), count) << op_type;
    }
    EXPECT_EQ(parsed.at("quantization").at("quantize_nodes"), 9);
    EXPECT_EQ(parsed.at("quantization").at("dequantize_nodes"), 19);
    ASSERT_TRUE(parsed.at("placement").is_object()) << parsed.dump(2);
    EXPECT_EQ(parsed.at("placement").at("cpu_nodes").get<int>() +
                  parsed.at("placement").at("npu_nodes").get<int>(),
              38);
}

TEST(InfoCli, NoPlacementAndFloatModel) {
    const ScratchFolder folder("info-float");
    const fs::path qdq_path = folder / "qdq.onnx";
    save_onnx_model(qdq_fashion_cnn(), qdq_path);
    const test::CommandResult skipped = test::run_command(cli() + " info --json --no-placement " +
                                                          qdq_path.string() + " 2>/dev/null");
    ASSERT_EQ(skipped.exit_code, 0) << skipped.output;
    EXPECT_TRUE(json::parse(skipped.output).at("placement").is_null());

    const fs::path float_path = folder / "float.onnx";
    save_onnx_model(float_fashion_cnn(), float_path);
    const test::CommandResult result = test::run_command(cli() + " info " + float_path.string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_EQ(result.output.find("quantization"), std::string::npos) << result.output;
    EXPECT_EQ(result.output.find("NPU placement"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("input: float [batch_size, 1, 28, 28]"), std::string::npos)
        << result.output;
}

TEST(InfoCli, BadInputOneLine) {
    const ScratchFolder folder("info-bad");
    const fs::path missing = folder / "missing.onnx";
    expect_one_line_failure(cli() + " info " + missing.string(), static_cast<int>(ExitCode::kIo),
                            missing.string());

    const fs::path text = folder / "notes.onnx";
    write_file_atomic(text, "this is not a protobuf\n");
    expect_one_line_failure(cli() + " info " + text.string(),
                            static_cast<int>(ExitCode::kInvalidInput), text.string());

    // The first half of a model cuts the graph, a length-delimited field, in the middle.
    const fs::path model = folder / "qdq.onnx";
    save_onnx_model(qdq_fashion_cnn(), model);
    const std::string bytes = read_file(model);
    const fs::path truncated = folder / "truncated.onnx";
    write_file_atomic(truncated, bytes.substr(0, bytes.size() / 2));
    expect_one_line_failure(cli() + " info " + truncated.string(),
                            static_cast<int>(ExitCode::kInvalidInput), truncated.string());
}

TEST(InfoCli, HelpHasExample) {
    const test::CommandResult result = test::run_command(cli() + " info --help");
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("Example: edgeq info"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("--json"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace edgeq
