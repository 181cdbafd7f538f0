#include "edgeq/pipeline/run.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/common/progress.h"
#include "edgeq/eval/deployed_model.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/model/pytorch_state_dict.h"
#include "edgeq/npu/partition.h"
#include "edgeq/npu/target.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/pipeline/train_stage.h"
#include "edgeq/quant/qdq_summary.h"
#include "edgeq/quant/quant_report.h"
#include "edgeq/report/html_report.h"

namespace edgeq {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

// Wall time of each stage, in the order the stages ran.
class StageClock {
  public:
    void start(const std::string& stage) {
        stage_ = stage;
        started_ = std::chrono::steady_clock::now();
        spdlog::info("[{}]", stage);
    }
    void stop() {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
        seconds_[stage_] = std::round(seconds * 1000.0) / 1000.0;
    }
    const json& seconds() const { return seconds_; }

  private:
    std::string stage_;
    std::chrono::steady_clock::time_point started_;
    json seconds_ = json::object();
};

// Artifacts are written into a hidden staging folder inside the output folder and moved into
// place only when every stage has succeeded, so a failed stage leaves earlier results untouched.
// NOTE: the final moves are one rename per file. Destinations are checked first, but a rename
// that still fails halfway (a disk error) leaves a mix of old and new files. A killed run
// (SIGINT, SIGKILL) leaves its staging folder behind; the next run into the folder removes it.
class StagedOutput {
  public:
    explicit StagedOutput(const fs::path& out_folder)
        : out_folder_(out_folder), staging_(out_folder / fmt::format(".edgeq-run.{}", ::getpid())) {
        remove_stale_staging_folders();
        std::error_code error;
        fs::remove_all(staging_, error);
        fs::create_directories(staging_, error);
        if (error) {
            fail(ExitCode::kIo, "cannot create the staging folder '{}': {}; choose another --out",
                 staging_.string(), error.message());
        }
    }
    ~StagedOutput() {
        std::error_code ignored;
        fs::remove_all(staging_, ignored);
    }
    StagedOutput(const StagedOutput&) = delete;
    StagedOutput& operator=(const StagedOutput&) = delete;

    // Where a stage writes `name` now, and where it will be after commit().
    fs::path staged(const std::string& name) const { return staging_ / name; }
    fs::path final_path(const std::string& name) const { return out_folder_ / name; }

    // Moves one staged file into the output folder right away.
    void commit_file(const std::string& name) const {
        std::error_code error;
        fs::rename(staged(name), final_path(name), error);
        if (error) {
            fail(ExitCode::kIo, "cannot move '{}' into '{}': {}", staged(name).string(),
                 out_folder_.string(), error.message());
        }
    }

    // Moves every staged file into the output folder; each rename replaces one file atomically.
    void commit() const {
        std::vector<std::string> names;
        for (const auto& entry : fs::directory_iterator(staging_)) {
            names.push_back(entry.path().filename().string());
        }
        std::sort(names.begin(), names.end());
        for (const std::string& name : names) {
            if (fs::is_directory(final_path(name))) {
                fail(ExitCode::kIo,
                     "'{}' is a folder, so the new '{}' cannot replace it; remove it or choose "
                     "another --out",
                     final_path(name).string(), name);
            }
        }
        for (const std::string& name : names) {
            commit_file(name);
        }
    }

  private:
    // Removes the staging folders of earlier runs whose process no longer exists.
    void remove_stale_staging_folders() const {
        constexpr std::string_view kPrefix = ".edgeq-run.";
        std::error_code error;
        for (const auto& entry : fs::directory_iterator(out_folder_, error)) {
            const std::string name = entry.path().filename().string();
            if (!name.starts_with(kPrefix)) {
                continue;
            }
            const auto pid = static_cast<pid_t>(std::atol(name.c_str() + kPrefix.size()));
            const bool alive = pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM);
            if (!alive) {
                std::error_code ignored;
                fs::remove_all(entry.path(), ignored);
                spdlog::info("removed {}, left behind by an interrupted run",
                             entry.path().string());
            }
        }
    }

    fs::path out_folder_;
    fs::path staging_;
};

