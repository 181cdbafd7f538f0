// Deployment end to end on the real data: the NPU placement report, npu-sim against ONNX
// Runtime's CPU EP, the execution-provider choices, the bench command, and bad input.

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>
#include <sstream>

#include "edgeq/common/files.h"
#include "edgeq/onnx/model_io.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::ScratchFolder;

// npu-sim with ONNX's rounding must give ONNX Runtime's top-1 class on this share of the test
// images. The two differ only where ONNX Runtime's float kernels round a product sum that
// npu-sim computes exactly, which moves a logit by one step on a handful of images.
constexpr double kMinimumTop1Agreement = 0.999;

// The trained FashionCNN scores about 92% in int8; far below that, npu-sim computes something
// else than the model (a wrong shift, a lost bias), whichever rounding it uses.
constexpr double kMinimumSimulatedAccuracy = 0.90;

std::string cli() {
    return test::cli_path().string();
}

bool have_real_data_and_checkpoint() {
    return !test::fashion_mnist_folder().empty() &&
           fs::exists(test::source_dir() / "models/fashion-cnn.pt");
}

json read_json(const fs::path& path) {
    return json::parse(read_file(path));
}

int count_lines(const std::string& text) {
    return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// The main job runs once (about three minutes here), and every check below reads its output
// folder. ctest runs each TEST in its own process, so all the checks run inside one TEST.
struct RunFolder {
    fs::path out;
    std::string output;  // what `edgeq run` printed
    fs::path qdq_model() const { return out / "fashion-mnist.qdq.U8S8.onnx"; }
};

void check_placement_matches_the_report(const RunFolder& run) {
    const json metrics = read_json(run.out / "metrics.json");
    EXPECT_EQ(metrics["partition"]["all"], 38);
    EXPECT_EQ(metrics["partition"]["CPU"], 2);
    EXPECT_EQ(metrics["partition"]["NPU"], 36);

    const json report = read_json(run.out / "vitisai_ep_report.json");
    ASSERT_TRUE(report.contains("deviceStat"));
    std::map<std::string, json> devices;
    for (const json& device : report["deviceStat"]) {
        devices[device["name"].get<std::string>()] = device;
    }
    EXPECT_EQ(report["deviceStat"][0]["name"], "all");
    EXPECT_EQ(devices["all"]["nodeNum"], 38);
    EXPECT_EQ(devices["CPU"]["nodeNum"], 2);
    EXPECT_EQ(devices["NPU"]["nodeNum"], 36);
    const std::set<std::string> npu_types = devices["NPU"]["supportedOpType"];
    EXPECT_EQ(npu_types,
              (std::set<std::string>{"::Conv", "::DequantizeLinear", "::Gemm", "::MaxPool",
                                     "::QuantizeLinear", "::Relu", "::Reshape"}));
    const std::set<std::string> cpu_types = devices["CPU"]["supportedOpType"];
    EXPECT_EQ(cpu_types, (std::set<std::string>{"::DequantizeLinear", "::QuantizeLinear"}));

    // The two CPU nodes are the first QuantizeLinear (it reads the graph input) and the last
    // DequantizeLinear (it writes the graph output).
    ASSERT_EQ(report["nodeStat"].size(), 38u);
    for (const json& node : report["nodeStat"]) {
        if (node["device"] != "CPU") {
            continue;
        }
        const bool reads_input = node["input"][0] == "input";
        const bool writes_output = node["output"][0] == "output";
        EXPECT_TRUE(reads_input || writes_output) << node.dump();
    }
    EXPECT_FALSE(report["shapeInfo"].empty());
    EXPECT_TRUE(report.contains("subgraphStat"));

    // The console line of the EP.
    EXPECT_NE(run.output.find("on CPU: 2, on NPU: 36"), std::string::npos) << run.output;
}

void check_npu_sim_agrees_with_the_cpu_ep(const RunFolder& run) {
    const json metrics = read_json(run.out / "metrics.json");
    const json& simulated = metrics["npu_sim"];
    ASSERT_TRUE(simulated.contains("top1_agreement_with_cpu_ep")) << simulated.dump();
    EXPECT_GE(simulated["top1_agreement_with_cpu_ep"].get<double>(), kMinimumTop1Agreement);
    EXPECT_GT(simulated["accuracy"]["half_up"].get<double>(), kMinimumSimulatedAccuracy);
    EXPECT_GT(simulated["accuracy"]["half_even"].get<double>(), kMinimumSimulatedAccuracy);

    // Every image where half to even differs from the CPU EP is listed in the CSV too.
    const std::string csv = read_file(run.out / "npu_sim_differences.csv");
    EXPECT_EQ(csv.rfind("index,label,cpu_ep,npu_sim_half_even,npu_sim_half_up\n", 0), 0u);
    const int64_t tested = metrics["int8"]["total"];
    const auto differing = simulated["differing_images_half_even"];
    const double agreement =
        1.0 - static_cast<double>(differing.size()) / static_cast<double>(tested);
    EXPECT_DOUBLE_EQ(agreement, simulated["top1_agreement_with_cpu_ep"].get<double>());
    for (const json& image : differing) {
        const std::string row_start = "\n" + std::to_string(image["index"].get<int64_t>()) + ",";
        EXPECT_NE(csv.find(row_start), std::string::npos) << image.dump();
    }
}

void check_eval_on_npu_sim_matches_the_run(const RunFolder& run) {
    const json metrics = read_json(run.out / "metrics.json");
    const test::CommandResult result = test::run_command(
        cli() + " eval --ep npu-sim --rounding half-even -m " + run.qdq_model().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    const std::string expected = fmt::format(
        "accuracy {:.2f}%", 100.0 * metrics["npu_sim"]["accuracy"]["half_even"].get<double>());
    EXPECT_NE(result.output.find(expected), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("npu-sim (half-even)"), std::string::npos) << result.output;
}

void check_auto_falls_back_to_the_cpu(const RunFolder& run) {
    const test::CommandResult result =
        test::run_command(cli() + " eval --ep auto -m " + run.qdq_model().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    if (result.output.find("VitisAIExecutionProvider") != std::string::npos) {
        // This ONNX Runtime has the Vitis AI EP, so `auto` rightly chose it.
        return;
    }
    EXPECT_NE(result.output.find("--ep auto falls back to the CPU"), std::string::npos)
        << result.output;
    EXPECT_NE(result.output.find("CPUExecutionProvider"), std::string::npos) << result.output;
}

void check_partition_command_writes_the_same_report(const RunFolder& run) {
    ScratchFolder scratch("deploy-partition");
    const fs::path report = scratch / "report.json";
    const test::CommandResult result = test::run_command(
        cli() + " partition -m " + run.qdq_model().string() + " --report " + report.string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_EQ(read_file(report), read_file(run.out / "vitisai_ep_report.json"));
}

void check_bench_prints_ratios_to_onnx_runtime_fp32(const RunFolder& run) {
    const test::CommandResult result = test::run_command(
        cli() + " bench --out " + run.out.string() + " --batch-sizes 1,100 --min-seconds 0.2");
    ASSERT_EQ(result.exit_code, 0) << result.output;
    const json bench = read_json(run.out / "bench.json");
    ASSERT_EQ(bench["rows"].size(), 6u) << bench.dump();
    std::set<std::string> engines;
    for (const json& row : bench["rows"]) {
        engines.insert(row["engine"].get<std::string>());
        EXPECT_GT(row["images"].get<int64_t>(), 0) << row.dump();
        EXPECT_GT(row["images_per_second"].get<double>(), 0.0) << row.dump();
        if (row["engine"] == "onnxruntime fp32") {
            EXPECT_DOUBLE_EQ(row["ratio_to_onnxruntime_fp32"].get<double>(), 1.0);
        }
    }
    EXPECT_EQ(engines, (std::set<std::string>{"onnxruntime fp32", "onnxruntime int8", "npu-sim"}));
    EXPECT_NE(result.output.find("vs ORT fp32"), std::string::npos) << result.output;
}

void check_bad_deployment_input_is_one_line(const RunFolder& run) {
    ScratchFolder scratch("deploy-bad");

    // An unknown execution provider names the four there are.
    const test::CommandResult unknown =
        test::run_command_stderr(cli() + " eval --ep tpu -m " + run.qdq_model().string());
    EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
    EXPECT_EQ(count_lines(unknown.output), 1) << unknown.output;
    EXPECT_NE(unknown.output.find("npu-sim"), std::string::npos) << unknown.output;

    // A target description that is not JSON stops the run before any stage.
    write_file_atomic(scratch / "target.json", "{\"name\": \"broken\",\n");
    test::expect_clean_failure(cli() + " run --target " + (scratch / "target.json").string() +
                                   " --out " + (scratch / "out").string(),
                               3, scratch / "out" / "metrics.json", "target.json");
    test::expect_clean_failure(cli() + " partition -m " + run.qdq_model().string() + " --target " +
                                   (scratch / "target.json").string() + " --report " +
                                   (scratch / "report.json").string(),
                               3, scratch / "report.json", "target.json");

    // A model with an operator npu-sim lacks: the quantizer keeps Erf in float.
    const fs::path erf_model = scratch / "erf.qdq.onnx";
    test::write_erf_model(scratch / "erf.onnx", 1);
    const test::CommandResult quantized =
        test::run_command(cli() + " -q quantize --calibration-count 500 -m " +
                          (scratch / "erf.onnx").string() + " -o " + erf_model.string());
    ASSERT_EQ(quantized.exit_code, 0) << quantized.output;
    const test::CommandResult erf =
        test::run_command_stderr(cli() + " eval --ep npu-sim -m " + erf_model.string());
    EXPECT_EQ(erf.exit_code, 5) << erf.output;
    EXPECT_EQ(count_lines(erf.output), 1) << erf.output;
    EXPECT_NE(erf.output.find("my_erf"), std::string::npos) << erf.output;

    // Float scales without --fixed-point: the error gives the reason and the flag that allows them.
    const fs::path a8w8 = scratch / "a8w8.onnx";
    const test::CommandResult a8w8_quantized =
        test::run_command(cli() + " -q quantize --preset A8W8 --calibration-count 500 -m " +
                          (run.out / "fashion-mnist.onnx").string() + " -o " + a8w8.string());
    ASSERT_EQ(a8w8_quantized.exit_code, 0) << a8w8_quantized.output;
    const test::CommandResult refused =
        test::run_command_stderr(cli() + " eval --ep npu-sim -m " + a8w8.string());
    EXPECT_EQ(refused.exit_code, 5) << refused.output;
    EXPECT_EQ(count_lines(refused.output), 1) << refused.output;
    EXPECT_NE(refused.output.find("--fixed-point"), std::string::npos) << refused.output;
    const test::CommandResult fixed_point = test::run_command(
        cli() + " eval --ep npu-sim --fixed-point --rounding half-even -m " + a8w8.string());
    EXPECT_EQ(fixed_point.exit_code, 0) << fixed_point.output;
}

TEST(DeployAcceptance, RunPlacesNodesAndAgreesWithCpuEp) {
    if (!have_real_data_and_checkpoint()) {
        GTEST_SKIP() << "needs Debian's dataset-fashion-mnist and models/fashion-cnn.pt";
    }
    ScratchFolder folder("deploy-run");
    const test::CommandResult result = test::run_command(
        cli() + " run --checkpoint " + (test::source_dir() / "models/fashion-cnn.pt").string() +
        " --out " + folder.path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    const RunFolder run{folder.path(), result.output};

    {
        SCOPED_TRACE("check_placement_matches_the_report");
        check_placement_matches_the_report(run);
    }
    {
        SCOPED_TRACE("check_npu_sim_agrees_with_the_cpu_ep");
        check_npu_sim_agrees_with_the_cpu_ep(run);
    }
    {
        SCOPED_TRACE("check_eval_on_npu_sim_matches_the_run");
        check_eval_on_npu_sim_matches_the_run(run);
    }
    {
        SCOPED_TRACE("check_auto_falls_back_to_the_cpu");
        check_auto_falls_back_to_the_cpu(run);
    }
    {
        SCOPED_TRACE("check_partition_command_writes_the_same_report");
        check_partition_command_writes_the_same_report(run);
    }
    {
        SCOPED_TRACE("check_bench_prints_ratios_to_onnx_runtime_fp32");
        check_bench_prints_ratios_to_onnx_runtime_fp32(run);
    }
    {
        SCOPED_TRACE("check_bad_deployment_input_is_one_line");
        check_bad_deployment_input_is_one_line(run);
    }
}

}  // namespace
}  // namespace edgeq
