// The edgeq CLI end to end: a small run on a subset of the real data, the acceptance figures
// with the repository's checkpoint, byte-identical artifacts, and bad input.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "edgeq/common/files.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::ScratchFolder;

// The acceptance targets of the main job on the 10,000 test images.
constexpr double kMinimumFp32Accuracy = 0.920;
constexpr double kMinimumInt8Accuracy = 0.915;
constexpr double kMaximumInt8Drop = 0.005;

std::string cli() {
    return test::cli_path().string();
}

json read_json(const fs::path& path) {
    return json::parse(read_file(path));
}

std::vector<std::string> files_in(const fs::path& folder) {
    std::vector<std::string> names;
    if (fs::exists(folder)) {
        for (const auto& entry : fs::directory_iterator(folder)) {
            names.push_back(entry.path().filename().string());
        }
    }
    return names;
}

int count_lines(const std::string& text) {
    return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// --- A small synthetic data folder, and ways to break it -------------------------------------

void write_idx_gzip(const fs::path& path, uint32_t magic, const std::vector<uint32_t>& dimensions,
                    const std::vector<uint8_t>& data) {
    ASSERT_TRUE(test::write_gzip_file(path, test::make_idx_bytes(magic, dimensions, data))) << path;
}

// Writes Fashion-MNIST-shaped files with `train` and `test` images into `folder`.
void write_small_dataset(const fs::path& folder, uint32_t train, uint32_t test) {
    fs::create_directories(folder);
    auto pixels = [](uint32_t count) {
        std::vector<uint8_t> data(count * 784);
        for (size_t i = 0; i < data.size(); ++i) {
            data[i] = static_cast<uint8_t>((i * 31 + i / 784 * 17) % 256);
        }
        return data;
    };
    auto labels = [](uint32_t count) {
        std::vector<uint8_t> data(count);
        for (uint32_t i = 0; i < count; ++i) {
            data[i] = static_cast<uint8_t>(i % 10);
        }
        return data;
    };
    write_idx_gzip(folder / "train-images-idx3-ubyte.gz", 0x803, {train, 28, 28}, pixels(train));
    write_idx_gzip(folder / "train-labels-idx1-ubyte.gz", 0x801, {train}, labels(train));
    write_idx_gzip(folder / "t10k-images-idx3-ubyte.gz", 0x803, {test, 28, 28}, pixels(test));
    write_idx_gzip(folder / "t10k-labels-idx1-ubyte.gz", 0x801, {test}, labels(test));
}

struct FailedRun {
    int exit_code;
    std::string stderr_text;
    std::vector<std::string> out_files;
};

FailedRun run_expecting_failure(const std::string& arguments, const fs::path& out) {
    const test::CommandResult result = test::run_command_stderr(cli() + " " + arguments);
    return {result.exit_code, result.output, files_in(out)};
}

// Checks the contract for bad input: a non-zero exit `expected_code`, exactly one line on
// stderr that contains every fragment of `expected`, and nothing written to the output folder.
void expect_clean_failure(const FailedRun& run, int expected_code,
                          const std::vector<std::string>& expected) {
    EXPECT_EQ(run.exit_code, expected_code) << run.stderr_text;
    EXPECT_EQ(count_lines(run.stderr_text), 1) << run.stderr_text;
    EXPECT_EQ(run.stderr_text.rfind("edgeq: error: ", 0), 0u) << run.stderr_text;
    for (const std::string& fragment : expected) {
        EXPECT_NE(run.stderr_text.find(fragment), std::string::npos)
            << "missing '" << fragment << "' in: " << run.stderr_text;
    }
    EXPECT_TRUE(run.out_files.empty()) << "left files in the output folder, first: "
                                       << (run.out_files.empty() ? "" : run.out_files.front());
}

// --- Runs on the real data -------------------------------------------------------------------

TEST(CliRun, SmallEndToEndOnSubset) {
    const fs::path data = test::fashion_mnist_folder();
    if (data.empty()) {
        GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
    }
    ScratchFolder out("small-run");
    const test::CommandResult result = test::run_command(
        cli() + " run --data " + data.string() + " --out " + out.path().string() +
        " --retrain --epochs 1 --train-subset 3000 --test-subset 1000 --calibration-count 500");
    ASSERT_EQ(result.exit_code, 0) << result.output;

    const json metrics = read_json(out / "metrics.json");
    EXPECT_EQ(metrics["dataset"]["train"], 59500);
    EXPECT_EQ(metrics["dataset"]["calibration"], 500);
    EXPECT_EQ(metrics["dataset"]["test"], 1000);
    EXPECT_EQ(metrics["fp32"]["total"], 1000);
    EXPECT_EQ(metrics["int8"]["total"], 1000);
    EXPECT_EQ(metrics["int8"]["execution_provider"], "CPUExecutionProvider");
    EXPECT_EQ(metrics["qdq_model"]["nodes"], 38);
    EXPECT_EQ(metrics["qdq_model"]["op_types"]["Conv"], 2);
    EXPECT_EQ(metrics["qdq_model"]["op_types"]["Gemm"], 3);
    EXPECT_EQ(metrics["qdq_model"]["op_types"]["QuantizeLinear"], 9);
    EXPECT_EQ(metrics["qdq_model"]["op_types"]["DequantizeLinear"], 19);
    // One epoch on 3,000 images already learns most classes; chance is 0.1.
    EXPECT_GT(metrics["fp32"]["accuracy"].get<double>(), 0.5);
    EXPECT_GT(metrics["int8"]["accuracy"].get<double>(), 0.5);
    for (const char* stage : {"data", "model", "export", "quantize", "deploy", "evaluate"}) {
        EXPECT_TRUE(metrics["stage_seconds"].contains(stage)) << stage;
    }

    for (const char* file :
         {"fashion-mnist.onnx", "fashion-mnist.qdq.U8S8.onnx", "fashion-cnn.pt", "fashion-cnn.json",
          "confusion_matrix_fp32.csv", "confusion_matrix_int8.csv", "predictions.csv",
          "quantization_report.json"}) {
        EXPECT_TRUE(fs::exists(out / file)) << file;
    }
    const std::string confusion = read_file(out / "confusion_matrix_int8.csv");
    EXPECT_EQ(count_lines(confusion), 11) << "a header and one row per class";
}

TEST(CliRun, RepositoryCheckpointMeetsTargets) {
    const fs::path data = test::fashion_mnist_folder();
    if (data.empty()) {
        GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
    }
    const fs::path checkpoint = test::source_dir() / "models" / "fashion-cnn.pt";
    ASSERT_TRUE(fs::exists(checkpoint)) << "the repository should carry " << checkpoint;

    ScratchFolder out("acceptance");
    const test::CommandResult result =
        test::run_command(cli() + " run --data " + data.string() + " --checkpoint " +
                          checkpoint.string() + " --out " + out.path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;

    const json metrics = read_json(out / "metrics.json");
    const double fp32 = metrics["fp32"]["accuracy"];
    const double int8 = metrics["int8"]["accuracy"];
    EXPECT_EQ(metrics["dataset"]["train"], 55000);
    EXPECT_EQ(metrics["dataset"]["calibration"], 5000);
    EXPECT_EQ(metrics["dataset"]["test"], 10000);
    EXPECT_GE(fp32, kMinimumFp32Accuracy);
    EXPECT_GE(int8, kMinimumInt8Accuracy);
    EXPECT_GE(int8, fp32 - kMaximumInt8Drop);
    EXPECT_EQ(metrics["qdq_model"]["nodes"], 38);
    EXPECT_EQ(metrics["model"]["source"], "checkpoint");
}

TEST(CliRun, ExportAndQuantizeAreByteIdentical) {
    const fs::path data = test::fashion_mnist_folder();
    if (data.empty()) {
        GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
    }
    const fs::path checkpoint = test::source_dir() / "models" / "fashion-cnn.pt";
    ScratchFolder out("determinism");
    for (const std::string run : {"a", "b"}) {
        const fs::path float_model = out / (run + ".onnx");
        const fs::path qdq_model = out / (run + ".qdq.onnx");
        const test::CommandResult exported = test::run_command(
            cli() + " export --checkpoint " + checkpoint.string() + " -o " + float_model.string());
        ASSERT_EQ(exported.exit_code, 0) << exported.output;
        const test::CommandResult quantized =
            test::run_command(cli() + " quantize --data " + data.string() + " -m " +
                              float_model.string() + " -o " + qdq_model.string());
        ASSERT_EQ(quantized.exit_code, 0) << quantized.output;
    }
    EXPECT_EQ(read_file(out / "a.onnx"), read_file(out / "b.onnx"));
    EXPECT_EQ(read_file(out / "a.qdq.onnx"), read_file(out / "b.qdq.onnx"));
}

// --- Bad input -------------------------------------------------------------------------------

TEST(CliBadInput, TruncatedGzip) {
    ScratchFolder folder("bad-gzip");
    write_small_dataset(folder / "data", 200, 50);
    const fs::path labels = folder / "data" / "t10k-labels-idx1-ubyte.gz";
    const std::string bytes = read_file(labels);
    write_file_atomic(labels, bytes.substr(0, bytes.size() / 2));

    const FailedRun run =
        run_expecting_failure("run --data " + (folder / "data").string() +
                                  " --calibration-count 50 --out " + (folder / "out").string(),
                              folder / "out");
    expect_clean_failure(run, 3, {"t10k-labels-idx1-ubyte.gz", "truncated"});
}

TEST(CliBadInput, WrongMagicNumber) {
    ScratchFolder folder("bad-magic");
    write_small_dataset(folder / "data", 200, 50);
    // A label file where the test images belong.
    fs::copy_file(folder / "data" / "t10k-labels-idx1-ubyte.gz",
                  folder / "data" / "t10k-images-idx3-ubyte.gz",
                  fs::copy_options::overwrite_existing);

    const FailedRun run =
        run_expecting_failure("run --data " + (folder / "data").string() +
                                  " --calibration-count 50 --out " + (folder / "out").string(),
                              folder / "out");
    expect_clean_failure(run, 3, {"t10k-images-idx3-ubyte.gz", "magic number"});
}

TEST(CliBadInput, ImageAndLabelCountsDiffer) {
    ScratchFolder folder("bad-count");
    write_small_dataset(folder / "data", 200, 50);
    write_idx_gzip(folder / "data" / "train-labels-idx1-ubyte.gz", 0x801, {199},
                   std::vector<uint8_t>(199, 1));

    const FailedRun run =
        run_expecting_failure("run --data " + (folder / "data").string() +
                                  " --calibration-count 50 --out " + (folder / "out").string(),
                              folder / "out");
    expect_clean_failure(run, 3, {"200 images", "199 labels"});
}

TEST(CliBadInput, MissingDataFolder) {
    ScratchFolder folder("no-data");
    const FailedRun run = run_expecting_failure(
        "run --data " + (folder / "absent").string() + " --out " + (folder / "out").string(),
        folder / "out");
    expect_clean_failure(run, 4, {(folder / "absent").string(), "--data"});
}

TEST(CliBadInput, UnwritableOutputFolder) {
    ScratchFolder folder("no-write");
    write_small_dataset(folder / "data", 200, 50);
    // A path below a regular file can never be created, even by root.
    write_file_atomic(folder / "blocker", "not a folder");
    const fs::path out = folder / "blocker" / "out";

    const FailedRun run = run_expecting_failure("run --data " + (folder / "data").string() +
                                                    " --calibration-count 50 --out " + out.string(),
                                                out);
    expect_clean_failure(run, 4, {out.string(), "--out"});
}

TEST(CliBadInput, StateDictWithWrongShape) {
    const std::string python = test::python_with_module("torch");
    if (python.empty()) {
        GTEST_SKIP() << "python3-torch is not installed, so no state_dict fixture can be written";
    }
    ScratchFolder folder("bad-state-dict");
    write_small_dataset(folder / "data", 200, 50);
    const test::CommandResult written = test::run_command(
        python + " " + (test::source_dir() / "tests" / "fixtures" / "make_state_dict.py").string() +
        " " + (folder / "fixtures").string());
    ASSERT_EQ(written.exit_code, 0) << written.output;
    // make_state_dict.py gives fc3.weight the shape [10, 100] instead of [10, 120] in this file.
    const fs::path state_dict = folder / "fixtures" / "wrong_shape.pth";

    const FailedRun run = run_expecting_failure(
        "run --data " + (folder / "data").string() + " --calibration-count 50 --state-dict " +
            state_dict.string() + " --out " + (folder / "out").string(),
        folder / "out");
    expect_clean_failure(run, 3, {"fc3.weight", "[10, 100]", state_dict.string()});
}

TEST(CliBadInput, UnknownExecutionProvider) {
    ScratchFolder folder("bad-ep");
    write_small_dataset(folder / "data", 200, 50);
    const FailedRun run =
        run_expecting_failure("eval --data " + (folder / "data").string() + " --ep tpu -m " +
                                  (folder / "absent.onnx").string(),
                              folder / "out");
    EXPECT_EQ(run.exit_code, 2) << run.stderr_text;
    EXPECT_EQ(count_lines(run.stderr_text), 1) << run.stderr_text;
    EXPECT_NE(run.stderr_text.find("tpu"), std::string::npos) << run.stderr_text;
}

TEST(CliBadInput, VitisAiWithoutProvider) {
    // The official Linux ONNX Runtime has no Vitis AI EP; the run must stop before any stage.
    ScratchFolder folder("no-vitisai");
    write_small_dataset(folder / "data", 200, 50);
    const FailedRun run =
        run_expecting_failure("run --ep vitisai --data " + (folder / "data").string() +
                                  " --calibration-count 50 --out " + (folder / "out").string(),
                              folder / "out");
    if (run.exit_code == 0) {
        GTEST_SKIP() << "this ONNX Runtime has the Vitis AI execution provider";
    }
    expect_clean_failure(run, 5, {"Vitis AI", "ONNXRUNTIME_ROOT"});
}

TEST(CliBadInput, MissingCheckpoint) {
    ScratchFolder folder("no-checkpoint");
    write_small_dataset(folder / "data", 200, 50);
    const FailedRun run = run_expecting_failure(
        "run --data " + (folder / "data").string() + " --calibration-count 50 --checkpoint " +
            (folder / "typo.pt").string() + " --out " + (folder / "out").string(),
        folder / "out");
    expect_clean_failure(run, 4, {"typo.pt", "--retrain"});
}

TEST(CliBadInput, CheckpointNamedLikeMetadata) {
    ScratchFolder folder("json-checkpoint");
    write_small_dataset(folder / "data", 200, 50);
    // Rejected before training starts, so the test takes no training time.
    const FailedRun run = run_expecting_failure("train --data " + (folder / "data").string() +
                                                    " --calibration-count 50 --checkpoint " +
                                                    (folder / "out" / "model.json").string(),
                                                folder / "out");
    expect_clean_failure(run, 2, {"model.json", "metadata"});
}

TEST(CliBadInput, BatchLargerThanTrainingSet) {
    ScratchFolder folder("big-batch");
    write_small_dataset(folder / "data", 200, 50);
    const FailedRun run = run_expecting_failure(
        "run --retrain --data " + (folder / "data").string() +
            " --calibration-count 50 --batch-size 500 --out " + (folder / "out").string(),
        folder / "out");
    expect_clean_failure(run, 2, {"batch size 500", "150 training images"});
}

TEST(CliBadInput, InfiniteLearningRate) {
    const test::CommandResult result =
        test::run_command_stderr(cli() + " run --retrain --lr inf --out /nonexistent/out");
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_EQ(count_lines(result.output), 1) << result.output;
}

TEST(CliRun, RemovesStaleStagingFolder) {
    ScratchFolder folder("stale-staging");
    write_small_dataset(folder / "data", 200, 50);
    // A staging folder of a process that cannot exist (pids stay far below 2^31 - 1).
    const fs::path stale = folder / "out" / ".edgeq-run.2147483646";
    fs::create_directories(stale);
    write_file_atomic(stale / "fashion-mnist.onnx", "left by a killed run");

    const test::CommandResult result =
        test::run_command(cli() + " run --retrain --epochs 1 --data " + (folder / "data").string() +
                          " --calibration-count 50 --out " + (folder / "out").string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_FALSE(fs::exists(stale));
    const json metrics = read_json(folder / "out" / "metrics.json");
    EXPECT_EQ(metrics["model"]["source"], "retrain");
    for (const std::string& name : files_in(folder / "out")) {
        EXPECT_NE(name.rfind(".edgeq-run.", 0), 0u) << "staging folder left: " << name;
    }
}

TEST(CliBadInput, NegativeLearningRate) {
    const test::CommandResult result =
        test::run_command_stderr(cli() + " run --retrain --lr -5 --out /nonexistent/out");
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_EQ(count_lines(result.output), 1) << result.output;
    EXPECT_NE(result.output.find("--lr"), std::string::npos) << result.output;
}

TEST(CliHelp, EveryCommandHasHelpWithExample) {
    for (const std::string command : {"run", "train", "export", "quantize", "sweep", "eval"}) {
        const test::CommandResult result = test::run_command(cli() + " " + command + " --help");
        EXPECT_EQ(result.exit_code, 0) << command;
        EXPECT_NE(result.output.find("Example:"), std::string::npos) << command;
    }
}

}  // namespace
}  // namespace edgeq
