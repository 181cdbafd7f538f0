#include "edgeq/quant/equalization.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <onnx/shape_inference/implementation.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {

namespace {

// Operators that keep the channel axis (axis 1) and commute with a positive per-channel scale s:
// relu(s x) = s relu(x), max(s x) = s max(x), mean(s x) = s mean(x). Pooling pads are -inf (max) or
// zero (average), and both stay what they are under the scale. MaxPool's optional indices output
// does not change either, because a positive scale keeps the position of each maximum.
const std::set<std::string> kScaleCommutingOps = {"Relu", "MaxPool", "AveragePool",
                                                  "GlobalAveragePool"};

// The float model's graph, indexed for the pair search.
struct GraphIndex {
    std::map<std::string, int> initializers;  // name -> position in graph.initializer
    std::map<std::string, std::vector<int>> consumers;
    std::set<std::string> graph_inputs;
    std::set<std::string> graph_outputs;
    // Static shapes from ONNX shape inference, with -1 for a symbolic dimension. Tensors whose
    // shape inference found nothing are missing.
    std::map<std::string, std::vector<int64_t>> shapes;
};

void add_inferred_shape(const onnx::ValueInfoProto& info, GraphIndex& index) {
    if (!info.type().tensor_type().has_shape()) {
        return;
    }
    std::vector<int64_t> dims;
    for (const auto& dim : info.type().tensor_type().shape().dim()) {
        dims.push_back(dim.has_dim_value() ? dim.dim_value() : -1);
    }
    index.shapes[info.name()] = std::move(dims);
}

GraphIndex index_graph(const onnx::ModelProto& model) {
    const onnx::GraphProto& graph = model.graph();
    GraphIndex index;
    for (int i = 0; i < graph.initializer_size(); ++i) {
        index.initializers[graph.initializer(i).name()] = i;
    }
    for (int n = 0; n < graph.node_size(); ++n) {
        for (const std::string& input : graph.node(n).input()) {
            if (!input.empty()) {
                index.consumers[input].push_back(n);
            }
        }
    }
    for (const onnx::ValueInfoProto& input : graph.input()) {
        index.graph_inputs.insert(input.name());
    }
    for (const onnx::ValueInfoProto& output : graph.output()) {
        index.graph_outputs.insert(output.name());
    }

    // Shapes are needed only to confirm that a Reshape flattens from axis 1. A model that shape
    // inference rejects still gets equalized, but such a Reshape is then left alone.
    onnx::ModelProto inferred = model;
    try {
        onnx::ShapeInferenceOptions options(/*check_type_val=*/false, /*strict_mode_val=*/0);
        onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(), options);
    } catch (const std::exception&) {
        return index;
    }
    for (const onnx::ValueInfoProto& info : inferred.graph().value_info()) {
        add_inferred_shape(info, index);
    }
    for (const onnx::ValueInfoProto& info : inferred.graph().input()) {
        add_inferred_shape(info, index);
    }
    return index;
}

int64_t int_attribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback) {
    for (const onnx::AttributeProto& attribute : node.attribute()) {
        if (attribute.name() == name) {
            return attribute.i();
        }
    }
    return fallback;
}

// The weight (and bias) of one Conv or Gemm in double precision, where the sweeps work.
struct Layer {
    int node = -1;
    std::string op_type;
    std::vector<int64_t> weight_dims;
    std::vector<double> weight;
    std::vector<double> bias;  // empty when the layer has none or is only a second layer
    bool transposed = false;   // Gemm transB: weight [out, in] instead of [in, out]
    int64_t group = 1;         // Conv group count

    int64_t output_channels() const {
        if (op_type == "Conv") {
            return weight_dims[0];
        }
        return transposed ? weight_dims[0] : weight_dims[1];
    }
    int64_t input_width() const {  // Conv: input channels; Gemm: K, the columns of its input
        if (op_type == "Conv") {
            return weight_dims[1] * group;
        }
        return transposed ? weight_dims[1] : weight_dims[0];
    }
};

