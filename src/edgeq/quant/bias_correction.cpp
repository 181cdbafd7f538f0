#include "edgeq/quant/bias_correction.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq {

namespace {

// Suffix of a layer's output in the QDQ model when the float output is a graph output: the graph
// output then belongs to the final DequantizeLinear, and the layer writes "<name>_float".
constexpr std::string_view kGraphOutputSuffix = "_float";

// Integer range of an ONNX integer type that a quantized bias may have.
std::optional<std::pair<int64_t, int64_t>> integer_range(int32_t data_type) {
    switch (data_type) {
        case onnx::TensorProto::INT8:
            return std::pair<int64_t, int64_t>{INT8_MIN, INT8_MAX};
        case onnx::TensorProto::UINT8:
            return std::pair<int64_t, int64_t>{0, UINT8_MAX};
        case onnx::TensorProto::INT16:
            return std::pair<int64_t, int64_t>{INT16_MIN, INT16_MAX};
        case onnx::TensorProto::UINT16:
            return std::pair<int64_t, int64_t>{0, UINT16_MAX};
        case onnx::TensorProto::INT32:
            return std::pair<int64_t, int64_t>{INT32_MIN, INT32_MAX};
        default:
            return std::nullopt;
    }
}

std::string integer_type_name(int32_t data_type) {
    return onnx::TensorProto::DataType_Name(static_cast<onnx::TensorProto::DataType>(data_type));
}

size_t integer_byte_size(int32_t data_type) {
    switch (data_type) {
        case onnx::TensorProto::INT8:
        case onnx::TensorProto::UINT8:
            return 1;
        case onnx::TensorProto::INT16:
        case onnx::TensorProto::UINT16:
            return 2;
        default:
            return 4;
    }
}

// Reads an integer initializer of one of the types of integer_range(), from raw_data or
// int32_data. ONNX stores raw_data little-endian; like the rest of edgeq this assumes a
// little-endian host.
std::vector<int64_t> read_integer_tensor(const onnx::TensorProto& tensor) {
    const auto count = static_cast<size_t>(element_count(tensor.dims()));
    std::vector<int64_t> values(count);
    if (!tensor.has_raw_data()) {
        if (static_cast<size_t>(tensor.int32_data_size()) != count) {
            fail(ExitCode::kInvalidInput, "initializer '{}' holds {} integers for {} elements",
                 tensor.name(), tensor.int32_data_size(), count);
        }
        std::copy(tensor.int32_data().begin(), tensor.int32_data().end(), values.begin());
        return values;
    }
    const size_t width = integer_byte_size(tensor.data_type());
    if (tensor.raw_data().size() != count * width) {
        fail(ExitCode::kInvalidInput, "initializer '{}' holds {} bytes for {} {} values",
             tensor.name(), tensor.raw_data().size(), count, integer_type_name(tensor.data_type()));
    }
    const char* bytes = tensor.raw_data().data();
    for (size_t i = 0; i < count; ++i) {
        const char* at = bytes + i * width;
        switch (tensor.data_type()) {
            case onnx::TensorProto::INT8:
                values[i] = static_cast<int8_t>(*at);
                break;
            case onnx::TensorProto::UINT8:
                values[i] = static_cast<uint8_t>(*at);
                break;
            case onnx::TensorProto::INT16: {
                int16_t value = 0;
                std::memcpy(&value, at, width);
                values[i] = value;
                break;
            }
            case onnx::TensorProto::UINT16: {
                uint16_t value = 0;
                std::memcpy(&value, at, width);
                values[i] = value;
                break;
            }
            default: {
                int32_t value = 0;
                std::memcpy(&value, at, width);
                values[i] = value;
                break;
            }
        }
    }
    return values;
}

// Replaces the values of an integer initializer, keeping its name, type and shape.
void write_integer_tensor(onnx::TensorProto& tensor, const std::vector<int64_t>& values) {
    const size_t width = integer_byte_size(tensor.data_type());
    std::string raw(values.size() * width, '\0');
    for (size_t i = 0; i < values.size(); ++i) {
        // Two's complement truncation keeps the low bytes, which are the value for every type
        // here because the values were clamped to the type's range.
        const auto value = static_cast<uint32_t>(static_cast<int32_t>(values[i]));
        std::memcpy(raw.data() + i * width, &value, width);
    }
    tensor.clear_int32_data();
    tensor.set_raw_data(raw);
}

// A layer's bias as the QDQ model stores it: `B_quantized` read by a DequantizeLinear with
// `B_scale` and `B_zero_point`, each a scalar or one entry per channel.
struct QuantizedBias {
    int initializer = -1;  // position of B_quantized in graph.initializer
    int32_t data_type = 0;
    std::vector<int64_t> values;
    std::vector<float> scales;
    std::vector<int64_t> zero_points;
    int64_t min = 0;
    int64_t max = 0;

