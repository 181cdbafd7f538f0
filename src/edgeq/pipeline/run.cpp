#include "edgeq/pipeline/run.h"

#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/model/pytorch_state_dict.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/pipeline/train_stage.h"
#include "edgeq/quant/qdq_summary.h"

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

LabelledImages first_images(const LabelledImages& images, int64_t count) {
    if (count <= 0 || count >= images.size()) {
        return images;
    }
    LabelledImages subset;
    subset.pixels.assign(images.pixels.begin(), images.pixels.begin() + count * kImageSize);
    subset.labels.assign(images.labels.begin(), images.labels.begin() + count);
    return subset;
}

// Loads the model the run starts from: a Python state_dict, the checkpoint, or a new training.
FashionCnn obtain_model(const RunOptions& options, const PreparedData& data) {
    if (options.state_dict) {
        spdlog::info("loading PyTorch state_dict {}", options.state_dict->string());
        FashionCnn model;
        import_state_dict(model, read_pytorch_state_dict(*options.state_dict),
                          options.state_dict->string());
        return model;
    }
    if (options.retrain || !fs::exists(options.checkpoint)) {
        if (!options.retrain) {
            spdlog::info("checkpoint {} not found, so training a new one",
                         options.checkpoint.string());
        }
        LabelledImages train = first_images(data.train, options.train_subset);
        PreparedData training_data{std::move(train), data.calibration, data.test, data.split};
        return train_and_save(training_data, options.train, options.out_folder / "fashion-cnn.pt",
                              options.command_line);
    }
    spdlog::info("loading checkpoint {}", options.checkpoint.string());
    return load_checkpoint(options.checkpoint);
}

// Exports the model to ONNX, checks it and compares ONNX Runtime's logits with libtorch's.
json export_and_verify(FashionCnn& model, const LabelledImages& test, const fs::path& path) {
    const StateDict weights = export_state_dict(model);
    const onnx::ModelProto exported = export_fashion_cnn(weights);
    check_onnx_model(exported, path.string());
    save_onnx_model(exported, path);

    const LabelledImages sample = first_images(test, kExportCheckImages);
    const std::vector<float> reference = predict_logits(model, sample);
    OrtModel session(path, SessionConfig{});
    const std::vector<float> images = gather_image_range(sample, 0, sample.size());
    const std::vector<FloatOutput> outputs =
        session.run(images, {sample.size(), 1, kImageSide, kImageSide});

    float max_difference = 0;
    for (size_t i = 0; i < reference.size(); ++i) {
        max_difference = std::max(max_difference, std::abs(reference[i] - outputs[0].values[i]));
    }
    spdlog::info("exported {} ({} nodes); ONNX Runtime vs libtorch on {} test images: max |logit "
                 "difference| {:.2e} (tolerance {:.0e})",
                 path.string(), exported.graph().node_size(), sample.size(), max_difference,
                 kExportLogitTolerance);
    if (!(max_difference <= kExportLogitTolerance)) {
        fail(ExitCode::kInternal,
             "the exported model '{}' disagrees with libtorch by {} (tolerance {}); the exporter "
             "is wrong for this model",
             path.string(), max_difference, kExportLogitTolerance);
    }
    return {{"path", path.string()},
            {"nodes", exported.graph().node_size()},
            {"max_abs_logit_difference_vs_libtorch", max_difference},
            {"images_compared", sample.size()}};
}

json quantization_report_json(const QdqModel& qdq, const QuantizeOptions& options) {
    json tensors = json::array();
    for (const QuantizedTensor& tensor : qdq.tensors) {
        json row = {{"tensor", tensor.name},
                    {"role", tensor.role},
                    {"type", quant_type_name(tensor.params.type)},
                    {"scale", tensor.params.scale()},
                    {"position", tensor.params.position},
                    {"zero_point", tensor.params.zero_point},
                    {"min", tensor.min},
                    {"max", tensor.max}};
        if (!tensor.note.empty()) {
            row["note"] = tensor.note;
        }
        tensors.push_back(row);
    }
    return {{"calibration_method", calibration_method_name(options.method)},
            {"bias", bias_mode_name(options.bias)},
            {"calibration_batch_size", options.calibration_batch_size},
            {"calibration_seconds", qdq.calibration_seconds},
            {"warnings", qdq.warnings},
            {"tensors", tensors}};
}

void log_quantization_table(const QdqModel& qdq) {
    spdlog::info("{:<44} {:<10} {:<6} {:>4} {:>12} {:>12}", "tensor", "role", "type", "pos",
                 "min", "max");
    for (const QuantizedTensor& tensor : qdq.tensors) {
        spdlog::info("{:<44} {:<10} {:<6} {:>4} {:>12.5g} {:>12.5g}{}", tensor.name, tensor.role,
                     quant_type_name(tensor.params.type), tensor.params.position, tensor.min,
                     tensor.max, tensor.note.empty() ? "" : "  (" + tensor.note + ")");
    }
    for (const std::string& warning : qdq.warnings) {
        spdlog::warn("warning: {}", warning);
    }
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

void log_summary(const json& metrics) {
    const json& fp32 = metrics["fp32"];
    const json& int8 = metrics["int8"];
    spdlog::info("");
    spdlog::info("{:<24} {:>9} {:>8} {:>7}", "model", "accuracy", "correct", "total");
    spdlog::info("{:<24} {:>8.2f}% {:>8} {:>7}", "fp32 (ONNX Runtime)",
                 100.0 * fp32["accuracy"].get<double>(), fp32["correct"].get<int64_t>(),
                 fp32["total"].get<int64_t>());
    spdlog::info("{:<24} {:>8.2f}% {:>8} {:>7}   on {}", "int8 QDQ (ONNX Runtime)",
                 100.0 * int8["accuracy"].get<double>(), int8["correct"].get<int64_t>(),
                 int8["total"].get<int64_t>(), int8["execution_provider"].get<std::string>());
    spdlog::info("{:<24} {:>8.2f}%", "int8, tutorial report", 100.0 * kReportInt8Accuracy);
    spdlog::info("int8 - fp32: {:+.2f} points; QDQ model: {} nodes",
                 100.0 * metrics["delta_int8_vs_fp32"].get<double>(),
                 metrics["qdq_model"]["nodes"].get<int>());
    std::string stages;
    for (const auto& [stage, seconds] : metrics["stage_seconds"].items()) {
        stages += fmt::format("{}{} {:.1f} s", stages.empty() ? "" : ", ", stage,
                              seconds.get<double>());
    }
    spdlog::info("stage times: {}", stages);
}

}  // namespace