// Output channel of each element of a layer's weight. Conv [O, I/g, k...] and Gemm with transB
// [O, K] keep output channel o in row o; Gemm without transB [K, O] keeps it in column o.
std::vector<int32_t> output_channel_map(const Layer& layer) {
    const auto size = static_cast<int64_t>(layer.weight.size());
    const int64_t channels = layer.output_channels();
    std::vector<int32_t> map(static_cast<size_t>(size));
    const bool by_row = layer.op_type == "Conv" || layer.transposed;
    const int64_t row_size = size / (by_row ? channels : layer.weight_dims[0]);
    for (int64_t e = 0; e < size; ++e) {
        map[static_cast<size_t>(e)] = static_cast<int32_t>(by_row ? e / row_size : e % row_size);
    }
    return map;
}

// Input channel of each element of a layer's weight, with `block` consecutive input columns of a
// Gemm per channel (H * W of a flattened feature map, else 1). For a Conv with g groups, weight
// [O, I/g, k...]: output channel o belongs to group o / (O/g), whose input channels start at
// group * I/g.
std::vector<int32_t> input_channel_map(const Layer& layer, int64_t block) {
    const auto size = static_cast<int64_t>(layer.weight.size());
    std::vector<int32_t> map(static_cast<size_t>(size));
    if (layer.op_type == "Conv") {
        const int64_t out_channels = layer.weight_dims[0];
        const int64_t group_inputs = layer.weight_dims[1];
        const int64_t kernel_size = size / (out_channels * group_inputs);
        const int64_t group_outputs = out_channels / layer.group;
        for (int64_t e = 0; e < size; ++e) {
            const int64_t o = e / (group_inputs * kernel_size);
            const int64_t local = (e / kernel_size) % group_inputs;
            map[static_cast<size_t>(e)] =
                static_cast<int32_t>((o / group_outputs) * group_inputs + local);
        }
        return map;
    }
    // Gemm: weight [N, K] with transB (input column k is e % K), else [K, N] (k is e / N).
    const int64_t columns = layer.weight_dims[1];
    for (int64_t e = 0; e < size; ++e) {
        const int64_t k = layer.transposed ? e % columns : e / columns;
        map[static_cast<size_t>(e)] = static_cast<int32_t>(k / block);
    }
    return map;
}

// max |w| per channel, with `channel_of[e]` the channel of element e.
std::vector<double> channel_ranges(const std::vector<double>& weight,
                                   const std::vector<int32_t>& channel_of, int64_t channels) {
    std::vector<double> ranges(static_cast<size_t>(channels), 0.0);
    for (size_t e = 0; e < weight.size(); ++e) {
        double& range = ranges[static_cast<size_t>(channel_of[e])];
        range = std::max(range, std::abs(weight[e]));
    }
    return ranges;
}

ChannelRangeSpread spread_of(const std::vector<double>& ranges) {
    if (ranges.empty()) {
        return {};
    }
    const auto [smallest, largest] = std::minmax_element(ranges.begin(), ranges.end());
    return {static_cast<float>(*largest),
            *largest > 0 ? static_cast<float>(*smallest / *largest) : 0.0f};
}

// A pair found in the graph, with the channel of every weight element worked out once.
struct PairPlan {
    int first = -1;  // node indices
    int second = -1;
    std::string between;
    int64_t channels = 0;
    std::vector<int32_t> first_channel_of;   // output channel of each element of W1
    std::vector<int32_t> second_channel_of;  // input channel of each element of W2
};

// Either a pair or the reason the layer has none.
struct PairSearch {
    std::optional<PairPlan> pair;
    std::string reason;
};

PairSearch no_pair(std::string reason) {
    return {std::nullopt, std::move(reason)};
}

// Checks that input `position` of node `n` is a float initializer that only this node reads,
// and returns the initializer; otherwise sets `reason`.
const onnx::TensorProto* exclusive_float_initializer(const onnx::GraphProto& graph,
                                                     const GraphIndex& index, int n, int position,
                                                     std::string& reason) {
    const onnx::NodeProto& node = graph.node(n);
    const std::string& name = node.input(position);
    const auto found = index.initializers.find(name);
    if (found == index.initializers.end()) {
        reason = fmt::format("'{}' of node '{}' is not an initializer", name, node.name());
        return nullptr;
    }
    const onnx::TensorProto& tensor = graph.initializer(found->second);
    if (tensor.data_type() != onnx::TensorProto::FLOAT) {
        reason = fmt::format("initializer '{}' is not float32", name);
        return nullptr;
    }
    if (index.consumers.at(name).size() != 1) {
        reason = fmt::format("initializer '{}' is shared with another node", name);
        return nullptr;
    }
    if (index.graph_inputs.contains(name)) {
        reason = fmt::format("initializer '{}' is also a graph input, which a caller may override",
                             name);
        return nullptr;
    }
    return &tensor;
}

