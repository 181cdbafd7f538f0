// Calibration methods (MinMax, NonOverflow, MinMSE, Percentile, Entropy) on hand-built
// histograms with hand-computed results, on constant and all-zero tensors, and end to end on a
// random FashionCNN, where the calibration batch size must not change any chosen scale.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "edgeq/common/error.h"
#include "edgeq/onnx/export.h"
#include "edgeq/quant/calibration.h"
#include "edgeq/quant/calibration_methods.h"
#include "support/model_support.h"

namespace edgeq {
namespace {

const std::vector<CalibrationMethod> kAllMethods = {
    CalibrationMethod::kMinMax, CalibrationMethod::kNonOverflow, CalibrationMethod::kMinMse,
    CalibrationMethod::kPercentile, CalibrationMethod::kEntropy};

struct NamedFormat {
    std::string name;
    ActivationFormat format;
};

const std::vector<NamedFormat> kAllFormats = {{"XINT8", kXint8Activations},
                                              {"U8S8", kU8S8Activations},
                                              {"A8W8", kA8W8Activations},
                                              {"A16W8", kA16W8Activations}};

// Range and histogram of `values`, built the way the two calibration passes build them.
struct Statistics {
    TensorRange range;
    TensorHistogram histogram;
};

Statistics statistics_of(const std::vector<float>& values) {
    Statistics result;
    result.range = {values.front(), values.front(), static_cast<int64_t>(values.size())};
    for (const float value : values) {
        result.range.min = std::min(result.range.min, value);
        result.range.max = std::max(result.range.max, value);
    }
    result.histogram.limit = std::max(std::abs(result.range.min), std::abs(result.range.max));
    result.histogram.counts.assign(kHistogramBins, 0);
    if (result.histogram.limit > 0) {
        for (const float value : values) {
            result.histogram.add(value);
        }
    }
    return result;
}

// `count` values evenly spaced over [low, high]: the centres of `count` equal cells.
std::vector<float> evenly_spaced(double low, double high, int count) {
    std::vector<float> values;
    for (int i = 0; i < count; ++i) {
        values.push_back(static_cast<float>(low + (high - low) * (i + 0.5) / count));
    }
    return values;
}

// Deterministic samples of a Laplace distribution with scale b (its quantiles at evenly spaced
// probabilities): a peaked bulk with long tails, as activations before a ReLU often look.
std::vector<float> laplace_quantiles(double b, int count) {
    std::vector<float> values;
    for (int i = 0; i < count; ++i) {
        const double p = (i + 0.5) / count;
        const double x = p < 0.5 ? b * std::log(2 * p) : -b * std::log(2 * (1 - p));
        values.push_back(static_cast<float>(x));
    }
    return values;
}

ScaleChoice choose(const Statistics& statistics, const ActivationFormat& format,
                   CalibrationMethod method, double percentile = kDefaultPercentile) {
    return choose_activation_params(statistics.range, &statistics.histogram, format,
                                    {method, percentile});
}

// Mean squared error of quantizing `values` directly with `params`.
double direct_mse(const std::vector<float>& values, const QuantParams& params) {
    double sum = 0;
    for (const float value : values) {
        const double error =
            double{value} - double{dequantize_value(quantize_value(value, params), params)};
        sum += error * error;
    }
    return sum / static_cast<double>(values.size());
}

// Runs `action`, expects an edgeq::Error and returns its exit code (kSuccess when none).
ExitCode error_code_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const Error& error) {
        return error.code();
    }
    return ExitCode::kSuccess;
}

// ---------------------------------------------------------------------------------------------
// Names

TEST(CalibrationMethodNames, ParseRoundTrips) {
    for (const CalibrationMethod method : kAllMethods) {
        EXPECT_EQ(parse_calibration_method(calibration_method_name(method)), method);
    }
    EXPECT_EQ(calibration_method_name(CalibrationMethod::kNonOverflow), "nonoverflow");
    EXPECT_EQ(calibration_method_name(CalibrationMethod::kEntropy), "entropy");
}

