// edgeq: the command-line front end. Each subcommand parses its flags and calls the edgeq
// library; an error becomes one line on stderr and an exit code (see ExitCode in error.h).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <cmath>
#include <optional>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/common/logging.h"
#include "edgeq/common/progress.h"
#include "edgeq/eval/deployed_model.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/model/pytorch_state_dict.h"
#include "edgeq/npu/npu_sim.h"
#include "edgeq/npu/partition.h"
#include "edgeq/npu/target.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_info.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/onnx/prepare.h"
#include "edgeq/pipeline/bench.h"
#include "edgeq/pipeline/run.h"
#include "edgeq/pipeline/sweep.h"
#include "edgeq/pipeline/train_stage.h"
#include "edgeq/quant/calibration_sources.h"
#include "edgeq/quant/qdq_summary.h"
#include "edgeq/quant/quant_report.h"
#include "edgeq/report/html_report.h"

namespace {

using namespace edgeq;
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// Number checks with short messages (CLI11's own print the whole double range).
const CLI::Validator kPositive(
    [](std::string& text) {
        try {
            const double value = std::stod(text);
            return std::isfinite(value) && value > 0 ? std::string{}
                                                     : "must be a finite number greater than 0";
        } catch (const std::exception&) {
            return std::string("is not a number");
        }
    },
    "> 0", "positive");
const CLI::Validator kNonNegative(
    [](std::string& text) {
        try {
            const double value = std::stod(text);
            return std::isfinite(value) && value >= 0 ? std::string{}
                                                      : "must be a finite number, 0 or more";
        } catch (const std::exception&) {
            return std::string("is not a number");
        }
    },
    ">= 0", "non-negative");

std::string join_arguments(int argc, char** argv) {
    std::string line = "edgeq";
    for (int i = 1; i < argc; ++i) {
        line += ' ';
        line += argv[i];
    }
    return line;
}

// Options shared by the commands that read Fashion-MNIST.
struct DataOptions {
    std::string folder{kDefaultDataFolder};
    uint64_t seed = 42;
    int64_t calibration_count = 5000;
};

void add_data_options(CLI::App& command, DataOptions& options) {
    command.add_option("--data", options.folder, "Fashion-MNIST folder (IDX files, gzip or plain)")
        ->capture_default_str();
    command
        .add_option("--seed", options.seed, "seed of the train/calibration split and of training")
        ->capture_default_str()
        ->check(kNonNegative);
    command
        .add_option("--calibration-count", options.calibration_count,
                    "training images held out for calibration")
        ->capture_default_str()
        ->check(kPositive);
}

void add_train_options(CLI::App& command, TrainOptions& options) {
    command.add_option("--epochs", options.epochs, "training epochs")
        ->capture_default_str()
        ->check(kPositive);
    command.add_option("--batch-size", options.batch_size, "training batch size")
        ->capture_default_str()
        ->check(kPositive);
    command.add_option("--lr", options.learning_rate, "initial Adam learning rate")
        ->capture_default_str()
        ->check(kPositive);
    command
        .add_option("--final-lr", options.final_learning_rate,
                    "learning rate that the cosine decay reaches in the last epoch")
        ->capture_default_str()
        ->check(kNonNegative);
    command
        .add_option("--max-shift", options.max_shift,
                    "augmentation: largest random shift in pixels (0 = none)")
        ->capture_default_str()
        ->check(CLI::Range(0, 8));
    command.add_flag("--flip", options.horizontal_flip,
                     "augmentation: mirror half of the images left-right");
}

// Options of the quantizer, given as text and parsed after CLI11 is done.
struct QuantizeFlags {
    std::string preset = "XINT8";
    std::string method;  // empty: the preset's
    double percentile = 99.999;
    std::string bias;    // empty: the preset's
    std::string scales;  // empty: the preset's; "power-of-two" or "float"
    bool per_channel = false;
    std::vector<std::string> exclude;
    bool strict = false;
    std::string algorithms = "none";
    double max_accuracy_drop = -1;  // < 0: mixed precision off
    int64_t calibration_batch_size = 100;

    QuantizeOptions parse() const {
        QuantizeOptions options;
        options.preset = parse_preset(preset);
        if (!method.empty()) {
            options.method = parse_calibration_method(method);
        }
        options.percentile = percentile;
        if (!bias.empty()) {
            options.bias = parse_bias_mode(bias);
        }
        if (scales == "power-of-two") {
            options.power_of_two = true;
        } else if (scales == "float") {
            options.power_of_two = false;
        }
        options.per_channel = per_channel;
        options.exclude = exclude;
        options.strict = strict;
        options.calibration_batch_size = calibration_batch_size;
        resolve_scheme(options);  // rejects what the preset cannot do, before any work
        return options;
    }