json run_pipeline(const RunOptions& options) {
    const auto run_start = std::chrono::steady_clock::now();
    ensure_writable_folder(options.out_folder, "--out");
    const fs::path float_path = options.out_folder / kFloatModelFile;
    const fs::path qdq_path = options.out_folder / kQdqModelFile;

    spdlog::info("edgeq run: data {}, out {}, seed {}, calibration {} images ({}), bias {}, EP {}",
                 options.data_folder.string(), options.out_folder.string(), options.seed,
                 options.calibration_count, calibration_method_name(options.quantize.method),
                 bias_mode_name(options.quantize.bias), options.session.execution_provider);
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
    FashionCnn model = obtain_model(options, data);
    clock.stop();

    // 3. Export to ONNX and check against libtorch.
    clock.start("export");
    const json export_info = export_and_verify(model, data.test, float_path);
    clock.stop();

    // 4. Post-training quantization to QDQ, calibrated on the held-out images.
    clock.start("quantize");
    const onnx::ModelProto float_model = load_onnx_model(float_path);
    LabelledImagesReader reader(data.calibration, options.quantize.calibration_batch_size);
    const QdqModel qdq = quantize_to_qdq(float_model, reader, options.quantize, SessionConfig{});
    check_onnx_model(qdq.model, qdq_path.string());
    save_onnx_model(qdq.model, qdq_path);
    log_quantization_table(qdq);
    const std::vector<OpTypeQuantization> summary = summarize_qdq_model(qdq.model);
    spdlog::info("quantized model {} ({} nodes):\n{}", qdq_path.string(),
                 qdq.model.graph().node_size(), format_qdq_summary(summary));
    write_file_atomic(options.out_folder / "quantization_report.json",
                      quantization_report_json(qdq, options.quantize).dump(2) + "\n");
    clock.stop();

    // 5. Deployment: ONNX Runtime sessions on the chosen execution provider.
    clock.start("deploy");
    OrtModel float_session(float_path, options.session);
    OrtModel qdq_session(qdq_path, options.session);
    spdlog::info("ONNX Runtime {}: sessions on {}", onnxruntime_version(),
                 qdq_session.execution_provider());
    clock.stop();

    // 6. Evaluation on the test images.
    clock.start("evaluate");
    const ClassificationResult fp32 =
        evaluate_classifier(float_session, data.test, options.eval_batch_size);
    const ClassificationResult int8 =
        evaluate_classifier(qdq_session, data.test, options.eval_batch_size);
    write_confusion_csv(fp32.confusion, options.out_folder / "confusion_matrix_fp32.csv");
    write_confusion_csv(int8.confusion, options.out_folder / "confusion_matrix_int8.csv");
    write_predictions_csv(data.test, fp32, int8, options.out_folder / "predictions.csv");
    clock.stop();

    json op_types = json::object();
    for (const auto& [op_type, count] : count_op_types(qdq.model)) {
        op_types[op_type] = count;
    }
    json int8_json = classification_json(int8);
    int8_json["execution_provider"] = qdq_session.execution_provider();
    json fp32_json = classification_json(fp32);
    fp32_json["execution_provider"] = float_session.execution_provider();

    json metrics = {
        {"dataset",
         {{"train", data.train.size()},
          {"calibration", data.calibration.size()},
          {"test", data.test.size()},
          {"seed", options.seed},
          {"folder", options.data_folder.string()}}},
        {"fp32", fp32_json},
        {"int8", int8_json},
        {"delta_int8_vs_fp32", int8.accuracy() - fp32.accuracy()},
        {"float_model", export_info},
        {"qdq_model",
         {{"path", qdq_path.string()},
          {"nodes", qdq.model.graph().node_size()},
          {"op_types", op_types},
          {"calibration_method", calibration_method_name(options.quantize.method)},
          {"bias", bias_mode_name(options.quantize.bias)}}},
        {"reference", {{"report_int8_accuracy", kReportInt8Accuracy}}},
        {"onnxruntime_version", onnxruntime_version()},
        {"stage_seconds", clock.seconds()},
    };
    metrics["total_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
    write_file_atomic(options.out_folder / "metrics.json", metrics.dump(2) + "\n");
    log_summary(metrics);
    spdlog::info("artifacts in {}/: {}, {}, metrics.json, confusion_matrix_{{fp32,int8}}.csv, "
                 "predictions.csv, quantization_report.json",
                 options.out_folder.string(), kFloatModelFile, kQdqModelFile);
    return metrics;
}

}  // namespace edgeq