TEST(CalibrationMethodNames, UnknownNameIsUsageError) {
    try {
        parse_calibration_method("kl");
        ADD_FAILURE() << "no edgeq::Error was thrown";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kUsage);
        const std::string message = error.what();
        for (const CalibrationMethod method : kAllMethods) {
            EXPECT_NE(message.find(calibration_method_name(method)), std::string::npos) << message;
        }
    }
}

TEST(CalibrationMethodNames, HistogramNeeds) {
    EXPECT_FALSE(method_needs_histogram(CalibrationMethod::kMinMax));
    EXPECT_FALSE(method_needs_histogram(CalibrationMethod::kNonOverflow));
    EXPECT_TRUE(method_needs_histogram(CalibrationMethod::kMinMse));
    EXPECT_TRUE(method_needs_histogram(CalibrationMethod::kPercentile));
    EXPECT_TRUE(method_needs_histogram(CalibrationMethod::kEntropy));
}

// ---------------------------------------------------------------------------------------------
// Histogram layout

TEST(CalibrationMethodHistogram, MirroredBins) {
    TensorHistogram histogram;
    histogram.limit = 2.0f;
    histogram.counts.assign(8, 0);  // bins of width 0.5; bin 4 starts at 0
    histogram.add(0.7f);            // [0.5, 1.0): bin 4 + 1
    histogram.add(-0.7f);           // (-1.0, -0.5]: bin 3 - 1
    histogram.add(0.0f);
    histogram.add(-0.0f);
    histogram.add(2.0f);   // the limit itself: outermost bin
    histogram.add(-2.0f);  // outermost bin on the other side
    histogram.add(-0.5f);  // mirrors 0.5, the start of bin 5: bin 2, (-1.0, -0.5]
    EXPECT_EQ(histogram.counts, (std::vector<int64_t>{1, 0, 2, 0, 2, 1, 0, 1}));
    EXPECT_EQ(histogram.total(), 7);
    EXPECT_EQ(histogram.absolute_counts(), (std::vector<int64_t>{2, 3, 0, 2}));
}

TEST(CalibrationMethodHistogram, CentresMatchLayout) {
    TensorHistogram histogram;
    histogram.limit = 2.0f;
    histogram.counts.assign(8, 0);
    EXPECT_DOUBLE_EQ(histogram.bin_center(4), 0.25);
    EXPECT_DOUBLE_EQ(histogram.bin_center(3), -0.25);
    EXPECT_DOUBLE_EQ(histogram.bin_center(0), -1.75);
}

// ---------------------------------------------------------------------------------------------
// Squared error

// The error of a uniform distribution with a grid well inside its range is the textbook s^2 / 12.
// Summing 4096 bin integrals in double leaves a relative error far below 1e-9.
constexpr double kSummationTolerance = 1e-9;

TEST(CalibrationMethodMse, UniformIsStepSquaredOverTwelve) {
    TensorHistogram histogram;
    histogram.limit = 1.0f;
    histogram.counts.assign(kHistogramBins, 1);
    const QuantParams params = power_of_two_params(QuantType::kUint8, 4, 128);  // [-8, 7.94]
    const double step = 1.0 / 16;
    EXPECT_NEAR(quantization_mse(histogram, params), step * step / 12,
                step * step / 12 * kSummationTolerance);
}

TEST(CalibrationMethodMse, BinCentresOnGridStillCountError) {
    // Bins of width 2/4096 = 2 s with s = 2^-12: every bin centre is a grid point, so an estimate
    // from the centres alone would report zero error. The values spread over the bins still
    // round, with mean squared error s^2 / 12. Int16 keeps the whole range [-1, 1] unclipped.
    TensorHistogram histogram;
    histogram.limit = 1.0f;
    histogram.counts.assign(kHistogramBins, 1);
    const QuantParams params = power_of_two_params(QuantType::kInt16, 12, 0);
    const double step = std::ldexp(1.0, -12);
    EXPECT_NEAR(quantization_mse(histogram, params), step * step / 12,
                step * step / 12 * kSummationTolerance);
}

// The histogram model (values spread evenly within each of 4096 bins) against the exact error
// of 200,001 values; within 1% for these smooth distributions.
constexpr double kHistogramModelTolerance = 0.01;

