// Progress, log levels and --json through the built CLI: plain lines and no control characters
// through a pipe, a redrawn bar under a pseudo-terminal, one JSON object on stdout with the logs
// on stderr, and --quiet / --log-level. Two `edgeq run` calls in all, shared by the checks of one
// TEST; the other checks use `edgeq eval` and `edgeq info`, which take seconds.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>

#include "edgeq/common/files.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::ScratchFolder;

// Test images per run and per eval: enough for every stage to report progress, few enough to keep
// the two runs short.
constexpr int kTestSubset = 1000;

std::string cli() {
    return test::cli_path().string();
}

bool has_escape(const std::string& text) {
    return text.find('\x1b') != std::string::npos;
}

bool has_carriage_return(const std::string& text) {
    return text.find('\r') != std::string::npos;
}

int count_lines(const std::string& text) {
    return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// stdout and stderr of one command, kept apart.
struct SplitResult {
    int exit_code = -1;
    std::string stdout_text;
    std::string stderr_text;
};

// Runs `command` through /bin/sh with its stderr written to `stderr_file`.
SplitResult run_split(const std::string& command, const fs::path& stderr_file) {
    SplitResult split;
    const std::string shell_command = command + " 2>'" + stderr_file.string() + "'";
    FILE* pipe = ::popen(shell_command.c_str(), "r");
    if (pipe == nullptr) {
        return split;
    }
    std::array<char, 4096> buffer{};
    size_t read = 0;
    while ((read = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
        split.stdout_text.append(buffer.data(), read);
    }
    const int status = ::pclose(pipe);
    split.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    split.stderr_text = fs::exists(stderr_file) ? read_file(stderr_file) : "";
    return split;
}

// Two runs on the repository's checkpoint: one through a pipe, and one under a pseudo-terminal
// with --json and stdout sent to a file. ctest starts every TEST in its own process, so the
// checks that read these runs are functions called from one TEST below.
struct ProgressRuns {
    fs::path data;
    std::unique_ptr<ScratchFolder> folder;
    test::CommandResult piped;
    test::CommandResult terminal;
    fs::path json_file;

    explicit ProgressRuns(const fs::path& data_folder) : data(data_folder) {
        folder = std::make_unique<ScratchFolder>("progress-cli");
        const fs::path checkpoint = test::source_dir() / "models" / "fashion-cnn.pt";
        const std::string arguments = " run --data " + data.string() + " --checkpoint " +
                                      checkpoint.string() + " --test-subset " +
                                      std::to_string(kTestSubset);

        // 1. Through a pipe, both streams: plain mode.
        piped = test::run_command(cli() + arguments + " --out " + (*folder / "piped").string() +
                                  " | cat");

        // 2. Under script(1): stderr is a terminal (TERM set, since a test runner may have none),
        //    stdout goes to a file, so --json puts the bar on stderr.
        json_file = *folder / "run.json";
        const std::string inner = cli() + " --json" + arguments + " --out " +
                                  (*folder / "terminal").string() + " > " + json_file.string();
        terminal = test::run_command("TERM=xterm script -qfec \"" + inner + "\" /dev/null");
    }

    // The exit code of "edgeq run | cat" is cat's, so a finished run shows by its metrics.json.
    bool piped_run_succeeded() const { return fs::exists(*folder / "piped" / "metrics.json"); }

    // The QDQ model of the piped run, for `edgeq eval` and `edgeq info`.
    fs::path qdq_model() const { return *folder / "piped" / "fashion-mnist.qdq.U8S8.onnx"; }
    std::string eval_arguments() const {
        return " eval -m " + qdq_model().string() + " --data " + data.string();
    }
};

void check_pipe_has_no_control_characters(const ProgressRuns& runs) {
    ASSERT_TRUE(runs.piped_run_succeeded()) << runs.piped.output;
    EXPECT_FALSE(has_carriage_return(runs.piped.output)) << runs.piped.output;
    EXPECT_FALSE(has_escape(runs.piped.output)) << runs.piped.output;
}

void check_pipe_shows_plain_summary_lines(const ProgressRuns& runs) {
    ASSERT_TRUE(runs.piped_run_succeeded()) << runs.piped.output;
    const std::string images = std::to_string(kTestSubset) + " images in ";
    const std::vector<std::string> summaries = {"calibration: 5000 samples in ",
                                                "calibration histograms: 5000 samples in ",
                                                "quantization error: 5000 samples in ",
                                                "layer sensitivity: ",
                                                "evaluate fp32: " + images,
                                                "evaluate int8: " + images};
    for (const std::string& line : summaries) {
        EXPECT_NE(runs.piped.output.find("\n" + line), std::string::npos) << line << "\n"
                                                                          << runs.piped.output;
    }
    // Nothing is printed twice: the npu-sim passes log their own line, so their bars write no
    // summary line.
    for (const char* rounding : {"half-up", "half-even"}) {
        const std::string summary = std::string("npu-sim ") + rounding + ": " + images;
        EXPECT_EQ(runs.piped.output.find(summary), std::string::npos) << summary;
    }
}

void check_terminal_shows_bar(const ProgressRuns& runs) {
    ASSERT_EQ(runs.terminal.exit_code, 0) << runs.terminal.output;
    // A terminal turns "\n" into "\r\n", so the check is for the erase sequence of a redraw.
    EXPECT_NE(runs.terminal.output.find("\r\x1b[K"), std::string::npos) << runs.terminal.output;
    EXPECT_NE(runs.terminal.output.find("evaluate int8 ["), std::string::npos)
        << runs.terminal.output;
}

void check_json_run_is_metrics(const ProgressRuns& runs) {
    ASSERT_EQ(runs.terminal.exit_code, 0) << runs.terminal.output;
    const std::string text = read_file(runs.json_file);
    EXPECT_FALSE(has_escape(text)) << "progress leaked into stdout: " << text;
    const json summary = json::parse(text);
    ASSERT_TRUE(summary.is_object());
    for (const char* key : {"dataset", "fp32", "int8", "qdq_model", "partition", "stage_seconds"}) {
        EXPECT_TRUE(summary.contains(key)) << key;
    }
    EXPECT_EQ(summary["int8"]["total"], kTestSubset);
    const json metrics = json::parse(read_file(*runs.folder / "terminal" / "metrics.json"));
    EXPECT_EQ(summary["fp32"], metrics["fp32"]);
    EXPECT_EQ(summary["int8"], metrics["int8"]);
    // The log lines went to the terminal (stderr), not to stdout.
    EXPECT_NE(runs.terminal.output.find("stage times:"), std::string::npos) << runs.terminal.output;
    EXPECT_EQ(text.find("stage times:"), std::string::npos) << text;
}

void check_json_eval_on_stdout(const ProgressRuns& runs) {
    ASSERT_TRUE(fs::exists(runs.qdq_model())) << runs.piped.output;
    const SplitResult result =
        run_split(cli() + " --json" + runs.eval_arguments(), *runs.folder / "eval.stderr");
    ASSERT_EQ(result.exit_code, 0) << result.stderr_text;
    const json summary = json::parse(result.stdout_text);
    ASSERT_TRUE(summary.is_object());
    for (const char* key : {"accuracy", "correct", "total", "engine", "confusion_matrix"}) {
        EXPECT_TRUE(summary.contains(key)) << key << "\n" << result.stdout_text;
    }
    EXPECT_EQ(summary["total"], 10000);
    EXPECT_EQ(summary["confusion_matrix"].size(), 10u);
    int64_t diagonal = 0;
    for (int c = 0; c < 10; ++c) {
        diagonal += summary["confusion_matrix"][c][c].get<int64_t>();
    }
    EXPECT_EQ(diagonal, summary["correct"].get<int64_t>());
    // The accuracy line and the plain progress line are on stderr.
    EXPECT_NE(result.stderr_text.find("accuracy"), std::string::npos) << result.stderr_text;
    EXPECT_NE(result.stderr_text.find("images in "), std::string::npos) << result.stderr_text;
}

void check_json_info_both_places(const ProgressRuns& runs) {
    ASSERT_TRUE(fs::exists(runs.qdq_model())) << runs.piped.output;
    for (const std::string& command : {cli() + " --json info " + runs.qdq_model().string(),
                                       cli() + " info " + runs.qdq_model().string() + " --json"}) {
        const SplitResult result = run_split(command, *runs.folder / "info.stderr");
        ASSERT_EQ(result.exit_code, 0) << command << "\n" << result.stderr_text;
        const json summary = json::parse(result.stdout_text);
        EXPECT_EQ(summary.at("node_count"), 38) << command;
        EXPECT_TRUE(summary.contains("op_counts")) << command;
    }
}

void check_json_error_leaves_stdout_empty(const ProgressRuns& runs) {
    const SplitResult result =
        run_split(cli() + " --json eval -m " + (*runs.folder / "absent.onnx").string() +
                      " --data " + runs.data.string(),
                  *runs.folder / "error.stderr");
    EXPECT_NE(result.exit_code, 0);
    EXPECT_EQ(result.stdout_text, "");
    EXPECT_EQ(count_lines(result.stderr_text), 1) << result.stderr_text;
    EXPECT_NE(result.stderr_text.find("absent.onnx"), std::string::npos) << result.stderr_text;
}

void check_quiet_leaves_stdout_empty(const ProgressRuns& runs) {
    ASSERT_TRUE(fs::exists(runs.qdq_model())) << runs.piped.output;
    const SplitResult result =
        run_split(cli() + " -q" + runs.eval_arguments(), *runs.folder / "q.stderr");
    ASSERT_EQ(result.exit_code, 0) << result.stderr_text;
    EXPECT_EQ(result.stdout_text, "");
    EXPECT_EQ(result.stderr_text, "");
}

void check_log_levels(const ProgressRuns& runs) {
    ASSERT_TRUE(fs::exists(runs.qdq_model())) << runs.piped.output;
    const test::CommandResult info = test::run_command(cli() + runs.eval_arguments());
    const test::CommandResult debug =
        test::run_command(cli() + " --log-level debug" + runs.eval_arguments());
    const test::CommandResult error =
        test::run_command(cli() + runs.eval_arguments() + " -v --log-level error");
    ASSERT_EQ(info.exit_code, 0) << info.output;
    ASSERT_EQ(debug.exit_code, 0) << debug.output;
    ASSERT_EQ(error.exit_code, 0) << error.output;
    EXPECT_GT(count_lines(debug.output), count_lines(info.output)) << debug.output;
    EXPECT_NE(debug.output.find("command: "), std::string::npos) << debug.output;
    EXPECT_EQ(info.output.find("command: "), std::string::npos) << info.output;
    EXPECT_EQ(error.output, "") << "--log-level overrides -v";
}

TEST(ProgressCli, RunPipeTerminalJsonAndLogLevels) {
    const fs::path data = test::fashion_mnist_folder();
    if (data.empty()) {
        GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
    }
    const ProgressRuns runs(data);
    check_pipe_has_no_control_characters(runs);
    check_pipe_shows_plain_summary_lines(runs);
    check_terminal_shows_bar(runs);
    check_json_run_is_metrics(runs);
    check_json_eval_on_stdout(runs);
    check_json_info_both_places(runs);
    check_json_error_leaves_stdout_empty(runs);
    check_quiet_leaves_stdout_empty(runs);
    check_log_levels(runs);
}

TEST(ProgressCli, InvalidLogLevelIsUsageError) {
    const test::CommandResult result =
        test::run_command_stderr(cli() + " --log-level loud info model.onnx");
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_EQ(count_lines(result.output), 1) << result.output;
    EXPECT_NE(result.output.find("--log-level"), std::string::npos) << result.output;
}

TEST(ProgressCli, EveryCommandHelpHasExample) {
    for (const std::string command : {"run", "train", "export", "quantize", "sweep", "eval",
                                      "partition", "bench", "report", "info"}) {
        const test::CommandResult result = test::run_command(cli() + " " + command + " --help");
        EXPECT_EQ(result.exit_code, 0) << command;
        EXPECT_NE(result.output.find("Example: edgeq " + command), std::string::npos)
            << command << "\n"
            << result.output;
    }
}

}  // namespace
}  // namespace edgeq
