#include "edgeq/quant/calibration_methods.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "edgeq/common/error.h"

namespace edgeq {

namespace {

// ---------------------------------------------------------------------------------------------
// Squared quantization error, integrated exactly over an interval

// The quantizer Q(x) = clamp(round(x / s), k_low, k_high) * s, with the integer levels relative
// to the zero point: k_low = q_min - z, k_high = q_max - z.
struct QuantGrid {
    double scale = 1;
    double lowest_level = 0;   // k_low
    double highest_level = 0;  // k_high
};

QuantGrid grid_of(const QuantParams& params) {
    return {double{params.scale()}, static_cast<double>(quant_min(params.type) - params.zero_point),
            static_cast<double>(quant_max(params.type) - params.zero_point)};
}

// F(u) = integral from -1/2 to u of (t - round(t))^2 dt. Each unit cell [n - 1/2, n + 1/2)
// contributes 1/12; within the cell, with y = u - n in [-1/2, 1/2), the part so far is
// (y^3 + 1/8) / 3. Rounding ties do not matter: they have measure zero.
double rounding_error_antiderivative(double u) {
    const double cell = std::floor(u + 0.5);
    const double y = u - cell;
    return cell / 12.0 + (y * y * y + 0.125) / 3.0;
}

// Integral from a to b of (x - c)^2 dx.
double squared_distance_integral(double a, double b, double c) {
    const double upper = b - c;
    const double lower = a - c;
    return (upper * upper * upper - lower * lower * lower) / 3.0;
}

// Integral from a to b (a <= b) of (x - Q(x))^2 dx: saturated below the lowest rounding
// boundary, saturated above the highest one, rounded in between.
double squared_error_integral(double a, double b, const QuantGrid& grid) {
    const double s = grid.scale;
    const double low_boundary = (grid.lowest_level - 0.5) * s;
    const double high_boundary = (grid.highest_level + 0.5) * s;

    double sum = 0;
    if (a < low_boundary) {
        sum += squared_distance_integral(a, std::min(b, low_boundary), grid.lowest_level * s);
    }
    if (b > high_boundary) {
        sum += squared_distance_integral(std::max(a, high_boundary), b, grid.highest_level * s);
    }
    const double inner_low = std::max(a, low_boundary);
    const double inner_high = std::min(b, high_boundary);
    if (inner_high > inner_low) {
        // Substituting x = s u turns the rounding error into s^2 (u - round(u))^2 and dx into s du.
        sum += s * s * s *
               (rounding_error_antiderivative(inner_high / s) -
                rounding_error_antiderivative(inner_low / s));
    }
    return sum;
}

// ---------------------------------------------------------------------------------------------
// Parameters for a range

void check_format(const ActivationFormat& format) {
    if (format.power_of_two && !format.symmetric) {
        fail(ExitCode::kUnsupported,
             "activation format {} asymmetric with power-of-two scales is not supported; "
             "power-of-two scales need a symmetric format (zero point {})",
             quant_type_name(format.type), symmetric_zero_point(format.type));
    }
}

void check_percentile(double percentile) {
    if (!(percentile > 0.0 && percentile <= 100.0)) {
        fail(ExitCode::kUsage, "percentile {} is outside (0, 100]; give for example 99.999",
             percentile);
    }
}

// The parameters of a tensor that is zero everywhere: any scale is exact.
QuantParams all_zero_params(const ActivationFormat& format) {
    if (format.power_of_two) {
        return power_of_two_params(format.type, kAllZeroPosition,
                                   symmetric_zero_point(format.type));
    }
    return float_params_for_range(0.0, 0.0, format.type, format.symmetric);
}

// The finest parameters that cover [low, high] without clipping.
QuantParams params_covering(double low, double high, const ActivationFormat& format) {
    if (format.power_of_two) {
        const int64_t zero_point = symmetric_zero_point(format.type);
        const int position =
            non_overflow_position(low, high, format.type, zero_point, kAllZeroPosition);
        return power_of_two_params(format.type, position, zero_point);
    }
    QuantParams params = float_params_for_range(low, high, format.type, format.symmetric);
    // A range narrower than about 1e-36 gives a scale below float's smallest normal number. As
    // compute_scale_zp of ONNX Runtime's quantizer does, use scale 1 (the all-zero parameters)
    // instead: such values quantize to zero with an error below 1e-36.
    if (!(params.float_scale >= std::numeric_limits<float>::min()) ||
        !std::isfinite(params.float_scale)) {
        params = all_zero_params(format);
    }
    return params;
}

std::string scale_text(const QuantParams& params) {
    return params.power_of_two ? fmt::format("2^{}", -params.position)
                               : fmt::format("{}", params.scale());
}

// A note for a method that clipped [range.min, range.max] to [low, high], empty when it did not.
std::string clipping_note(const std::string& what, const TensorRange& range, double low,
                          double high) {
    if (low <= range.min && high >= range.max) {
        return {};
    }
    return fmt::format("{} clips [{}, {}] to [{}, {}]", what, range.min, range.max, low, high);
}

// ---------------------------------------------------------------------------------------------
// The methods, for a range with min < max

ScaleChoice choose_degenerate(const TensorRange& range, const ActivationFormat& format) {
    ScaleChoice choice;
    choice.degenerate = true;
    if (range.min == 0.0f) {
        choice.params = all_zero_params(format);
        choice.note = fmt::format("{} during calibration; scale {} chosen arbitrarily",
                                  range.element_count == 0 ? "never produced" : "all zero",
                                  scale_text(choice.params));
        return choice;
    }
    // A constant c: the range widened to contain zero, [min(c, 0), max(c, 0)], represents c
    // without clipping.
    choice.params = params_covering(range.min, range.max, format);
    choice.note = fmt::format("constant {} during calibration; scale {} covers it", range.min,
                              scale_text(choice.params));
    return choice;
}

// AMD Quark's power-of-two MinMSE: positions from one below to three above the non-overflow
// one, keeping the least mean squared error. Finer scales clip the tails but round the bulk more
// finely. Of equal errors the first wins, so the coarser scale.
ScaleChoice choose_min_mse_power_of_two(const TensorRange& range, const TensorHistogram& histogram,
                                        const ActivationFormat& format) {
    const QuantParams non_overflow = params_covering(range.min, range.max, format);
    ScaleChoice choice;
    choice.params = non_overflow;
    double best_error = std::numeric_limits<double>::infinity();
    for (int offset = -1; offset <= 3; ++offset) {
        const int position = std::clamp(non_overflow.position + offset, kMinPosition, kMaxPosition);
        const QuantParams candidate =
            power_of_two_params(format.type, position, non_overflow.zero_point);
        const double error = quantization_mse(histogram, candidate);
        if (error < best_error) {
            best_error = error;
            choice.params = candidate;
        }
    }
    if (choice.params.position > non_overflow.position) {
        choice.note =
            fmt::format("MinMSE chose position {} over the non-overflow {}: the tails clip",
                        choice.params.position, non_overflow.position);
    } else if (choice.params.position < non_overflow.position) {
        choice.note = fmt::format("MinMSE chose position {}, coarser than the non-overflow {}",
                                  choice.params.position, non_overflow.position);
    }
    return choice;
}

// Candidate ranges of the float MinMSE search: [min, max] * k / kMinMseSteps for k from
// kMinMseSteps down to kMinMseLowestStep, so the full range shrunk in steps of 1/2048 down to
// 1/16 of it. For a symmetric format the thresholds are then the edges of the |x| histogram's
// bins, and 1/16 is the entropy search's lower bound too (128 of 2048 bins). An asymmetric range
// shrinks towards zero on both sides, so its zero point stays about where it was.
constexpr int kMinMseSteps = 2048;
constexpr int kMinMseLowestStep = 128;

ScaleChoice choose_min_mse_float(const TensorRange& range, const TensorHistogram& histogram,
                                 const ActivationFormat& format) {
    ScaleChoice choice;
    double best_error = std::numeric_limits<double>::infinity();
    double best_fraction = 1.0;
    // From the widest range down, so that of equal errors the one that clips least wins.
    for (int step = kMinMseSteps; step >= kMinMseLowestStep; --step) {
        const double fraction = static_cast<double>(step) / kMinMseSteps;
        const QuantParams candidate =
            params_covering(range.min * fraction, range.max * fraction, format);
        const double error = quantization_mse(histogram, candidate);
        if (error < best_error) {
            best_error = error;
            best_fraction = fraction;
            choice.params = candidate;
        }
    }
    choice.note =
        clipping_note("MinMSE", range, range.min * best_fraction, range.max * best_fraction);
    return choice;
}

ScaleChoice choose_percentile(const TensorRange& range, const TensorHistogram& histogram,
                              const ActivationFormat& format, double percentile) {
    const auto [low, high] = percentile_range(range, histogram, percentile, format.symmetric);
    ScaleChoice choice;
    choice.params = params_covering(low, high, format);
    choice.note = clipping_note(fmt::format("percentile {}", percentile), range, low, high);
    return choice;
}

// The entropy threshold t clips both sides at |x| = t. For an asymmetric format the search still
// runs on |x|, so both sides are clipped at the same t whatever their widths.
ScaleChoice choose_entropy(const TensorRange& range, const TensorHistogram& histogram,
                           const ActivationFormat& format) {
    const double threshold = entropy_threshold(histogram, entropy_levels(range, format));
    const double low = std::max(double{range.min}, -threshold);
    const double high = std::min(double{range.max}, threshold);
    ScaleChoice choice;
    choice.params = params_covering(low, high, format);
    choice.note = clipping_note(fmt::format("entropy threshold {}", threshold), range, low, high);
    return choice;
}

// ---------------------------------------------------------------------------------------------
// Entropy search helpers

// Smooths a distribution so that it has no zero, as ONNX Runtime's smooth_distribution does
// before its KL search: every zero entry gets kSmoothingMass (in counts), and the non-zero
// entries give up the same total in proportion to their size. ORT subtracts an equal share from
// every non-zero entry instead, which can turn a small fractional entry of Q negative. Returns
// false for a distribution without mass.
constexpr double kSmoothingMass = 1e-4;

bool smooth_distribution(std::vector<double>& distribution) {
    double mass = 0;
    int64_t zeros = 0;
    for (const double value : distribution) {
        mass += value;
        zeros += value == 0.0 ? 1 : 0;
    }
    const double moved_mass = kSmoothingMass * static_cast<double>(zeros);
    if (!(mass > moved_mass)) {
        return false;
    }
    const double keep = 1.0 - moved_mass / mass;
    for (double& value : distribution) {
        value = value == 0.0 ? kSmoothingMass : value * keep;
    }
    return true;
}

// KL(P || Q) = sum p_i log(p_i / q_i) of the two distributions normalized to sum 1.
double kl_divergence(const std::vector<double>& p, const std::vector<double>& q) {
    double p_mass = 0;
    double q_mass = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        p_mass += p[i];
        q_mass += q[i];
    }
    double divergence = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        const double p_i = p[i] / p_mass;
        divergence += p_i * std::log(p_i / (q[i] / q_mass));
    }
    return divergence;
}

