// Calibration: runs the float model over calibration data and records the range of every tensor
// the quantizer needs. One data reader feeds every calibration method.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/data/dataset.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

// One batch of model input: float values, row-major, and the shape (batch first).
struct CalibrationBatch {
    std::vector<float> values;
    std::vector<int64_t> shape;
};

// Supplies calibration batches in a fixed order, like ONNX Runtime's CalibrationDataReader.
class CalibrationDataReader {
  public:
    virtual ~CalibrationDataReader() = default;
    // The next batch, or nothing when the data is exhausted.
    virtual std::optional<CalibrationBatch> next() = 0;
    // Starts again from the first batch.
    virtual void rewind() = 0;
    // Number of samples (images) over all batches.
    virtual int64_t sample_count() const = 0;
};

// Batches of Fashion-MNIST images [n, 1, 28, 28] in [0, 1], in index order. The last batch is
// kept even when it is short, so every image counts whatever the batch size.
class LabelledImagesReader : public CalibrationDataReader {
  public:
    LabelledImagesReader(const LabelledImages& images, int64_t batch_size);
    std::optional<CalibrationBatch> next() override;
    void rewind() override { position_ = 0; }
    int64_t sample_count() const override { return images_.size(); }

  private:
    const LabelledImages& images_;
    int64_t batch_size_;
    int64_t position_ = 0;
};

// How an activation's scale is chosen from its calibration statistics (calibration_methods.h has
// the algorithms).
enum class CalibrationMethod {
    kMinMax,       // the observed range; power of two: the finest scale that does not clip
    kNonOverflow,  // AMD Quark's power-of-two method: the smallest power of two that does not clip
    kMinMse,       // the scale with the least mean squared quantization error over the histogram
    kPercentile,   // the range that covers a given percentage of the values
    kEntropy,      // the clipping threshold with the least KL divergence, as TensorRT chooses it
};

// Parses "minmax", "nonoverflow", "minmse", "percentile" or "entropy"; anything else fails with
// ExitCode::kUsage.
CalibrationMethod parse_calibration_method(const std::string& name);
std::string calibration_method_name(CalibrationMethod method);

// True for the methods that read a TensorHistogram, so the calibration needs its second pass.
bool method_needs_histogram(CalibrationMethod method);

// Observed range of one tensor over the calibration data.
struct TensorRange {
    float min = 0;
    float max = 0;
    int64_t element_count = 0;  // values seen; 0 = the tensor was never produced, min = max = 0
};

inline constexpr size_t kHistogramBins = 4096;

// Histogram of one tensor's values over the calibration data, with kHistogramBins equal-width
// bins over the symmetric range [-limit, limit]. The bins are fixed before the pass, so the
// counts, and every scale derived from them, depend neither on batch size nor on batch order.
//
// Layout, with n = kHistogramBins, h = n / 2 and width w = limit / h: the bins mirror each other
// around zero. A value x >= 0 (and -0.0) goes to bin h + k, a value x < 0 to bin h - 1 - k, where
// k = min(floor(|x| / w), h - 1). So bin h + k covers [k w, (k + 1) w) and bin h - 1 - k covers
// (-(k + 1) w, -k w]; the outermost bins also take |x| = limit. Folding the two halves gives the
// histogram of |x| exactly (absolute_counts).
struct TensorHistogram {
    float limit = 0;              // max(|min|, |max|) of the tensor's calibrated range
    std::vector<int64_t> counts;  // kHistogramBins bins (any even count works), laid out as above

    double bin_center(size_t bin) const;
    // Counts `value` in its bin. Needs limit > 0 and a non-empty, even number of bins.
    void add(float value);
    int64_t total() const;
    // Histogram of |x|: counts.size() / 2 bins of width limit / (counts.size() / 2) over
    // [0, limit], bin k being the sum of bins h + k and h - 1 - k.
    std::vector<int64_t> absolute_counts() const;
};

// Runs a second calibration pass and returns a histogram per tensor, over the ranges of the first
// pass. Memory is kHistogramBins counters per tensor, whatever the number of images.
// `on_batch(samples_done, samples_total)` reports progress when set.
std::map<std::string, TensorHistogram> collect_tensor_histograms(
    const onnx::ModelProto& model, const std::map<std::string, TensorRange>& ranges,
    CalibrationDataReader& reader, const SessionConfig& session, const std::string& label,
    const std::function<void(int64_t, int64_t)>& on_batch = {});

// Runs `model` in ONNX Runtime over all batches of `reader` with `tensor_names` added as graph
// outputs, and returns each tensor's min and max. Memory does not grow with the number of
// batches. `label` names the model in errors; `on_batch(samples_done, samples_total)` reports
// progress when set.
std::map<std::string, TensorRange> collect_tensor_ranges(
    const onnx::ModelProto& model, const std::vector<std::string>& tensor_names,
    CalibrationDataReader& reader, const SessionConfig& session, const std::string& label,
    const std::function<void(int64_t, int64_t)>& on_batch = {});

// Runs `model` over every batch of `reader` with `tensor_names` exposed as extra graph outputs (as
// ONNX Runtime's quantizer does) and calls `visit(tensor_index, output)` for each tensor of each
// batch (values and shape), in batch order. Any pass over intermediate tensors (ranges, histograms,
// error measurements) goes through here. Fails when the reader yields no batch; returns the number
// of batches.
int64_t visit_calibration_outputs(const onnx::ModelProto& model,
                                  const std::vector<std::string>& tensor_names,
                                  CalibrationDataReader& reader, const SessionConfig& session,
                                  const std::string& label,
                                  const std::function<void(size_t, const FloatOutput&)>& visit,
                                  const std::function<void(int64_t, int64_t)>& on_batch = {});

}  // namespace edgeq
