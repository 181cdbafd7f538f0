#include "edgeq/quant/quant_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace edgeq {

std::string quant_type_name(QuantType type) {
    switch (type) {
        case QuantType::kUint8:
            return "UINT8";
        case QuantType::kInt8:
            return "INT8";
        case QuantType::kInt32:
            return "INT32";
    }
    return "?";
}

int64_t quant_min(QuantType type) {
    switch (type) {
        case QuantType::kUint8:
            return 0;
        case QuantType::kInt8:
            return -128;
        case QuantType::kInt32:
            return std::numeric_limits<int32_t>::min();
    }
    return 0;
}

int64_t quant_max(QuantType type) {
    switch (type) {
        case QuantType::kUint8:
            return 255;
        case QuantType::kInt8:
            return 127;
        case QuantType::kInt32:
            return std::numeric_limits<int32_t>::max();
    }
    return 0;
}

float QuantParams::scale() const {
    return std::ldexp(1.0f, -position);
}

double round_half_to_even(double value) {
    // std::nearbyint rounds in the current rounding mode, which is round-to-nearest-even unless a
    // caller changed it with fesetround; edgeq never does.
    return std::nearbyint(value);
}

int64_t quantize_value(float value, const QuantParams& params) {
    const double scaled = std::ldexp(static_cast<double>(value), params.position);
    const double rounded = round_half_to_even(scaled) + params.zero_point;
    const double clamped = std::clamp(rounded, static_cast<double>(quant_min(params.type)),
                                      static_cast<double>(quant_max(params.type)));
    return static_cast<int64_t>(clamped);
}

float dequantize_value(int64_t quantized, const QuantParams& params) {
    return static_cast<float>(
        std::ldexp(static_cast<double>(quantized - params.zero_point), -params.position));
}

bool fits_without_clipping(double min, double max, const QuantParams& params) {
    const double scale = std::ldexp(1.0, -params.position);
    const double highest = static_cast<double>(quant_max(params.type) - params.zero_point) * scale;
    const double lowest = static_cast<double>(quant_min(params.type) - params.zero_point) * scale;
    return max <= highest && min >= lowest;
}

int non_overflow_position(double min, double max, QuantType type, int zero_point,
                          int fallback_position) {
    const double positive_steps = static_cast<double>(quant_max(type) - zero_point);
    const double negative_steps = static_cast<double>(zero_point - quant_min(type));
    // The smallest scale that covers both ends of the range.
    const double needed_scale =
        std::max(std::max(max, 0.0) / positive_steps, std::max(-min, 0.0) / negative_steps);
    if (!(needed_scale > 0.0) || !std::isfinite(needed_scale)) {
        return fallback_position;
    }

    // Start from the logarithm, then correct the last step exactly with ldexp, because log2 of a
    // value just above a power of two can round down to that power.
    int position = static_cast<int>(std::floor(-std::log2(needed_scale)));
    while (std::ldexp(1.0, -position) < needed_scale) {
        --position;
    }
    while (std::ldexp(1.0, -(position + 1)) >= needed_scale) {
        ++position;
    }
    return std::clamp(position, kMinPosition, kMaxPosition);
}

}  // namespace edgeq
