// Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and
// Bias Correction", ICCV 2019, with the expectations measured on calibration data instead of
// derived from BatchNormalization statistics).
//
// Rounding a layer's weights to int8 adds an error e = W_q - W to them, and e x has a non-zero
// mean per output channel when the input x has one (after a Relu, it always has). That mean shifts
// every output of the channel the same way, and a bias absorbs it:
//   b_new[c] = b[c] - (E[y_q[c]] - E[y_f[c]])
// with y_q the layer's output in the QDQ model and y_f in the float model, both before any Relu.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/quant/calibration.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

// Outcome of correcting one layer's bias. Shifts are means over the layer's output channels of
// |E[y_q[c]] - E[y_f[c]]|, in the units of the layer's output.
struct CorrectedLayer {
    std::string layer;      // node name
    std::string output;     // output tensor measured in the QDQ model
    std::string bias;       // the quantized bias initializer that was rewritten
    std::string bias_type;  // "INT8", "INT16" or "INT32"
    int64_t channels = 0;
    double mean_abs_shift_before = 0;
    double mean_abs_shift_after = 0;  // measured on the final QDQ model
    double max_abs_correction = 0;    // largest |E[y_q[c]] - E[y_f[c]]| that was subtracted
    // A correction below half a bias step rounds back to the old integer and changes nothing.
    float min_bias_step = 0;  // smallest bias scale over the channels (one value per tensor)
    float max_bias_step = 0;
    int64_t unchanged_entries = 0;  // bias entries whose integer stayed the same
    int64_t saturated_entries = 0;  // bias entries clamped to the type's range
};

// A Conv, Gemm or MatMul whose bias was not corrected, and why.
struct UncorrectedLayer {
    std::string layer;  // node name
    std::string reason;
};

struct BiasCorrectionReport {
    std::vector<CorrectedLayer> layers;  // in graph order
    std::vector<UncorrectedLayer> uncorrected;
    int64_t model_passes = 0;  // passes of a model over the calibration data
};

// Corrects the quantized biases of the Conv and Gemm layers of `qdq_model` (made from
// `float_model` by quantize_to_qdq) one layer at a time in graph order, because each correction
// changes what later layers receive. One pass of the float model over `reader` measures the
// per-channel means (channel axis 1) of every layer's output. Then, per layer, one pass of the
// current QDQ model measures the same means, and the bias integers are rewritten with their
// existing scale and zero point. Scales never change, because they may be powers of two tied to
// the NPU's shift limits. A last pass measures the shift that remains in every layer.
BiasCorrectionReport correct_biases(const onnx::ModelProto& float_model,
                                    onnx::ModelProto& qdq_model, CalibrationDataReader& reader,
                                    const SessionConfig& session);

// A text table of `report`, one row per corrected layer, then the layers left alone.
std::string format_bias_correction_report(const BiasCorrectionReport& report);

}  // namespace edgeq