    MixedPrecisionOptions mixed_precision() const {
        MixedPrecisionOptions options;
        if (max_accuracy_drop >= 0) {
            options.max_drop = max_accuracy_drop;
        }
        return options;
    }
};

void add_quantize_options(CLI::App& command, QuantizeFlags& flags) {
    command
        .add_option("--preset", flags.preset,
                    "number format: XINT8 (the Ryzen AI NPU's), A8W8, U8S8, S8S8 or A16W8")
        ->capture_default_str();
    command
        .add_option("--method", flags.method,
                    "calibration: minmax, nonoverflow, minmse, percentile or entropy (default: "
                    "the preset's, minmse for XINT8, minmax for the others)")
        ->check(CLI::IsMember({"minmax", "nonoverflow", "minmse", "percentile", "entropy"}));
    command.add_option("--percentile", flags.percentile, "percentile of --method percentile")
        ->capture_default_str()
        ->check(kPositive);
    command
        .add_option("--bias", flags.bias,
                    "bias type: int8 (power-of-two scale, AMD Quark's XINT8 default) or int32 "
                    "(scale s_input * s_weight; the other presets' default)")
        ->check(CLI::IsMember({"int8", "int32"}));
    command
        .add_option("--scales", flags.scales,
                    "scale type: power-of-two or float (default: the preset's)")
        ->check(CLI::IsMember({"power-of-two", "float"}));
    command.add_flag("--per-channel", flags.per_channel,
                     "one weight scale per output channel (not with XINT8)");
    command
        .add_option("--exclude", flags.exclude,
                    "node names or operator types to keep in float (comma-separated)")
        ->delimiter(',');
    command.add_flag("--strict", flags.strict,
                     "fail on an operator the quantizer cannot handle instead of keeping it in "
                     "float");
    command
        .add_option("--algorithms", flags.algorithms,
                    "comma-separated: cle (cross-layer equalization), adaround, bias_correction; "
                    "or none")
        ->capture_default_str();
    command
        .add_option("--max-accuracy-drop", flags.max_accuracy_drop,
                    "mixed precision: keep the most sensitive layers in float until the held-out "
                    "accuracy drop is at most this (0.002 = 0.2 points)")
        ->check(kNonNegative);
    command
        .add_option("--calibration-batch-size", flags.calibration_batch_size,
                    "images per calibration batch (does not change the result)")
        ->capture_default_str()
        ->check(kPositive);
}

// Deployment flags: the execution provider (--ep), the Vitis AI options and npu-sim's settings.
struct DeployFlags {
    std::string provider = "cpu";
    std::string vitisai_config;
    std::vector<std::string> vitisai_options;
    std::string rounding = "half-up";
    bool fixed_point = false;

    // Parses --ep, reads the options file and resolves `auto`. Throws the one-line errors of
    // resolve_execution_provider (unknown provider, Vitis AI missing, bad options file).
    ProviderSetup resolve() const {
        ProviderRequest request;
        request.provider = parse_execution_provider(provider);
        request.vitisai_options_file = vitisai_config;
        for (const std::string& option : vitisai_options) {
            request.vitisai_options.insert(parse_vitisai_option(option));
        }
        return resolve_execution_provider(request);
    }

