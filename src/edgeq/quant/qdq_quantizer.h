// Post-training quantization of a float ONNX model to the QDQ format (QuantizeLinear /
// DequantizeLinear pairs around float operators), with presets for an NPU and for CPUs.
//
// What the XINT8 layout looks like for a Conv -> Relu -> MaxPool chain:
//
//   x (float)  -> Q -> DQ ---+
//   W (int8)        -> DQ ---+--> Conv -> Relu -> Q -> DQ -> MaxPool -> Q -> DQ -> ...
//   b (int8)        -> DQ ---+
//
// Every float activation a quantized operator reads or writes gets a Q/DQ pair. The exception is
// the output of a Conv, Gemm, MatMul or Add whose only consumer is a Relu: the NPU fuses the two,
// so the pair goes after the Relu. Weights are int8 initializers read through a DequantizeLinear,
// and so are biases (int8 with their own power-of-two scale, or int32 with s_input * s_weight).
// Operators that only move values (MaxPool, Reshape, Flatten, Transpose, Pad) give their output
// their input's scale. An operator the quantizer does not handle, or one the user excludes,
// stays in float between a DequantizeLinear and a QuantizeLinear.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/quant/calibration.h"
#include "edgeq/quant/calibration_methods.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq {

// Number formats, named as in AMD Quark and ONNX Runtime's quantizer.
enum class Preset {
    kXint8,  // the Ryzen AI NPU's: power-of-two scales, uint8 symmetric activations (zero point
             // 128), int8 symmetric per-tensor weights; MinMSE calibration
    kA8W8,   // int8 symmetric activations and weights, float scales
    kU8S8,   // uint8 asymmetric activations, int8 symmetric weights, float scales
    kS8S8,   // int8 asymmetric activations, int8 symmetric weights, float scales
    kA16W8,  // int16 symmetric activations, int8 symmetric weights, float scales
};

Preset parse_preset(const std::string& name);  // "XINT8", "A8W8", ... (case-insensitive)
std::string preset_name(Preset preset);
const std::vector<Preset>& all_presets();

enum class BiasMode {
    kInt8PowerOfTwo,  // AMD Quark's XINT8 code: int8, own power-of-two scale, NPU shift limits
    kInt32,           // int32, scale s_input * s_weight: finest step, clips beyond 2^31 steps
};

BiasMode parse_bias_mode(const std::string& name);  // "int8" or "int32"
std::string bias_mode_name(BiasMode mode);

// What the user asks for. Unset fields take the preset's choice.
struct QuantizeOptions {
    Preset preset = Preset::kXint8;
    std::optional<CalibrationMethod> method;
    double percentile = 99.999;  // for CalibrationMethod::kPercentile
    std::optional<BiasMode> bias;
    std::optional<bool> power_of_two;      // scales; XINT8 rejects float scales
    bool per_channel = false;              // weights; XINT8 rejects it
    std::vector<std::string> exclude;      // node names or op types kept in float
    bool strict = false;                   // an operator the quantizer does not handle is an error
    int64_t calibration_batch_size = 100;  // does not change the result, only speed and memory
};

// The formats a quantization uses, with every choice made.
struct QuantScheme {
    Preset preset = Preset::kXint8;
    ActivationFormat activation;
    QuantType weight_type = QuantType::kInt8;
    bool power_of_two = true;
    bool per_channel = false;
    BiasMode bias = BiasMode::kInt8PowerOfTwo;
    MethodSettings method;
};

// Applies the preset's defaults and checks the combination: fails with ExitCode::kUsage and the
// reason for what the target cannot do (per-channel or float scales under XINT8, int8 bias with
// float scales or per-channel weights).
QuantScheme resolve_scheme(const QuantizeOptions& options);

// One-line description, e.g. "XINT8: power-of-two scales, UINT8 symmetric activations, INT8
// per-tensor weights, int8 bias, minmse".
std::string describe_scheme(const QuantScheme& scheme);

// The quantization chosen for one tensor of the float model.
struct QuantizedTensor {
    std::string name;                   // the tensor's name in the float model
    std::string role;                   // "activation", "weight", "bias" or "constant"
    QuantParams params;                 // per-tensor parameters, or those of channel 0
    std::vector<QuantParams> channels;  // per-channel parameters, empty when per-tensor
    int axis = -1;                      // the channel axis when per-channel
    float min = 0;  // calibrated range (activations) or actual range (initializers)
    float max = 0;
    std::string note;        // an adjustment worth knowing, empty when none
    bool saturates = false;  // values of the tensor fall outside what its scale covers
};

// A node left in float, and why.
struct FloatNode {
    std::string name;
    std::string op_type;
    std::string reason;  // "excluded", or why the quantizer does not handle it
};

struct QdqModel {
    onnx::ModelProto model;
    QuantScheme scheme;
    std::vector<QuantizedTensor> tensors;
    std::vector<FloatNode> float_nodes;
    std::vector<std::string> warnings;
    double calibration_seconds = 0;
};

// Calibrates `float_model` on `reader` and builds its QDQ model. The float model should have been
// through prepare_for_quantization (BatchNormalization folded, constants as initializers).
// `model_label` (usually the file) names the model in errors. `on_calibration_batch` and
// `on_histogram_batch` (samples done, samples total) report the progress of the range pass and
// of the histogram pass that some methods add (MinMSE, percentile, entropy).
QdqModel quantize_to_qdq(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                         const QuantizeOptions& options, const SessionConfig& session,
                         const std::string& model_label = "model",
                         const std::function<void(int64_t, int64_t)>& on_calibration_batch = {},
                         const std::function<void(int64_t, int64_t)>& on_histogram_batch = {});

// Operators the quantizer handles; anything else stays in float.
const std::vector<std::string>& quantizable_op_types();

// NPU limits on the shifts of a layer with int8 bias, from AMD Quark's XINT8 code, with p the
// fix position of each scale (scale = 2^-p):
//   output shift  shift_cut = p_weight + p_input - p_output   within [0, 16]
//   bias shift    p_weight + p_input - p_bias                 within [min(0, shift_cut - 16), 15]
inline constexpr int kMaxOutputShift = 16;
inline constexpr int kMaxBiasShift = 15;

}  // namespace edgeq