TEST(CalibrationMethodMse, MatchesDirectErrorWithClipping) {
    const std::vector<float> values = laplace_quantiles(0.3, 200001);
    const Statistics statistics = statistics_of(values);
    for (const int position : {3, 5, 7, 9}) {
        const QuantParams params = power_of_two_params(QuantType::kUint8, position, 128);
        const double expected = direct_mse(values, params);
        EXPECT_NEAR(quantization_mse(statistics.histogram, params), expected,
                    expected * kHistogramModelTolerance)
            << "position " << position;
    }
    const QuantParams asymmetric =
        float_params_for_range(-0.5, 1.2, QuantType::kUint8, /*symmetric=*/false);
    const double expected = direct_mse(values, asymmetric);
    EXPECT_NEAR(quantization_mse(statistics.histogram, asymmetric), expected,
                expected * kHistogramModelTolerance);
}

TEST(CalibrationMethodMse, LimitZeroIsZero) {
    TensorHistogram histogram;
    histogram.counts.assign(kHistogramBins, 0);
    histogram.counts[kHistogramBins / 2] = 10;  // zeros, counted without a bin width
    EXPECT_EQ(quantization_mse(histogram, power_of_two_params(QuantType::kUint8, 7, 128)), 0.0);
}

// ---------------------------------------------------------------------------------------------
// MinMax and NonOverflow

TEST(CalibrationMethodMinMax, PowerOfTwoFinestWithoutClipping) {
    // max 1.5 needs s >= 1.5 / 127 = 0.0118 and min -1 needs s >= 1 / 128: 2^-6 = 0.0156 is the
    // finest power of two that covers both, 2^-7 = 0.0078 would clip.
    const Statistics statistics = statistics_of({-1.0f, 0.2f, 1.5f});
    const ScaleChoice choice = choose(statistics, kXint8Activations, CalibrationMethod::kMinMax);
    EXPECT_TRUE(choice.params.power_of_two);
    EXPECT_EQ(choice.params.position, 6);
    EXPECT_EQ(choice.params.zero_point, 128);
    EXPECT_TRUE(choice.note.empty()) << choice.note;
    EXPECT_FALSE(choice.degenerate);
    EXPECT_FALSE(choice.saturates);
}

TEST(CalibrationMethodMinMax, FloatScalesAsOnnxRuntime) {
    const Statistics statistics = statistics_of({-1.0f, 0.2f, 1.5f});
    const ScaleChoice symmetric = choose(statistics, kA8W8Activations, CalibrationMethod::kMinMax);
    EXPECT_FALSE(symmetric.params.power_of_two);
    EXPECT_FLOAT_EQ(symmetric.params.float_scale, 1.5f / 127);
    EXPECT_EQ(symmetric.params.zero_point, 0);

    // Asymmetric uint8: s = 2.5 / 255, and z = round(0 - (-1) / s) = round(102) = 102.
    const ScaleChoice asymmetric = choose(statistics, kU8S8Activations, CalibrationMethod::kMinMax);
    EXPECT_FLOAT_EQ(asymmetric.params.float_scale, 2.5f / 255);
    EXPECT_EQ(asymmetric.params.zero_point, 102);
}

TEST(CalibrationMethodNonOverflow, SameAsMinMaxForEveryFormat) {
    const Statistics statistics = statistics_of(laplace_quantiles(0.7, 5001));
    for (const NamedFormat& named : kAllFormats) {
        const QuantParams min_max =
            choose(statistics, named.format, CalibrationMethod::kMinMax).params;
        const QuantParams non_overflow =
            choose(statistics, named.format, CalibrationMethod::kNonOverflow).params;
        EXPECT_EQ(non_overflow.position, min_max.position) << named.name;
        EXPECT_EQ(non_overflow.float_scale, min_max.float_scale) << named.name;
        EXPECT_EQ(non_overflow.zero_point, min_max.zero_point) << named.name;
    }
}

TEST(CalibrationMethodMinMax, SaturatesBeyondCoarsestScale) {
    // The coarsest scale 2^8 covers 127 * 256 = 32512 above zero.
    const Statistics covered = statistics_of({-30000.0f, 30000.0f});
    const Statistics beyond = statistics_of({-1e5f, 1e5f});
    for (const CalibrationMethod method : kAllMethods) {
        const std::string name = calibration_method_name(method);
        EXPECT_FALSE(choose(covered, kXint8Activations, method).saturates) << name;
        const ScaleChoice choice = choose(beyond, kXint8Activations, method);
        EXPECT_TRUE(choice.saturates) << name;
        EXPECT_NE(choice.note.find("saturate"), std::string::npos) << name << ": " << choice.note;
        EXPECT_FALSE(choose(beyond, kA8W8Activations, method).saturates) << name;
    }
}

