#include "edgeq/quant/calibration.h"

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
    fail(ExitCode::kUsage, "unknown calibration method '{}'; supported: minmax", name);
}

std::string calibration_method_name(CalibrationMethod method) {
    switch (method) {
        case CalibrationMethod::kMinMax:
            return "minmax";
    }
    return "?";
}

std::map<std::string, TensorRange> collect_tensor_ranges(
    const onnx::ModelProto& model, const std::vector<std::string>& tensor_names,
    CalibrationDataReader& reader, const SessionConfig& session, const std::string& label,
    const std::function<void(int64_t, int64_t)>& on_batch) {
    // Expose every tensor to calibrate as a graph output, as ONNX Runtime's quantizer does.
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

    std::map<std::string, TensorRange> ranges;
    std::map<std::string, std::pair<double, double>> extremes;
    for (const std::string& name : tensor_names) {
        extremes[name] = {std::numeric_limits<double>::infinity(),
                          -std::numeric_limits<double>::infinity()};
        ranges[name] = TensorRange{};
    }

    reader.rewind();
    int64_t samples_done = 0;
    int64_t batch_count = 0;
    while (std::optional<CalibrationBatch> batch = reader.next()) {
        const std::vector<FloatOutput> outputs =
            runner.run(batch->values, batch->shape, tensor_names);
        for (size_t t = 0; t < tensor_names.size(); ++t) {
            auto& [low, high] = extremes[tensor_names[t]];
            for (const float value : outputs[t].values) {
                if (!std::isfinite(value)) {
                    fail(ExitCode::kInvalidInput,
                         "tensor '{}' holds a non-finite value during calibration; check the "
                         "model's weights and the calibration data",
                         tensor_names[t]);
                }
                low = std::min(low, double{value});
                high = std::max(high, double{value});
            }
            ranges[tensor_names[t]].element_count += static_cast<int64_t>(outputs[t].values.size());
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

    for (const std::string& name : tensor_names) {
        ranges[name].min = static_cast<float>(extremes[name].first);
        ranges[name].max = static_cast<float>(extremes[name].second);
    }
    return ranges;
}

}  // namespace edgeq