    npu::NpuSimOptions npu_sim() const {
        return {rounding == "half-even" ? npu::Rounding::kHalfEven : npu::Rounding::kHalfUp,
                fixed_point};
    }
};

// ONNX Runtime runs the fp32 model on the resolved provider, and on the CPU when npu-sim runs
// the int8 model.
SessionConfig session_for(const ProviderSetup& setup) {
    return setup.resolved == ExecutionProvider::kNpuSim ? SessionConfig{}
                                                        : make_session_config(setup);
}

void add_npu_sim_options(CLI::App& command, DeployFlags& flags) {
    command
        .add_option("--rounding", flags.rounding,
                    "npu-sim's rounding when requantizing: half-up (the DPU's) or half-even "
                    "(ONNX's)")
        ->capture_default_str()
        ->check(CLI::IsMember({"half-up", "half-even"}));
    command.add_flag("--fixed-point", flags.fixed_point,
                     "let npu-sim run models with non-power-of-two scales through 31-bit "
                     "fixed-point multipliers");
}

void add_deploy_options(CLI::App& command, DeployFlags& flags) {
    command
        .add_option("--ep", flags.provider,
                    "execution provider: cpu, vitisai (ONNX Runtime with the Vitis AI EP), "
                    "npu-sim (edgeq's integer NPU emulator) or auto (Vitis AI when present, "
                    "else the CPU)")
        ->capture_default_str();
    command.add_option("--vitisai-config", flags.vitisai_config,
                       "JSON file of Vitis AI provider options (config_file, cache_dir, "
                       "cache_key, xclbin, target, encryption_key, log_level)");
    command.add_option("--vitisai-option", flags.vitisai_options,
                       "one Vitis AI provider option as key=value, repeatable; overrides "
                       "--vitisai-config");
    add_npu_sim_options(command, flags);
}

// `edgeq export`: checkpoint or state_dict -> checked ONNX model. Returns the --json summary.
json run_export(const std::string& checkpoint, const std::string& state_dict,
                const std::string& output) {
    check_output_file(output, "--output");
    FashionCnn model;
    if (!state_dict.empty()) {
        import_state_dict(model, read_pytorch_state_dict(state_dict), state_dict);
    } else {
        model = load_checkpoint(checkpoint);
    }
    const onnx::ModelProto exported = export_fashion_cnn(export_state_dict(model));
    check_onnx_model(exported, output);
    save_onnx_model(exported, output);
    spdlog::info("exported {} ({} nodes, opset {}, passes the ONNX checker)", output,
                 exported.graph().node_size(), kExportOpset);
    return {{"path", output}, {"nodes", exported.graph().node_size()}, {"opset", kExportOpset}};
}

// The report's SQNR and sensitivity are measured on the first this many calibration samples: each
// needs passes of both models, and a few thousand samples give stable figures.
constexpr int64_t kReportSamples = 2000;

// Calibration data other than Fashion-MNIST, for models other than FashionCNN.
struct CalibrationFlags {
    std::string path;
    std::vector<int64_t> size;
    std::string mean;
    std::string std;
    int64_t limit = 0;
};

void add_calibration_data_options(CLI::App& command, CalibrationFlags& flags) {
    command.add_option("--calibration-data", flags.path,
                       "calibration data instead of Fashion-MNIST: a folder of PNG images, a .npy "
                       "array [N, C, H, W] (float32 or uint8) or an IDX image file");
    command.add_option("--size", flags.size, "resize PNG images to H W")->expected(2);
    command.add_option("--mean", flags.mean,
                       "per-channel mean subtracted after scaling to [0, 1], e.g. "
                       "0.485,0.456,0.406");
    command.add_option("--std", flags.std,
                       "per-channel standard deviation divided by after the mean, e.g. "
                       "0.229,0.224,0.225");
    command
        .add_option("--calibration-limit", flags.limit, "use only the first N samples (0 = all)")
        ->check(kNonNegative);
}

// Measures and prints the per-tensor errors (and per-layer sensitivity when held-out labels are
// given); returns them as JSON for the report file.
json measure_quantization(const QuantizeRun& quantized, CalibrationDataReader& reader,
                          const HeldOutData& held_out) {
    Progress error_progress("quantization error", reader.sample_count(), "samples");
    const std::vector<TensorError> errors =
        measure_tensor_errors(quantized.prepared_model, quantized.qdq.model, reader,
                              SessionConfig{}, error_progress.callback());
    error_progress.finish();
    spdlog::info("per-tensor quantization (SQNR against fp32 on the calibration data):\n{}",
                 format_tensor_table(errors));
    json report = {{"tensors", to_json(errors)}};
    if (held_out.images != nullptr && !held_out.labels.empty()) {
        Progress sensitivity_progress("layer sensitivity", 0, "models");
        const SensitivityReport sensitivity = measure_layer_sensitivity(
            quantized.prepared_model, quantized.qdq.model, *held_out.images, held_out.labels,
            SessionConfig{}, sensitivity_progress.callback());
        sensitivity_progress.finish();
        spdlog::info("per-layer sensitivity (accuracy when only that layer is quantized):\n{}",
                     format_sensitivity_table(sensitivity));
        report["sensitivity"] = to_json(sensitivity);
    }
    return report;
}

// `edgeq quantize`: float ONNX model + calibration data -> QDQ model (+ a JSON report). Returns
// the --json summary.
json run_quantize(const std::string& model_path, const std::string& output,
                  const std::string& report_path, const DataOptions& data_options,
                  const CalibrationFlags& calibration, const QuantizeFlags& flags,
                  bool sensitivity) {
    const QuantizeOptions options = flags.parse();
    const Algorithms algorithms = parse_algorithms(flags.algorithms);
    check_output_file(output, "--output");
    const std::string report_file = report_path.empty() ? output + ".report.json" : report_path;
    check_output_file(report_file, "--report");
    const onnx::ModelProto float_model = load_onnx_model(model_path);
    check_onnx_model(float_model, model_path);

    // Calibration data: the given files, or Fashion-MNIST's held-out calibration images (which
    // are labelled, so they also serve the per-layer sensitivity and mixed precision).
    std::unique_ptr<CalibrationDataReader> reader;
    std::unique_ptr<CalibrationDataReader> report_reader;  // the first kReportSamples of them
    std::vector<int64_t> labels;
    PreparedData data;
    LabelledImages report_images;
    if (!calibration.path.empty()) {
        CalibrationSourceOptions source;
        source.path = calibration.path;
        source.batch_size = options.calibration_batch_size;
        if (!calibration.size.empty()) {
            source.size = std::make_pair(calibration.size[0], calibration.size[1]);
        }
        if (!calibration.mean.empty()) {
            source.mean = parse_float_list(calibration.mean, "--mean");
        }
        if (!calibration.std.empty()) {
            source.std = parse_float_list(calibration.std, "--std");
        }
        source.limit = calibration.limit;
        const PreparedModel prepared = prepare_for_quantization(float_model, model_path);
        reader = open_calibration_source(source, prepared.input_shape);
        source.limit = source.limit > 0 ? std::min(source.limit, kReportSamples) : kReportSamples;
        report_reader = open_calibration_source(source, prepared.input_shape);
    } else {
        // Fashion-MNIST's images are [1, 28, 28]; a model that fixes another C, H or W needs its
        // own calibration data.
        const PreparedModel prepared = prepare_for_quantization(float_model, model_path);
        const std::vector<int64_t> image_shape = {1, kImageSide, kImageSide};
        for (size_t d = 1; d < prepared.input_shape.size() && d <= image_shape.size(); ++d) {
            if (prepared.input_shape.size() != 4 ||
                (prepared.input_shape[d] > 0 && prepared.input_shape[d] != image_shape[d - 1])) {
                fail(ExitCode::kInvalidInput,
                     "model '{}' takes input {}, but the Fashion-MNIST calibration images are "
                     "[1, 28, 28]; give matching samples with --calibration-data",
                     model_path, prepared.input_shape_text);
            }
        }
        data = prepare_data(data_options.folder, data_options.calibration_count, data_options.seed);
        reader = std::make_unique<LabelledImagesReader>(data.calibration,
                                                        options.calibration_batch_size);
        labels.assign(data.calibration.labels.begin(), data.calibration.labels.end());
        report_images = first_images(data.calibration, kReportSamples);
        report_reader =
            std::make_unique<LabelledImagesReader>(report_images, options.calibration_batch_size);
    }
    const HeldOutData held_out{reader.get(), labels};

    spdlog::info("quantizing {}: {}, algorithms: {}", model_path,
                 describe_scheme(resolve_scheme(options)), flags.algorithms);
    StepProgress quantize_progress;
    const QuantizeRun quantized = quantize_model(
        float_model, *reader, options, algorithms, SessionConfig{}, model_path,
        flags.mixed_precision(), held_out, quantize_progress_callback(quantize_progress));
    quantize_progress.finish();
    check_onnx_model(quantized.qdq.model, output);
    for (const std::string& change : quantized.preparation_changes) {
        spdlog::info("prepared: {}", change);
    }
    for (const std::string& line : quantized.mixed_precision_log) {
        spdlog::info("mixed precision: {}", line);
    }
    for (const std::string& warning : quantized.qdq.warnings) {
        spdlog::warn("warning: {}", warning);
    }

    const std::vector<int64_t> report_labels(
        labels.begin(), labels.begin() + std::min<int64_t>(labels.size(), kReportSamples));
    const HeldOutData report_held_out{report_reader.get(), report_labels};
    json report = measure_quantization(quantized, *report_reader,
                                       sensitivity ? report_held_out : HeldOutData{});
    report["report_samples"] = report_reader->sample_count();
    report["scheme"] = describe_scheme(quantized.qdq.scheme);
    report["algorithms"] = algorithms_json(quantized);
    report["calibration_samples"] = reader->sample_count();
    report["calibration_seconds"] = quantized.qdq.calibration_seconds;
    report["warnings"] = quantized.qdq.warnings;
    save_onnx_model(quantized.qdq.model, output);
    write_file_atomic(report_file, report.dump(2) + "\n");
    spdlog::info(
        "quantized {} -> {} ({} nodes), calibrated on {} samples in {:.1f} s; report {}:\n{}",
        model_path, output, quantized.qdq.model.graph().node_size(), reader->sample_count(),
        quantized.qdq.calibration_seconds, report_file,
        format_qdq_summary(summarize_qdq_model(quantized.qdq.model)));
    return {{"model", model_path},
            {"scheme", describe_scheme(quantized.qdq.scheme)},
            {"nodes", quantized.qdq.model.graph().node_size()},
            {"calibration_samples", reader->sample_count()},
            {"calibration_seconds", quantized.qdq.calibration_seconds},
            {"warnings", quantized.qdq.warnings},
            {"output_files", {output, report_file}}};
}

// `edgeq sweep`: presets x methods x algorithms on one model, evaluated on the test images.
struct SweepFlags {
    std::string out = "out";
    std::string model;
    std::string checkpoint = kDefaultCheckpoint;
    std::vector<std::string> presets;
    std::vector<std::string> methods;
    std::vector<std::string> algorithm_sets;
    int64_t test_subset = 0;
    int64_t eval_batch_size = 1000;
    int64_t calibration_batch_size = 100;
};

// Runs the sweep; returns the --json summary.
json run_sweep_command(const SweepFlags& flags, const DataOptions& data,
                       const SessionConfig& session) {
    SweepOptions options;
    options.data_folder = data.folder;
    options.out_folder = flags.out;
    if (!flags.model.empty()) {
        options.model = flags.model;
    }
    options.checkpoint = flags.checkpoint;
    options.seed = data.seed;
    options.calibration_count = data.calibration_count;
    for (const std::string& preset : flags.presets) {
        options.presets.push_back(parse_preset(preset));
    }
    for (const std::string& method : flags.methods) {
        options.methods.push_back(parse_calibration_method(method));
    }
    for (const std::string& set : flags.algorithm_sets) {
        options.algorithm_sets.push_back(parse_algorithms(set));
    }
    options.test_subset = flags.test_subset;
    options.eval_batch_size = flags.eval_batch_size;
    options.calibration_batch_size = flags.calibration_batch_size;
    options.session = session;
    json rows = run_sweep(default_sweep_grid(options));
    return {{"path", (options.out_folder / kSweepFile).string()}, {"rows", std::move(rows)}};
}

// `edgeq eval`: accuracy and confusion matrix of an ONNX model on the test images. Returns the
// --json summary.
json run_eval(const std::string& model_path, const std::string& data_folder,
              const DeployFlags& deploy, int64_t batch_size) {
    // resolve() warns when --ep auto falls back to the CPU.
    const ProviderSetup setup = deploy.resolve();
    const DeployedModel engine(model_path, model_path, setup.resolved == ExecutionProvider::kNpuSim,
                               session_for(setup), deploy.npu_sim());
    const BatchRunner runner = engine.runner();
    const LabelledImages test = load_fashion_mnist_test(data_folder);
    Progress progress("evaluate", test.size(), "images");
    const ClassificationResult result =
        evaluate_classifier(runner, test, batch_size, progress.callback());
    progress.finish();
    spdlog::info("{}: accuracy {:.2f}% ({} of {} correct, {} misclassified) on {} in {:.2f} s",
                 model_path, 100.0 * result.accuracy(), result.correct, result.total,
                 result.total - result.correct, engine.name(), result.seconds);
    std::string header = fmt::format("{:>12}", "true\\pred");
    for (int p = 0; p < kFashionClassCount; ++p) {
        header += fmt::format(" {:>5}", p);
    }
    spdlog::info("{}", header);
    for (int t = 0; t < kFashionClassCount; ++t) {
        std::string row = fmt::format("{:>12}", kFashionClassNames[t]);
        for (int p = 0; p < kFashionClassCount; ++p) {
            row += fmt::format(" {:>5}", result.confusion[t][p]);
        }
        spdlog::info("{}", row);
    }
    return {{"model", model_path},
            {"engine", engine.name()},
            {"accuracy", result.accuracy()},
            {"correct", result.correct},
            {"total", result.total},
            {"seconds", result.seconds},
            {"class_names",
             std::vector<std::string>(kFashionClassNames.begin(), kFashionClassNames.end())},
            {"confusion_matrix", result.confusion}};
}

// The --json summary of `edgeq train`, read back from the metadata file written beside the
// checkpoint.
json train_summary(const fs::path& checkpoint) {
    const fs::path metadata_path = checkpoint_metadata_path(checkpoint);
    const json metadata = json::parse(read_file(metadata_path));
    return {{"checkpoint", checkpoint.string()},
            {"metadata", metadata_path.string()},
            {"test_accuracy", metadata["metrics"]["test_accuracy_fp32_libtorch"]},
            {"epochs", metadata["metrics"]["epochs"]}};
}

// `edgeq partition`: where the Vitis AI EP would place each node, and its report file.
// Returns the --json summary: the node counts per device.
json run_partition(const std::string& model_path, const std::string& target_path,
                   const std::string& report_path) {
    const npu::TargetDescription target =
        target_path.empty() ? npu::builtin_target() : npu::load_target(target_path);
    check_output_file(report_path, "--report");
    const onnx::ModelProto model = load_onnx_model(model_path);
    const bool quantized = std::ranges::any_of(model.graph().node(), [](const auto& node) {
        return node.op_type() == "QuantizeLinear" || node.op_type() == "DequantizeLinear";
    });
    if (!quantized) {
        spdlog::warn(
            "warning: {} has no QuantizeLinear or DequantizeLinear nodes, so the NPU "
            "takes none of it; quantize it first with edgeq quantize",
            model_path);
    }
    const npu::PartitionReport placement = npu::partition_model(model, target);
    npu::write_vitisai_ep_report(report_path, model, placement);
    spdlog::info("{}", npu::partition_summary_line(placement));
    for (const std::string& line : npu::cpu_placement_lines(placement)) {
        spdlog::info("  on the CPU: {}", line);
    }
    spdlog::info("operator report in {}", report_path);
    return {{"model", model_path},
            {"report", report_path},
            {"target", placement.target_name},
            {"counts", npu::partition_counts_json(placement)}};
}

// `edgeq info`: what a model file contains. Prints the text on stdout, or returns the JSON for
// --json.
json run_info(const std::string& model_path, bool as_json, const std::string& target_path,
              std::optional<bool> placement) {
    const onnx::ModelProto model = load_onnx_model(model_path);
    ModelInfo info = describe_model(model, model_path);
    info.file_bytes = static_cast<int64_t>(fs::file_size(model_path));
    if (!info.checker_error.empty()) {
        spdlog::warn("warning: {}", info.checker_error);
    }

    // The placement summary is on by default for QDQ models only: the NPU takes no float node.
    if (placement.value_or(info.quantization.has_value())) {
        const npu::TargetDescription target =
            target_path.empty() ? npu::builtin_target() : npu::load_target(target_path);
        const npu::PartitionReport report = npu::partition_model(model, target);
        info.placement = PlacementInfo{report.target_name, npu::partition_summary_line(report),
                                       report.cpu_nodes, report.npu_nodes};
    }
    if (as_json) {
        return model_info_json(info);
    }
    fmt::print("{}", format_model_info(info));
    return nullptr;
}

// `edgeq report`: the figures and report.html of an output folder. Returns the --json summary.
json run_report(const std::string& out_folder, const std::string& data_folder) {
    const std::vector<fs::path> files = report::write_report({out_folder, data_folder});
    std::vector<std::string> paths;
    for (const fs::path& file : files) {
        spdlog::info("wrote {}", file.string());
        paths.push_back(file.string());
    }
    return {{"files", paths}};
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "edgeq: train, export, quantize (int8 QDQ for an edge NPU), deploy and evaluate an image "
        "classifier, and predict the NPU's placement and results without the device"};
    app.require_subcommand(1);
    app.fallthrough();  // -q, -v, --log-level and --json also work after the command name
    // Usage errors are one line on stderr, like every other error.
    app.failure_message([](const CLI::App*, const CLI::Error& error) {
        return fmt::format("edgeq: error: {}; run with --help for the options\n", error.what());
    });
    bool quiet = false;
    app.add_flag("-q,--quiet", quiet, "print warnings and errors only");
    bool verbose = false;
    app.add_flag("-v,--verbose", verbose, "print debug lines, ONNX Runtime's log among them");
    std::string log_level;
    app.add_option("--log-level", log_level,
                   "lowest level of the lines printed: trace, debug, info, warn or error; "
                   "overrides -q and -v (progress is shown at info and below)")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    bool json_output = false;
    app.add_flag("--json", json_output,
                 "print the command's summary on stdout as one JSON object and nothing else; "
                 "log lines and progress go to stderr");
    app.footer(
        "Run 'edgeq <command> --help' for a command's options.\n"
        "Exit codes: 0 success, 1 internal error, 2 usage, 3 invalid input, 4 I/O "
        "error, 5 unsupported.");

