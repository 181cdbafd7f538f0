#include "edgeq/quant/calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "edgeq/common/error.h"

namespace edgeq {

LabelledImagesReader::LabelledImagesReader(const LabelledImages& images, int64_t batch_size)
    : images_(images), batch_size_(batch_size) {
    if (batch_size <= 0) {
        fail(ExitCode::kUsage, "calibration batch size {} must be positive", batch_size);
    }
}

std::optional<CalibrationBatch> LabelledImagesReader::next() {
    if (position_ >= images_.size()) {
        return std::nullopt;
    }
    const int64_t count = std::min(batch_size_, images_.size() - position_);
    CalibrationBatch batch{gather_image_range(images_, position_, count),
                           {count, 1, kImageSide, kImageSide}};
    position_ += count;
    return batch;
}

namespace {

struct MethodName {
    CalibrationMethod method;
    const char* name;
};

constexpr MethodName kMethodNames[] = {
    {CalibrationMethod::kMinMax, "minmax"},   {CalibrationMethod::kNonOverflow, "nonoverflow"},
    {CalibrationMethod::kMinMse, "minmse"},   {CalibrationMethod::kPercentile, "percentile"},
    {CalibrationMethod::kEntropy, "entropy"},
};

}  // namespace

CalibrationMethod parse_calibration_method(const std::string& name) {
    for (const MethodName& entry : kMethodNames) {
        if (name == entry.name) {
            return entry.method;
        }
    }
    fail(ExitCode::kUsage,
         "unknown calibration method '{}'; supported: minmax, nonoverflow, minmse, percentile, "
         "entropy",
         name);
}

std::string calibration_method_name(CalibrationMethod method) {
    for (const MethodName& entry : kMethodNames) {
        if (method == entry.method) {
            return entry.name;
        }
    }
    return "?";
}

bool method_needs_histogram(CalibrationMethod method) {
    switch (method) {
        case CalibrationMethod::kMinMax:
        case CalibrationMethod::kNonOverflow:
            return false;
        case CalibrationMethod::kMinMse:
        case CalibrationMethod::kPercentile:
        case CalibrationMethod::kEntropy:
            return true;
    }
    return false;
}

int64_t visit_calibration_outputs(const onnx::ModelProto& model,
                                  const std::vector<std::string>& tensor_names,
                                  CalibrationDataReader& reader, const SessionConfig& session,
                                  const std::string& label,
                                  const std::function<void(size_t, const FloatOutput&)>& visit,
                                  const std::function<void(int64_t, int64_t)>& on_batch) {
    onnx::ModelProto augmented = model;
    std::set<std::string> existing_outputs;
    for (const onnx::ValueInfoProto& output : augmented.graph().output()) {
        existing_outputs.insert(output.name());
    }
    for (const std::string& name : tensor_names) {
        if (existing_outputs.insert(name).second) {
            onnx::ValueInfoProto* output = augmented.mutable_graph()->add_output();
            output->set_name(name);
            output->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
        }
    }
    std::string bytes;
    augmented.SerializeToString(&bytes);
    OrtModel runner(bytes, label, session);

    reader.rewind();
    int64_t samples_done = 0;
    int64_t batch_count = 0;
    while (std::optional<CalibrationBatch> batch = reader.next()) {
        const std::vector<FloatOutput> outputs =
            runner.run(batch->values, batch->shape, tensor_names);
        for (size_t t = 0; t < tensor_names.size(); ++t) {
            visit(t, outputs[t]);
        }
        samples_done += batch->shape.front();
        ++batch_count;
        if (on_batch) {
            on_batch(samples_done, reader.sample_count());
        }
    }
    if (batch_count == 0) {
        fail(ExitCode::kInvalidInput, "the calibration data is empty; give at least one image");
    }
    return batch_count;
}

double TensorHistogram::bin_center(size_t bin) const {
    const double width = 2.0 * limit / static_cast<double>(counts.size());
    return -double{limit} + (static_cast<double>(bin) + 0.5) * width;
}

void TensorHistogram::add(float value) {
    // Place |x| first and mirror, so that x and -x always land in mirrored bins and folding to
    // |x| is exact. Values beyond the limit (there are none when the limit comes from the same
    // data) go to the outermost bins, and so does a NaN, which fails every comparison.
    const size_t half = counts.size() / 2;
    const double position = std::abs(double{value}) * static_cast<double>(half) / double{limit};
    const size_t k =
        position < static_cast<double>(half - 1) ? static_cast<size_t>(position) : half - 1;
    const size_t bin = value < 0.0f ? half - 1 - k : half + k;
    counts[bin] += 1;
}

int64_t TensorHistogram::total() const {
    int64_t sum = 0;
    for (const int64_t count : counts) {
        sum += count;
    }
    return sum;
}

std::vector<int64_t> TensorHistogram::absolute_counts() const {
    const size_t half = counts.size() / 2;
    std::vector<int64_t> folded(half, 0);
    for (size_t k = 0; k < half; ++k) {
        folded[k] = counts[half + k] + counts[half - 1 - k];
    }
    return folded;
}

std::map<std::string, TensorHistogram> collect_tensor_histograms(
    const onnx::ModelProto& model, const std::map<std::string, TensorRange>& ranges,
    CalibrationDataReader& reader, const SessionConfig& session, const std::string& label,
    const std::function<void(int64_t, int64_t)>& on_batch) {
    std::vector<std::string> names;
    std::vector<TensorHistogram> histograms;
    for (const auto& [name, range] : ranges) {
        names.push_back(name);
        TensorHistogram histogram;
        histogram.limit = std::max(std::abs(range.min), std::abs(range.max));
        histogram.counts.assign(kHistogramBins, 0);
        histograms.push_back(std::move(histogram));
    }

    auto place_values = [&](size_t t, const FloatOutput& output) {
        TensorHistogram& histogram = histograms[t];
        if (histogram.limit <= 0) {
            // All zero (or never produced): the range alone decides the scale, and there is no
            // bin width to place values with.
            return;
        }
        for (const float value : output.values) {
            histogram.add(value);
        }
    };
    visit_calibration_outputs(model, names, reader, session, label, place_values, on_batch);

    std::map<std::string, TensorHistogram> result;
    for (size_t t = 0; t < names.size(); ++t) {
        result[names[t]] = std::move(histograms[t]);
    }
    return result;
}

std::map<std::string, TensorRange> collect_tensor_ranges(
    const onnx::ModelProto& model, const std::vector<std::string>& tensor_names,
    CalibrationDataReader& reader, const SessionConfig& session, const std::string& label,
    const std::function<void(int64_t, int64_t)>& on_batch) {
    std::vector<std::pair<double, double>> extremes(
        tensor_names.size(),
        {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()});
    std::vector<int64_t> element_counts(tensor_names.size(), 0);

    visit_calibration_outputs(
        model, tensor_names, reader, session, label,
        [&](size_t t, const FloatOutput& output) {
            const std::vector<float>& values = output.values;
            auto& [low, high] = extremes[t];
            for (const float value : values) {
                if (!std::isfinite(value)) {
                    fail(ExitCode::kInvalidInput,
                         "tensor '{}' contains a non-finite value during calibration; check the "
                         "model's weights and the calibration data",
                         tensor_names[t]);
                }
                low = std::min(low, double{value});
                high = std::max(high, double{value});
            }
            element_counts[t] += static_cast<int64_t>(values.size());
        },
        on_batch);

    std::map<std::string, TensorRange> ranges;
    for (size_t t = 0; t < tensor_names.size(); ++t) {
        // A tensor that never had a value keeps the empty range [0, 0], not [inf, -inf].
        if (element_counts[t] == 0) {
            ranges[tensor_names[t]] = {};
            continue;
        }
        ranges[tensor_names[t]] = {static_cast<float>(extremes[t].first),
                                   static_cast<float>(extremes[t].second), element_counts[t]};
    }
    return ranges;
}

}  // namespace edgeq
