// Post-training quantization of a float ONNX model to the QDQ format (QuantizeLinear /
// DequantizeLinear pairs around float operators), with power-of-two scales for an NPU.
//
// What the XINT8 layout looks like for a Conv -> Relu -> MaxPool chain:
//
//   x (float)  -> Q -> DQ ---+
//   W (int8)        -> DQ ---+--> Conv -> Relu -> Q -> DQ -> MaxPool -> Q -> DQ -> ...
//   b (int8)        -> DQ ---+
//
// Every float activation gets a Q/DQ pair (uint8, zero point 128, scale 2^-p). The exception is
// the output of a Conv, Gemm, MatMul or Add whose only consumer is a Relu: the NPU fuses the two,
// so the pair goes after the Relu. Weights are int8 initializers read through a DequantizeLinear,
// and so are biases (int8 with their own power-of-two scale, or int32 with s_input * s_weight).
// MaxPool, Reshape and Flatten only move values, so their outputs share their input's scale.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/quant/calibration.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq {

enum class BiasMode {
    kInt8PowerOfTwo,  // AMD Quark's XINT8 code: int8, own power-of-two scale, NPU shift limits
    kInt32,           // int32, scale s_input * s_weight: finest step, clips beyond 2^31 steps
};

BiasMode parse_bias_mode(const std::string& name);  // "int8" or "int32"
std::string bias_mode_name(BiasMode mode);

struct QuantizeOptions {
    CalibrationMethod method = CalibrationMethod::kMinMax;
    BiasMode bias = BiasMode::kInt8PowerOfTwo;
    int64_t calibration_batch_size = 100;  // does not change the result, only speed and memory
};

// The quantization chosen for one tensor of the float model.
struct QuantizedTensor {
    std::string name;  // the tensor's name in the float model
    std::string role;  // "activation", "weight" or "bias"
    QuantParams params;
    float min = 0;  // calibrated range (activations) or actual range (weights, biases)
    float max = 0;
    std::string note;        // an adjustment worth knowing, empty when none
    bool saturates = false;  // values of the tensor fall outside what its scale covers
};

struct QdqModel {
    onnx::ModelProto model;
    std::vector<QuantizedTensor> tensors;
    std::vector<std::string> warnings;
    double calibration_seconds = 0;
};

// Calibrates `float_model` on `reader` and builds its QDQ model. Throws Error naming the node
// for an operator the quantizer does not handle; `model_label` (usually the file) names the
// model in errors.
QdqModel quantize_to_qdq(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                         const QuantizeOptions& options, const SessionConfig& session,
                         const std::string& model_label = "model",
                         const std::function<void(int64_t, int64_t)>& on_calibration_batch = {});

// NPU limits on the shifts of a layer with int8 bias, from AMD Quark's XINT8 code, with p the
// fix position of each scale (scale = 2^-p):
//   output shift  shift_cut = p_weight + p_input - p_output   within [0, 16]
//   bias shift    p_weight + p_input - p_bias                 within [min(0, shift_cut - 16), 15]
inline constexpr int kMaxOutputShift = 16;
inline constexpr int kMaxBiasShift = 15;

}  // namespace edgeq
