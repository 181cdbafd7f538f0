// Calibration methods: how an activation tensor's quantization parameters are chosen from the
// range and the histogram that calibration collected (calibration.h). Every function here is a
// pure function of those statistics. The statistics do not depend on the calibration batch size,
// so neither does any scale chosen here.
//
//   method       power-of-two scales (s = 2^-p)               float scales
//   MinMax       finest p that does not clip [min, max]      ONNX Runtime's scale for [min, max]
//   NonOverflow  same as MinMax                               same as MinMax
//   MinMSE       least squared error over p - 1 .. p + 3,     least squared error over the range
//                p being MinMax's position (AMD Quark)        shrunk in 2048 steps down to 1/16
//   Percentile   finest p covering the percentile range      the scale for the percentile range
//   Entropy      finest p covering the KL threshold          the scale for the KL threshold
//
// A tensor that calibration saw as constant or all zero gets a finite scale and is flagged, so
// that the caller can warn; no method yields an infinite or NaN scale.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "edgeq/quant/calibration.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq {

// Number format of an activation tensor.
struct ActivationFormat {
    QuantType type = QuantType::kUint8;
    bool symmetric = true;     // zero point symmetric_zero_point(type); else fitted to the range
    bool power_of_two = true;  // scale 2^-p; else any positive float. Needs `symmetric`.
};

// AMD Quark's XINT8: uint8 with zero point 128, power-of-two scales.
inline constexpr ActivationFormat kXint8Activations{QuantType::kUint8, true, true};
// Asymmetric uint8 activations with float scales (the U8S8 preset, int8 weights).
inline constexpr ActivationFormat kU8S8Activations{QuantType::kUint8, false, false};
// Symmetric int8 activations with float scales (the A8W8 and S8S8 presets).
inline constexpr ActivationFormat kA8W8Activations{QuantType::kInt8, true, false};
// Symmetric int16 activations with float scales (the A16W8 preset).
inline constexpr ActivationFormat kA16W8Activations{QuantType::kInt16, true, false};

// ONNX Runtime's and AMD Quark's default percentile.
inline constexpr double kDefaultPercentile = 99.999;

struct MethodSettings {
    CalibrationMethod method = CalibrationMethod::kMinMax;
    double percentile = kDefaultPercentile;  // in (0, 100]; read by kPercentile only
};

// The parameters chosen for one activation tensor.
struct ScaleChoice {
    QuantParams params;
    std::string note;  // clipping, a constant tensor or saturation, for the report; empty if none
    bool degenerate = false;  // constant or all zero during calibration: the caller should warn
    // The calibrated range exceeds even the coarsest power-of-two scale, 2^-kMinPosition, so
    // values beyond it saturate whatever the method. Always false for float scales.
    bool saturates = false;
};

// Position of a power-of-two tensor that was zero for every calibration image. Any scale
// represents zero exactly, and 2^-7 lets an int8 code cover [-1, 1), a common activation range,
// in case the tensor is not zero in deployment.
inline constexpr int kAllZeroPosition = 7;

// Chooses the quantization of one activation tensor from its calibrated `range` and, for the
// methods where method_needs_histogram() is true, its `histogram` (null for the others).
// Fails with ExitCode::kUsage for a percentile outside (0, 100], with kUnsupported for an
// asymmetric power-of-two format, and with kInternal when a needed histogram is missing or
// empty while the range is not.
ScaleChoice choose_activation_params(const TensorRange& range, const TensorHistogram* histogram,
                                     const ActivationFormat& format,
                                     const MethodSettings& settings);

// The building blocks of the methods, public so that tests and reports can use them.

// Returns the mean squared quantization error of the values in `histogram` under `params`, with
// each bin's values taken as spread uniformly over the bin. The error of each bin is integrated
// exactly, rounding and saturation included. Bin centres alone would be biased: when the bin width
// is close to the scale, the centres can fall on the quantization grid and hide the rounding error.
// A histogram with limit 0 contains only zeros, which every format represents exactly, so its error
// is 0.
double quantization_mse(const TensorHistogram& histogram, const QuantParams& params);

// Returns the range [low, high] within [range.min, range.max] that contains at least
// `percentile` percent of the values in `histogram`, to bin resolution. With percentile 100 this
// is exactly [range.min, range.max].
//   symmetric:  [-t, t] clipped to the range, with t the upper edge of the |x| bin where the
//               share of values up to it first reaches `percentile`. ONNX Runtime picks the same
//               bin but its lower edge, so ORT's threshold can leave that bin's values out.
//   asymmetric: (100 - percentile) / 2 percent may fall below low and as many above high, as in
//               ONNX Runtime's HistogramCollector. Low and high are outer edges of their bins.
std::pair<double, double> percentile_range(const TensorRange& range,
                                           const TensorHistogram& histogram, double percentile,
                                           bool symmetric);

// Returns the clipping threshold t for |x| with the least KL divergence between the histogram and
// its quantization to `levels` levels over [0, t], the search of TensorRT's entropy calibrator
// (calibration_methods.cpp gives the exact algorithm). Returns histogram.limit when `levels` is
// at least the number of |x| bins, because quantization then loses nothing at the histogram's
// resolution.
double entropy_threshold(const TensorHistogram& histogram, int64_t levels);

// Returns the number of quantization levels that the entropy search assumes over [0, t]. That is
// half the type's codes (128 for 8-bit), or all of them for an asymmetric format on a tensor
// that never changes sign, because its range then maps onto every code.
int64_t entropy_levels(const TensorRange& range, const ActivationFormat& format);

}  // namespace edgeq
