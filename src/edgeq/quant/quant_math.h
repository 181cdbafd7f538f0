// Reference maths of linear quantization (readable, scalar).
//
//   quantize:   q = saturate(round_half_to_even(x / s) + z)     to [q_min, q_max]
//   dequantize: x' = (q - z) * s
//
// Scales are either powers of two, s = 2^-p, or any positive float. With a power of two, p is the
// "fix position" of Vitis AI: x / s = x * 2^p is exact in floating point (barring overflow), and
// on the NPU requantizing between two tensors is a bit shift by the difference of their
// positions. Float scales are what ONNX Runtime's quantizer and TensorRT use on CPUs and GPUs.
//
// Number formats used by edgeq's XINT8 preset:
//   activations uint8, z = 128, so q - z covers [-128, 127] (symmetric int8 shifted by 128)
//   weights     int8,  z = 0,   [-128, 127]
//   biases      int8 with its own power-of-two scale, or int32 with s = s_input * s_weight
#pragma once

#include <cstdint>
#include <string>

namespace edgeq {

enum class QuantType { kUint8, kInt8, kUint16, kInt16, kInt32 };

std::string quant_type_name(QuantType type);  // "UINT8", "INT8", "UINT16", "INT16", "INT32"

// The integer range [q_min, q_max] of a type.
int64_t quant_min(QuantType type);
int64_t quant_max(QuantType type);

// The zero point that makes a type symmetric around zero: 128 for uint8 (signed int8 shifted by
// 128, as AMD Quark's XINT8 stores activations), 32768 for uint16, 0 for signed types.
int64_t symmetric_zero_point(QuantType type);

// Parameters of one quantized tensor, or of one channel of a per-channel tensor.
struct QuantParams {
    QuantType type = QuantType::kUint8;
    int position = 0;  // scale = 2^-position when power_of_two
    int64_t zero_point = 0;
    bool power_of_two = true;
    float float_scale = 1.0f;  // the scale when !power_of_two

    // 2^-position (exact in float for |position| <= 126), or float_scale.
    float scale() const;
};

QuantParams power_of_two_params(QuantType type, int position, int64_t zero_point);
QuantParams float_scale_params(QuantType type, float scale, int64_t zero_point);

// Float scale and zero point that map [min, max] onto the type's range, as ONNX Runtime's
// quantizer computes them. The range is first widened to contain 0, so that 0 is exact.
//   symmetric:  z = symmetric_zero_point(type), s = max(|min|, |max|) / min(q_max - z, z - q_min)
//   asymmetric: s = (max - min) / (q_max - q_min), z = round(q_min - min / s), within the range
// A range that is all zero gets s = 1 (any scale represents zero exactly).
QuantParams float_params_for_range(double min, double max, QuantType type, bool symmetric);

// Rounds to the nearest integer, ties to even, as ONNX QuantizeLinear does (so 2.5 -> 2,
// -1.5 -> -2, 3.5 -> 4).
double round_half_to_even(double value);

// q = saturate(round_half_to_even(x / s) + z). With a float scale, x / s is computed in float, as
// ONNX's QuantizeLinear specifies.
int64_t quantize_value(float value, const QuantParams& params);

// x' = (q - z) * s.
float dequantize_value(int64_t quantized, const QuantParams& params);

// The largest position p (the finest scale 2^-p) with which [min, max] fits the integer range
// around `zero_point` without clipping: max <= (q_max - z) * 2^-p and -min <= (z - q_min) * 2^-p.
// A range that is all zero has no such limit; `fallback_position` is returned for it.
int non_overflow_position(double min, double max, QuantType type, int64_t zero_point,
                          int fallback_position);

// True when every value of [min, max] quantizes with `params` without saturating.
bool fits_without_clipping(double min, double max, const QuantParams& params);

// Positions are kept in this range: 2^-24 is below float16's smallest normal, and 2^8 covers
// int8 values up to 127 * 256 = 32512, far beyond what a trained CNN produces.
inline constexpr int kMinPosition = -8;
inline constexpr int kMaxPosition = 24;

}  // namespace edgeq