// Warns when the checkpoint was trained with another split seed: its training images may then
// include some of this run's calibration images.
void check_checkpoint_seed(const fs::path& checkpoint, uint64_t seed) {
    const fs::path metadata_path = checkpoint_metadata_path(checkpoint);
    if (!fs::exists(metadata_path)) {
        return;
    }
    try {
        const json metadata = json::parse(read_file(metadata_path));
        if (metadata.contains("seed") && metadata["seed"].get<uint64_t>() != seed) {
            spdlog::warn(
                "warning: {} was trained with seed {}, but this run splits with seed {}; "
                "calibration images may overlap its training images",
                checkpoint.string(), metadata["seed"].get<uint64_t>(), seed);
        }
    } catch (const json::exception& error) {
        spdlog::warn("warning: cannot read checkpoint metadata {}: {}", metadata_path.string(),
                     error.what());
    }
}

// Loads the model the run starts from: a Python state_dict, the checkpoint, or a new training.
FashionCnn obtain_model(const RunOptions& options, const PreparedData& data,
                        const StagedOutput& output) {
    if (options.state_dict) {
        spdlog::info("loading PyTorch state_dict {}", options.state_dict->string());
        FashionCnn model;
        import_state_dict(model, read_pytorch_state_dict(*options.state_dict),
                          options.state_dict->string());
        return model;
    }
    if (options.retrain) {
        LabelledImages train = first_images(data.train, options.train_subset);
        PreparedData training_data{std::move(train), data.calibration, data.test, data.split};
        FashionCnn model =
            train_and_save(training_data, options.train, output.staged(kTrainedCheckpointFile),
                           options.command_line);
        // A trained model is worth keeping even if a later stage fails.
        output.commit_file(kTrainedCheckpointFile);
        output.commit_file(checkpoint_metadata_path(kTrainedCheckpointFile).string());
        spdlog::info("checkpoint saved as {}", output.final_path(kTrainedCheckpointFile).string());
        return model;
    }
    if (!fs::exists(options.checkpoint)) {
        fail(ExitCode::kIo,
             "checkpoint '{}' not found; pass an existing --checkpoint, or --retrain to train one",
             options.checkpoint.string());
    }
    spdlog::info("loading checkpoint {}", options.checkpoint.string());
    check_checkpoint_seed(options.checkpoint, options.seed);
    return load_checkpoint(options.checkpoint);
}

// Exports the model to ONNX, checks it and compares ONNX Runtime's logits with libtorch's.
json export_and_verify(FashionCnn& model, const LabelledImages& test, const fs::path& path,
                       const fs::path& final_path) {
    const StateDict weights = export_state_dict(model);
    check_fashion_cnn_state_dict(weights, "the model");
    const onnx::ModelProto exported = export_fashion_cnn(weights);
    check_onnx_model(exported, final_path.string());
    save_onnx_model(exported, path);

    const LabelledImages sample = first_images(test, kExportCheckImages);
    const std::vector<float> reference = predict_logits(model, sample);
    OrtModel session(path, SessionConfig{});
    const std::vector<float> images = gather_image_range(sample, 0, sample.size());
    const std::vector<FloatOutput> outputs =
        session.run(images, {sample.size(), 1, kImageSide, kImageSide});

    // |ort - torch| <= tolerance * max(1, |torch|), written so that a NaN on either side fails.
    float max_difference = 0;
    bool within_tolerance = true;
    for (size_t i = 0; i < reference.size(); ++i) {
        const float difference = std::abs(reference[i] - outputs[0].values[i]);
        const float allowed = kExportLogitTolerance * std::max(1.0f, std::abs(reference[i]));
        within_tolerance = within_tolerance && difference <= allowed;
        max_difference = std::isnan(difference) ? difference : std::max(max_difference, difference);
    }
    spdlog::info(
        "exported {} ({} nodes); ONNX Runtime vs libtorch on {} test images: max |logit "
        "difference| {:.2e} (tolerance {:.0e} relative)",
        final_path.string(), exported.graph().node_size(), sample.size(), max_difference,
        kExportLogitTolerance);
    if (!within_tolerance) {
        fail(ExitCode::kInternal,
             "the exported model '{}' disagrees with libtorch (max difference {}, tolerance {} "
             "relative); please report this with the checkpoint",
             final_path.string(), max_difference, kExportLogitTolerance);
    }
    return {{"path", final_path.string()},
            {"nodes", exported.graph().node_size()},
            {"max_abs_logit_difference_vs_libtorch", max_difference},
            {"images_compared", sample.size()}};
}