// ---------------------------------------------------------------------------------------------
// MinMSE

TEST(CalibrationMethodMinMse, PowerOfTwoUniformPicksOneFiner) {
    // Uniform on (-1, 1): the non-overflow position is 6 (max 0.99998 needs s > 2^-7). Position
    // 7 clips only (0.996, 1), error about 7e-8, and rounds with (1/128)^2 / 12 = 5.1e-6, well
    // below position 6's (1/64)^2 / 12 = 2.0e-5. Position 8 clips half the range (error 0.04).
    const Statistics statistics = statistics_of(evenly_spaced(-1.0, 1.0, 40960));
    ASSERT_EQ(choose(statistics, kXint8Activations, CalibrationMethod::kMinMax).params.position, 6);
    const ScaleChoice choice = choose(statistics, kXint8Activations, CalibrationMethod::kMinMse);
    EXPECT_EQ(choice.params.position, 7);
    EXPECT_EQ(choice.params.zero_point, 128);
    EXPECT_NE(choice.note.find("position 7"), std::string::npos) << choice.note;
}

TEST(CalibrationMethodMinMse, PowerOfTwoReachesThreeFiner) {
    // 1,000,000 values uniform on (-1, 1) and one at 60. Non-overflow: 60 / 127 = 0.47 needs
    // 2^-1. Mean squared errors, rounding s^2 / 12 plus the clipped outlier (60 - 127 s)^2 / 1e6:
    //   position 1 (s = 1/2):  2.1e-2 + 0
    //   position 3 (s = 1/8):  1.3e-3 + 1.9e-3 = 3.2e-3
    //   position 4 (s = 1/16): 3.3e-4 + 2.7e-3 = 3.0e-3, the least, three positions finer
    std::vector<float> values = evenly_spaced(-1.0, 1.0, 1000000);
    values.push_back(60.0f);
    const Statistics statistics = statistics_of(values);
    ASSERT_EQ(
        choose(statistics, kXint8Activations, CalibrationMethod::kNonOverflow).params.position, 1);
    const ScaleChoice choice = choose(statistics, kXint8Activations, CalibrationMethod::kMinMse);
    EXPECT_EQ(choice.params.position, 4);
}

