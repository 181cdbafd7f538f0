// npu-sim's scalar kernels: rounding in both modes, fixed-point multipliers against double
// arithmetic, and the integer Conv, MatMul and pools against naive float loops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "edgeq/npu/kernels.h"

namespace edgeq::npu {
namespace {

// Number of random cases in the randomized checks; enough to hit ties and both signs often.
constexpr int kRandomCases = 20000;

struct RoundingCase {
    int64_t value;
    int shift;
    int64_t half_up;
    int64_t half_even;
};

TEST(NpuRounding, ShiftRoundTable) {
    // value * 2^-shift: 3/2 = 1.5, -3/2 = -1.5, 5/2 = 2.5, -5/2 = -2.5, 7/4 = 1.75, -7/4 = -1.75,
    // 6/4 = 1.5, 1/2 = 0.5, -1/2 = -0.5, 9/8 = 1.125.
    const std::vector<RoundingCase> cases = {
        {3, 1, 2, 2},  {-3, 1, -1, -2}, {5, 1, 3, 2},    {-5, 1, -2, -2},
        {7, 2, 2, 2},  {-7, 2, -2, -2}, {6, 2, 2, 2},    {1, 1, 1, 0},
        {-1, 1, 0, 0}, {9, 3, 1, 1},    {4, 1, 2, 2},    {-4, 1, -2, -2},
        {0, 5, 0, 0},  {3, 0, 3, 3},    {3, -2, 12, 12}, {-3, -2, -12, -12},
    };
    for (const RoundingCase& c : cases) {
        EXPECT_EQ(shift_round(c.value, c.shift, Rounding::kHalfUp), c.half_up)
            << c.value << " >> " << c.shift;
        EXPECT_EQ(shift_round(c.value, c.shift, Rounding::kHalfEven), c.half_even)
            << c.value << " >> " << c.shift;
    }
}

TEST(NpuRounding, ShiftRoundVeryLargeShifts) {
    const int64_t big = int64_t{1} << 62;
    EXPECT_EQ(shift_round(big, 63, Rounding::kHalfUp), 1);    // exactly 0.5
    EXPECT_EQ(shift_round(big, 63, Rounding::kHalfEven), 0);  // a tie goes to 0
    EXPECT_EQ(shift_round(-big, 63, Rounding::kHalfUp), 0);   // -0.5 goes up to 0
    EXPECT_EQ(shift_round(-big, 63, Rounding::kHalfEven), 0);
    EXPECT_EQ(shift_round(big + 1, 63, Rounding::kHalfEven), 1);
    EXPECT_EQ(shift_round(big, 100, Rounding::kHalfUp), 0);
}

TEST(NpuRounding, DivideRoundTable) {
    // 5/2 = 2.5, -5/2 = -2.5, 7/2 = 3.5, 10/4 = 2.5, -10/4 = -2.5, 7/3 = 2.33, 8/3 = 2.67,
    // -8/3 = -2.67, 1/6 = 0.17, -3/6 = -0.5
    struct DivideCase {
        int64_t value;
        int64_t divisor;
        int64_t half_up;
        int64_t half_even;
    };
    const std::vector<DivideCase> cases = {
        {5, 2, 3, 2},     {-5, 2, -2, -2}, {7, 2, 4, 4}, {10, 4, 3, 2},
        {-10, 4, -2, -2}, {7, 3, 2, 2},    {8, 3, 3, 3}, {-8, 3, -3, -3},
        {1, 6, 0, 0},     {-3, 6, 0, 0},   {9, 1, 9, 9}, {-9, 1, -9, -9},
    };
    for (const DivideCase& c : cases) {
        EXPECT_EQ(divide_round(c.value, c.divisor, Rounding::kHalfUp), c.half_up)
            << c.value << " / " << c.divisor;
        EXPECT_EQ(divide_round(c.value, c.divisor, Rounding::kHalfEven), c.half_even)
            << c.value << " / " << c.divisor;
    }
}

// Round half up and half even of an exact rational given as a double (exact for the small
// values used here).
double reference_round(double x, Rounding rounding) {
    const double floor_x = std::floor(x);
    const double fraction = x - floor_x;
    if (fraction != 0.5) {
        return std::floor(x + 0.5);
    }
    if (rounding == Rounding::kHalfUp) {
        return floor_x + 1;
    }
    return std::fmod(floor_x, 2.0) == 0 ? floor_x : floor_x + 1;
}

TEST(NpuRounding, ShiftAndDivideMatchReference) {
    std::mt19937_64 random(7);
    std::uniform_int_distribution<int64_t> values(-100000, 100000);
    std::uniform_int_distribution<int> shifts(0, 12);
    std::uniform_int_distribution<int64_t> divisors(1, 50);
    for (int i = 0; i < kRandomCases; ++i) {
        const int64_t value = values(random);
        const int shift = shifts(random);
        const int64_t divisor = divisors(random);
        for (const Rounding rounding : {Rounding::kHalfUp, Rounding::kHalfEven}) {
            // value * 2^-shift is exact in double. value / divisor is exact when it is a tie
            // (k + 0.5 is representable), and otherwise at least 1/100 away from one.
            const double shifted = std::ldexp(static_cast<double>(value), -shift);
            ASSERT_EQ(shift_round(value, shift, rounding),
                      static_cast<int64_t>(reference_round(shifted, rounding)))
                << value << " >> " << shift << " " << rounding_name(rounding);
            const double quotient = static_cast<double>(value) / static_cast<double>(divisor);
            ASSERT_EQ(divide_round(value, divisor, rounding),
                      static_cast<int64_t>(reference_round(quotient, rounding)))
                << value << " / " << divisor << " " << rounding_name(rounding);
        }
    }
}

TEST(NpuRounding, FixedPointFromRealIsNormalized) {
    std::mt19937_64 random(11);
    std::uniform_real_distribution<double> exponents(-20.0, 4.0);
    // A 31-bit multiplier rounds the real to 2^-31 relative (half a unit in the last place of a
    // multiplier >= 2^30 is 2^-31 of it).
    constexpr double kRelativeMultiplierError = 1.0 / (int64_t{1} << 31);
    for (int i = 0; i < kRandomCases; ++i) {
        const double real = std::exp2(exponents(random));
        const FixedPointMultiplier fixed = fixed_point_from_real(real);
        ASSERT_GE(fixed.multiplier, int64_t{1} << 30) << real;
        ASSERT_LT(fixed.multiplier, int64_t{1} << 31) << real;
        const double represented = std::ldexp(static_cast<double>(fixed.multiplier), -fixed.shift);
        ASSERT_LE(std::abs(represented - real) / real, kRelativeMultiplierError) << real;
    }
    const FixedPointMultiplier half = fixed_point_from_real(0.5);
    EXPECT_EQ(half.multiplier, int64_t{1} << 30);
    EXPECT_EQ(half.shift, 31);
}

TEST(NpuRounding, MultiplyRoundMatchesDoubleReference) {
    std::mt19937_64 random(13);
    std::uniform_int_distribution<int64_t> values(-(int64_t{1} << 24), int64_t{1} << 24);
    std::uniform_real_distribution<double> exponents(-16.0, 2.0);
    for (int i = 0; i < kRandomCases; ++i) {
        const int64_t value = values(random);
        const FixedPointMultiplier fixed = fixed_point_from_real(std::exp2(exponents(random)));
        // The product value * multiplier is below 2^55 and exact in long double on x86-64
        // (64-bit mantissa); scaling by 2^-shift is exact too.
        const long double exact =
            std::ldexp(static_cast<long double>(value) * static_cast<long double>(fixed.multiplier),
                       -fixed.shift);
        for (const Rounding rounding : {Rounding::kHalfUp, Rounding::kHalfEven}) {
            const long double floor_exact = std::floor(exact);
            const long double fraction = exact - floor_exact;
            long double expected = 0;
            if (fraction < 0.5L) {
                expected = floor_exact;
            } else if (fraction > 0.5L || rounding == Rounding::kHalfUp) {
                expected = floor_exact + 1;
            } else {
                expected = std::fmod(floor_exact, 2.0L) == 0 ? floor_exact : floor_exact + 1;
            }
            ASSERT_EQ(multiply_round(value, fixed, rounding), static_cast<int64_t>(expected))
                << value << " * " << fixed.multiplier << " >> " << fixed.shift;
        }
    }
}

TEST(NpuRounding, MultiplyRoundTiesFollowMode) {
    // 0.5 as a fixed-point multiplier: 3 * 0.5 = 1.5 and 5 * 0.5 = 2.5 are ties.
    const FixedPointMultiplier half = fixed_point_from_real(0.5);
    EXPECT_EQ(multiply_round(3, half, Rounding::kHalfUp), 2);
    EXPECT_EQ(multiply_round(3, half, Rounding::kHalfEven), 2);
    EXPECT_EQ(multiply_round(5, half, Rounding::kHalfUp), 3);
    EXPECT_EQ(multiply_round(5, half, Rounding::kHalfEven), 2);
    EXPECT_EQ(multiply_round(-3, half, Rounding::kHalfUp), -1);
    EXPECT_EQ(multiply_round(-3, half, Rounding::kHalfEven), -2);
}

TEST(NpuRounding, SaturateClampsToType) {
    EXPECT_EQ(saturate(300, QuantType::kUint8), 255);
    EXPECT_EQ(saturate(-4, QuantType::kUint8), 0);
    EXPECT_EQ(saturate(-200, QuantType::kInt8), -128);
    EXPECT_EQ(saturate(100, QuantType::kInt8), 100);
}

// ---------------------------------------------------------------------------------------------
// Kernels against naive float loops

template <typename T>
Tensor<T> random_tensor(std::vector<int64_t> shape, int64_t low, int64_t high, uint64_t seed) {
    std::mt19937_64 random(seed);
    std::uniform_int_distribution<int64_t> values(low, high);
    Tensor<T> tensor{std::move(shape), {}};
    tensor.data.resize(static_cast<size_t>(element_count(tensor.shape)));
    for (T& value : tensor.data) {
        value = static_cast<T>(values(random));
    }
    return tensor;
}

// Naive conv in float with explicit bounds checks, over (q - z) values. Every sum is an integer
// below 2^24, so float is exact and the comparison can be exact.
std::vector<float> naive_conv(const Tensor<uint8_t>& input, float input_zero_point,
                              const Tensor<int8_t>& weight, const Window2d& window, int64_t group) {
    const int64_t batch = input.shape[0];
    const int64_t channels = input.shape[1];
    const int64_t height = input.shape[2];
    const int64_t width = input.shape[3];
    const int64_t out_channels = weight.shape[0];
    const int64_t group_channels = weight.shape[1];
    const auto [out_height, out_width] = window_output_size(window, height, width);
    std::vector<float> output;
    for (int64_t n = 0; n < batch; ++n) {
        for (int64_t m = 0; m < out_channels; ++m) {
            const int64_t g = m / (out_channels / group);
            for (int64_t y = 0; y < out_height; ++y) {
                for (int64_t x = 0; x < out_width; ++x) {
                    float sum = 0;
                    for (int64_t c = 0; c < group_channels; ++c) {
                        for (int64_t i = 0; i < weight.shape[2]; ++i) {
                            for (int64_t j = 0; j < weight.shape[3]; ++j) {
                                const int64_t in_y = y * window.strides[0] - window.pads[0] +
                                                     i * window.dilations[0];
                                const int64_t in_x = x * window.strides[1] - window.pads[1] +
                                                     j * window.dilations[1];
                                if (in_y < 0 || in_y >= height || in_x < 0 || in_x >= width) {
                                    continue;
                                }
                                const int64_t channel = g * group_channels + c;
                                const float a =
                                    static_cast<float>(
                                        input.data[((n * channels + channel) * height + in_y) *
                                                       width +
                                                   in_x]) -
                                    input_zero_point;
                                const float b = static_cast<float>(
                                    weight.data[((m * group_channels + c) * weight.shape[2] + i) *
                                                    weight.shape[3] +
                                                j]);
                                sum += a * b;
                            }
                        }
                    }
                    output.push_back(sum);
                }
            }
        }
    }
    return output;
}

struct ConvCase {
    std::vector<int64_t> input_shape;
    std::vector<int64_t> weight_shape;
    Window2d window;
    int64_t group;
};

TEST(NpuKernels, ConvMatchesNaiveFloat) {
    std::vector<ConvCase> cases;
    Window2d plain;
    plain.kernel = {3, 3};
    cases.push_back({{2, 3, 7, 6}, {4, 3, 3, 3}, plain, 1});
    Window2d padded = plain;
    padded.pads = {1, 1, 1, 1};
    cases.push_back({{1, 4, 8, 8}, {6, 2, 3, 3}, padded, 2});
    Window2d strided = plain;
    strided.strides = {2, 3};
    strided.pads = {0, 2, 1, 1};
    cases.push_back({{1, 2, 9, 10}, {3, 2, 3, 3}, strided, 1});
    Window2d dilated;
    dilated.kernel = {2, 3};
    dilated.dilations = {2, 2};
    dilated.pads = {1, 2, 2, 1};
    cases.push_back({{2, 4, 7, 9}, {4, 1, 2, 3}, dilated, 4});

    uint64_t seed = 100;
    for (const ConvCase& c : cases) {
        const auto input = random_tensor<uint8_t>(c.input_shape, 0, 255, seed++);
        const auto weight = random_tensor<int8_t>(c.weight_shape, -128, 127, seed++);
        const Tensor<int32_t> result =
            conv2d_accumulate<int32_t>(input, 128, weight, 0, c.window, c.group);
        const std::vector<float> expected = naive_conv(input, 128.0f, weight, c.window, c.group);
        ASSERT_EQ(result.data.size(), expected.size());
        for (size_t i = 0; i < expected.size(); ++i) {
            ASSERT_EQ(static_cast<float>(result.data[i]), expected[i])
                << "case " << seed << " at " << i;
        }
        const auto [out_height, out_width] =
            window_output_size(c.window, c.input_shape[2], c.input_shape[3]);
        EXPECT_EQ(result.shape, (std::vector<int64_t>{c.input_shape[0], c.weight_shape[0],
                                                      out_height, out_width}));
    }
}

TEST(NpuKernels, ConvWeightZeroPointSubtracted) {
    const auto input = random_tensor<int8_t>({1, 2, 5, 5}, -128, 127, 3);
    const auto weight = random_tensor<uint8_t>({3, 2, 3, 3}, 0, 255, 4);
    Window2d window;
    window.kernel = {3, 3};
    window.pads = {1, 1, 1, 1};
    const Tensor<int32_t> result = conv2d_accumulate<int32_t>(input, -5, weight, 120, window, 1);

    // The same sums from float tensors of (q - z), through the float instantiation.
    Tensor<float> input_float{input.shape, {}};
    for (const int8_t value : input.data) {
        input_float.data.push_back(static_cast<float>(value) + 5.0f);
    }
    Tensor<float> weight_float{weight.shape, {}};
    for (const uint8_t value : weight.data) {
        weight_float.data.push_back(static_cast<float>(value) - 120.0f);
    }
    const Tensor<float> expected =
        conv2d_accumulate<float>(input_float, 0.0f, weight_float, 0.0f, window, 1);
    ASSERT_EQ(result.data.size(), expected.data.size());
    for (size_t i = 0; i < expected.data.size(); ++i) {
        ASSERT_EQ(static_cast<float>(result.data[i]), expected.data[i]) << i;
    }
}

TEST(NpuKernels, MatmulMatchesNaiveFloat) {
    const auto a = random_tensor<uint8_t>({2, 3, 17}, 0, 255, 21);
    const auto b = random_tensor<int8_t>({17, 5}, -128, 127, 22);
    const Tensor<int32_t> result = matmul_accumulate<int32_t>(a, 128, b, 3);
    ASSERT_EQ(result.shape, (std::vector<int64_t>{2, 3, 5}));
    for (int64_t r = 0; r < 6; ++r) {
        for (int64_t j = 0; j < 5; ++j) {
            float expected = 0;
            for (int64_t k = 0; k < 17; ++k) {
                expected += (static_cast<float>(a.data[r * 17 + k]) - 128.0f) *
                            (static_cast<float>(b.data[k * 5 + j]) - 3.0f);
            }
            ASSERT_EQ(static_cast<float>(result.data[r * 5 + j]), expected) << r << "," << j;
        }
    }
}

TEST(NpuKernels, TransposeSwapsAxes) {
    const Tensor<int8_t> matrix{{2, 3}, {1, 2, 3, 4, 5, 6}};
    const Tensor<int8_t> transposed = transpose2d(matrix);
    EXPECT_EQ(transposed.shape, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(transposed.data, (std::vector<int8_t>{1, 4, 2, 5, 3, 6}));
}

TEST(NpuKernels, MaxPoolMatchesNaive) {
    const auto input = random_tensor<uint8_t>({2, 3, 7, 8}, 0, 255, 31);
    Window2d window;
    window.kernel = {3, 2};
    window.strides = {2, 2};
    window.pads = {1, 0, 1, 1};
    window.ceil_mode = true;
    const Tensor<uint8_t> result = max_pool2d(input, window);
    const auto [out_height, out_width] = window_output_size(window, 7, 8);
    ASSERT_EQ(result.shape, (std::vector<int64_t>{2, 3, out_height, out_width}));
    for (int64_t p = 0; p < 6; ++p) {
        for (int64_t y = 0; y < out_height; ++y) {
            for (int64_t x = 0; x < out_width; ++x) {
                int largest = -1;
                for (int64_t i = 0; i < 3; ++i) {
                    for (int64_t j = 0; j < 2; ++j) {
                        const int64_t in_y = y * 2 - 1 + i;
                        const int64_t in_x = x * 2 + j;
                        if (in_y >= 0 && in_y < 7 && in_x >= 0 && in_x < 8) {
                            largest = std::max<int>(largest, input.data[(p * 7 + in_y) * 8 + in_x]);
                        }
                    }
                }
                ASSERT_EQ(result.data[(p * out_height + y) * out_width + x], largest)
                    << p << "," << y << "," << x;
            }
        }
    }
}

TEST(NpuKernels, WindowSumsAndDivisorsMatchNaive) {
    const auto input = random_tensor<int8_t>({1, 2, 6, 5}, -128, 127, 41);
    for (const bool include_pad : {false, true}) {
        Window2d window;
        window.kernel = {3, 3};
        window.strides = {2, 2};
        window.pads = {1, 1, 1, 1};
        window.count_include_pad = include_pad;
        std::vector<int64_t> divisors;
        const Tensor<int32_t> sums = window_sums2d<int32_t>(input, int32_t{-3}, window, divisors);
        const auto [out_height, out_width] = window_output_size(window, 6, 5);
        ASSERT_EQ(divisors.size(), sums.data.size());
        for (int64_t p = 0; p < 2; ++p) {
            for (int64_t y = 0; y < out_height; ++y) {
                for (int64_t x = 0; x < out_width; ++x) {
                    int64_t sum = 0;
                    int64_t inside = 0;
                    int64_t in_padding = 0;
                    for (int64_t i = 0; i < 3; ++i) {
                        for (int64_t j = 0; j < 3; ++j) {
                            const int64_t in_y = y * 2 - 1 + i;
                            const int64_t in_x = x * 2 - 1 + j;
                            if (in_y >= 0 && in_y < 6 && in_x >= 0 && in_x < 5) {
                                sum += input.data[(p * 6 + in_y) * 5 + in_x] + 3;
                                ++inside;
                            } else if (in_y >= -1 && in_y < 7 && in_x >= -1 && in_x < 6) {
                                ++in_padding;
                            }
                        }
                    }
                    const size_t index = static_cast<size_t>((p * out_height + y) * out_width + x);
                    ASSERT_EQ(sums.data[index], sum) << index;
                    ASSERT_EQ(divisors[index], include_pad ? inside + in_padding : inside) << index;
                }
            }
        }
    }
}

TEST(NpuKernels, ConcatAlongMiddleAxis) {
    const Tensor<int32_t> a{{2, 1, 2}, {1, 2, 3, 4}};
    const Tensor<int32_t> b{{2, 2, 2}, {5, 6, 7, 8, 9, 10, 11, 12}};
    const Tensor<int32_t> result = concat<int32_t>({&a, &b}, 1);
    EXPECT_EQ(result.shape, (std::vector<int64_t>{2, 3, 2}));
    EXPECT_EQ(result.data, (std::vector<int32_t>{1, 2, 5, 6, 7, 8, 3, 4, 9, 10, 11, 12}));
}

TEST(NpuKernels, ReshapeAndFlattenShapes) {
    EXPECT_EQ(reshape_shape({2, 64, 6, 6}, {-1, 2304}, false), (std::vector<int64_t>{2, 2304}));
    EXPECT_EQ(reshape_shape({2, 3, 4}, {0, -1}, false), (std::vector<int64_t>{2, 12}));
    EXPECT_EQ(flatten_shape({2, 3, 4, 5}, 1), (std::vector<int64_t>{2, 60}));
    EXPECT_EQ(flatten_shape({2, 3, 4, 5}, -1), (std::vector<int64_t>{24, 5}));
    EXPECT_EQ(flatten_shape({2, 3}, 0), (std::vector<int64_t>{1, 6}));
}

TEST(NpuKernels, CeilModeOutputSize) {
    Window2d window;
    window.kernel = {2, 2};
    window.strides = {2, 2};
    EXPECT_EQ(window_output_size(window, 7, 6), (std::array<int64_t, 2>{3, 3}));
    window.ceil_mode = true;
    EXPECT_EQ(window_output_size(window, 7, 6), (std::array<int64_t, 2>{4, 3}));
}

}  // namespace
}  // namespace edgeq::npu