json quantized_tensor_json(const QuantizedTensor& tensor) {
    json row = {{"tensor", tensor.name},
                {"role", tensor.role},
                {"type", quant_type_name(tensor.params.type)},
                {"scale", tensor.params.scale()},
                {"zero_point", tensor.params.zero_point}};
    if (tensor.params.power_of_two) {
        row["position"] = tensor.params.position;
    }
    if (!tensor.channels.empty()) {
        json scales = json::array();
        for (const QuantParams& channel : tensor.channels) {
            scales.push_back(channel.scale());
        }
        row["axis"] = tensor.axis;
        row["channel_scales"] = scales;
    }
    row["min"] = tensor.min;
    row["max"] = tensor.max;
    if (!tensor.note.empty()) {
        row["note"] = tensor.note;
    }
    return row;
}

// The nodes the placement keeps on the CPU, each with the reason.
json cpu_placement_json(const npu::PartitionReport& placement) {
    json nodes = json::array();
    for (const npu::NodePlacement& node : placement.nodes) {
        if (node.device == npu::kCpuDevice) {
            nodes.push_back(
                {{"node", node.node_name}, {"op_type", node.op_type}, {"reason", node.reason}});
        }
    }
    return nodes;
}

// The quantizer's choices, joined with the measured errors (SQNR, clipped share) by tensor name.
json quantization_report_json(const QuantizeRun& run, const QuantizeOptions& options,
                              const std::vector<TensorError>& errors,
                              const SensitivityReport& sensitivity) {
    const json measured = to_json(errors);
    std::map<std::string, json> measured_by_name;
    for (const json& row : measured) {
        measured_by_name[row["tensor"].get<std::string>()] = row;
    }
    json tensors = json::array();
    for (const QuantizedTensor& tensor : run.qdq.tensors) {
        json row = quantized_tensor_json(tensor);
        const auto found = measured_by_name.find(tensor.name);
        if (found != measured_by_name.end()) {
            for (const char* key : {"clipped_share", "sqnr_db", "local_sqnr_db"}) {
                if (found->second.contains(key)) {
                    row[key] = found->second[key];
                }
            }
        }
        tensors.push_back(row);
    }
    json float_nodes = json::array();
    for (const FloatNode& node : run.qdq.float_nodes) {
        float_nodes.push_back(
            {{"node", node.name}, {"op_type", node.op_type}, {"reason", node.reason}});
    }
    return {{"scheme", describe_scheme(run.qdq.scheme)},
            {"preset", preset_name(run.qdq.scheme.preset)},
            {"calibration_method", calibration_method_name(run.qdq.scheme.method.method)},
            {"bias", bias_mode_name(run.qdq.scheme.bias)},
            {"calibration_batch_size", options.calibration_batch_size},
            {"calibration_seconds", run.qdq.calibration_seconds},
            {"algorithms", algorithms_json(run)},
            {"warnings", run.qdq.warnings},
            {"float_nodes", float_nodes},
            {"tensors", tensors},
            {"sensitivity", to_json(sensitivity)}};
}

json classification_json(const ClassificationResult& result) {
    return {{"accuracy", result.accuracy()},
            {"correct", result.correct},
            {"misclassified", result.total - result.correct},
            {"total", result.total},
            {"seconds", result.seconds}};
}

// Writes one row per test image: index, true label, fp32 and int8 predictions.
void write_predictions_csv(const LabelledImages& test, const ClassificationResult& fp32,
                           const ClassificationResult& int8, const fs::path& path) {
    std::string csv = "index,label,fp32,int8\n";
    for (int64_t i = 0; i < test.size(); ++i) {
        csv += fmt::format("{},{},{},{}\n", i, test.labels[i], fp32.predictions[i],
                           int8.predictions[i]);
    }
    write_file_atomic(path, csv);
}