    DataOptions data;
    TrainOptions train_options;
    QuantizeFlags quantize_flags;
    DeployFlags deploy;

    // edgeq run
    RunOptions run_options;
    std::string run_out = "out";
    std::string run_checkpoint = kDefaultCheckpoint;
    std::string run_state_dict;
    CLI::App* run = app.add_subcommand(
        "run",
        "the whole job: data, model, ONNX export, int8 quantization, ONNX Runtime, "
        "evaluation");
    add_data_options(*run, data);
    add_train_options(*run, train_options);
    add_quantize_options(*run, quantize_flags);
    add_deploy_options(*run, deploy);
    std::string run_target;
    run->add_option("--target", run_target,
                    "NPU target description (JSON) for the operator placement report; default: "
                    "the built-in Strix XINT8 target");
    run->add_option("--out", run_out, "output folder for every artifact")->capture_default_str();
    run->add_option("--checkpoint", run_checkpoint, "trained checkpoint to start from")
        ->capture_default_str();
    run->add_option("--state-dict", run_state_dict,
                    "start from a PyTorch state_dict saved in Python instead")
        ->excludes("--checkpoint");
    run->add_flag("--retrain", run_options.retrain,
                  "train a new model (saved as <out>/fashion-cnn.pt) instead of loading one")
        ->excludes("--state-dict")
        ->excludes("--checkpoint");
    run->add_option("--eval-batch-size", run_options.eval_batch_size, "images per inference batch")
        ->capture_default_str()
        ->check(kPositive);
    run->add_option("--train-subset", run_options.train_subset,
                    "with --retrain: train on only the first N training images (quick checks)")
        ->check(kNonNegative)
        ->needs("--retrain");
    run->add_option("--test-subset", run_options.test_subset,
                    "evaluate on only the first N test images (quick checks)")
        ->check(kNonNegative);
    run->footer(
        "Example: edgeq run --out out\n"
        "         edgeq run --retrain --epochs 20 --seed 7 --out out-seed7");