TEST(CalibrationMethodMinMse, FloatBeatsEveryWiderRange) {
    // Against the exact error of the values themselves: the chosen clipping range must do better
    // than MinMax and not worse (beyond the histogram model's tolerance) than any candidate of a
    // coarse sweep of its own.
    const std::vector<float> values = laplace_quantiles(0.5, 100001);
    const Statistics statistics = statistics_of(values);
    for (const NamedFormat& named : {kAllFormats[1], kAllFormats[2]}) {
        const ScaleChoice choice = choose(statistics, named.format, CalibrationMethod::kMinMse);
        const double chosen_error = direct_mse(values, choice.params);
        const QuantParams min_max =
            choose(statistics, named.format, CalibrationMethod::kMinMax).params;
        EXPECT_LT(chosen_error, direct_mse(values, min_max)) << named.name;
        EXPECT_LT(choice.params.float_scale, min_max.float_scale) << named.name;
        EXPECT_NE(choice.note.find("MinMSE clips"), std::string::npos) << choice.note;
        for (int step = 16; step <= 256; step += 16) {
            const double fraction = step / 256.0;
            const QuantParams candidate = float_params_for_range(
                statistics.range.min * fraction, statistics.range.max * fraction, named.format.type,
                named.format.symmetric);
            EXPECT_LE(chosen_error, direct_mse(values, candidate) * (1 + kHistogramModelTolerance))
                << named.name << " fraction " << fraction;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Percentile

// 99,999 values evenly over [0, 1) and one outlier at 100: 100,000 values, so 99.999% allows
// exactly one value outside.
std::vector<float> bulk_with_outlier() {
    std::vector<float> values = evenly_spaced(0.0, 1.0, 99999);
    values.push_back(100.0f);
    return values;
}

TEST(CalibrationMethodPercentile, ClipsSingleOutlier) {
    const Statistics statistics = statistics_of(bulk_with_outlier());
    // |x| bins have width 100 / 2048; the bulk ends in bin floor(0.99999 * 20.48) = 20, whose
    // upper edge is 21 * 100 / 2048 = 1.0254.
    const double expected_high = 21 * 100.0 / 2048;
    const auto [low, high] =
        percentile_range(statistics.range, statistics.histogram, kDefaultPercentile, true);
    EXPECT_EQ(low, double{statistics.range.min});
    EXPECT_DOUBLE_EQ(high, expected_high);

    // XINT8: 1.0254 / 127 = 0.00807 > 2^-7, so position 6; MinMax needs 100 / 127 = 0.79, so 2^0.
    const ScaleChoice percentile =
        choose(statistics, kXint8Activations, CalibrationMethod::kPercentile);
    EXPECT_EQ(percentile.params.position, 6);
    EXPECT_NE(percentile.note.find("percentile"), std::string::npos) << percentile.note;
    EXPECT_EQ(choose(statistics, kXint8Activations, CalibrationMethod::kMinMax).params.position, 0);

    const ScaleChoice float_scale =
        choose(statistics, kA8W8Activations, CalibrationMethod::kPercentile);
    EXPECT_FLOAT_EQ(float_scale.params.float_scale, static_cast<float>(expected_high / 127));
}

TEST(CalibrationMethodPercentile, AsymmetricCutsEachTail) {
    // 100,000 values: one outlier on each side. 99.998% allows one value below and one above.
    std::vector<float> values = evenly_spaced(-1.0, 1.0, 99998);
    values.push_back(-50.0f);
    values.push_back(80.0f);
    const Statistics statistics = statistics_of(values);
    const auto [low, high] = percentile_range(statistics.range, statistics.histogram, 99.998,
                                              /*symmetric=*/false);
    // Signed bins have width 160 / 4096 = 0.0390625 starting at -80; the bulk's ends -0.99999
    // and 0.99999 lie in the bins (-1.015625, -0.9765625] and [0.9765625, 1.015625).
    EXPECT_DOUBLE_EQ(low, -1.015625);
    EXPECT_DOUBLE_EQ(high, 1.015625);

    // 99.999% allows half a value on each side, which rounds down to none: nothing is cut.
    const auto [full_low, full_high] =
        percentile_range(statistics.range, statistics.histogram, 99.999, false);
    EXPECT_EQ(full_low, -50.0);
    EXPECT_EQ(full_high, 80.0);
}

TEST(CalibrationMethodPercentile, HundredIsMinMax) {
    std::vector<float> values = laplace_quantiles(0.4, 20001);
    values.push_back(9.0f);
    const Statistics statistics = statistics_of(values);
    for (const NamedFormat& named : kAllFormats) {
        const QuantParams min_max =
            choose(statistics, named.format, CalibrationMethod::kMinMax).params;
        const ScaleChoice percentile =
            choose(statistics, named.format, CalibrationMethod::kPercentile, 100.0);
        EXPECT_EQ(percentile.params.position, min_max.position) << named.name;
        EXPECT_EQ(percentile.params.float_scale, min_max.float_scale) << named.name;
        EXPECT_EQ(percentile.params.zero_point, min_max.zero_point) << named.name;
        EXPECT_TRUE(percentile.note.empty()) << named.name << ": " << percentile.note;
    }
}

TEST(CalibrationMethodPercentile, LowerPercentileNeverWidens) {
    const Statistics statistics = statistics_of(laplace_quantiles(1.0, 50001));
    for (const bool symmetric : {true, false}) {
        double previous_low = statistics.range.min;
        double previous_high = statistics.range.max;
        for (const double percentile : {100.0, 99.999, 99.99, 99.9, 99.0, 90.0, 50.0}) {
            const auto [low, high] =
                percentile_range(statistics.range, statistics.histogram, percentile, symmetric);
            EXPECT_GE(low, previous_low) << percentile;
            EXPECT_LE(high, previous_high) << percentile;
            EXPECT_LT(low, high) << percentile;
            previous_low = low;
            previous_high = high;
        }
    }
}

TEST(CalibrationMethodPercentile, OutOfRangeIsUsageError) {
    const Statistics statistics = statistics_of({-1.0f, 1.0f});
    for (const double percentile : {0.0, -5.0, 100.5, std::nan("")}) {
        EXPECT_EQ(error_code_of([&] {
                      choose(statistics, kXint8Activations, CalibrationMethod::kPercentile,
                             percentile);
                  }),
                  ExitCode::kUsage)
            << percentile;
    }
}

// ---------------------------------------------------------------------------------------------
// Entropy

TEST(CalibrationMethodEntropy, ClipsOutlierOfPeakedBulk) {
    // |x| histogram: a falling bulk in bins 0..127 (counts 12800, 12700, ..., 100) and one
    // outlier in the last bin. The 128-bin window quantizes the bulk losslessly, so only the
    // outlier, folded into bin 127, separates P from Q. Every wider window merges bulk bins of
    // different counts into one level, which costs more.
    TensorHistogram histogram;
    histogram.limit = 100.0f;
    histogram.counts.assign(kHistogramBins, 0);
    const size_t half = kHistogramBins / 2;
    for (size_t k = 0; k < 128; ++k) {
        histogram.counts[half + k] = static_cast<int64_t>(100 * (128 - k));
    }
    histogram.counts[kHistogramBins - 1] = 1;
    const double width = 100.0 / static_cast<double>(half);
    EXPECT_DOUBLE_EQ(entropy_threshold(histogram, 128), 128 * width);

    const TensorRange range{0.0f, 100.0f, histogram.total()};
    const ScaleChoice choice = choose_activation_params(range, &histogram, kXint8Activations,
                                                        {CalibrationMethod::kEntropy});
    // 6.25 / 127 = 0.049 lies between 2^-5 and 2^-4: position 4. MinMax would take 2^0.
    EXPECT_EQ(choice.params.position, 4);
    EXPECT_NE(choice.note.find("entropy"), std::string::npos) << choice.note;
}

TEST(CalibrationMethodEntropy, FlatBulkNeedsNoClipping) {
    // A uniform bulk over bins 0..127 and one outlier: the full window merges 16 equal bins per
    // level and keeps the outlier in its own level, so Q equals P and the divergence is zero.
    // Entropy then keeps the full range (the histogram does not see the rounding of the bulk).
    TensorHistogram histogram;
    histogram.limit = 100.0f;
    histogram.counts.assign(kHistogramBins, 0);
    const size_t half = kHistogramBins / 2;
    for (size_t k = 0; k < 128; ++k) {
        histogram.counts[half + k] = 1000;
    }
    histogram.counts[kHistogramBins - 1] = 1;
    EXPECT_DOUBLE_EQ(entropy_threshold(histogram, 128), 100.0);
}

TEST(CalibrationMethodEntropy, LevelsFromFormat) {
    const TensorRange positive{0.0f, 4.0f, 10};
    const TensorRange signed_range{-1.0f, 4.0f, 10};
    EXPECT_EQ(entropy_levels(positive, kXint8Activations), 128);
    EXPECT_EQ(entropy_levels(signed_range, kA8W8Activations), 128);
    EXPECT_EQ(entropy_levels(positive, kU8S8Activations), 256);
    EXPECT_EQ(entropy_levels(signed_range, kU8S8Activations), 128);
    EXPECT_EQ(entropy_levels(signed_range, kA16W8Activations), 32768);
}

TEST(CalibrationMethodEntropy, SixteenBitKeepsFullRange) {
    // 32768 levels exceed the 2048 |x| bins, so quantization loses nothing the histogram shows.
    std::vector<float> values = laplace_quantiles(0.2, 20001);
    values.push_back(30.0f);
    const Statistics statistics = statistics_of(values);
    const QuantParams min_max =
        choose(statistics, kA16W8Activations, CalibrationMethod::kMinMax).params;
    const ScaleChoice entropy = choose(statistics, kA16W8Activations, CalibrationMethod::kEntropy);
    EXPECT_EQ(entropy.params.float_scale, min_max.float_scale);
    EXPECT_TRUE(entropy.note.empty()) << entropy.note;
}

TEST(CalibrationMethodEntropy, AsymmetricClipsBothSidesAtThreshold) {
    std::vector<float> values = laplace_quantiles(0.2, 100001);
    values.push_back(-40.0f);
    values.push_back(50.0f);
    const Statistics statistics = statistics_of(values);
    const double threshold = entropy_threshold(statistics.histogram, 128);
    ASSERT_LT(threshold, 40.0);
    const ScaleChoice choice = choose(statistics, kU8S8Activations, CalibrationMethod::kEntropy);
    const QuantParams expected =
        float_params_for_range(-threshold, threshold, QuantType::kUint8, false);
    EXPECT_EQ(choice.params.float_scale, expected.float_scale);
    EXPECT_EQ(choice.params.zero_point, expected.zero_point);
}

// ---------------------------------------------------------------------------------------------
// Constant and all-zero tensors, and wrong calls

struct DegenerateCase {
    std::string name;
    TensorRange range;
    TensorHistogram histogram;
};

std::vector<DegenerateCase> degenerate_cases() {
    std::vector<DegenerateCase> cases;
    // All zero as the collector leaves it: limit 0, no counts (nothing had a bin to go to).
    TensorHistogram empty;
    empty.counts.assign(kHistogramBins, 0);
    cases.push_back({"all zero", {0.0f, 0.0f, 500}, empty});
    // All zero with the zeros counted anyway, in a histogram of limit 0.
    TensorHistogram counted_zeros = empty;
    counted_zeros.counts[kHistogramBins / 2] = 500;
    cases.push_back({"all zero, counted", {0.0f, 0.0f, 500}, counted_zeros});
    cases.push_back({"never produced", {}, empty});
    for (const float constant : {3.5f, -2.0f, 1e-30f, -1e-41f, 3e38f}) {
        const Statistics statistics = statistics_of(std::vector<float>(500, constant));
        cases.push_back(
            {fmt::format("constant {}", constant), statistics.range, statistics.histogram});
    }
    return cases;
}

TEST(CalibrationMethodDegenerate, FiniteScaleEverywhere) {
    for (const DegenerateCase& tensor : degenerate_cases()) {
        for (const NamedFormat& named : kAllFormats) {
            for (const CalibrationMethod method : kAllMethods) {
                const std::string where =
                    tensor.name + ", " + named.name + ", " + calibration_method_name(method);
                const ScaleChoice choice = choose_activation_params(tensor.range, &tensor.histogram,
                                                                    named.format, {method});
                const float scale = choice.params.scale();
                EXPECT_TRUE(std::isfinite(scale)) << where;
                EXPECT_GT(scale, 0.0f) << where;
                EXPECT_TRUE(choice.degenerate) << where;
                EXPECT_FALSE(choice.note.empty()) << where;
                EXPECT_GE(choice.params.zero_point, quant_min(named.format.type)) << where;
                EXPECT_LE(choice.params.zero_point, quant_max(named.format.type)) << where;
                // The constant itself comes back within half a step, unless it lies beyond
                // the coarsest power-of-two scale, which is flagged.
                const float value = tensor.range.min;
                const float restored =
                    dequantize_value(quantize_value(value, choice.params), choice.params);
                EXPECT_TRUE(std::isfinite(restored)) << where;
                if (!choice.saturates) {
                    EXPECT_LE(std::abs(double{restored} - double{value}), double{scale} / 2)
                        << where;
                }
            }
        }
    }
}

TEST(CalibrationMethodDegenerate, AllZeroGetsFixedScale) {
    const TensorRange zero{0.0f, 0.0f, 100};
    const ScaleChoice xint8 = choose_activation_params(zero, nullptr, kXint8Activations, {});
    EXPECT_EQ(xint8.params.position, kAllZeroPosition);
    EXPECT_EQ(xint8.params.zero_point, 128);
    const ScaleChoice float_scale = choose_activation_params(zero, nullptr, kU8S8Activations, {});
    EXPECT_EQ(float_scale.params.float_scale, 1.0f);
    EXPECT_NE(float_scale.note.find("all zero"), std::string::npos) << float_scale.note;
}

TEST(CalibrationMethodDegenerate, TinyRangeGetsNormalScale) {
    // [0, 1e-40] is not constant, but its float scale would be subnormal (1e-40 / 127).
    const Statistics statistics = statistics_of({0.0f, 1e-40f});
    for (const CalibrationMethod method : kAllMethods) {
        const ScaleChoice choice = choose(statistics, kA8W8Activations, method);
        EXPECT_TRUE(std::isnormal(choice.params.float_scale)) << calibration_method_name(method);
    }
}

TEST(CalibrationMethodErrors, MissingHistogramIsInternalError) {
    const TensorRange range{-1.0f, 1.0f, 10};
    for (const CalibrationMethod method : kAllMethods) {
        const ExitCode code = error_code_of(
            [&] { choose_activation_params(range, nullptr, kXint8Activations, {method}); });
        const ExitCode expected =
            method_needs_histogram(method) ? ExitCode::kInternal : ExitCode::kSuccess;
        EXPECT_EQ(code, expected) << calibration_method_name(method);
    }
}

TEST(CalibrationMethodErrors, AsymmetricPowerOfTwoUnsupported) {
    const TensorRange range{-1.0f, 1.0f, 10};
    const ActivationFormat format{QuantType::kUint8, false, true};
    EXPECT_EQ(error_code_of([&] { choose_activation_params(range, nullptr, format, {}); }),
              ExitCode::kUnsupported);
}

// ---------------------------------------------------------------------------------------------
// Batch size, end to end

// Every float tensor of the exported FashionCNN: the input and each node's first output.
std::vector<std::string> activation_names(const onnx::ModelProto& model) {
    std::vector<std::string> names = {model.graph().input(0).name()};
    for (const onnx::NodeProto& node : model.graph().node()) {
        names.push_back(node.output(0));
    }
    return names;
}

struct CalibrationStatistics {
    std::map<std::string, TensorRange> ranges;
    std::map<std::string, TensorHistogram> histograms;
};

CalibrationStatistics calibrate(const onnx::ModelProto& model, const LabelledImages& images,
                                int64_t batch_size) {
    LabelledImagesReader reader(images, batch_size);
    CalibrationStatistics statistics;
    statistics.ranges = collect_tensor_ranges(model, activation_names(model), reader,
                                              SessionConfig{}, "random FashionCNN");
    statistics.histograms = collect_tensor_histograms(model, statistics.ranges, reader,
                                                      SessionConfig{}, "random FashionCNN");
    return statistics;
}

TEST(CalibrationMethodBatchSize, OneAndHundredGiveSameScales) {
    FashionCnn network = test::make_random_fashion_cnn(5);
    const onnx::ModelProto model = export_fashion_cnn(export_state_dict(network));
    const LabelledImages images = test::make_synthetic_images(300, 5);
    const CalibrationStatistics single = calibrate(model, images, 1);
    const CalibrationStatistics hundred = calibrate(model, images, 100);

    ASSERT_EQ(single.ranges.size(), activation_names(model).size());
    for (const auto& [name, range] : single.ranges) {
        const TensorRange& other = hundred.ranges.at(name);
        EXPECT_EQ(range.min, other.min) << name;
        EXPECT_EQ(range.max, other.max) << name;
        EXPECT_EQ(range.element_count, other.element_count) << name;
        EXPECT_EQ(single.histograms.at(name).counts, hundred.histograms.at(name).counts) << name;

        for (const NamedFormat& named : kAllFormats) {
            for (const CalibrationMethod method : kAllMethods) {
                const std::string where =
                    name + ", " + named.name + ", " + calibration_method_name(method);
                const ScaleChoice first = choose_activation_params(
                    range, &single.histograms.at(name), named.format, {method});
                const ScaleChoice second = choose_activation_params(
                    other, &hundred.histograms.at(name), named.format, {method});
                EXPECT_EQ(first.params.position, second.params.position) << where;
                EXPECT_EQ(first.params.float_scale, second.params.float_scale) << where;
                EXPECT_EQ(first.params.zero_point, second.params.zero_point) << where;
                EXPECT_TRUE(std::isfinite(first.params.scale())) << where;
            }
        }
    }
}

}  // namespace
}  // namespace edgeq