// Reads the weight of Conv or Gemm node `n`, checking what both roles in a pair need.
std::optional<Layer> read_layer(const onnx::GraphProto& graph, const GraphIndex& index, int n,
                                std::string& reason) {
    const onnx::NodeProto& node = graph.node(n);
    if (node.input_size() < 2) {
        reason = fmt::format("node '{}' has no weight input", node.name());
        return std::nullopt;
    }
    const onnx::TensorProto* weight = exclusive_float_initializer(graph, index, n, 1, reason);
    if (weight == nullptr) {
        return std::nullopt;
    }
    Layer layer;
    layer.node = n;
    layer.op_type = node.op_type();
    layer.weight_dims.assign(weight->dims().begin(), weight->dims().end());
    layer.transposed = int_attribute(node, "transB", 0) != 0;
    layer.group = int_attribute(node, "group", 1);
    const size_t rank = layer.weight_dims.size();
    if ((layer.op_type == "Conv" && rank < 3) || (layer.op_type == "Gemm" && rank != 2)) {
        reason = fmt::format("weight '{}' of node '{}' has rank {}, unexpected for a {}",
                             weight->name(), node.name(), rank, layer.op_type);
        return std::nullopt;
    }
    if (layer.group <= 0 || element_count(weight->dims()) == 0) {
        reason = fmt::format("node '{}' has group {} and weight '{}' of {} elements", node.name(),
                             layer.group, weight->name(), element_count(weight->dims()));
        return std::nullopt;
    }
    const std::vector<float> values = read_float_tensor(*weight);
    layer.weight.assign(values.begin(), values.end());
    return layer;
}

// Reads the bias of `layer` when it is the first layer of a pair: a float initializer with one
// entry per output channel.
bool read_first_layer_bias(const onnx::GraphProto& graph, const GraphIndex& index, Layer& layer,
                           std::string& reason) {
    const onnx::NodeProto& node = graph.node(layer.node);
    if (node.input_size() < 3 || node.input(2).empty()) {
        return true;
    }
    const onnx::TensorProto* bias =
        exclusive_float_initializer(graph, index, layer.node, 2, reason);
    if (bias == nullptr) {
        return false;
    }
    const int64_t count = element_count(bias->dims());
    const bool row_or_vector =
        bias->dims_size() == 1 || (bias->dims_size() == 2 && bias->dims(0) == 1);
    if (count != layer.output_channels() || !row_or_vector) {
        reason = fmt::format("bias '{}' of node '{}' is not one value per output channel ({})",
                             bias->name(), node.name(), layer.output_channels());
        return false;
    }
    const std::vector<float> values = read_float_tensor(*bias);
    layer.bias.assign(values.begin(), values.end());
    return true;
}