    // edgeq train
    std::string train_checkpoint = "out/fashion-cnn.pt";
    CLI::App* train = app.add_subcommand("train", "train FashionCNN and save a checkpoint");
    add_data_options(*train, data);
    add_train_options(*train, train_options);
    train->add_option("--checkpoint", train_checkpoint, "where to save the checkpoint")
        ->capture_default_str();
    train->footer("Example: edgeq train --epochs 20 --seed 42 --checkpoint models/fashion-cnn.pt");

    // edgeq export
    std::string export_checkpoint = kDefaultCheckpoint;
    std::string export_state_dict_path;
    std::string export_output = std::string("out/") + kFloatModelFile;
    CLI::App* export_command =
        app.add_subcommand("export", "export a checkpoint to ONNX (opset 13)");
    export_command->add_option("--checkpoint", export_checkpoint, "edgeq checkpoint")
        ->capture_default_str();
    export_command
        ->add_option("--state-dict", export_state_dict_path,
                     "PyTorch state_dict saved in Python (instead of --checkpoint)")
        ->excludes("--checkpoint");
    export_command->add_option("-o,--output", export_output, "ONNX file to write")
        ->capture_default_str();
    export_command->footer("Example: edgeq export --state-dict fashion-mnist.pt -o model.onnx");

    // edgeq quantize
    std::string quantize_model_path = std::string("out/") + kFloatModelFile;
    std::string quantize_output = std::string("out/") + kQdqModelFile;
    std::string quantize_report;
    bool quantize_sensitivity = false;
    CalibrationFlags calibration_flags;
    CLI::App* quantize = app.add_subcommand(
        "quantize", "quantize a float ONNX CNN to a QDQ model, calibrated on held-out data");
    quantize->add_option("-m,--model", quantize_model_path, "float ONNX model")
        ->capture_default_str();
    quantize->add_option("-o,--output", quantize_output, "QDQ model to write")
        ->capture_default_str();
    quantize->add_option("--report", quantize_report,
                         "JSON report to write (default: <output>.report.json)");
    quantize->add_flag("--sensitivity", quantize_sensitivity,
                       "also measure each layer's accuracy drop (needs labelled Fashion-MNIST "
                       "calibration data)");
    add_data_options(*quantize, data);
    add_calibration_data_options(*quantize, calibration_flags);
    add_quantize_options(*quantize, quantize_flags);
    quantize->footer(
        "Example: edgeq quantize -m out/fashion-mnist.onnx --method minmax -o q.onnx\n"
        "         edgeq quantize -m resnet18.onnx --preset A8W8 --per-channel \\\n"
        "            --calibration-data images/ --size 224 224 --mean 0.485,0.456,0.406 \\\n"
        "            --std 0.229,0.224,0.225 -o resnet18.qdq.onnx");