    float scale(size_t channel) const { return scales.size() == 1 ? scales[0] : scales[channel]; }
    int64_t zero_point(size_t channel) const {
        return zero_points.size() == 1 ? zero_points[0] : zero_points[channel];
    }
};

struct LayerPlan {
    int node = -1;             // position in the QDQ graph
    std::string qdq_output;    // the layer's output in the QDQ model
    std::string float_output;  // the same tensor in the float model
    QuantizedBias bias;
};

// The QDQ graph, indexed to find each layer's bias.
struct GraphIndex {
    std::map<std::string, int> initializers;
    std::map<std::string, int> producer;
    std::map<std::string, std::vector<int>> consumers;
};

GraphIndex index_graph(const onnx::GraphProto& graph) {
    GraphIndex index;
    for (int i = 0; i < graph.initializer_size(); ++i) {
        index.initializers[graph.initializer(i).name()] = i;
    }
    for (int n = 0; n < graph.node_size(); ++n) {
        for (const std::string& output : graph.node(n).output()) {
            index.producer[output] = n;
        }
        for (const std::string& input : graph.node(n).input()) {
            if (!input.empty()) {
                index.consumers[input].push_back(n);
            }
        }
    }
    return index;
}

// Finds the quantized bias of QDQ layer `n`, or sets `reason` when it has none that can be
// rewritten on its own.
std::optional<QuantizedBias> find_quantized_bias(const onnx::GraphProto& graph,
                                                 const GraphIndex& index, int n,
                                                 std::string& reason) {
    const onnx::NodeProto& node = graph.node(n);
    if (node.input_size() < 3 || node.input(2).empty()) {
        reason = "no bias input (adding one would change the graph)";
        return std::nullopt;
    }
    const std::string& bias_input = node.input(2);
    const auto producer = index.producer.find(bias_input);
    const onnx::NodeProto* dequantize =
        producer == index.producer.end() ? nullptr : &graph.node(producer->second);
    if (dequantize == nullptr || dequantize->op_type() != "DequantizeLinear" ||
        !index.initializers.contains(dequantize->input(0)) ||
        !index.initializers.contains(dequantize->input(1))) {
        reason = fmt::format("bias '{}' is not a DequantizeLinear of an initializer", bias_input);
        return std::nullopt;
    }
    if (index.consumers.at(bias_input).size() != 1 ||
        index.consumers.at(dequantize->input(0)).size() != 1) {
        reason = fmt::format("bias '{}' is shared with another layer", dequantize->input(0));
        return std::nullopt;
    }

    QuantizedBias bias;
    bias.initializer = index.initializers.at(dequantize->input(0));
    const onnx::TensorProto& stored = graph.initializer(bias.initializer);
    const auto range = integer_range(stored.data_type());
    if (!range) {
        reason = fmt::format("bias '{}' has type {}, not an integer type", stored.name(),
                             integer_type_name(stored.data_type()));
        return std::nullopt;
    }
    bias.data_type = stored.data_type();
    bias.min = range->first;
    bias.max = range->second;
    bias.values = read_integer_tensor(stored);
    bias.scales = read_float_tensor(graph.initializer(index.initializers.at(dequantize->input(1))));
    bias.zero_points = {0};
    if (dequantize->input_size() >= 3 && !dequantize->input(2).empty()) {
        if (!index.initializers.contains(dequantize->input(2))) {
            reason =
                fmt::format("the zero point of bias '{}' is not an initializer", stored.name());
            return std::nullopt;
        }
        bias.zero_points =
            read_integer_tensor(graph.initializer(index.initializers.at(dequantize->input(2))));
    }
    const size_t count = bias.values.size();
    const auto fits = [count](size_t size) { return size == 1 || size == count; };
    if (!fits(bias.scales.size()) || !fits(bias.zero_points.size())) {
        reason = fmt::format("bias '{}' has {} scales and {} zero points for {} entries",
                             stored.name(), bias.scales.size(), bias.zero_points.size(), count);
        return std::nullopt;
    }
    return bias;
}

// Finds the float model's name for the output of QDQ layer `qdq_node`: the same name, or the name
// without the "_float" suffix when the layer's output is a graph output.
std::optional<std::string> float_output_name(const onnx::GraphProto& float_graph,
                                             const onnx::NodeProto& qdq_node) {
    const std::string& output = qdq_node.output(0);
    std::vector<std::string> candidates = {output};
    if (output.ends_with(kGraphOutputSuffix)) {
        candidates.push_back(output.substr(0, output.size() - kGraphOutputSuffix.size()));
    }
    for (const std::string& candidate : candidates) {
        for (const onnx::NodeProto& node : float_graph.node()) {
            if (node.output_size() > 0 && node.output(0) == candidate &&
                node.op_type() == qdq_node.op_type()) {
                return candidate;
            }
        }
    }
    return std::nullopt;
}

// Running per-channel sums of one tensor (channel axis 1, summed over the batch and every other
// axis), in double.
struct ChannelSums {
    std::vector<double> sums;
    int64_t values_per_channel = 0;

