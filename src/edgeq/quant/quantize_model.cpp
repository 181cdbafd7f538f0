#include "edgeq/quant/quantize_model.h"

#include <algorithm>
#include <chrono>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/prepare.h"
#include "edgeq/quant/quant_report.h"

namespace edgeq {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// Argmax of each row of a [batch, classes] output.
std::vector<int64_t> top1(const FloatOutput& output) {
    const int64_t batch = output.shape.empty() ? 0 : output.shape.front();
    const int64_t classes = batch > 0 ? static_cast<int64_t>(output.values.size()) / batch : 0;
    std::vector<int64_t> predictions(batch);
    for (int64_t row = 0; row < batch; ++row) {
        const auto first = output.values.begin() + row * classes;
        predictions[row] = std::max_element(first, first + classes) - first;
    }
    return predictions;
}

std::vector<int64_t> predict_all(const onnx::ModelProto& model, CalibrationDataReader& images,
                                 const SessionConfig& session, const std::string& label) {
    std::string bytes;
    model.SerializeToString(&bytes);
    OrtModel runner(bytes, label, session);
    std::vector<int64_t> predictions;
    images.rewind();
    while (std::optional<CalibrationBatch> batch = images.next()) {
        const std::vector<FloatOutput> outputs = runner.run(batch->values, batch->shape);
        const std::vector<int64_t> batch_predictions = top1(outputs.front());
        predictions.insert(predictions.end(), batch_predictions.begin(), batch_predictions.end());
    }
    return predictions;
}

// One quantization of the prepared float model with the algorithms asked for.
struct QuantizeAttempt {
    QdqModel qdq;
    std::optional<AdaRoundReport> adaround;
    std::optional<BiasCorrectionReport> bias_correction;
};

QuantizeAttempt quantize_once(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                              const QuantizeOptions& options, const Algorithms& algorithms,
                              const SessionConfig& session, const std::string& model_label,
                              const ProgressCallback& progress) {
    QuantizeAttempt attempt;
    attempt.qdq = quantize_to_qdq(
        float_model, reader, options, session, model_label,
        [&](int64_t done, int64_t total) {
            if (progress) {
                progress("calibration", done, total);
            }
        },
        [&](int64_t done, int64_t total) {
            if (progress) {
                progress("calibration histograms", done, total);
            }
        });
    if (algorithms.adaround) {
        int64_t layers_done = 0;
        attempt.adaround =
            adaround_weights(float_model, attempt.qdq.model, reader, session,
                             algorithms.adaround_options, [&](const AdaRoundLayerReport&) {
                                 if (progress) {
                                     progress("adaround layers", ++layers_done, 0);
                                 }
                             });
    }
    if (algorithms.bias_correction) {
        attempt.bias_correction = correct_biases(float_model, attempt.qdq.model, reader, session);
    }
    return attempt;
}

}  // namespace

Algorithms parse_algorithms(const std::string& list) {
    Algorithms algorithms;
    std::stringstream stream(list);
    std::string name;
    while (std::getline(stream, name, ',')) {
        if (name.empty() || name == "none") {
            continue;
        }
        if (name == "cle") {
            algorithms.cross_layer_equalization = true;
        } else if (name == "adaround") {
            algorithms.adaround = true;
        } else if (name == "bias_correction" || name == "bias-correction") {
            algorithms.bias_correction = true;
        } else {
            fail(ExitCode::kUsage,
                 "unknown algorithm '{}' in '{}'; use cle, adaround, bias_correction or none", name,
                 list);
        }
    }
    return algorithms;
}

std::vector<std::string> algorithm_names(const Algorithms& algorithms) {
    std::vector<std::string> names;
    if (algorithms.cross_layer_equalization) {
        names.emplace_back("cle");
    }
    if (algorithms.adaround) {
        names.emplace_back("adaround");
    }
    if (algorithms.bias_correction) {
        names.emplace_back("bias_correction");
    }
    return names;
}

double top1_accuracy(const onnx::ModelProto& model, const HeldOutData& data,
                     const SessionConfig& session, const std::string& label) {
    const std::vector<int64_t> predictions = predict_all(model, *data.images, session, label);
    if (predictions.size() != data.labels.size()) {
        fail(ExitCode::kInternal, "{} predictions for {} labels of the held-out data",
             predictions.size(), data.labels.size());
    }
    int64_t correct = 0;
    for (size_t i = 0; i < predictions.size(); ++i) {
        correct += predictions[i] == data.labels[i] ? 1 : 0;
    }
    return predictions.empty()
               ? 0.0
               : static_cast<double>(correct) / static_cast<double>(predictions.size());
}

