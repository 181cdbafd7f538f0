// The quantizer's whole flow on one float model: graph preparation, the optional algorithms
// around the QDQ rewrite, and the optional mixed-precision search.
//
//   float model -> prepare_for_quantization -> [cross-layer equalization] -> quantize_to_qdq
//               -> [AdaRound] -> [bias correction] -> QDQ model
//
// Equalization changes the float weights before scales are chosen; AdaRound and bias correction
// change the quantized weights and biases afterwards, keeping every scale. Bias correction runs
// last so that it sees the weights AdaRound chose.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include "edgeq/quant/adaround.h"
#include "edgeq/quant/bias_correction.h"
#include "edgeq/quant/equalization.h"
#include "edgeq/quant/qdq_quantizer.h"

namespace edgeq {

struct Algorithms {
    bool cross_layer_equalization = false;
    bool adaround = false;
    bool bias_correction = false;
    AdaRoundOptions adaround_options;
};

// "cle", "adaround", "bias_correction", comma-separated; "" or "none" for none.
Algorithms parse_algorithms(const std::string& list);
std::vector<std::string> algorithm_names(const Algorithms& algorithms);

// Labelled data for decisions that need accuracy (mixed precision). Without labels the float
// model's own top-1 predictions stand in, so "accuracy" becomes agreement with fp32.
struct HeldOutData {
    CalibrationDataReader* images = nullptr;
    std::vector<int64_t> labels;  // one per image in reader order; empty = use fp32 predictions
};

// Mixed precision: while the held-out accuracy drop exceeds `max_drop`, the most sensitive
// quantized layer (largest drop when it alone is quantized) is kept in float and the model is
// quantized again.
struct MixedPrecisionOptions {
    std::optional<double> max_drop;  // unset = off; 0.002 = 0.2 points
};

struct QuantizeRun {
    QdqModel qdq;
    onnx::ModelProto prepared_model;  // the float model the QDQ model came from (after CLE)
    std::vector<std::string> preparation_changes;
    std::optional<EqualizationReport> equalization;
    std::optional<AdaRoundReport> adaround;
    std::optional<BiasCorrectionReport> bias_correction;
    std::vector<std::string> mixed_precision_log;  // one line per step, empty when off
    double seconds = 0;                            // whole flow, calibration included
};

// Progress of the long steps, for logs: a step name and (done, total).
using ProgressCallback = std::function<void(const std::string&, int64_t, int64_t)>;

QuantizeRun quantize_model(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                           const QuantizeOptions& options, const Algorithms& algorithms,
                           const SessionConfig& session, const std::string& model_label,
                           const MixedPrecisionOptions& mixed_precision = {},
                           const HeldOutData& held_out = {}, const ProgressCallback& progress = {});

// Top-1 accuracy of `model` on `data` (argmax of its first output against the labels).
double top1_accuracy(const onnx::ModelProto& model, const HeldOutData& data,
                     const SessionConfig& session, const std::string& label);

// The algorithm reports as JSON (absent algorithms are left out).
nlohmann::ordered_json algorithms_json(const QuantizeRun& run);

}  // namespace edgeq
