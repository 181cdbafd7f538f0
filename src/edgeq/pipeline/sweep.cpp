#include "edgeq/pipeline/sweep.h"

#include <chrono>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/common/progress.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/model/fashion_cnn.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/pipeline/run.h"
#include "edgeq/pipeline/train_stage.h"

namespace edgeq {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

struct SweepCase {
    Preset preset;
    CalibrationMethod method;
    Algorithms algorithms;
};

std::vector<SweepCase> list_cases(const SweepOptions& options) {
    std::vector<SweepCase> cases;
    for (const Preset preset : options.presets) {
        for (const CalibrationMethod method : options.methods) {
            for (const Algorithms& algorithms : options.algorithm_sets) {
                cases.push_back({preset, method, algorithms});
            }
            const bool extra_preset =
                std::find(options.extra_presets.begin(), options.extra_presets.end(), preset) !=
                options.extra_presets.end();
            const bool extra_method =
                options.extra_methods.empty() ||
                std::find(options.extra_methods.begin(), options.extra_methods.end(), method) !=
                    options.extra_methods.end();
            if (!extra_preset || !extra_method) {
                continue;
            }
            for (const Algorithms& algorithms : options.extra_algorithm_sets) {
                cases.push_back({preset, method, algorithms});
            }
        }
    }
    return cases;
}

double evaluate_model(const onnx::ModelProto& model, const LabelledImages& test,
                      const SweepOptions& options, const std::string& label) {
    std::string bytes;
    model.SerializeToString(&bytes);
    OrtModel session(bytes, label, options.session);
    return evaluate_classifier(session, test, options.eval_batch_size).accuracy();
}

std::string algorithms_text(const Algorithms& algorithms) {
    const std::vector<std::string> names = algorithm_names(algorithms);
    return names.empty() ? "-" : fmt::format("{}", fmt::join(names, "+"));
}

}  // namespace

SweepOptions default_sweep_grid(SweepOptions options) {
    if (options.presets.empty()) {
        options.presets = all_presets();
    }
    if (options.methods.empty()) {
        options.methods = {CalibrationMethod::kMinMax, CalibrationMethod::kNonOverflow,
                           CalibrationMethod::kMinMse, CalibrationMethod::kPercentile,
                           CalibrationMethod::kEntropy};
    }
    if (options.algorithm_sets.empty()) {
        options.algorithm_sets = {Algorithms{}};
        options.extra_presets = {Preset::kXint8};
        options.extra_methods = {CalibrationMethod::kMinMax, CalibrationMethod::kMinMse};
        options.extra_algorithm_sets = {parse_algorithms("cle"), parse_algorithms("adaround"),
                                        parse_algorithms("bias_correction"),
                                        parse_algorithms("cle,adaround,bias_correction")};
    }
    return options;
}