// The divergence of the first `window` bins of the |x| histogram `counts` from their
// quantization to `levels` levels. `suffix[j]` is the count of bins j and beyond.
double window_divergence(const std::vector<int64_t>& counts, const std::vector<int64_t>& suffix,
                         size_t window, size_t levels) {
    // P: the window, with the values beyond it folded into its last bin (they clip to there).
    std::vector<double> p(counts.begin(), counts.begin() + static_cast<std::ptrdiff_t>(window));
    p.back() += static_cast<double>(suffix[window]);

    // Q: each level's count (outliers not included) spread evenly over the bins of the level
    // where P is non-zero. Level l covers bins [l * window / levels, (l + 1) * window / levels).
    std::vector<double> q(window, 0.0);
    for (size_t level = 0; level < levels; ++level) {
        const size_t first = level * window / levels;
        const size_t last = (level + 1) * window / levels;
        double level_count = 0;
        int64_t non_zero_bins = 0;
        for (size_t bin = first; bin < last; ++bin) {
            level_count += static_cast<double>(counts[bin]);
            non_zero_bins += p[bin] != 0.0 ? 1 : 0;
        }
        if (non_zero_bins == 0) {
            continue;
        }
        for (size_t bin = first; bin < last; ++bin) {
            if (p[bin] != 0.0) {
                q[bin] = level_count / static_cast<double>(non_zero_bins);
            }
        }
    }

    if (!smooth_distribution(p) || !smooth_distribution(q)) {
        return std::numeric_limits<double>::infinity();
    }
    return kl_divergence(p, q);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public functions

double quantization_mse(const TensorHistogram& histogram, const QuantParams& params) {
    const int64_t total = histogram.total();
    if (total == 0 || !(histogram.limit > 0)) {
        return 0.0;
    }
    const QuantGrid grid = grid_of(params);
    const double width =
        2.0 * double{histogram.limit} / static_cast<double>(histogram.counts.size());
    double error_sum = 0;
    for (size_t bin = 0; bin < histogram.counts.size(); ++bin) {
        if (histogram.counts[bin] == 0) {
            continue;
        }
        const double low = -double{histogram.limit} + static_cast<double>(bin) * width;
        const double mean_error = squared_error_integral(low, low + width, grid) / width;
        error_sum += static_cast<double>(histogram.counts[bin]) * mean_error;
    }
    return error_sum / static_cast<double>(total);
}

std::pair<double, double> percentile_range(const TensorRange& range,
                                           const TensorHistogram& histogram, double percentile,
                                           bool symmetric) {
    check_percentile(percentile);
    const int64_t total = histogram.total();
    if (total == 0 || !(histogram.limit > 0)) {
        return {range.min, range.max};
    }
    // Values allowed outside the range. The small addition keeps a product that should be an
    // integer, such as 0.001% of 100000, from rounding down when binary floating point puts it
    // just below.
    const double outside_share = (100.0 - percentile) / 100.0 / (symmetric ? 1.0 : 2.0);
    const auto allowed =
        static_cast<int64_t>(std::floor(outside_share * static_cast<double>(total) + 1e-6));

    if (symmetric) {
        const std::vector<int64_t> counts = histogram.absolute_counts();
        const double width = double{histogram.limit} / static_cast<double>(counts.size());
        // When the bin found is the outermost non-empty one, nothing is cut and the threshold
        // stays at the limit, so that 100% gives the exact range and not a rounded bin edge.
        double threshold = histogram.limit;
        int64_t beyond = 0;
        for (size_t k = counts.size(); k-- > 0;) {
            if (beyond + counts[k] > allowed) {
                threshold = beyond > 0 ? static_cast<double>(k + 1) * width : threshold;
                break;
            }
            beyond += counts[k];
        }
        return {std::max(double{range.min}, -threshold), std::min(double{range.max}, threshold)};
    }

    const std::vector<int64_t>& counts = histogram.counts;
    const double width = 2.0 * double{histogram.limit} / static_cast<double>(counts.size());
    double low = range.min;
    int64_t below = 0;
    for (size_t bin = 0; bin < counts.size(); ++bin) {
        if (below + counts[bin] > allowed) {
            low = below > 0 ? -double{histogram.limit} + static_cast<double>(bin) * width : low;
            break;
        }
        below += counts[bin];
    }
    double high = range.max;
    int64_t above = 0;
    for (size_t bin = counts.size(); bin-- > 0;) {
        if (above + counts[bin] > allowed) {
            high =
                above > 0 ? -double{histogram.limit} + static_cast<double>(bin + 1) * width : high;
            break;
        }
        above += counts[bin];
    }
    return {std::max(double{range.min}, low), std::min(double{range.max}, high)};
}

// The entropy search that TensorRT describes for its INT8 calibrator and ONNX Runtime implements
// in calibrate.py (HistogramCollector.get_entropy_threshold), here on the histogram of |x| with
// B = counts.size() / 2 bins of width w and L = `levels`:
//   for every window of i bins, L <= i <= B (threshold t = i w):
//     P = bins 0 .. i-1, with the count of bins i .. B-1 added to bin i-1 (those values clip)
//     Q = the same i bins (without the clipped values) merged into L levels, level l covering
//         bins [l i / L, (l + 1) i / L). Each level's count is spread evenly over its bins where
//         P is non-zero, and bins where P is zero stay zero.
//     P and Q are smoothed (smooth_distribution) and normalized, and D(i) = KL(P || Q)
//   the threshold is i w for the i with the least D(i), the smallest i on ties (numpy argmin).
// Differences from ONNX Runtime's calibrate.py: ORT gives the remainder of i / L bins to the last
// level, while here the levels share it evenly. ORT searches windows of the signed histogram
// centred on zero, while this code searches |x| as TensorRT's description does. ORT stores Q in
// integers, which truncates it.
double entropy_threshold(const TensorHistogram& histogram, int64_t levels) {
    const std::vector<int64_t> counts = histogram.absolute_counts();
    const size_t bins = counts.size();
    if (levels <= 0 || static_cast<size_t>(levels) >= bins || histogram.total() == 0) {
        return histogram.limit;
    }
    std::vector<int64_t> suffix(bins + 1, 0);
    for (size_t bin = bins; bin-- > 0;) {
        suffix[bin] = suffix[bin + 1] + counts[bin];
    }

    const auto level_count = static_cast<size_t>(levels);
    size_t best_window = bins;
    double best_divergence = std::numeric_limits<double>::infinity();
    for (size_t window = level_count; window <= bins; ++window) {
        const double divergence = window_divergence(counts, suffix, window, level_count);
        if (divergence < best_divergence) {
            best_divergence = divergence;
            best_window = window;
        }
    }
    return static_cast<double>(best_window) * double{histogram.limit} / static_cast<double>(bins);
}

int64_t entropy_levels(const TensorRange& range, const ActivationFormat& format) {
    const int64_t codes = quant_max(format.type) - quant_min(format.type) + 1;
    const bool one_signed = range.min >= 0.0f || range.max <= 0.0f;
    return !format.symmetric && one_signed ? codes : codes / 2;
}

ScaleChoice choose_activation_params(const TensorRange& range, const TensorHistogram* histogram,
                                     const ActivationFormat& format,
                                     const MethodSettings& settings) {
    check_format(format);
    if (settings.method == CalibrationMethod::kPercentile) {
        check_percentile(settings.percentile);
    }

    ScaleChoice choice;
    if (range.min == range.max) {
        choice = choose_degenerate(range, format);
    } else if (!method_needs_histogram(settings.method)) {
        // MinMax and NonOverflow. For power-of-two scales the finest position that does not clip
        // is what Quark calls NonOverflow, and for float scales the two methods coincide.
        choice.params = params_covering(range.min, range.max, format);
    } else {
        if (histogram == nullptr || histogram->total() == 0 || !(histogram->limit > 0)) {
            fail(ExitCode::kInternal,
                 "calibration method {} needs a histogram of the values in [{}, {}], but got {}",
                 calibration_method_name(settings.method), range.min, range.max,
                 histogram == nullptr ? "none" : "an empty one");
        }
        switch (settings.method) {
            case CalibrationMethod::kMinMse:
                choice = format.power_of_two
                             ? choose_min_mse_power_of_two(range, *histogram, format)
                             : choose_min_mse_float(range, *histogram, format);
                break;
            case CalibrationMethod::kPercentile:
                choice = choose_percentile(range, *histogram, format, settings.percentile);
                break;
            case CalibrationMethod::kEntropy:
                choice = choose_entropy(range, *histogram, format);
                break;
            case CalibrationMethod::kMinMax:
            case CalibrationMethod::kNonOverflow:
                break;  // handled above
        }
    }

    if (format.power_of_two) {
        const QuantParams coarsest =
            power_of_two_params(format.type, kMinPosition, symmetric_zero_point(format.type));
        choice.saturates = !fits_without_clipping(range.min, range.max, coarsest);
    }
    if (choice.saturates) {
        choice.note += choice.note.empty() ? "" : "; ";
        choice.note += fmt::format(
            "the calibrated range exceeds the coarsest scale 2^{}; values beyond it saturate",
            -kMinPosition);
    }
    return choice;
}

}  // namespace edgeq