// True when the Reshape `node` turns [N, C, ...] into [N, C * ...], as Flatten with axis 1 does.
// Its shape must be a constant [0, x] (0 copies the batch size) or [a, K] with K the product of
// the input's dimensions after the batch, which then needs the input's inferred shape.
bool reshape_flattens_from_axis_one(const onnx::GraphProto& graph, const GraphIndex& index,
                                    const onnx::NodeProto& node, std::string& reason) {
    const auto found =
        node.input_size() >= 2 ? index.initializers.find(node.input(1)) : index.initializers.end();
    if (found == index.initializers.end()) {
        reason = fmt::format("the shape of Reshape '{}' is not an initializer", node.name());
        return false;
    }
    const onnx::TensorProto& shape_tensor = graph.initializer(found->second);
    std::vector<int64_t> shape;
    if (shape_tensor.data_type() == onnx::TensorProto::INT64) {
        if (shape_tensor.has_raw_data()) {
            shape.resize(shape_tensor.raw_data().size() / sizeof(int64_t));
            std::memcpy(shape.data(), shape_tensor.raw_data().data(),
                        shape.size() * sizeof(int64_t));
        } else {
            shape.assign(shape_tensor.int64_data().begin(), shape_tensor.int64_data().end());
        }
    }
    if (shape.size() != 2) {
        reason = fmt::format("Reshape '{}' does not reshape to two dimensions", node.name());
        return false;
    }
    if (shape[0] == 0 && int_attribute(node, "allowzero", 0) == 0) {
        return true;
    }
    const auto input_shape = index.shapes.find(node.input(0));
    if (input_shape != index.shapes.end() && input_shape->second.size() >= 2) {
        int64_t trailing = 1;
        for (size_t d = 1; d < input_shape->second.size(); ++d) {
            trailing = input_shape->second[d] < 0 ? -1 : trailing * input_shape->second[d];
            if (trailing < 0) {
                break;
            }
        }
        if (trailing > 0 && shape[1] == trailing) {
            return true;
        }
    }
    reason = fmt::format(
        "Reshape '{}' cannot be shown to keep the batch axis (shape [{}, {}], input shape unknown "
        "or not matching)",
        node.name(), shape[0], shape[1]);
    return false;
}

// Checks the second layer of a pair and maps its weight elements to the channels of the first.
// `flattened` is true when a Flatten or Reshape sits between the two.
bool plan_second_layer(const onnx::GraphProto& graph, const Layer& first, const Layer& second,
                       bool flattened, PairPlan& plan, std::string& reason) {
    const onnx::NodeProto& node = graph.node(second.node);
    const int64_t channels = first.output_channels();
    int64_t block = 1;
    if (second.op_type == "Conv") {
        if (flattened) {
            reason = fmt::format("a Flatten or Reshape comes before Conv '{}'", node.name());
            return false;
        }
        if (second.input_width() != channels || second.weight_dims[0] % second.group != 0) {
            reason = fmt::format("Conv '{}' expects {} input channels in {} groups, not {}",
                                 node.name(), second.input_width(), second.group, channels);
            return false;
        }
    } else {
        if (int_attribute(node, "transA", 0) != 0) {
            reason = fmt::format("Gemm '{}' transposes its input (transA 1)", node.name());
            return false;
        }
        const int64_t width = second.input_width();
        if (width % channels != 0 || (!flattened && width != channels)) {
            reason = fmt::format(
                "Gemm '{}' reads {} columns, which is no whole block per channel "
                "of the {} channels before it",
                node.name(), width, channels);
            return false;
        }
        // Flattening [N, C, H, W] puts channel c in the columns [c * H * W, (c + 1) * H * W).
        block = width / channels;
    }
    plan.channels = channels;
    plan.second_channel_of = input_channel_map(second, block);
    return true;
}