    // edgeq sweep
    SweepFlags sweep_flags;
    CLI::App* sweep = app.add_subcommand(
        "sweep", "quantize one model with many presets, methods and algorithms; compare");
    add_data_options(*sweep, data);
    sweep->add_option("--out", sweep_flags.out, "folder for sweep.json")->capture_default_str();
    sweep->add_option("-m,--model", sweep_flags.model,
                      "float ONNX model (default: export the "
                      "checkpoint)");
    sweep->add_option("--checkpoint", sweep_flags.checkpoint, "checkpoint to export")
        ->capture_default_str();
    sweep->add_option("--presets", sweep_flags.presets, "presets to try (default: all)")
        ->delimiter(',');
    sweep->add_option("--methods", sweep_flags.methods, "calibration methods (default: all)")
        ->delimiter(',');
    sweep
        ->add_option("--algorithm-sets", sweep_flags.algorithm_sets,
                     "algorithm sets separated by ';', each like 'cle,adaround' or 'none' "
                     "(default: none for every preset, plus each algorithm and all three for "
                     "XINT8)")
        ->delimiter(';');
    sweep
        ->add_option("--test-subset", sweep_flags.test_subset,
                     "evaluate on only the first N test images (quick checks)")
        ->check(kNonNegative);
    sweep->add_option("--eval-batch-size", sweep_flags.eval_batch_size, "images per batch")
        ->capture_default_str()
        ->check(kPositive);
    sweep
        ->add_option("--calibration-batch-size", sweep_flags.calibration_batch_size,
                     "images per calibration batch (does not change the result)")
        ->capture_default_str()
        ->check(kPositive);
    sweep->footer(
        "Example: edgeq sweep --out out\n"
        "         edgeq sweep --presets XINT8 --methods minmax,minmse --algorithm-sets 'none;cle'");

