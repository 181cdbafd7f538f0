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
        case QuantType::kUint16:
            return "UINT16";
        case QuantType::kInt16:
            return "INT16";
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
        case QuantType::kUint16:
            return 0;
        case QuantType::kInt16:
            return std::numeric_limits<int16_t>::min();
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
        case QuantType::kUint16:
            return std::numeric_limits<uint16_t>::max();
        case QuantType::kInt16:
            return std::numeric_limits<int16_t>::max();
        case QuantType::kInt32:
            return std::numeric_limits<int32_t>::max();
    }
    return 0;
}

int64_t symmetric_zero_point(QuantType type) {
    switch (type) {
        case QuantType::kUint8:
            return 128;
        case QuantType::kUint16:
            return 32768;
        default:
            return 0;
    }
}

float QuantParams::scale() const {
    return power_of_two ? std::ldexp(1.0f, -position) : float_scale;
}

QuantParams power_of_two_params(QuantType type, int position, int64_t zero_point) {
    return {type, position, zero_point, true, std::ldexp(1.0f, -position)};
}

QuantParams float_scale_params(QuantType type, float scale, int64_t zero_point) {
    return {type, 0, zero_point, false, scale};
}

QuantParams float_params_for_range(double min, double max, QuantType type, bool symmetric) {
    const double low = std::min(min, 0.0);
    const double high = std::max(max, 0.0);
    const auto q_min = static_cast<double>(quant_min(type));
    const auto q_max = static_cast<double>(quant_max(type));

    if (symmetric) {
        const int64_t zero_point = symmetric_zero_point(type);
        const double steps = std::min(q_max - static_cast<double>(zero_point),
                                      static_cast<double>(zero_point) - q_min);
        const double scale = std::max(-low, high) / steps;
        return float_scale_params(type, scale > 0 ? static_cast<float>(scale) : 1.0f, zero_point);
    }

    const double scale = (high - low) / (q_max - q_min);
    if (!(scale > 0)) {
        return float_scale_params(type, 1.0f, static_cast<int64_t>(q_min));
    }
    const double zero_point = std::clamp(round_half_to_even(q_min - low / scale), q_min, q_max);
    return float_scale_params(type, static_cast<float>(scale), static_cast<int64_t>(zero_point));
}

double round_half_to_even(double value) {
    // std::nearbyint rounds in the current rounding mode, which is round-to-nearest-even unless a
    // caller changed it with fesetround; edgeq never does.
    return std::nearbyint(value);
}

int64_t quantize_value(float value, const QuantParams& params) {
    const double scaled = params.power_of_two
                              ? std::ldexp(static_cast<double>(value), params.position)
                              : static_cast<double>(value / params.float_scale);
    const double rounded = round_half_to_even(scaled) + static_cast<double>(params.zero_point);
    const double clamped = std::clamp(rounded, static_cast<double>(quant_min(params.type)),
                                      static_cast<double>(quant_max(params.type)));
    return static_cast<int64_t>(clamped);
}

float dequantize_value(int64_t quantized, const QuantParams& params) {
    // ONNX's DequantizeLinear multiplies in float: (q - z) * s.
    return static_cast<float>(quantized - params.zero_point) * params.scale();
}

bool fits_without_clipping(double min, double max, const QuantParams& params) {
    const double scale = params.scale();
    const double highest = static_cast<double>(quant_max(params.type) - params.zero_point) * scale;
    const double lowest = static_cast<double>(quant_min(params.type) - params.zero_point) * scale;
    return max <= highest && min >= lowest;
}

int non_overflow_position(double min, double max, QuantType type, int64_t zero_point,
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