    void add(const FloatOutput& output, const std::string& tensor, const std::string& label) {
        if (output.shape.size() < 2 || output.shape[1] <= 0) {
            fail(ExitCode::kUnsupported,
                 "tensor '{}' of {} has shape rank {}; bias correction needs a batch and a "
                 "channel axis",
                 tensor, label, output.shape.size());
        }
        const auto channels = static_cast<size_t>(output.shape[1]);
        const size_t batch = static_cast<size_t>(std::max<int64_t>(1, output.shape[0]));
        const size_t inner = output.values.size() / (batch * channels);
        sums.resize(channels, 0.0);
        for (size_t e = 0; e < output.values.size(); ++e) {
            sums[(e / inner) % channels] += output.values[e];
        }
        values_per_channel += static_cast<int64_t>(output.values.size() / channels);
    }

    std::vector<double> means(const std::string& tensor, const std::string& label) const {
        std::vector<double> result = sums;
        for (double& mean : result) {
            mean /= static_cast<double>(std::max<int64_t>(1, values_per_channel));
            if (!std::isfinite(mean)) {
                fail(ExitCode::kInvalidInput,
                     "tensor '{}' of {} has a non-finite mean over the calibration data; check "
                     "the model's weights and the calibration data",
                     tensor, label);
            }
        }
        return result;
    }
};

// Per-channel means of `tensors` in one pass of `model` over the calibration data.
std::vector<std::vector<double>> channel_means(const onnx::ModelProto& model,
                                               const std::vector<std::string>& tensors,
                                               CalibrationDataReader& reader,
                                               const SessionConfig& session,
                                               const std::string& label) {
    std::vector<ChannelSums> sums(tensors.size());
    visit_calibration_outputs(
        model, tensors, reader, session, label,
        [&](size_t t, const FloatOutput& output) { sums[t].add(output, tensors[t], label); });
    std::vector<std::vector<double>> means;
    for (size_t t = 0; t < tensors.size(); ++t) {
        means.push_back(sums[t].means(tensors[t], label));
    }
    return means;
}

double mean_abs_difference(const std::vector<double>& a, const std::vector<double>& b) {
    double total = 0;
    for (size_t c = 0; c < a.size(); ++c) {
        total += std::abs(a[c] - b[c]);
    }
    return a.empty() ? 0.0 : total / static_cast<double>(a.size());
}

// Rewrites the integers of `bias` so that it moves by -shift[c] in channel c, with its scale and
// zero point kept: q_new = saturate(round_half_to_even((q - z) - shift / s) + z).
void apply_correction(const std::vector<double>& shift, QuantizedBias& bias,
                      CorrectedLayer& record) {
    for (size_t c = 0; c < bias.values.size(); ++c) {
        const double step = bias.scale(c);
        const int64_t zero_point = bias.zero_point(c);
        const double target = static_cast<double>(bias.values[c] - zero_point) - shift[c] / step;
        const auto rounded =
            static_cast<int64_t>(std::clamp(round_half_to_even(target), -9.0e18, 9.0e18));
        int64_t corrected = rounded + zero_point;
        if (corrected < bias.min || corrected > bias.max) {
            corrected = std::clamp(corrected, bias.min, bias.max);
            ++record.saturated_entries;
        }
        if (corrected == bias.values[c]) {
            ++record.unchanged_entries;
        }
        bias.values[c] = corrected;
        record.max_abs_correction = std::max(record.max_abs_correction, std::abs(shift[c]));
    }
}

}  // namespace