    // edgeq eval
    std::string eval_model = std::string("out/") + kQdqModelFile;
    int64_t eval_batch_size = 1000;
    CLI::App* eval = app.add_subcommand("eval", "accuracy and confusion matrix on the test images");
    eval->add_option("-m,--model", eval_model, "ONNX model")->capture_default_str();
    eval->add_option("--data", data.folder, "Fashion-MNIST folder")->capture_default_str();
    eval->add_option("--batch-size", eval_batch_size, "images per inference batch")
        ->capture_default_str()
        ->check(kPositive);
    add_deploy_options(*eval, deploy);
    eval->footer(
        "Example: edgeq eval -m out/fashion-mnist.qdq.U8S8.onnx --ep cpu\n"
        "         edgeq eval -m out/fashion-mnist.qdq.U8S8.onnx --ep npu-sim "
        "--rounding half-even");

    // edgeq partition
    std::string partition_model_path = std::string("out/") + kQdqModelFile;
    std::string partition_target;
    std::string partition_report = kEpReportFile;
    CLI::App* partition = app.add_subcommand(
        "partition", "which nodes of a QDQ model the NPU takes; writes vitisai_ep_report.json");
    partition->add_option("-m,--model", partition_model_path, "QDQ ONNX model")
        ->capture_default_str();
    partition->add_option("--target", partition_target,
                          "NPU target description (JSON); default: the built-in Strix XINT8");
    partition->add_option("--report", partition_report, "report file to write")
        ->capture_default_str();
    partition->footer(
        "Example: edgeq partition -m out/fashion-mnist.qdq.U8S8.onnx --report /tmp/report.json");

    // edgeq bench
    BenchOptions bench_options;
    std::string bench_folder = "out";
    CLI::App* bench = app.add_subcommand(
        "bench", "throughput of ONNX Runtime fp32, ONNX Runtime int8 and npu-sim, as ratios");
    bench
        ->add_option("--out", bench_folder,
                     "folder with the run's models; bench.json is written there")
        ->capture_default_str();
    bench->add_option("--data", data.folder, "Fashion-MNIST folder")->capture_default_str();
    bench->add_option("--batch-sizes", bench_options.batch_sizes, "batch sizes to measure")
        ->delimiter(',')
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    bench
        ->add_option("--min-seconds", bench_options.min_seconds,
                     "time each engine and batch size at least this long")
        ->capture_default_str()
        ->check(kPositive);
    bench
        ->add_option("--threads", bench_options.session.intra_op_threads,
                     "ONNX Runtime intra-op threads (0: its default)")
        ->capture_default_str()
        ->check(kNonNegative);
    add_npu_sim_options(*bench, deploy);
    bench->footer(
        "Example: edgeq bench --out out\n"
        "         edgeq bench --out out --batch-sizes 1,32,1000 --min-seconds 3");

    // edgeq report
    std::string report_folder = "out";
    std::string report_data;
    CLI::App* report_command = app.add_subcommand(
        "report", "draw the figures and write report.html from an `edgeq run` output folder");
    report_command
        ->add_option("--out", report_folder,
                     "output folder of `edgeq run`; the figures and report.html are written there")
        ->capture_default_str();
    report_command->add_option(
        "--data", report_data,
        "Fashion-MNIST folder with the test images (default: the one metrics.json records)");
    report_command->footer(
        "Example: edgeq report --out out\n"
        "         edgeq report --out out --data /usr/share/datasets/fashion-mnist");

