// Reference quantization maths: rounding, saturation, zero point 128, power-of-two scales.
#include <gtest/gtest.h>

#include <cmath>

#include "edgeq/quant/calibration.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq {
namespace {

const QuantParams kActivation{QuantType::kUint8, 4, 128};  // scale 1/16, zero point 128
const QuantParams kWeight{QuantType::kInt8, 7, 0};         // scale 1/128

TEST(RoundHalfToEven, TiesGoToEven) {
    EXPECT_EQ(round_half_to_even(0.5), 0.0);
    EXPECT_EQ(round_half_to_even(1.5), 2.0);
    EXPECT_EQ(round_half_to_even(2.5), 2.0);
    EXPECT_EQ(round_half_to_even(-0.5), -0.0);
    EXPECT_EQ(round_half_to_even(-1.5), -2.0);
    EXPECT_EQ(round_half_to_even(-2.5), -2.0);
    EXPECT_EQ(round_half_to_even(2.4999), 2.0);
    EXPECT_EQ(round_half_to_even(2.5001), 3.0);
}

TEST(QuantizeValue, ZeroMapsToZeroPoint) {
    EXPECT_EQ(quantize_value(0.0f, kActivation), 128);
    EXPECT_EQ(quantize_value(0.0f, kWeight), 0);
}

TEST(QuantizeValue, ScalesByPowerOfTwo) {
    EXPECT_EQ(quantize_value(1.0f, kActivation), 128 + 16);
    EXPECT_EQ(quantize_value(-1.0f, kActivation), 128 - 16);
    EXPECT_EQ(quantize_value(0.5f, kWeight), 64);
}

TEST(QuantizeValue, RoundsTiesToEven) {
    // 2.5 steps and 3.5 steps of 1/16.
    EXPECT_EQ(quantize_value(2.5f / 16, kActivation), 128 + 2);
    EXPECT_EQ(quantize_value(3.5f / 16, kActivation), 128 + 4);
    EXPECT_EQ(quantize_value(-2.5f / 16, kActivation), 128 - 2);
}

TEST(QuantizeValue, SaturatesAtTypeLimits) {
    EXPECT_EQ(quantize_value(100.0f, kActivation), 255);
    EXPECT_EQ(quantize_value(-100.0f, kActivation), 0);
    EXPECT_EQ(quantize_value(5.0f, kWeight), 127);
    EXPECT_EQ(quantize_value(-5.0f, kWeight), -128);
    // The last representable values on each side of an activation: -128 and +127 steps.
    EXPECT_EQ(quantize_value(-8.0f, kActivation), 0);
    EXPECT_EQ(quantize_value(127.0f / 16, kActivation), 255);
}

TEST(QuantizeValue, Int32Bias) {
    const QuantParams bias{QuantType::kInt32, 12, 0};
    EXPECT_EQ(quantize_value(1.0f, bias), 4096);
    EXPECT_EQ(quantize_value(-0.25f, bias), -1024);
}

TEST(DequantizeValue, InvertsQuantize) {
    for (int q = 0; q <= 255; ++q) {
        const float x = dequantize_value(q, kActivation);
        EXPECT_EQ(quantize_value(x, kActivation), q);
    }
    EXPECT_FLOAT_EQ(dequantize_value(144, kActivation), 1.0f);
    EXPECT_FLOAT_EQ(dequantize_value(-128, kWeight), -1.0f);
}

TEST(QuantParams, ScaleIsExactPowerOfTwo) {
    EXPECT_EQ(QuantParams({QuantType::kInt8, 3, 0}).scale(), 0.125f);
    EXPECT_EQ(QuantParams({QuantType::kInt8, -2, 0}).scale(), 4.0f);
    EXPECT_EQ(QuantParams({QuantType::kInt8, 0, 0}).scale(), 1.0f);
}

TEST(NonOverflowPosition, ExactFitKeepsPosition) {
    // 127 steps of 2^-4 reach exactly 7.9375: position 4 fits without clipping.
    EXPECT_EQ(non_overflow_position(0.0, 127.0 / 16, QuantType::kUint8, 128, 0), 4);
    // A hair more needs the next coarser scale.
    EXPECT_EQ(non_overflow_position(0.0, 127.0 / 16 + 1e-6, QuantType::kUint8, 128, 0), 3);
}

TEST(NonOverflowPosition, NegativeSideHasOneMoreStep) {
    // With zero point 128 the negative side has 128 steps: -8 fits at position 4, +8 does not.
    EXPECT_EQ(non_overflow_position(-8.0, 0.0, QuantType::kUint8, 128, 0), 4);
    EXPECT_EQ(non_overflow_position(0.0, 8.0, QuantType::kUint8, 128, 0), 3);
}

TEST(NonOverflowPosition, NeverClipsTheRange) {
    for (double max = 0.001; max < 1000; max *= 1.37) {
        const int position = non_overflow_position(-max / 3, max, QuantType::kInt8, 0, 0);
        const double scale = std::ldexp(1.0, -position);
        EXPECT_LE(max, 127 * scale) << "max " << max;
        // ...and is the finest such scale: half of it would clip.
        EXPECT_GT(max, 127 * scale / 2) << "max " << max;
    }
}

TEST(NonOverflowPosition, AllZeroUsesFallback) {
    EXPECT_EQ(non_overflow_position(0.0, 0.0, QuantType::kUint8, 128, 7), 7);
}

TEST(NonOverflowPosition, ClampedToSupportedRange) {
    EXPECT_EQ(non_overflow_position(0.0, 1e-12, QuantType::kInt8, 0, 0), kMaxPosition);
    EXPECT_EQ(non_overflow_position(0.0, 1e12, QuantType::kInt8, 0, 0), kMinPosition);
}

}  // namespace
}  // namespace edgeq

namespace edgeq {
namespace {

TEST(TensorHistogram, BinCentersSpanSymmetricRange) {
    TensorHistogram histogram;
    histogram.limit = 2.0f;
    histogram.counts.assign(4, 0);
    EXPECT_DOUBLE_EQ(histogram.bin_center(0), -1.5);
    EXPECT_DOUBLE_EQ(histogram.bin_center(3), 1.5);
}

}  // namespace
}  // namespace edgeq