BiasCorrectionReport correct_biases(const onnx::ModelProto& float_model,
                                    onnx::ModelProto& qdq_model, CalibrationDataReader& reader,
                                    const SessionConfig& session) {
    onnx::GraphProto& graph = *qdq_model.mutable_graph();
    const GraphIndex index = index_graph(graph);
    BiasCorrectionReport report;

    // Layers with a bias that can be rewritten, in graph order.
    std::vector<LayerPlan> plans;
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        if (node.op_type() == "MatMul") {
            report.uncorrected.push_back({node.name(), "MatMul has no bias input"});
            continue;
        }
        if (node.op_type() != "Conv" && node.op_type() != "Gemm") {
            continue;
        }
        std::string reason;
        std::optional<QuantizedBias> bias = find_quantized_bias(graph, index, n, reason);
        std::optional<std::string> float_output = float_output_name(float_model.graph(), node);
        if (bias && !float_output) {
            reason = fmt::format("the float model has no {} writing '{}'", node.op_type(),
                                 node.output(0));
        }
        if (!reason.empty()) {
            report.uncorrected.push_back({node.name(), reason});
            continue;
        }
        plans.push_back({n, node.output(0), *float_output, std::move(*bias)});
    }
    if (plans.empty()) {
        return report;
    }

    // The float model does not change, so one pass measures every layer's reference means.
    std::vector<std::string> float_outputs;
    for (const LayerPlan& plan : plans) {
        float_outputs.push_back(plan.float_output);
    }
    const std::vector<std::vector<double>> float_means =
        channel_means(float_model, float_outputs, reader, session, "the float model");
    ++report.model_passes;

    // Layers whose bias matches their output channels.
    std::vector<size_t> corrected_plans;
    for (size_t p = 0; p < plans.size(); ++p) {
        if (float_means[p].size() != plans[p].bias.values.size()) {
            report.uncorrected.push_back(
                {graph.node(plans[p].node).name(),
                 fmt::format("the bias has {} entries for {} output channels",
                             plans[p].bias.values.size(), float_means[p].size())});
            continue;
        }
        corrected_plans.push_back(p);
    }

    // Every QDQ pass exposes the outputs of all these layers, so that ONNX Runtime runs the same
    // graph in each pass. Its graph optimizations (such as fusing a Q/DQ group into an integer
    // kernel) may depend on which tensors are graph outputs, so a different set per pass could
    // change the arithmetic of other layers between passes.
    std::vector<std::string> qdq_outputs;
    for (const size_t p : corrected_plans) {
        qdq_outputs.push_back(plans[p].qdq_output);
    }
    const auto measure_qdq_model = [&]() {
        ++report.model_passes;
        return channel_means(qdq_model, qdq_outputs, reader, session, "the QDQ model");
    };

    // One layer at a time, because correcting a layer changes what the later layers receive.
    for (size_t i = 0; i < corrected_plans.size(); ++i) {
        LayerPlan& plan = plans[corrected_plans[i]];
        const std::vector<double>& reference = float_means[corrected_plans[i]];
        const std::vector<double> measured = measure_qdq_model()[i];
        std::vector<double> shift(measured.size());
        for (size_t c = 0; c < shift.size(); ++c) {
            shift[c] = measured[c] - reference[c];
        }

        onnx::TensorProto& stored = *graph.mutable_initializer(plan.bias.initializer);
        CorrectedLayer record;
        record.layer = graph.node(plan.node).name();
        record.output = plan.qdq_output;
        record.bias = stored.name();
        record.bias_type = integer_type_name(plan.bias.data_type);
        record.channels = static_cast<int64_t>(shift.size());
        record.mean_abs_shift_before = mean_abs_difference(measured, reference);
        const auto [min_step, max_step] =
            std::minmax_element(plan.bias.scales.begin(), plan.bias.scales.end());
        record.min_bias_step = *min_step;
        record.max_bias_step = *max_step;
        apply_correction(shift, plan.bias, record);
        write_integer_tensor(stored, plan.bias.values);
        report.layers.push_back(record);
    }

    // A last pass measures what is left. Correcting a layer does not change the layers before it,
    // so this equals measuring each layer right after its own correction.
    if (!corrected_plans.empty()) {
        const std::vector<std::vector<double>> final_means = measure_qdq_model();
        for (size_t i = 0; i < corrected_plans.size(); ++i) {
            report.layers[i].mean_abs_shift_after =
                mean_abs_difference(final_means[i], float_means[corrected_plans[i]]);
        }
    }
    return report;
}

std::string format_bias_correction_report(const BiasCorrectionReport& report) {
    std::string text =
        fmt::format("bias correction, {} passes over the calibration data\n", report.model_passes);
    text += fmt::format("{:<16} {:<6} {:>8} {:>12} {:>12} {:>12} {:>10} {:>9} {:>9}\n", "layer",
                        "bias", "channels", "shift before", "shift after", "max correct.",
                        "max step", "unchanged", "saturated");
    for (const CorrectedLayer& layer : report.layers) {
        text +=
            fmt::format("{:<16} {:<6} {:>8} {:>12.4g} {:>12.4g} {:>12.4g} {:>10.3g} {:>9} {:>9}\n",
                        layer.layer, layer.bias_type, layer.channels, layer.mean_abs_shift_before,
                        layer.mean_abs_shift_after, layer.max_abs_correction, layer.max_bias_step,
                        layer.unchanged_entries, layer.saturated_entries);
    }
    for (const UncorrectedLayer& layer : report.uncorrected) {
        text += fmt::format("left alone: {}: {}\n", layer.layer, layer.reason);
    }
    return text;
}

}  // namespace edgeq