json run_sweep(const SweepOptions& options) {
    const auto start = std::chrono::steady_clock::now();
    ensure_writable_folder(options.out_folder, "--out");
    const fs::path sweep_path = options.out_folder / kSweepFile;
    check_output_file(sweep_path, "--out");
    check_execution_provider(options.session);

    // Data and the float model.
    PreparedData data = prepare_data(options.data_folder, options.calibration_count, options.seed);
    const LabelledImages test = first_images(data.test, options.test_subset);
    onnx::ModelProto float_model;
    std::string model_label;
    if (options.model.has_value()) {
        model_label = options.model->string();
        float_model = load_onnx_model(*options.model);
    } else {
        model_label = options.checkpoint.string() + " (exported)";
        FashionCnn model = load_checkpoint(options.checkpoint);
        float_model = export_fashion_cnn(export_state_dict(model));
    }
    check_onnx_model(float_model, model_label);

    const double fp32 = evaluate_model(float_model, test, options, model_label);
    const std::vector<SweepCase> cases = list_cases(options);
    spdlog::info(
        "sweep: {} configurations of {} on {} test images, calibrated on {} images; "
        "fp32 accuracy {:.2f}%",
        cases.size(), model_label, test.size(), data.calibration.size(), 100.0 * fp32);

    // The "[c/n]" line of each configuration and the closing "wrote" line are the record, so the
    // bar writes no summary line.
    ProgressOutput progress_output = console_progress_output();
    progress_output.summary = false;
    Progress progress("sweep", static_cast<int64_t>(cases.size()), "configurations",
                      progress_output);
    json rows = json::array();
    for (size_t c = 0; c < cases.size(); ++c) {
        const SweepCase& sweep_case = cases[c];
        QuantizeOptions quantize;
        quantize.preset = sweep_case.preset;
        quantize.method = sweep_case.method;
        quantize.calibration_batch_size = options.calibration_batch_size;
        LabelledImagesReader reader(data.calibration, options.calibration_batch_size);

        const QuantizeRun run = quantize_model(float_model, reader, quantize, sweep_case.algorithms,
                                               options.session, model_label);
        const double accuracy = evaluate_model(run.qdq.model, test, options, model_label);
        json row = {{"preset", preset_name(sweep_case.preset)},
                    {"method", calibration_method_name(sweep_case.method)},
                    {"algorithms", algorithm_names(sweep_case.algorithms)},
                    {"accuracy", accuracy},
                    {"delta_vs_fp32", accuracy - fp32},
                    {"calibration_seconds", run.qdq.calibration_seconds},
                    {"quantize_seconds", run.seconds},
                    {"bias", bias_mode_name(run.qdq.scheme.bias)},
                    {"nodes", run.qdq.model.graph().node_size()}};
        spdlog::info("[{}/{}] {:<6} {:<12} {:<32} {:>7.2f}% ({:+.2f}) in {:.1f} s", c + 1,
                     cases.size(), preset_name(sweep_case.preset),
                     calibration_method_name(sweep_case.method),
                     algorithms_text(sweep_case.algorithms), 100.0 * accuracy,
                     100.0 * (accuracy - fp32), run.seconds);
        rows.push_back(row);
        progress.update(static_cast<int64_t>(c + 1));
    }
    progress.finish();
    write_file_atomic(sweep_path, rows.dump(2) + "\n");

    // The table, best first within each preset's block as run.
    spdlog::info("");
    spdlog::info("{:<6} {:<12} {:<32} {:>9} {:>8} {:>12}", "preset", "method", "algorithms",
                 "accuracy", "delta", "calibration");
    spdlog::info("{:<6} {:<12} {:<32} {:>8.2f}% {:>8} {:>12}", "fp32", "-", "-", 100.0 * fp32, "",
                 "");
    const json* best = nullptr;
    for (const json& row : rows) {
        std::vector<std::string> names = row["algorithms"].get<std::vector<std::string>>();
        spdlog::info("{:<6} {:<12} {:<32} {:>8.2f}% {:>+8.2f} {:>10.2f} s",
                     row["preset"].get<std::string>(), row["method"].get<std::string>(),
                     names.empty() ? "-" : fmt::format("{}", fmt::join(names, "+")),
                     100.0 * row["accuracy"].get<double>(),
                     100.0 * row["delta_vs_fp32"].get<double>(),
                     row["calibration_seconds"].get<double>());
        if (row["preset"] == "XINT8" &&
            (best == nullptr ||
             row["accuracy"].get<double>() > (*best)["accuracy"].get<double>())) {
            best = &row;
        }
    }
    spdlog::info("{:<6} {:<12} {:<32} {:>8.2f}%   (the Ryzen AI tutorial report, for reference)",
                 "report", "XINT8", "-", 100.0 * kReportInt8Accuracy);
    if (best != nullptr) {
        spdlog::info(
            "best XINT8: {} {} at {:.2f}% ({:+.2f} points against fp32)",
            (*best)["method"].get<std::string>(),
            fmt::format("{}",
                        fmt::join((*best)["algorithms"].get<std::vector<std::string>>(), "+")),
            100.0 * (*best)["accuracy"].get<double>(),
            100.0 * (*best)["delta_vs_fp32"].get<double>());
    }
    spdlog::info("wrote {} ({} rows) in {:.0f} s", sweep_path.string(), rows.size(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return rows;
}

}  // namespace edgeq