    // edgeq info
    std::string info_model_path;
    std::string info_target;
    std::optional<bool> info_placement;
    CLI::App* info = app.add_subcommand(
        "info", "describe an ONNX model: inputs, outputs, operators, parameters, quantization");
    info->add_option("model", info_model_path, "ONNX model file")->required();
    info->add_flag_function(
        "--placement,!--no-placement", [&](int64_t count) { info_placement = count > 0; },
        "print (or, with --no-placement, skip) the NPU placement summary; default: printed "
        "for QDQ models only");
    info->add_option("--target", info_target,
                     "NPU target description (JSON) for the placement summary; default: the "
                     "built-in Strix XINT8 target");
    info->footer(
        "Example: edgeq info out/fashion-mnist.qdq.U8S8.onnx\n"
        "         edgeq info out/fashion-mnist.onnx --json");

    // Each command's help names the global options, which CLI11 lists on the main help only.
    for (CLI::App* command : app.get_subcommands({})) {
        command->footer(command->get_footer() +
                        "\nGlobal options (before or after the command): -q, -v, --log-level "
                        "LEVEL, --json; see 'edgeq --help'.");
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        // CLI11 prints help (exit 0) or the one-line usage error; its own codes become ours.
        const int code = app.exit(error);
        return code == 0 ? 0 : static_cast<int>(ExitCode::kUsage);
    }

    ConsoleLogOptions log_options;
    log_options.level = quiet     ? spdlog::level::warn
                        : verbose ? spdlog::level::debug
                                  : spdlog::level::info;
    if (!log_level.empty()) {
        log_options.level = parse_log_level(log_level).value();  // CLI11 checked the name
    }
    log_options.json = json_output;
    setup_console_logging(log_options);
    spdlog::debug("command: {}", join_arguments(argc, argv));

    // The command's summary, printed on stdout with --json once the command has succeeded.
    json summary;

    try {
        SessionConfig session;
        if (run->parsed()) {
            run_options.data_folder = data.folder;
            run_options.out_folder = run_out;
            run_options.checkpoint = run_checkpoint;
            if (!run_state_dict.empty()) {
                run_options.state_dict = run_state_dict;
            }
            run_options.seed = data.seed;
            run_options.calibration_count = data.calibration_count;
            run_options.train = train_options;
            run_options.train.seed = data.seed;
            run_options.quantize = quantize_flags.parse();
            run_options.algorithms = parse_algorithms(quantize_flags.algorithms);
            run_options.mixed_precision = quantize_flags.mixed_precision();
            run_options.provider = deploy.resolve();
            run_options.session = session_for(run_options.provider);
            run_options.npu_sim = deploy.npu_sim();
            run_options.target_file = run_target;
            run_options.command_line = join_arguments(argc, argv);
            summary = run_pipeline(run_options);
        } else if (train->parsed()) {
            train_options.seed = data.seed;
            const PreparedData prepared =
                prepare_data(data.folder, data.calibration_count, data.seed);
            train_and_save(prepared, train_options, train_checkpoint, join_arguments(argc, argv));
            summary = train_summary(train_checkpoint);
        } else if (export_command->parsed()) {
            summary = run_export(export_checkpoint, export_state_dict_path, export_output);
        } else if (quantize->parsed()) {
            summary = run_quantize(quantize_model_path, quantize_output, quantize_report, data,
                                   calibration_flags, quantize_flags, quantize_sensitivity);
        } else if (sweep->parsed()) {
            summary = run_sweep_command(sweep_flags, data, session);
        } else if (eval->parsed()) {
            summary = run_eval(eval_model, data.folder, deploy, eval_batch_size);
        } else if (partition->parsed()) {
            summary = run_partition(partition_model_path, partition_target, partition_report);
        } else if (info->parsed()) {
            summary = run_info(info_model_path, json_output, info_target, info_placement);
        } else if (bench->parsed()) {
            bench_options.float_model = fs::path(bench_folder) / kFloatModelFile;
            bench_options.qdq_model = fs::path(bench_folder) / kQdqModelFile;
            bench_options.out_folder = bench_folder;
            bench_options.data_folder = data.folder;
            bench_options.npu_sim = deploy.npu_sim();
            summary = run_bench(bench_options);
        } else if (report_command->parsed()) {
            summary = run_report(report_folder, report_data);
        }
    } catch (const Error& error) {
        spdlog::error("edgeq: error: {}", error.what());
        return static_cast<int>(error.code());
    } catch (const std::exception& error) {
        // libtorch appends a multi-line C++ backtrace to its messages; the first line is the error.
        const std::string message = error.what();
        spdlog::error("edgeq: internal error: {}", message.substr(0, message.find('\n')));
        return static_cast<int>(ExitCode::kInternal);
    }
    if (json_output) {
        // A path that is not valid UTF-8 is printed with U+FFFD in place of its bad bytes, where
        // a plain dump() would throw after the command has done its work.
        const json printed = summary.is_null() ? json::object() : summary;
        fmt::print("{}\n", printed.dump(2, ' ', false, json::error_handler_t::replace));
    }
    return 0;
}