// npu-sim against ONNX Runtime's CPU EP on the same QDQ model: top-1 agreement with each rounding,
// the images where they differ, and the accuracies. Half to even is ONNX's rounding, so any
// difference left with it comes from the order of float operations in ONNX Runtime's kernels.
// Half up is the DPU's rounding, so its accuracy is the expected on-device figure.
struct NpuSimComparison {
    json metrics;
    std::string differences_csv;
};

// `deployed`, when set, is npu-sim's result with `options.rounding` from the evaluation stage,
// which is not run a second time.
NpuSimComparison compare_npu_sim(const onnx::ModelProto& qdq_model, const std::string& label,
                                 const LabelledImages& test,
                                 const ClassificationResult& cpu_ep_int8, int64_t batch_size,
                                 const npu::NpuSimOptions& options,
                                 const ClassificationResult* deployed) {
    const bool fixed_point_multipliers = options.fixed_point_multipliers;
    const std::array<npu::Rounding, 2> roundings = {npu::Rounding::kHalfEven,
                                                    npu::Rounding::kHalfUp};
    std::array<ClassificationResult, 2> results;
    for (size_t r = 0; r < roundings.size(); ++r) {
        if (deployed != nullptr && roundings[r] == options.rounding) {
            results[r] = *deployed;
            continue;
        }
        const npu::NpuSimModel simulator(qdq_model, label,
                                         npu::NpuSimOptions{roundings[r], fixed_point_multipliers});
        const BatchRunner runner = [&simulator](const std::vector<float>& input,
                                                const std::vector<int64_t>& shape) {
            return simulator.run(input, shape);
        };
        // The log line below is this pass's summary.
        ProgressOutput progress_output = console_progress_output();
        progress_output.summary = false;
        Progress progress(fmt::format("npu-sim {}", npu::rounding_name(roundings[r])), test.size(),
                          "images", progress_output);
        results[r] = evaluate_classifier(runner, test, batch_size, progress.callback());
        progress.finish();
        spdlog::info("npu-sim, rounding {}: accuracy {:.2f}% in {:.1f} s ({:.0f} images/s)",
                     npu::rounding_name(roundings[r]), 100.0 * results[r].accuracy(),
                     results[r].seconds, static_cast<double>(test.size()) / results[r].seconds);
    }
    const ClassificationResult& half_even = results[0];
    const ClassificationResult& half_up = results[1];

    NpuSimComparison comparison;
    comparison.differences_csv = "index,label,cpu_ep,npu_sim_half_even,npu_sim_half_up\n";
    json differing = json::array();
    std::array<int64_t, 2> agreeing = {0, 0};
    for (int64_t i = 0; i < test.size(); ++i) {
        const uint8_t cpu = cpu_ep_int8.predictions[i];
        agreeing[0] += half_even.predictions[i] == cpu ? 1 : 0;
        agreeing[1] += half_up.predictions[i] == cpu ? 1 : 0;
        if (half_even.predictions[i] != cpu) {
            differing.push_back({{"index", i},
                                 {"label", test.labels[i]},
                                 {"cpu_ep", cpu},
                                 {"npu_sim_half_even", half_even.predictions[i]}});
            spdlog::info(
                "npu-sim (half to even) differs from the CPU EP on test image {}: label "
                "{}, CPU EP {}, npu-sim {}",
                i, kFashionClassNames[test.labels[i]], kFashionClassNames[cpu],
                kFashionClassNames[half_even.predictions[i]]);
        }
        if (half_even.predictions[i] != cpu || half_up.predictions[i] != cpu) {
            comparison.differences_csv +=
                fmt::format("{},{},{},{},{}\n", i, test.labels[i], cpu, half_even.predictions[i],
                            half_up.predictions[i]);
        }
    }
    const double total = static_cast<double>(std::max<int64_t>(1, test.size()));
    comparison.metrics = {
        {"top1_agreement_with_cpu_ep", static_cast<double>(agreeing[0]) / total},
        {"top1_agreement_with_cpu_ep_half_up", static_cast<double>(agreeing[1]) / total},
        {"accuracy", {{"half_up", half_up.accuracy()}, {"half_even", half_even.accuracy()}}},
        {"correct", {{"half_up", half_up.correct}, {"half_even", half_even.correct}}},
        {"total", test.size()},
        {"cpu_ep", {{"accuracy", cpu_ep_int8.accuracy()}, {"correct", cpu_ep_int8.correct}}},
        {"differing_images_half_even", differing},
        {"images_per_second", static_cast<double>(test.size()) / half_even.seconds},
        {"fixed_point_multipliers", fixed_point_multipliers},
    };
    spdlog::info(
        "npu-sim against the CPU EP: same top-1 class on {} of {} images ({:.2f}%) with "
        "half to even, {} ({:.2f}%) with half up",
        agreeing[0], test.size(), 100.0 * static_cast<double>(agreeing[0]) / total, agreeing[1],
        100.0 * static_cast<double>(agreeing[1]) / total);
    return comparison;
}

