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

CalibrationMethod parse_calibration_method(const std::string& name) {
    if (name == "minmax") {
        return CalibrationMethod::kMinMax;
    }
    if (name == "minmse") {
        return CalibrationMethod::kMinMse;
    }
    fail(ExitCode::kUsage, "unknown calibration method '{}'; supported: minmax, minmse", name);
}

std::string calibration_method_name(CalibrationMethod method) {
    switch (method) {
        case CalibrationMethod::kMinMax:
            return "minmax";
        case CalibrationMethod::kMinMse:
            return "minmse";
    }
    return "?";
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

std::map<std::string, TensorHistogram> collect_tensor_histograms(
    const onnx::ModelProto& model, const std::map<std::string, TensorRange>& ranges,
    CalibrationDataReader& reader, const SessionConfig& session, const std::string& label) {
    std::vector<std::string> names;
    std::vector<TensorHistogram> histograms;
    for (const auto& [name, range] : ranges) {
        names.push_back(name);
        TensorHistogram histogram;
        histogram.limit = std::max(std::abs(range.min), std::abs(range.max));
        histogram.counts.assign(kHistogramBins, 0);
        histograms.push_back(std::move(histogram));
    }

    visit_calibration_outputs(
        model, names, reader, session, label,
        [&](size_t t, const FloatOutput& output) {
            const std::vector<float>& values = output.values;
            TensorHistogram& histogram = histograms[t];
            if (histogram.limit <= 0) {
                return;  // all zero: nothing to place
            }
            const double bins_per_unit = kHistogramBins / (2.0 * histogram.limit);
            for (const float value : values) {
                const double position = (double{value} + histogram.limit) * bins_per_unit;
                const auto bin = static_cast<size_t>(
                    std::clamp(position, 0.0, static_cast<double>(kHistogramBins - 1)));
                histogram.counts[bin] += 1;
            }
        },
        {});

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
        ranges[tensor_names[t]] = {static_cast<float>(extremes[t].first),
                                   static_cast<float>(extremes[t].second), element_counts[t]};
    }
    return ranges;
}

}  // namespace edgeq