// Follows the output of Conv or Gemm `first` through scale-commuting nodes to the next Conv or
// Gemm. `layers` caches the layers read so far.
PairSearch find_pair(const onnx::GraphProto& graph, const GraphIndex& index, int first,
                     std::map<int, Layer>& layers) {
    std::string reason;
    if (!layers.contains(first)) {
        std::optional<Layer> layer = read_layer(graph, index, first, reason);
        if (!layer) {
            return no_pair(reason);
        }
        layers[first] = std::move(*layer);
    }
    const onnx::NodeProto& first_node = graph.node(first);
    std::vector<std::string> between;
    bool flattened = false;
    std::string tensor = first_node.output(0);
    while (true) {
        if (index.graph_outputs.contains(tensor)) {
            return no_pair(fmt::format("'{}' is a graph output", tensor));
        }
        const auto consumers = index.consumers.find(tensor);
        if (consumers == index.consumers.end()) {
            return no_pair(fmt::format("nothing reads '{}'", tensor));
        }
        if (consumers->second.size() != 1) {
            return no_pair(fmt::format("'{}' has {} consumers", tensor, consumers->second.size()));
        }
        const int next = consumers->second.front();
        const onnx::NodeProto& node = graph.node(next);
        if (node.input(0) != tensor) {
            return no_pair(fmt::format("'{}' is not the data input of {} '{}'", tensor,
                                       node.op_type(), node.name()));
        }
        if (node.op_type() == "Conv" || node.op_type() == "Gemm") {
            // Read the second layer unless an earlier pair already has, where it was the first.
            if (!layers.contains(next)) {
                std::optional<Layer> layer = read_layer(graph, index, next, reason);
                if (!layer) {
                    return no_pair(reason);
                }
                layers[next] = std::move(*layer);
            }
            PairPlan plan;
            if (!plan_second_layer(graph, layers.at(first), layers.at(next), flattened, plan,
                                   reason)) {
                return no_pair(reason);
            }
            if (!read_first_layer_bias(graph, index, layers.at(first), reason)) {
                return no_pair(reason);
            }
            plan.first = first;
            plan.second = next;
            for (const std::string& op_type : between) {
                plan.between += (plan.between.empty() ? "" : ", ") + op_type;
            }
            plan.first_channel_of = output_channel_map(layers.at(first));
            return {std::move(plan), ""};
        }
        if (flattened) {
            return no_pair(fmt::format("only a Gemm may follow the flatten after '{}', not {} '{}'",
                                       first_node.name(), node.op_type(), node.name()));
        }
        const bool flattens =
            (node.op_type() == "Flatten" && int_attribute(node, "axis", 1) == 1) ||
            (node.op_type() == "Reshape" &&
             reshape_flattens_from_axis_one(graph, index, node, reason));
        if (!reason.empty()) {
            return no_pair(reason);
        }
        if (!flattens && !kScaleCommutingOps.contains(node.op_type())) {
            return no_pair(
                fmt::format("{} '{}' after '{}' does not commute with a per-channel scale",
                            node.op_type(), node.name(), first_node.name()));
        }
        flattened = flattens;
        between.push_back(node.op_type());
        tensor = node.output(0);
    }
}

// Sweeps stop early once no scale differs from 1 by more than this, float32's relative precision
// 2^-24: further sweeps would move the rounded weights by about one unit in the last place.
constexpr double kConvergedScaleChange = 0x1p-24;

// One sweep step on one pair: s_i = sqrt(r1_i / r2_i), W1[i] /= s_i, b1[i] /= s_i,
// W2[:, i] *= s_i. Channels with a zero range on either side keep s_i = 1. Returns max |s_i - 1|.
double equalize_pair(const PairPlan& plan, Layer& first, Layer& second) {
    const std::vector<double> first_ranges =
        channel_ranges(first.weight, plan.first_channel_of, plan.channels);
    const std::vector<double> second_ranges =
        channel_ranges(second.weight, plan.second_channel_of, plan.channels);
    std::vector<double> scales(static_cast<size_t>(plan.channels), 1.0);
    double max_change = 0;
    for (size_t i = 0; i < scales.size(); ++i) {
        if (first_ranges[i] > 0 && second_ranges[i] > 0) {
            scales[i] = std::sqrt(first_ranges[i] / second_ranges[i]);
            max_change = std::max(max_change, std::abs(scales[i] - 1.0));
        }
    }
    for (size_t e = 0; e < first.weight.size(); ++e) {
        first.weight[e] /= scales[static_cast<size_t>(plan.first_channel_of[e])];
    }
    for (size_t i = 0; i < first.bias.size(); ++i) {
        first.bias[i] /= scales[i];
    }
    for (size_t e = 0; e < second.weight.size(); ++e) {
        second.weight[e] *= scales[static_cast<size_t>(plan.second_channel_of[e])];
    }
    return max_change;
}

void write_float_initializer(onnx::TensorProto& tensor, const std::vector<double>& values) {
    std::vector<float> rounded(values.begin(), values.end());
    tensor.clear_float_data();
    tensor.set_raw_data(rounded.data(), rounded.size() * sizeof(float));
}

}  // namespace