// Evaluates `model` (an OrtModel or a BatchRunner) with a progress reporter named `label`.
template <typename Model>
ClassificationResult evaluate_with_progress(Model& model, const LabelledImages& images,
                                            int64_t batch_size, const std::string& label) {
    Progress progress(label, images.size(), "images");
    ClassificationResult result =
        evaluate_classifier(model, images, batch_size, progress.callback());
    progress.finish();
    return result;
}

void log_summary(const json& metrics) {
    const json& fp32 = metrics["fp32"];
    const json& int8 = metrics["int8"];
    spdlog::info("");
    spdlog::info("{:<24} {:>9} {:>8} {:>7}", "model", "accuracy", "correct", "total");
    spdlog::info("{:<24} {:>8.2f}% {:>8} {:>7}", "fp32 (ONNX Runtime)",
                 100.0 * fp32["accuracy"].get<double>(), fp32["correct"].get<int64_t>(),
                 fp32["total"].get<int64_t>());
    const std::string engine = int8["execution_provider"].get<std::string>();
    const bool on_npu_sim = engine.rfind("npu-sim", 0) == 0;
    spdlog::info("{:<24} {:>8.2f}% {:>8} {:>7}   on {}",
                 on_npu_sim ? "int8 QDQ (npu-sim)" : "int8 QDQ (ONNX Runtime)",
                 100.0 * int8["accuracy"].get<double>(), int8["correct"].get<int64_t>(),
                 int8["total"].get<int64_t>(), engine);
    if (metrics.contains("npu_sim") && metrics["npu_sim"].contains("accuracy")) {
        const json& simulated = metrics["npu_sim"];
        const int64_t total = simulated["total"].get<int64_t>();
        if (engine != "CPUExecutionProvider") {
            spdlog::info("{:<24} {:>8.2f}% {:>8} {:>7}", "int8 QDQ (CPU EP)",
                         100.0 * simulated["cpu_ep"]["accuracy"].get<double>(),
                         simulated["cpu_ep"]["correct"].get<int64_t>(), total);
        }
        for (const auto& [key, name] : {std::pair{"half_up", "int8 npu-sim, half up"},
                                        std::pair{"half_even", "int8 npu-sim, half even"}}) {
            spdlog::info("{:<24} {:>8.2f}% {:>8} {:>7}", name,
                         100.0 * simulated["accuracy"][key].get<double>(),
                         simulated["correct"][key].get<int64_t>(), total);
        }
    }
    spdlog::info("{:<24} {:>8.2f}%", "int8, tutorial report", 100.0 * kReportInt8Accuracy);
    spdlog::info("int8 - fp32: {:+.2f} points; QDQ model: {} nodes, {} on the CPU, {} on the NPU",
                 100.0 * metrics["delta_int8_vs_fp32"].get<double>(),
                 metrics["qdq_model"]["nodes"].get<int>(), metrics["partition"]["CPU"].get<int>(),
                 metrics["partition"]["NPU"].get<int>());
    if (metrics.contains("npu_sim") && metrics["npu_sim"].contains("accuracy")) {
        const json& simulated = metrics["npu_sim"];
        spdlog::info(
            "npu-sim's top-1 class matches the CPU EP's on {:.2f}% of the images with "
            "half to even, {:.2f}% with half up",
            100.0 * simulated["top1_agreement_with_cpu_ep"].get<double>(),
            100.0 * simulated["top1_agreement_with_cpu_ep_half_up"].get<double>());
    }
    std::string stages;
    for (const auto& [stage, seconds] : metrics["stage_seconds"].items()) {
        stages +=
            fmt::format("{}{} {:.1f} s", stages.empty() ? "" : ", ", stage, seconds.get<double>());
    }
    spdlog::info("stage times: {}", stages);
}

}  // namespace

