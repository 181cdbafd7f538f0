// Measurements of a QDQ model against the float model it was made from: the error of every
// quantized tensor on calibration data, and the accuracy each weighted layer costs on its own.
// They read nothing but the two models and the data, so they work on any QDQ model in edgeq's
// layout (QuantizeLinear/DequantizeLinear pairs around float operators, dequantized initializers).
//
// Signal-to-quantization-noise ratio of a tensor x against its quantized version x_q, summed over
// every element of every batch:
//
//   SQNR_dB = 10 log10(sum x^2 / sum (x - x_q)^2)
//
// It is +infinity when the error is zero (also for an all-zero tensor), and -infinity when x is
// all zero but x_q is not.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include "edgeq/quant/calibration.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

// Quantization parameters of one tensor, read from its DequantizeLinear node. The tensor's values
// become x_q = (q - z) * s with q = saturate(round_half_to_even(x / s) + z) in [q_min, q_max].
struct TensorQuantization {
    std::string type;  // zero-point type: "UINT8", "INT8", "UINT16", "INT16" or "INT32"
    int64_t q_min = 0;
    int64_t q_max = 0;
    bool per_channel = false;          // 1-D scale: one entry per index along `axis`
    int64_t axis = 0;                  // channel axis, normalized to >= 0; used when per_channel
    std::vector<float> scales;         // one entry when per-tensor
    std::vector<int64_t> zero_points;  // same length as scales
    std::vector<int> positions;  // scale = 2^-position per entry; empty unless every scale is a
                                 // power of two
};

// Quantization error of one tensor of the QDQ model.
struct TensorError {
    std::string name;  // the tensor's name in the float model
    std::string role;  // "activation", "weight", "bias", or "constant" for another initializer
    TensorQuantization quantization;
    // Observed range of the float values. On the calibration data this is the range that MinMax
    // calibration uses.
    float min = 0;
    float max = 0;
    int64_t element_count = 0;  // float values measured, over all batches
    // Share of float values that QuantizeLinear saturates: round_half_to_even(x / s) + z falls
    // outside [q_min, q_max]. A value less than half a step beyond the range the integers cover,
    // [(q_min - z) s, (q_max - z) s], rounds to its edge and does not count.
    double clipped_share = 0;
    // Error against the float model. For an activation it is the error that the whole quantized
    // network has built up by this tensor. For an initializer it is its own quantization error.
    double sqnr_db = 0;
    double mean_squared_error = 0;
    // Error of quantizing this tensor's float values alone with its own scale and zero point (round
    // half to even, saturate): what the tensor adds, without the error inherited from upstream.
    // Equal to sqnr_db for initializers.
    double local_sqnr_db = 0;
    double local_mean_squared_error = 0;
};

// Measures every tensor quantized in `qdq_model` (found from its QuantizeLinear/DequantizeLinear
// nodes, per-tensor or per-channel) against `float_model`:
// - activations: one pass over `reader`, running the float model and the QDQ model on each batch
//   with the float tensors and the matching DequantizeLinear outputs exposed. Sums are streamed in
//   double, so memory does not grow with the number of batches.
// - weights and biases: the float initializer of `float_model` against the dequantized initializer
//   of `qdq_model`.
// Activations come first in graph order, then initializers in graph order. Throws Error when a
// quantized tensor has no counterpart in `float_model`. `on_batch(samples_done, samples_total)`
// reports progress when set.
std::vector<TensorError> measure_tensor_errors(
    const onnx::ModelProto& float_model, const onnx::ModelProto& qdq_model,
    CalibrationDataReader& reader, const SessionConfig& session,
    const std::function<void(int64_t, int64_t)>& on_batch = {});

// Top-1 accuracy of the model with only one weighted layer quantized.
struct LayerSensitivity {
    std::string layer;                           // node name in the QDQ model
    std::string op_type;                         // Conv, Gemm or MatMul
    std::vector<std::string> quantized_tensors;  // what stays quantized, as float-model names
    int64_t correct = 0;
    double accuracy = 0;  // correct / images, in [0, 1]
    double drop = 0;  // fp32 accuracy - accuracy; positive when quantizing the layer costs accuracy
};

struct SensitivityReport {
    int64_t image_count = 0;
    int64_t fp32_correct = 0;
    double fp32_accuracy = 0;
    int64_t quantized_correct = 0;  // every layer quantized: the QDQ model as it is
    double quantized_accuracy = 0;
    std::vector<LayerSensitivity> layers;  // graph order
};

// Builds the model in which only `layer` (a Conv, Gemm or MatMul node of `qdq_model`) is
// quantized. Kept: the Q/DQ pair of its input activation, the DequantizeLinear nodes of its weight
// and bias, and the Q/DQ pair of its output (after the Relu when the layer's only consumer is a
// Relu). Every other Q/DQ pair is bypassed (its consumers read the QuantizeLinear's input), and
// every other dequantized initializer is replaced by the float initializer of `float_model`.
// A kept tensor stays quantized for every node that reads it.
onnx::ModelProto make_single_layer_model(const onnx::ModelProto& float_model,
                                         const onnx::ModelProto& qdq_model,
                                         const std::string& layer);

// Measures the top-1 accuracy (argmax of the model's single output) on `images` of the float
// model, of the QDQ model, and of one single-layer model per Conv/Gemm/MatMul node with a
// dequantized weight. `labels` contains one class per image, in the reader's order.
// `on_model(models_done, models_total)` reports progress when set.
SensitivityReport measure_layer_sensitivity(
    const onnx::ModelProto& float_model, const onnx::ModelProto& qdq_model,
    CalibrationDataReader& images, const std::vector<int64_t>& labels, const SessionConfig& session,
    const std::function<void(int64_t, int64_t)>& on_model = {});

// Fixed-width text tables for a terminal, one line per tensor or layer, with a header line.
std::string format_tensor_table(const std::vector<TensorError>& tensors);
std::string format_sensitivity_table(const SensitivityReport& report);

// JSON for the reports. A non-finite SQNR is written as null, because JSON has no infinity: with
// mean_squared_error 0 it means +infinity (no error), otherwise -infinity (the float tensor is all
// zero).
nlohmann::ordered_json to_json(const std::vector<TensorError>& tensors);
nlohmann::ordered_json to_json(const SensitivityReport& report);

}  // namespace edgeq