EqualizationReport equalize_cross_layer(onnx::ModelProto& float_model, int iterations) {
    if (iterations < 0) {
        fail(ExitCode::kUsage, "cross-layer equalization needs 0 or more iterations, not {}",
             iterations);
    }
    onnx::GraphProto& graph = *float_model.mutable_graph();
    const GraphIndex index = index_graph(float_model);

    // Find the pairs, in graph order of their first layer.
    EqualizationReport report;
    std::map<int, Layer> layers;
    std::vector<PairPlan> plans;
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        if (node.op_type() != "Conv" && node.op_type() != "Gemm") {
            continue;
        }
        PairSearch search = find_pair(graph, index, n, layers);
        if (!search.pair) {
            report.unequalized.push_back({node.name(), search.reason});
            continue;
        }
        plans.push_back(std::move(*search.pair));
    }

    for (const PairPlan& plan : plans) {
        const Layer& first = layers.at(plan.first);
        const Layer& second = layers.at(plan.second);
        EqualizedPair pair;
        pair.first_layer = graph.node(plan.first).name();
        pair.second_layer = graph.node(plan.second).name();
        pair.between = plan.between;
        pair.channels = plan.channels;
        const std::vector<double> first_ranges =
            channel_ranges(first.weight, plan.first_channel_of, plan.channels);
        const std::vector<double> second_ranges =
            channel_ranges(second.weight, plan.second_channel_of, plan.channels);
        for (size_t i = 0; i < first_ranges.size(); ++i) {
            // A zero range stays zero under any scale, so this count does not change.
            if (first_ranges[i] == 0 || second_ranges[i] == 0) {
                ++pair.unscaled_channels;
            }
        }
        pair.first_before = spread_of(first_ranges);
        pair.second_before = spread_of(second_ranges);
        report.pairs.push_back(pair);
    }

    // Sweep. A middle layer of a chain is the second layer of one pair and the first of the next.
    for (int iteration = 0; iteration < iterations && !plans.empty(); ++iteration) {
        double max_change = 0;
        for (const PairPlan& plan : plans) {
            max_change = std::max(
                max_change, equalize_pair(plan, layers.at(plan.first), layers.at(plan.second)));
        }
        ++report.iterations;
        report.last_iteration_max_scale_change = max_change;
        if (max_change < kConvergedScaleChange) {
            break;
        }
    }

    for (size_t p = 0; p < plans.size(); ++p) {
        const PairPlan& plan = plans[p];
        report.pairs[p].first_after = spread_of(
            channel_ranges(layers.at(plan.first).weight, plan.first_channel_of, plan.channels));
        report.pairs[p].second_after = spread_of(
            channel_ranges(layers.at(plan.second).weight, plan.second_channel_of, plan.channels));
    }

    // Round to float once, after all sweeps. Layers in no pair keep their initializers untouched.
    std::set<int> paired;
    for (const PairPlan& plan : plans) {
        paired.insert(plan.first);
        paired.insert(plan.second);
    }
    if (report.iterations > 0) {
        for (const int n : paired) {
            const Layer& layer = layers.at(n);
            const onnx::NodeProto& node = graph.node(n);
            write_float_initializer(
                *graph.mutable_initializer(index.initializers.at(node.input(1))), layer.weight);
            if (!layer.bias.empty()) {
                write_float_initializer(
                    *graph.mutable_initializer(index.initializers.at(node.input(2))), layer.bias);
            }
        }
    }
    return report;
}

std::string format_equalization_report(const EqualizationReport& report) {
    std::string text =
        fmt::format("cross-layer equalization, {} iterations (last max |s - 1| {:.2e})\n",
                    report.iterations, report.last_iteration_max_scale_change);
    text +=
        fmt::format("{:<16} {:<16} {:>8} {:>21} {:>17} {:>21} {:>17}\n", "first", "second",
                    "channels", "first max|w|", "first min/max", "second max|w|", "second min/max");
    for (const EqualizedPair& pair : report.pairs) {
        text += fmt::format(
            "{:<16} {:<16} {:>8} {:>9.4g} -> {:<9.4g} {:>6.3f} -> {:<6.3f} {:>9.4g} -> {:<9.4g} "
            "{:>6.3f} -> {:<6.3f}\n",
            pair.first_layer, pair.second_layer, pair.channels, pair.first_before.tensor_range,
            pair.first_after.tensor_range, pair.first_before.smallest_to_largest,
            pair.first_after.smallest_to_largest, pair.second_before.tensor_range,
            pair.second_after.tensor_range, pair.second_before.smallest_to_largest,
            pair.second_after.smallest_to_largest);
    }
    for (const UnequalizedLayer& layer : report.unequalized) {
        text += fmt::format("left alone: {}: {}\n", layer.layer, layer.reason);
    }
    return text;
}

}  // namespace edgeq