ProgressCallback quantize_progress_callback(StepProgress& progress) {
    return [&progress](const std::string& step, int64_t done, int64_t total) {
        const bool counts_samples = step.starts_with("calibration");
        progress.update(step, done, total, counts_samples ? "samples" : "layers");
    };
}

json run_pipeline(const RunOptions& options) {
    const auto run_start = std::chrono::steady_clock::now();
    // The target is read before any stage, so that a bad file stops the run at once.
    const npu::TargetDescription target =
        options.target_file.empty() ? npu::builtin_target() : npu::load_target(options.target_file);
    ensure_writable_folder(options.out_folder, "--out");
    check_execution_provider(options.session);
    const bool int8_on_npu_sim = options.provider.resolved == ExecutionProvider::kNpuSim;
    const StagedOutput output(options.out_folder);

    spdlog::info("edgeq run: data {}, out {}, seed {}, calibration {} images, EP {}{}",
                 options.data_folder.string(), options.out_folder.string(), options.seed,
                 options.calibration_count, execution_provider_name(options.provider.resolved),
                 int8_on_npu_sim ? fmt::format(" (int8 model; rounding {})",
                                               npu::rounding_name(options.npu_sim.rounding))
                                 : "");
    // The options as metrics.json records them, with the encryption key redacted.
    const nlohmann::json deployment = provider_setup_json(options.provider);
    for (const auto& [name, value] : deployment["options"].items()) {
        spdlog::info("Vitis AI option: {}={}", name, value.get<std::string>());
    }
    for (const auto& [name, value] : options.provider.environment) {
        spdlog::info("environment: {}={}", name, value);
    }
    const std::vector<std::string> algorithms = algorithm_names(options.algorithms);
    spdlog::info(
        "quantization: {}; algorithms: {}", describe_scheme(resolve_scheme(options.quantize)),
        algorithms.empty() ? std::string("none") : fmt::format("{}", fmt::join(algorithms, ", ")));
    StageClock clock;

    // 1. Data: the official split, with calibration images held out of training.
    clock.start("data");
    PreparedData data = prepare_data(options.data_folder, options.calibration_count, options.seed);
    data.test = first_images(data.test, options.test_subset);
    spdlog::info("Fashion-MNIST: {} train, {} calibration (seed {}), {} test images",
                 data.train.size(), data.calibration.size(), options.seed, data.test.size());
    clock.stop();

    // 2. Model: checkpoint, Python state_dict or a new training.
    clock.start("model");
    FashionCnn model = obtain_model(options, data, output);
    clock.stop();

    // 3. Export to ONNX and check against libtorch.
    clock.start("export");
    const json export_info = export_and_verify(model, data.test, output.staged(kFloatModelFile),
                                               output.final_path(kFloatModelFile));
    clock.stop();

    // 4. Post-training quantization to QDQ, calibrated on the held-out images, which are
    //    labelled and so also measure each layer's sensitivity.
    clock.start("quantize");
    const fs::path qdq_path = output.final_path(kQdqModelFile);
    const onnx::ModelProto float_model = load_onnx_model(output.staged(kFloatModelFile));
    LabelledImagesReader reader(data.calibration, options.quantize.calibration_batch_size);
    const HeldOutData held_out{&reader, std::vector<int64_t>(data.calibration.labels.begin(),
                                                             data.calibration.labels.end())};
    StepProgress quantize_progress;
    const QuantizeRun quantized =
        quantize_model(float_model, reader, options.quantize, options.algorithms, SessionConfig{},
                       output.final_path(kFloatModelFile).string(), options.mixed_precision,
                       held_out, quantize_progress_callback(quantize_progress));
    quantize_progress.finish();
    const QdqModel& qdq = quantized.qdq;
    check_onnx_model(qdq.model, qdq_path.string());
    save_onnx_model(qdq.model, output.staged(kQdqModelFile));
    for (const std::string& line : quantized.mixed_precision_log) {
        spdlog::info("mixed precision: {}", line);
    }
    for (const std::string& warning : qdq.warnings) {
        spdlog::warn("warning: {}", warning);
    }
    const std::vector<OpTypeQuantization> summary = summarize_qdq_model(qdq.model);
    spdlog::info("quantized model {} ({} nodes), {}:\n{}", qdq_path.string(),
                 qdq.model.graph().node_size(), describe_scheme(qdq.scheme),
                 format_qdq_summary(summary));
    clock.stop();

    clock.start("quantization report");
    Progress error_progress("quantization error", reader.sample_count(), "samples");
    const std::vector<TensorError> errors = measure_tensor_errors(
        quantized.prepared_model, qdq.model, reader, SessionConfig{}, error_progress.callback());
    error_progress.finish();
    spdlog::info("per-tensor quantization (SQNR against fp32 on the calibration images):\n{}",
                 format_tensor_table(errors));
    Progress sensitivity_progress("layer sensitivity", 0, "models");
    const SensitivityReport sensitivity =
        measure_layer_sensitivity(quantized.prepared_model, qdq.model, reader, held_out.labels,
                                  SessionConfig{}, sensitivity_progress.callback());
    sensitivity_progress.finish();
    spdlog::info(
        "per-layer sensitivity (calibration images, accuracy when only that layer is "
        "quantized):\n{}",
        format_sensitivity_table(sensitivity));
    write_file_atomic(
        output.staged("quantization_report.json"),
        quantization_report_json(quantized, options.quantize, errors, sensitivity).dump(2) + "\n");
    clock.stop();

    // 5. Where the Vitis AI EP would place each node, from the target description.
    clock.start("npu placement");
    const npu::PartitionReport placement = npu::partition_model(qdq.model, target);
    npu::write_vitisai_ep_report(output.staged(kEpReportFile), qdq.model, placement);
    spdlog::info("{}", npu::partition_summary_line(placement));
    for (const std::string& line : npu::cpu_placement_lines(placement)) {
        spdlog::info("  on the CPU: {}", line);
    }
    clock.stop();

    // 6. Deployment: ONNX Runtime sessions on the chosen execution provider, or npu-sim.
    clock.start("deploy");
    OrtModel float_session(output.staged(kFloatModelFile), options.session);
    const DeployedModel int8_engine(output.staged(kQdqModelFile), qdq_path.string(),
                                    int8_on_npu_sim, options.session, options.npu_sim);
    const BatchRunner int8_runner = int8_engine.runner();
    spdlog::info("ONNX Runtime {}: fp32 on {}, int8 on {}", onnxruntime_version(),
                 float_session.execution_provider(), int8_engine.name());
    clock.stop();

    // 7. Evaluation on the test images.
    clock.start("evaluate");
    const ClassificationResult fp32 =
        evaluate_with_progress(float_session, data.test, options.eval_batch_size, "evaluate fp32");
    const ClassificationResult int8 =
        evaluate_with_progress(int8_runner, data.test, options.eval_batch_size, "evaluate int8");
    write_confusion_csv(fp32.confusion, output.staged("confusion_matrix_fp32.csv"));
    write_confusion_csv(int8.confusion, output.staged("confusion_matrix_int8.csv"));
    write_predictions_csv(data.test, fp32, int8, output.staged("predictions.csv"));
    clock.stop();

    // 8. npu-sim with both roundings against ONNX Runtime's CPU EP. A model npu-sim cannot run
    //    (float scales without fixed-point multipliers, an operator it lacks) skips the stage
    //    with the reason, unless npu-sim is the deployment.
    clock.start("npu-sim");
    json npu_sim_json;
    try {
        ClassificationResult cpu_ep_int8;
        if (int8_engine.on_cpu_execution_provider()) {
            cpu_ep_int8 = int8;
        } else {
            OrtModel cpu_session(output.staged(kQdqModelFile), SessionConfig{});
            cpu_ep_int8 = evaluate_with_progress(cpu_session, data.test, options.eval_batch_size,
                                                 "evaluate int8 (CPU EP)");
        }
        NpuSimComparison comparison = compare_npu_sim(
            qdq.model, qdq_path.string(), data.test, cpu_ep_int8, options.eval_batch_size,
            options.npu_sim, int8_on_npu_sim ? &int8 : nullptr);
        write_file_atomic(output.staged(kNpuSimDifferencesFile), comparison.differences_csv);
        npu_sim_json = std::move(comparison.metrics);
    } catch (const Error& error) {
        if (int8_on_npu_sim || error.code() != ExitCode::kUnsupported) {
            throw;
        }
        spdlog::warn("npu-sim skipped: {}", error.what());
        npu_sim_json = {{"skipped", error.what()}};
    }
    clock.stop();

    json op_types = json::object();
    for (const auto& [op_type, count] : count_op_types(qdq.model)) {
        op_types[op_type] = count;
    }
    json int8_json = classification_json(int8);
    int8_json["execution_provider"] = int8_engine.name();
    json fp32_json = classification_json(fp32);
    fp32_json["execution_provider"] = float_session.execution_provider();

    json dataset = {{"train", data.train.size()},
                    {"calibration", data.calibration.size()},
                    {"test", data.test.size()},
                    {"seed", options.seed},
                    {"folder", options.data_folder.string()}};
    if (options.retrain && options.train_subset > 0) {
        dataset["trained_on"] = std::min(options.train_subset, data.train.size());
    }
    json model_source = {{"source", options.state_dict ? "state_dict"
                                    : options.retrain  ? "retrain"
                                                       : "checkpoint"}};
    model_source["path"] = options.state_dict ? options.state_dict->string()
                           : options.retrain  ? output.final_path(kTrainedCheckpointFile).string()
                                              : options.checkpoint.string();
    // The checkpoint's training record, by absolute path, so that `edgeq report` run from another
    // folder still draws the training curves.
    if (!options.state_dict) {
        const fs::path record = checkpoint_metadata_path(model_source["path"].get<std::string>());
        if (fs::exists(record)) {
            model_source["training_record"] = fs::absolute(record).lexically_normal().string();
        }
    }
    json metrics = {
        {"command", options.command_line},
        {"dataset", dataset},
        {"model", model_source},
        {"fp32", fp32_json},
        {"int8", int8_json},
        {"delta_int8_vs_fp32", int8.accuracy() - fp32.accuracy()},
        {"float_model", export_info},
        {"qdq_model",
         {{"path", qdq_path.string()},
          {"nodes", qdq.model.graph().node_size()},
          {"op_types", op_types},
          {"preset", preset_name(qdq.scheme.preset)},
          {"calibration_method", calibration_method_name(qdq.scheme.method.method)},
          {"bias", bias_mode_name(qdq.scheme.bias)},
          {"algorithms", algorithm_names(options.algorithms)},
          {"float_nodes", qdq.float_nodes.size()}}},
        {"partition", npu::partition_counts_json(placement)},
        {"cpu_placement", cpu_placement_json(placement)},
        {"npu_sim", npu_sim_json},
        {"deployment", provider_setup_json(options.provider)},
        {"reference", {{"report_int8_accuracy", kReportInt8Accuracy}}},
        {"onnxruntime_version", onnxruntime_version()},
        {"stage_seconds", clock.seconds()},
    };
    metrics["total_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
    write_file_atomic(output.staged("metrics.json"), metrics.dump(2) + "\n");

    output.commit();
    log_summary(metrics);
    spdlog::info(
        "artifacts in {}/: {}, {}, metrics.json, confusion_matrix_{{fp32,int8}}.csv, "
        "predictions.csv, quantization_report.json, {}{}",
        options.out_folder.string(), kFloatModelFile, kQdqModelFile, kEpReportFile,
        npu_sim_json.contains("skipped") ? "" : std::string(", ") + kNpuSimDifferencesFile);

    // 9. The figures and report.html, read back from the committed folder. This stage's time
    //    is not in metrics.json, which is already written.
    spdlog::info("[report]");
    const std::vector<fs::path> report_files =
        report::write_report({options.out_folder, options.data_folder});
    std::vector<std::string> report_names;
    for (const fs::path& file : report_files) {
        report_names.push_back(file.filename().string());
    }
    spdlog::info("report in {}/: {}", options.out_folder.string(),
                 fmt::format("{}", fmt::join(report_names, ", ")));
    return metrics;
}

}  // namespace edgeq