QuantizeRun quantize_model(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                           const QuantizeOptions& options, const Algorithms& algorithms,
                           const SessionConfig& session, const std::string& model_label,
                           const MixedPrecisionOptions& mixed_precision,
                           const HeldOutData& held_out, const ProgressCallback& progress) {
    const auto start = Clock::now();
    QuantizeRun run;

    PreparedModel prepared = prepare_for_quantization(float_model, model_label);
    run.preparation_changes = prepared.changes;
    run.prepared_model = std::move(prepared.model);
    if (algorithms.cross_layer_equalization) {
        run.equalization = equalize_cross_layer(run.prepared_model);
    }

    QuantizeAttempt attempt = quantize_once(run.prepared_model, reader, options, algorithms,
                                            session, model_label, progress);

    if (mixed_precision.max_drop.has_value()) {
        if (held_out.images == nullptr) {
            fail(ExitCode::kUsage, "mixed precision needs held-out images to measure accuracy on");
        }
        // Without labels, agreement with the float model's top-1 is the accuracy measure.
        HeldOutData data = held_out;
        if (data.labels.empty()) {
            data.labels = predict_all(run.prepared_model, *data.images, session, model_label);
        }
        const double fp32 = top1_accuracy(run.prepared_model, data, session, model_label);
        double quantized = top1_accuracy(attempt.qdq.model, data, session, model_label);
        run.mixed_precision_log.push_back(fmt::format(
            "all layers quantized: {:.4f} on {} held-out images (fp32 {:.4f}, drop {:.4f}, target "
            "{:.4f})",
            quantized, data.labels.size(), fp32, fp32 - quantized, *mixed_precision.max_drop));

        if (fp32 - quantized > *mixed_precision.max_drop) {
            const SensitivityReport sensitivity = measure_layer_sensitivity(
                run.prepared_model, attempt.qdq.model, *data.images, data.labels, session);
            std::vector<LayerSensitivity> ranked = sensitivity.layers;
            std::stable_sort(ranked.begin(), ranked.end(),
                             [](const LayerSensitivity& a, const LayerSensitivity& b) {
                                 return a.drop > b.drop;
                             });
            QuantizeOptions mixed = options;
            for (const LayerSensitivity& layer : ranked) {
                if (fp32 - quantized <= *mixed_precision.max_drop) {
                    break;
                }
                mixed.exclude.push_back(layer.layer);
                attempt = quantize_once(run.prepared_model, reader, mixed, algorithms, session,
                                        model_label, progress);
                quantized = top1_accuracy(attempt.qdq.model, data, session, model_label);
                run.mixed_precision_log.push_back(
                    fmt::format("kept '{}' in float (drop {:.4f} alone): {:.4f}, drop {:.4f}",
                                layer.layer, layer.drop, quantized, fp32 - quantized));
            }
            if (fp32 - quantized > *mixed_precision.max_drop) {
                attempt.qdq.warnings.push_back(fmt::format(
                    "mixed precision could not reach a drop of {:.4f}: {:.4f} with every "
                    "weighted layer in float",
                    *mixed_precision.max_drop, fp32 - quantized));
            }
        }
    }

    run.qdq = std::move(attempt.qdq);
    run.adaround = std::move(attempt.adaround);
    run.bias_correction = std::move(attempt.bias_correction);
    run.seconds = seconds_since(start);
    return run;
}

nlohmann::ordered_json algorithms_json(const QuantizeRun& run) {
    nlohmann::ordered_json result = nlohmann::ordered_json::object();
    if (run.equalization.has_value()) {
        nlohmann::ordered_json pairs = nlohmann::ordered_json::array();
        for (const EqualizedPair& pair : run.equalization->pairs) {
            pairs.push_back(
                {{"first_layer", pair.first_layer},
                 {"second_layer", pair.second_layer},
                 {"between", pair.between},
                 {"channels", pair.channels},
                 {"first_smallest_to_largest_before", pair.first_before.smallest_to_largest},
                 {"first_smallest_to_largest_after", pair.first_after.smallest_to_largest},
                 {"second_smallest_to_largest_before", pair.second_before.smallest_to_largest},
                 {"second_smallest_to_largest_after", pair.second_after.smallest_to_largest}});
        }
        result["cle"] = {{"iterations", run.equalization->iterations}, {"pairs", pairs}};
    }
    if (run.adaround.has_value()) {
        nlohmann::ordered_json layers = nlohmann::ordered_json::array();
        for (const AdaRoundLayerReport& layer : run.adaround->layers) {
            layers.push_back({{"layer", layer.node},
                              {"rounded", layer.rounded},
                              {"note", layer.note},
                              {"samples", layer.samples},
                              {"flipped_weights", layer.flipped_weights},
                              {"weight_count", layer.weight_count},
                              {"nearest_mse", layer.nearest_mse},
                              {"adaround_mse", layer.adaround_mse},
                              {"seconds", layer.seconds}});
        }
        result["adaround"] = {{"seconds", run.adaround->seconds}, {"layers", layers}};
    }
    if (run.bias_correction.has_value()) {
        nlohmann::ordered_json layers = nlohmann::ordered_json::array();
        for (const CorrectedLayer& layer : run.bias_correction->layers) {
            layers.push_back({{"layer", layer.layer},
                              {"bias_type", layer.bias_type},
                              {"mean_abs_shift_before", layer.mean_abs_shift_before},
                              {"mean_abs_shift_after", layer.mean_abs_shift_after},
                              {"unchanged_entries", layer.unchanged_entries},
                              {"saturated_entries", layer.saturated_entries}});
        }
        result["bias_correction"] = {{"layers", layers}};
    }
    if (!run.mixed_precision_log.empty()) {
        result["mixed_precision"] = run.mixed_precision_log;
    }
    return result;
}

}  // namespace edgeq
