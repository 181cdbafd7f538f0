// Reference maths of linear quantization with power-of-two scales (readable, scalar).
//
//   quantize:   q = saturate(round_half_to_even(x / s) + z)     to [q_min, q_max]
//   dequantize: x' = (q - z) * s
//
// With a power-of-two scale s = 2^-p, p is the "fix position" of Vitis AI: x / s = x * 2^p is
// exact in floating point (barring overflow), and on the NPU requantizing between two
// tensors is a bit shift by the difference of their positions.
//
// Number formats used by edgeq's XINT8 preset:
//   activations uint8, z = 128, so q - z covers [-128, 127] (symmetric int8 shifted by 128)
//   weights     int8,  z = 0,   [-128, 127]
//   biases      int8 with its own power-of-two scale, or int32 with s = s_input * s_weight
#pragma once

#include <cstdint>
#include <string>

namespace edgeq {

enum class QuantType { kUint8, kInt8, kInt32 };

std::string quant_type_name(QuantType type);  // "UINT8", "INT8", "INT32"

// The integer range [q_min, q_max] of a type.
int64_t quant_min(QuantType type);
int64_t quant_max(QuantType type);

// Parameters of one per-tensor quantized tensor.
struct QuantParams {
    QuantType type = QuantType::kUint8;
    int position = 0;  // scale = 2^-position
    int zero_point = 0;
    float scale() const;  // 2^-position, exact in float for |position| <= 126
};

// Rounds to the nearest integer, ties to even, as ONNX QuantizeLinear does (so 2.5 -> 2,
// -1.5 -> -2, 3.5 -> 4).
double round_half_to_even(double value);

// q = saturate(round_half_to_even(x / s) + z).
int64_t quantize_value(float value, const QuantParams& params);

// x' = (q - z) * s.
float dequantize_value(int64_t quantized, const QuantParams& params);

// The largest position p (the finest scale 2^-p) with which [min, max] fits the integer range
// around `zero_point` without clipping: max <= (q_max - z) * 2^-p and -min <= (z - q_min) * 2^-p.
// A range that is all zero has no such limit; `fallback_position` is returned for it.
int non_overflow_position(double min, double max, QuantType type, int zero_point,
                          int fallback_position);

// True when every value of [min, max] quantizes with `params` without saturating.
bool fits_without_clipping(double min, double max, const QuantParams& params);

// Positions are kept in this range: 2^-24 is below float16's smallest normal, and 2^8 covers
// int8 values up to 127 * 256 = 32512, far beyond what a trained CNN produces.
inline constexpr int kMinPosition = -8;
inline constexpr int kMaxPosition = 24;

}  // namespace edgeq
