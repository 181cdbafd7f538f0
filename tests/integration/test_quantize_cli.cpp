// `edgeq quantize` and `edgeq sweep` end to end: the acceptance figures of the quantizer on the
// real Fashion-MNIST with the repository's checkpoint, memory that does not grow with the
// calibration set, and bad input.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "edgeq/common/files.h"
#include "edgeq/onnx/model_io.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::ScratchFolder;

// The quantizer's accuracy target: the best XINT8 configuration loses at most 0.2 points.
constexpr double kMaximumBestXint8Drop = 0.002;

// Peak memory of calibrating on 50,000 images may exceed that of 5,000 by less than this share:
// calibration streams batches, so only the data split itself differs.
constexpr double kMaximumPeakMemoryGrowth = 0.10;

std::string cli() {
    return test::cli_path().string();
}

bool have_real_data_and_checkpoint() {
    return !test::fashion_mnist_folder().empty() &&
           fs::exists(test::source_dir() / "models/fashion-cnn.pt");
}

// Exports the repository's checkpoint to `path`.
void export_checkpoint(const fs::path& path) {
    const test::CommandResult result = test::run_command(
        cli() + " -q export --checkpoint " +
        (test::source_dir() / "models/fashion-cnn.pt").string() + " -o " + path.string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
}

TEST(QuantizeAcceptance, SweepBestXint8WithinTwoTenthsOfFp32) {
    if (!have_real_data_and_checkpoint()) {
        GTEST_SKIP() << "needs Debian's dataset-fashion-mnist and models/fashion-cnn.pt";
    }
    ScratchFolder scratch("sweep");
    const test::CommandResult result = test::run_command(
        cli() + " sweep --presets XINT8 --algorithm-sets 'none;cle' " + "--checkpoint " +
        (test::source_dir() / "models/fashion-cnn.pt").string() + " --out " +
        scratch.path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;

    const json rows = json::parse(read_file(scratch / "sweep.json"));
    ASSERT_TRUE(rows.is_array());
    std::set<std::string> methods;
    double best_delta = -1;
    for (const json& row : rows) {
        for (const char* key : {"preset", "method", "algorithms", "accuracy", "delta_vs_fp32",
                                "calibration_seconds"}) {
            EXPECT_TRUE(row.contains(key)) << key << " missing in " << row.dump();
        }
        methods.insert(row["method"].get<std::string>());
        best_delta = std::max(best_delta, row["delta_vs_fp32"].get<double>());
    }
    EXPECT_EQ(methods,
              (std::set<std::string>{"minmax", "nonoverflow", "minmse", "percentile", "entropy"}));
    EXPECT_EQ(rows.size(), 10u);
    EXPECT_GE(best_delta, -kMaximumBestXint8Drop) << result.output;
    EXPECT_NE(result.output.find("88.83%"), std::string::npos) << "the report's figure is shown";
}

TEST(QuantizeAcceptance, PeakMemoryDoesNotGrowWithCalibrationSet) {
    if (!have_real_data_and_checkpoint()) {
        GTEST_SKIP() << "needs Debian's dataset-fashion-mnist and models/fashion-cnn.pt";
    }
    if (!fs::exists("/usr/bin/time")) {
        GTEST_SKIP() << "needs GNU time (/usr/bin/time) to read the peak memory";
    }
    ScratchFolder scratch("memory");
    export_checkpoint(scratch / "float.onnx");
    auto peak_kilobytes = [&](int64_t calibration_count) {
        const fs::path output = scratch / ("q" + std::to_string(calibration_count) + ".onnx");
        const test::CommandResult result =
            test::run_command_stderr("/usr/bin/time -f 'peak %M' " + cli() + " -q quantize -m " +
                                     (scratch / "float.onnx").string() + " -o " + output.string() +
                                     " --calibration-count " + std::to_string(calibration_count));
        EXPECT_EQ(result.exit_code, 0) << result.output;
        const size_t at = result.output.rfind("peak ");
        EXPECT_NE(at, std::string::npos) << result.output;
        return at == std::string::npos ? 0.0 : std::stod(result.output.substr(at + 5));
    };
    const double small = peak_kilobytes(5000);
    const double large = peak_kilobytes(50000);
    std::cout << "peak memory: " << small / 1024 << " MiB with 5,000 calibration images, "
              << large / 1024 << " MiB with 50,000\n";
    ASSERT_GT(small, 0);
    EXPECT_LT(large, small * (1.0 + kMaximumPeakMemoryGrowth));
}

TEST(QuantizeCli, WritesModelAndReport) {
    if (!have_real_data_and_checkpoint()) {
        GTEST_SKIP() << "needs Debian's dataset-fashion-mnist and models/fashion-cnn.pt";
    }
    ScratchFolder scratch("quantize");
    export_checkpoint(scratch / "float.onnx");
    const test::CommandResult result = test::run_command(
        cli() + " quantize -m " + (scratch / "float.onnx").string() + " -o " +
        (scratch / "q.onnx").string() + " --preset U8S8 --per-channel --method percentile " +
        "--sensitivity --calibration-count 1000");
    ASSERT_EQ(result.exit_code, 0) << result.output;
    const json report = json::parse(read_file(scratch / "q.onnx.report.json"));
    ASSERT_TRUE(report.contains("tensors"));
    ASSERT_TRUE(report.contains("sensitivity"));
    bool has_sqnr = false;
    for (const json& tensor : report["tensors"]) {
        has_sqnr = has_sqnr || (tensor.contains("sqnr_db") && tensor["sqnr_db"].is_number());
    }
    EXPECT_TRUE(has_sqnr);
    EXPECT_EQ(report["sensitivity"]["layers"].size(), 5u);
    check_onnx_model(load_onnx_model(scratch / "q.onnx"), "q.onnx");
}

TEST(QuantizeCli, BadInputIsOneLineAndNoOutput) {
    if (test::fashion_mnist_folder().empty()) {
        GTEST_SKIP() << "needs Debian's dataset-fashion-mnist";
    }
    ScratchFolder scratch("quantize-bad");
    const fs::path output = scratch / "q.onnx";
    const std::string quantize = cli() + " quantize -o " + output.string() + " ";

    // Not an ONNX file.
    write_file_atomic(scratch / "notes.onnx", "this is not a model\n");
    test::expect_clean_failure(quantize + "-m " + (scratch / "notes.onnx").string(), 3, output,
                               "notes.onnx");

    // An operator the quantizer does not handle, with --strict.
    test::write_erf_model(scratch / "erf.onnx", 1);
    test::expect_clean_failure(quantize + "--strict -m " + (scratch / "erf.onnx").string(), 5,
                               output, "my_erf");

    // A model input that does not match the calibration images.
    test::write_erf_model(scratch / "rgb.onnx", 3);
    test::expect_clean_failure(quantize + "-m " + (scratch / "rgb.onnx").string(), 3, output,
                               "[1, 28, 28]");

    // An empty calibration set.
    fs::create_directories(scratch / "no-images");
    test::expect_clean_failure(quantize + "-m " + (scratch / "erf.onnx").string() +
                                   " --calibration-data " + (scratch / "no-images").string(),
                               3, output, "no-images");

    // What the NPU cannot do.
    test::expect_clean_failure(
        quantize + "-m " + (scratch / "erf.onnx").string() + " --per-channel", 2, output,
        "per-channel");
}

}  // namespace
}  // namespace edgeq
