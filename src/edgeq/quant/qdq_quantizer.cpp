#include "edgeq/quant/qdq_quantizer.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {

namespace {

const std::vector<std::string> kQuantizableOps = {
    "Conv",    "Gemm",        "MatMul",   "Add",       "Mul",
    "Concat",  "Relu",        "Clip",     "LeakyRelu", "Sigmoid",
    "MaxPool", "AveragePool", "Flatten",  "Reshape",   "GlobalAveragePool",
    "Pad",     "Softmax",     "Transpose"};

// Operators whose float output feeds a following Relu directly on the NPU (no Q/DQ between).
const std::set<std::string> kFusesWithRelu = {"Conv", "Gemm", "MatMul", "Add"};

// Operators that only select or move values: the output keeps the input's quantization.
const std::set<std::string> kMovesValues = {"MaxPool", "Reshape", "Flatten", "Transpose", "Pad"};

// Operators with a weight (input 1) and an optional bias (input 2) to quantize.
const std::set<std::string> kHasWeights = {"Conv", "Gemm", "MatMul"};

// Operators whose float initializer operands are quantized like weights ("constant" tensors).
const std::set<std::string> kQuantizesConstants = {"Add", "Mul", "Concat"};

// Domain of the 16-bit QuantizeLinear / DequantizeLinear: the standard ops take int16 only from
// opset 21, which ONNX 1.12 (Debian 12) does not know, so 16-bit pairs use ONNX Runtime's
// contrib ops, as ONNX Runtime's own quantizer does for older opsets.
constexpr const char* kMicrosoftDomain = "com.microsoft";

std::string quantized_name(const std::string& tensor) {
    return tensor + "_quantized";
}
std::string scale_name(const std::string& tensor) {
    return tensor + "_scale";
}
std::string zero_point_name(const std::string& tensor) {
    return tensor + "_zero_point";
}

bool is_standard_domain(const std::string& domain) {
    return domain.empty() || domain == "ai.onnx";
}

bool is_16_bit(QuantType type) {
    return type == QuantType::kInt16 || type == QuantType::kUint16;
}

// The float model's graph, indexed for the rewrite.
struct GraphIndex {
    std::map<std::string, const onnx::TensorProto*> initializers;
    std::map<std::string, int> producer;                // tensor -> node index
    std::map<std::string, std::vector<int>> consumers;  // tensor -> node indices
    std::set<std::string> graph_outputs;
    std::map<std::string, int32_t> element_types;  // from the model and ONNX shape inference
};

GraphIndex index_graph(const onnx::ModelProto& model) {
    const onnx::GraphProto& graph = model.graph();
    GraphIndex index;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        index.initializers[initializer.name()] = &initializer;
        index.element_types[initializer.name()] = initializer.data_type();
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
    for (const onnx::ValueInfoProto& output : graph.output()) {
        index.graph_outputs.insert(output.name());
    }

    // Element types of intermediate tensors come from ONNX's shape inference on a copy. It is not
    // strict here: a tensor it cannot type is treated by its producer below.
    onnx::ModelProto inferred = model;
    try {
        onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance());
    } catch (const std::exception&) {
        // Types stay unknown; see tensor_is_float.
    }
    auto record = [&](const onnx::ValueInfoProto& info) {
        if (info.type().has_tensor_type() && info.type().tensor_type().elem_type() != 0) {
            index.element_types[info.name()] = info.type().tensor_type().elem_type();
        }
    };
    for (const onnx::ValueInfoProto& info : inferred.graph().input()) {
        record(info);
    }
    for (const onnx::ValueInfoProto& info : inferred.graph().value_info()) {
        record(info);
    }
    for (const onnx::ValueInfoProto& info : inferred.graph().output()) {
        record(info);
    }
    return index;
}

// True when `tensor` contains float32 values. A tensor shape inference could not type counts as
// float when a quantizable operator (all of which compute in float) produced it.
bool tensor_is_float(const onnx::GraphProto& graph, const GraphIndex& index,
                     const std::string& tensor) {
    const auto type = index.element_types.find(tensor);
    if (type != index.element_types.end()) {
        return type->second == onnx::TensorProto::FLOAT;
    }
    const auto producer = index.producer.find(tensor);
    if (producer == index.producer.end()) {
        return false;
    }
    const std::string& op_type = graph.node(producer->second).op_type();
    return std::find(kQuantizableOps.begin(), kQuantizableOps.end(), op_type) !=
           kQuantizableOps.end();
}

// The inputs of a node that carry data to quantize (not shapes, pads or clip limits).
std::vector<int> data_input_slots(const onnx::NodeProto& node) {
    const std::string& op = node.op_type();
    if (op == "Add" || op == "Mul" || op == "MatMul") {
        return {0, 1};
    }
    if (op == "Concat") {
        std::vector<int> slots(node.input_size());
        for (int i = 0; i < node.input_size(); ++i) {
            slots[i] = i;
        }
        return slots;
    }
    return {0};
}

const onnx::AttributeProto* find_attribute(const onnx::NodeProto& node, const std::string& name) {
    for (const onnx::AttributeProto& attribute : node.attribute()) {
        if (attribute.name() == name) {
            return &attribute;
        }
    }
    return nullptr;
}

int64_t int_attribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    return attribute != nullptr ? attribute->i() : fallback;
}

// A Pad only moves values (and may share its input's scale) unless it pads with a constant
// other than zero; zero is exact in every format.
bool pad_moves_values(const onnx::NodeProto& node, const GraphIndex& index) {
    const onnx::AttributeProto* mode = find_attribute(node, "mode");
    if (mode != nullptr && mode->s() != "constant") {
        return true;
    }
    if (node.input_size() < 3 || node.input(2).empty()) {
        return true;
    }
    const auto value = index.initializers.find(node.input(2));
    if (value == index.initializers.end()) {
        return false;
    }
    const std::vector<float> values = read_float_tensor(*value->second);
    return values.empty() || values.front() == 0.0f;
}

bool moves_values(const onnx::NodeProto& node, const GraphIndex& index) {
    if (!kMovesValues.contains(node.op_type())) {
        return false;
    }
    return node.op_type() != "Pad" || pad_moves_values(node, index);
}

// The nodes to quantize, and the reason each other node stays in float.
struct NodeDecisions {
    std::vector<bool> quantized;
    std::vector<FloatNode> float_nodes;
};

NodeDecisions decide_nodes(const onnx::GraphProto& graph, const GraphIndex& index,
                           const QuantizeOptions& options, const std::string& model_label) {
    // Every --exclude entry must name something, or a typo would silently quantize the layer.
    for (const std::string& entry : options.exclude) {
        const bool matches =
            std::any_of(graph.node().begin(), graph.node().end(), [&](const onnx::NodeProto& node) {
                return node.name() == entry || node.op_type() == entry;
            });
        if (!matches) {
            fail(ExitCode::kUsage,
                 "--exclude '{}' matches no node name or operator type of model '{}'; `edgeq "
                 "info` lists them",
                 entry, model_label);
        }
    }
    const std::set<std::string> excluded(options.exclude.begin(), options.exclude.end());

    NodeDecisions decisions;
    decisions.quantized.assign(graph.node_size(), false);
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        std::string reason;
        if (excluded.contains(node.name()) || excluded.contains(node.op_type())) {
            reason = "excluded";
        } else if (!is_standard_domain(node.domain())) {
            reason = fmt::format("operator domain '{}' is not standard ONNX", node.domain());
        } else if (std::find(kQuantizableOps.begin(), kQuantizableOps.end(), node.op_type()) ==
                   kQuantizableOps.end()) {
            reason = fmt::format("the quantizer does not handle {}", node.op_type());
        } else {
            for (const int slot : data_input_slots(node)) {
                if (slot >= node.input_size() || node.input(slot).empty()) {
                    continue;
                }
                const std::string& input = node.input(slot);
                if (!tensor_is_float(graph, index, input)) {
                    reason = fmt::format("input '{}' is not float32", input);
                    break;
                }
            }
            if (reason.empty() && kHasWeights.contains(node.op_type())) {
                if (index.initializers.contains(node.input(0))) {
                    reason = "its data input is a constant";
                } else if (node.op_type() != "MatMul" &&
                           (node.input_size() < 2 || !index.initializers.contains(node.input(1)))) {
                    reason = "its weight comes from another node, not an initializer";
                } else if (node.op_type() == "Gemm" && int_attribute(node, "transA", 0) != 0) {
                    reason = "Gemm with transA = 1 is not handled";
                }
            }
        }
        if (reason.empty()) {
            decisions.quantized[n] = true;
        } else {
            decisions.float_nodes.push_back({node.name(), node.op_type(), reason});
        }
    }

    for (const FloatNode& node : decisions.float_nodes) {
        if (options.strict && node.reason != "excluded") {
            fail(ExitCode::kUnsupported,
                 "node '{}' ({}) of model '{}' cannot be quantized: {}; leave out --strict to keep "
                 "it in float, or --exclude it",
                 node.name, node.op_type, model_label, node.reason);
        }
    }
    return decisions;
}

// True when `tensor`, the output of quantized node `n`, goes only into a quantized Relu, so the
// Q/DQ pair belongs after the Relu instead.
bool fuses_into_relu(const onnx::GraphProto& graph, const GraphIndex& index,
                     const NodeDecisions& decisions, int n, const std::string& tensor) {
    const onnx::NodeProto& node = graph.node(n);
    if (!decisions.quantized[n] || !kFusesWithRelu.contains(node.op_type()) ||
        index.graph_outputs.contains(tensor)) {
        return false;
    }
    const auto found = index.consumers.find(tensor);
    if (found == index.consumers.end() || found->second.size() != 1) {
        return false;
    }
    const int consumer = found->second.front();
    return graph.node(consumer).op_type() == "Relu" && decisions.quantized[consumer];
}

// Lists the activations that get a Q/DQ pair, in graph order (graph inputs first): every float
// tensor a quantized node writes, and every float tensor a quantized node reads from a float node
// or the graph input.
std::vector<std::string> list_activations(const onnx::GraphProto& graph, const GraphIndex& index,
                                          const NodeDecisions& decisions) {
    auto read_by_quantized_node = [&](const std::string& tensor) {
        const auto found = index.consumers.find(tensor);
        if (found == index.consumers.end()) {
            return false;
        }
        for (const int consumer : found->second) {
            const onnx::NodeProto& node = graph.node(consumer);
            if (!decisions.quantized[consumer]) {
                continue;
            }
            for (const int slot : data_input_slots(node)) {
                if (slot < node.input_size() && node.input(slot) == tensor) {
                    return true;
                }
            }
        }
        return false;
    };

    std::vector<std::string> activations;
    for (const onnx::ValueInfoProto& input : graph.input()) {
        if (!index.initializers.contains(input.name()) &&
            tensor_is_float(graph, index, input.name()) && read_by_quantized_node(input.name())) {
            activations.push_back(input.name());
        }
    }
    for (int n = 0; n < graph.node_size(); ++n) {
        for (const std::string& output : graph.node(n).output()) {
            if (output.empty() || !tensor_is_float(graph, index, output)) {
                continue;
            }
            const bool used =
                index.consumers.contains(output) || index.graph_outputs.contains(output);
            const bool written_by_quantized = decisions.quantized[n] && used &&
                                              !fuses_into_relu(graph, index, decisions, n, output);
            if (written_by_quantized ||
                (!decisions.quantized[n] && read_by_quantized_node(output))) {
                activations.push_back(output);
            }
        }
    }
    return activations;
}

onnx::TensorProto make_integer_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                      const std::vector<int64_t>& values, QuantType type) {
    onnx::TensorProto tensor;
    tensor.set_name(name);
    for (const int64_t size : shape) {
        tensor.add_dims(size);
    }
    // raw_data is little-endian, as on the x86 and ARM machines edgeq targets.
    std::string raw;
    auto append = [&raw](auto value) {
        raw.append(reinterpret_cast<const char*>(&value), sizeof(value));
    };
    for (const int64_t value : values) {
        switch (type) {
            case QuantType::kUint8:
                append(static_cast<uint8_t>(value));
                break;
            case QuantType::kInt8:
                append(static_cast<int8_t>(value));
                break;
            case QuantType::kUint16:
                append(static_cast<uint16_t>(value));
                break;
            case QuantType::kInt16:
                append(static_cast<int16_t>(value));
                break;
            case QuantType::kInt32:
                append(static_cast<int32_t>(value));
                break;
        }
    }
    static const std::map<QuantType, int32_t> kOnnxTypes = {
        {QuantType::kUint8, onnx::TensorProto::UINT8},
        {QuantType::kInt8, onnx::TensorProto::INT8},
        {QuantType::kUint16, onnx::TensorProto::UINT16},
        {QuantType::kInt16, onnx::TensorProto::INT16},
        {QuantType::kInt32, onnx::TensorProto::INT32}};
    tensor.set_data_type(kOnnxTypes.at(type));
    tensor.set_raw_data(raw);
    return tensor;
}

// Everything decided before the graph is rewritten.
struct QuantizationPlan {
    std::vector<std::string> activations;            // tensors that get a Q/DQ pair, in graph order
    std::map<std::string, QuantizedTensor> choices;  // activations and initializers, by name
    std::map<std::string, std::vector<float>> initializer_values;  // weights, biases, constants
};

// Per-channel layout of an initializer: the size of the channel axis and the number of elements
// after it, so that element i belongs to channel (i / inner) % channels.
struct ChannelLayout {
    int64_t channels = 1;
    int64_t inner = 1;
};

ChannelLayout channel_layout(const onnx::TensorProto& tensor, int axis) {
    ChannelLayout layout;
    layout.channels = tensor.dims(axis);
    for (int d = axis + 1; d < tensor.dims_size(); ++d) {
        layout.inner *= tensor.dims(d);
    }
    return layout;
}

std::pair<float, float> value_range(const std::vector<float>& values) {
    if (values.empty()) {
        return {0.0f, 0.0f};
    }
    const auto [low, high] = std::minmax_element(values.begin(), values.end());
    return {*low, *high};
}

const QuantParams& params_of_element(const QuantizedTensor& choice, const ChannelLayout& layout,
                                     size_t element) {
    if (choice.channels.empty()) {
        return choice.params;
    }
    return choice.channels[(static_cast<int64_t>(element) / layout.inner) % layout.channels];
}

// Quantizes the values of an initializer with its chosen parameters into `<name>_quantized`.
onnx::TensorProto quantize_initializer(const onnx::TensorProto& source,
                                       const std::vector<float>& values,
                                       const QuantizedTensor& choice) {
    const ChannelLayout layout =
        choice.channels.empty() ? ChannelLayout{} : channel_layout(source, choice.axis);
    std::vector<int64_t> quantized(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        quantized[i] = quantize_value(values[i], params_of_element(choice, layout, i));
    }
    std::vector<int64_t> shape(source.dims().begin(), source.dims().end());
    return make_integer_tensor(quantized_name(source.name()), shape, quantized, choice.params.type);
}

// True when every value fits its (channel's) range without saturating. The test is the rounded
// value, round(x / s) + z, not x against (q_max - z) * s: a float scale max / 127 can make
// 127 * s land a rounding error below max, and max still quantizes to 127 exactly.
bool initializer_fits(const onnx::TensorProto& source, const std::vector<float>& values,
                      const QuantizedTensor& choice) {
    const ChannelLayout layout =
        choice.channels.empty() ? ChannelLayout{} : channel_layout(source, choice.axis);
    for (size_t i = 0; i < values.size(); ++i) {
        const QuantParams& params = params_of_element(choice, layout, i);
        const double scaled = params.power_of_two
                                  ? std::ldexp(static_cast<double>(values[i]), params.position)
                                  : static_cast<double>(values[i] / params.float_scale);
        const double rounded = round_half_to_even(scaled) + static_cast<double>(params.zero_point);
        if (rounded < static_cast<double>(quant_min(params.type)) ||
            rounded > static_cast<double>(quant_max(params.type))) {
            return false;
        }
    }
    return true;
}

// Records the quantization of an initializer, noting when its values saturate.
void record_initializer(const onnx::TensorProto& source, std::vector<float> values,
                        QuantizedTensor choice, QuantizationPlan& plan) {
    const auto [min, max] = value_range(values);
    choice.name = source.name();
    choice.min = min;
    choice.max = max;
    choice.saturates = !initializer_fits(source, values, choice);
    if (choice.saturates) {
        choice.note += choice.note.empty() ? "" : "; ";
        choice.note +=
            "values beyond the " + quant_type_name(choice.params.type) + " range saturate";
    }
    plan.initializer_values[source.name()] = std::move(values);
    plan.choices[source.name()] = std::move(choice);
}

// Symmetric parameters for an initializer of `type` covering [min, max].
QuantParams symmetric_initializer_params(double min, double max, QuantType type,
                                         bool power_of_two) {
    if (power_of_two) {
        return power_of_two_params(type, non_overflow_position(min, max, type, 0, kMaxPosition), 0);
    }
    QuantParams params = float_params_for_range(min, max, type, /*symmetric=*/true);
    params.zero_point = 0;
    return params;
}

// The weight's channel axis: output channels, which is where each row of the weight feeds one
// output, so a per-channel scale folds into the output's requantization.
int weight_channel_axis(const onnx::NodeProto& node) {
    if (node.op_type() == "Conv") {
        return 0;
    }
    if (node.op_type() == "Gemm") {
        return int_attribute(node, "transB", 0) != 0 ? 0 : 1;
    }
    return 1;  // MatMul: [in, out]
}

// The tensor whose quantization a layer's output takes: the layer's own output, or the Relu's
// when the two are fused.
std::string effective_output(const onnx::GraphProto& graph, const GraphIndex& index,
                             const NodeDecisions& decisions, int n) {
    const std::string& output = graph.node(n).output(0);
    if (fuses_into_relu(graph, index, decisions, n, output)) {
        return graph.node(index.consumers.at(output).front()).output(0);
    }
    return output;
}

// Chooses the bias quantization of one layer from its weight, input and output scales.
void plan_bias(const GraphIndex& index, const onnx::NodeProto& node, const QuantScheme& scheme,
               const QuantizedTensor& weight, const QuantParams& input_params,
               const QuantParams* output_params, QuantizationPlan& plan) {
    if (node.op_type() == "MatMul" || node.input_size() < 3 || node.input(2).empty()) {
        return;
    }
    const std::string& bias_name = node.input(2);
    if (!index.initializers.contains(bias_name)) {
        fail(ExitCode::kUnsupported,
             "node '{}' takes its bias '{}' from another node; the quantizer needs a constant "
             "bias (or --exclude the node)",
             node.name(), bias_name);
    }
    const onnx::TensorProto& source = *index.initializers.at(bias_name);
    const bool per_channel = !weight.channels.empty();
    if (per_channel && source.dims_size() != 1) {
        fail(ExitCode::kUnsupported,
             "node '{}' has a bias of rank {}; per-channel weights need a 1-D bias (quantize "
             "without --per-channel)",
             node.name(), source.dims_size());
    }

    // s_input * s_weight, per output channel when the weight is per-channel.
    auto product_params = [&](const QuantParams& weight_params) {
        if (scheme.power_of_two) {
            return power_of_two_params(QuantType::kInt32,
                                       weight_params.position + input_params.position, 0);
        }
        return float_scale_params(QuantType::kInt32, input_params.scale() * weight_params.scale(),
                                  0);
    };

    if (plan.choices.contains(bias_name)) {
        // Shared with an earlier layer. An int32 bias must have the scale s_input * s_weight of
        // every layer that reads it, so layers with different products cannot share one.
        const QuantizedTensor& shared = plan.choices.at(bias_name);
        const QuantParams expected = product_params(weight.params);
        if (shared.params.type == QuantType::kInt32 &&
            (per_channel || shared.params.scale() != expected.scale())) {
            fail(ExitCode::kUnsupported,
                 "bias '{}' is shared by layers with different input and weight scales, which an "
                 "int32 bias cannot serve (node '{}'); give each layer its own bias",
                 bias_name, node.name());
        }
        return;
    }
    const std::vector<float> bias = read_float_tensor(source);

    QuantizedTensor choice;
    choice.role = "bias";
    if (scheme.bias == BiasMode::kInt32) {
        choice.params = product_params(weight.params);
        if (per_channel) {
            choice.axis = 0;
            for (const QuantParams& channel : weight.channels) {
                choice.channels.push_back(product_params(channel));
            }
        }
    } else {
        // int8 with its own power-of-two scale, kept within the NPU's bias shift range.
        const auto [bias_min, bias_max] = value_range(bias);
        const int product_position = weight.params.position + input_params.position;
        const int natural =
            non_overflow_position(bias_min, bias_max, QuantType::kInt8, 0, product_position);
        int position = natural;
        if (output_params != nullptr) {
            const int shift_cut = product_position - output_params->position;
            const int lowest = product_position - kMaxBiasShift;
            const int highest = product_position - std::min(0, shift_cut - kMaxOutputShift);
            position = std::clamp(natural, lowest, highest);
        }
        choice.params = power_of_two_params(QuantType::kInt8, position, 0);
        if (position != natural) {
            choice.note = fmt::format("position {} clamped to {} by the NPU's bias shift range",
                                      natural, position);
        }
    }
    record_initializer(source, bias, choice, plan);
}

// Chooses the weight and bias quantization of one Conv/Gemm/MatMul node.
void plan_weights(const onnx::GraphProto& graph, const GraphIndex& index,
                  const NodeDecisions& decisions, int n, const QuantScheme& scheme,
                  QuantizationPlan& plan) {
    const onnx::NodeProto& node = graph.node(n);
    if (!index.initializers.contains(node.input(1))) {
        return;  // a MatMul of two activations has no weight
    }
    const std::string& weight_name = node.input(1);
    const QuantParams& input_params = plan.choices.at(node.input(0)).params;
    const std::string output_name = effective_output(graph, index, decisions, n);
    const QuantParams* output_params =
        plan.choices.contains(output_name) ? &plan.choices.at(output_name).params : nullptr;

    if (plan.choices.contains(weight_name)) {
        // NOTE: a weight shared by several layers keeps the scale chosen for its first layer, so
        // the output-shift limit is only enforced for that layer.
        plan_bias(index, node, scheme, plan.choices.at(weight_name), input_params, output_params,
                  plan);
        return;
    }
    const onnx::TensorProto& source = *index.initializers.at(weight_name);
    const std::vector<float> weight = read_float_tensor(source);
    const auto [weight_min, weight_max] = value_range(weight);

    QuantizedTensor choice;
    choice.role = "weight";
    const int axis = weight_channel_axis(node);
    if (scheme.per_channel && axis < source.dims_size()) {
        const ChannelLayout layout = channel_layout(source, axis);
        std::vector<std::pair<float, float>> ranges(layout.channels, {0.0f, 0.0f});
        for (size_t i = 0; i < weight.size(); ++i) {
            auto& [low, high] = ranges[(static_cast<int64_t>(i) / layout.inner) % layout.channels];
            low = std::min(low, weight[i]);
            high = std::max(high, weight[i]);
        }
        choice.axis = axis;
        for (const auto& [low, high] : ranges) {
            choice.channels.push_back(
                symmetric_initializer_params(low, high, scheme.weight_type, scheme.power_of_two));
        }
        choice.params = choice.channels.front();
    } else {
        choice.params = symmetric_initializer_params(weight_min, weight_max, scheme.weight_type,
                                                     scheme.power_of_two);
        if (scheme.power_of_two && output_params != nullptr && output_params->power_of_two) {
            // Keep the output shift p_w + p_in - p_out within the NPU's [0, 16].
            const int natural = choice.params.position;
            const int shift_cut = natural + input_params.position - output_params->position;
            if (shift_cut > kMaxOutputShift) {
                choice.params.position =
                    kMaxOutputShift + output_params->position - input_params.position;
                choice.note = fmt::format("position lowered from {} so the output shift is {}",
                                          natural, kMaxOutputShift);
            } else if (shift_cut < 0) {
                choice.params.position = output_params->position - input_params.position;
                choice.note = fmt::format(
                    "position raised from {} so the output shift is 0 (may clip)", natural);
            }
            choice.params.float_scale = choice.params.scale();
        }
    }
    record_initializer(source, weight, choice, plan);
    plan_bias(index, node, scheme, plan.choices.at(weight_name), input_params, output_params, plan);
}

// Chooses the parameters of a constant operand of Add, Mul or Concat, like a per-tensor weight.
void plan_constant(const GraphIndex& index, const std::string& name, const QuantScheme& scheme,
                   QuantizationPlan& plan) {
    if (plan.choices.contains(name)) {
        return;
    }
    const onnx::TensorProto& source = *index.initializers.at(name);
    if (source.data_type() != onnx::TensorProto::FLOAT) {
        return;
    }
    const std::vector<float> values = read_float_tensor(source);
    const auto [min, max] = value_range(values);
    QuantizedTensor choice;
    choice.role = "constant";
    choice.params = symmetric_initializer_params(min, max, scheme.weight_type, scheme.power_of_two);
    record_initializer(source, values, choice, plan);
}

// QuantizeLinear and DequantizeLinear exist from opset 10 on, per-axis DequantizeLinear from
// opset 13, and the rewrite keeps the model's opset.
void check_opset(const onnx::ModelProto& model, const QuantScheme& scheme,
                 const std::string& model_label) {
    for (const onnx::OperatorSetIdProto& opset : model.opset_import()) {
        if (!is_standard_domain(opset.domain())) {
            continue;
        }
        if (opset.version() < 10) {
            fail(ExitCode::kUnsupported,
                 "model '{}' uses ONNX opset {}; quantization needs opset 10 or later "
                 "(re-export it with a newer opset)",
                 model_label, opset.version());
        }
        if (scheme.per_channel && opset.version() < 13) {
            fail(ExitCode::kUnsupported,
                 "model '{}' uses ONNX opset {}; per-channel weights need opset 13 or later "
                 "(re-export it, or quantize without --per-channel)",
                 model_label, opset.version());
        }
    }
}

void add_param_initializers(onnx::GraphProto& graph, const std::string& tensor,
                            const QuantizedTensor& choice) {
    if (choice.channels.empty()) {
        *graph.add_initializer() =
            make_float_tensor(scale_name(tensor), {}, {choice.params.scale()});
        *graph.add_initializer() = make_integer_tensor(
            zero_point_name(tensor), {}, {choice.params.zero_point}, choice.params.type);
        return;
    }
    std::vector<float> scales;
    std::vector<int64_t> zero_points;
    for (const QuantParams& channel : choice.channels) {
        scales.push_back(channel.scale());
        zero_points.push_back(channel.zero_point);
    }
    const auto count = static_cast<int64_t>(scales.size());
    *graph.add_initializer() = make_float_tensor(scale_name(tensor), {count}, scales);
    *graph.add_initializer() =
        make_integer_tensor(zero_point_name(tensor), {count}, zero_points, choice.params.type);
}

onnx::NodeProto make_qdq_node(const std::string& op_type, const std::string& tensor,
                              const std::string& input, const std::string& output,
                              const QuantizedTensor& choice) {
    onnx::NodeProto node;
    node.set_op_type(op_type);
    node.set_name(tensor + "_" + op_type);
    if (is_16_bit(choice.params.type)) {
        node.set_domain(kMicrosoftDomain);
    }
    node.add_input(input);
    node.add_input(scale_name(tensor));
    node.add_input(zero_point_name(tensor));
    node.add_output(output);
    if (!choice.channels.empty()) {
        *node.add_attribute() = make_int_attribute("axis", choice.axis);
    }
    return node;
}

// Rewrites the graph: Q/DQ pairs after activations, DQ nodes in front of quantized initializers.
void build_qdq_graph(const onnx::GraphProto& source, const GraphIndex& index,
                     const QuantizationPlan& plan, onnx::GraphProto& target) {
    const std::set<std::string> activations(plan.activations.begin(), plan.activations.end());

    // Name read by the consumers of each quantized tensor: its DequantizeLinear output. A graph
    // output keeps its name on the final DequantizeLinear, and the producer writes "<name>_float".
    auto dequantized = [&](const std::string& tensor) {
        return index.graph_outputs.contains(tensor) ? tensor : tensor + "_DequantizeLinear_Output";
    };
    auto produced = [&](const std::string& tensor) {
        return index.graph_outputs.contains(tensor) ? tensor + "_float" : tensor;
    };

    target.set_name(source.name());
    // Older exporters also list initializers as graph inputs. The quantized initializers are gone,
    // so their input entries go too; otherwise callers would have to feed them.
    for (const onnx::ValueInfoProto& input : source.input()) {
        if (!plan.initializer_values.contains(input.name())) {
            *target.add_input() = input;
        }
    }
    *target.mutable_output() = source.output();
    for (const onnx::TensorProto& initializer : source.initializer()) {
        if (!plan.initializer_values.contains(initializer.name())) {
            *target.add_initializer() = initializer;
        }
    }

    auto add_activation_qdq = [&](const std::string& tensor) {
        const QuantizedTensor& choice = plan.choices.at(tensor);
        add_param_initializers(target, tensor, choice);
        const std::string quantized = tensor + "_QuantizeLinear_Output";
        *target.add_node() =
            make_qdq_node("QuantizeLinear", tensor, produced(tensor), quantized, choice);
        *target.add_node() =
            make_qdq_node("DequantizeLinear", tensor, quantized, dequantized(tensor), choice);
    };

    for (const onnx::ValueInfoProto& input : source.input()) {
        if (activations.contains(input.name())) {
            add_activation_qdq(input.name());
        }
    }

    std::set<std::string> emitted_initializers;
    for (const onnx::NodeProto& node : source.node()) {
        onnx::NodeProto rewritten = node;
        for (int i = 0; i < node.input_size(); ++i) {
            const std::string& input = node.input(i);
            if (activations.contains(input)) {
                rewritten.set_input(i, dequantized(input));
            } else if (plan.initializer_values.contains(input)) {
                // A weight shared by several nodes is stored and dequantized once.
                const std::string output = input + "_DequantizeLinear_Output";
                if (emitted_initializers.insert(input).second) {
                    const QuantizedTensor& choice = plan.choices.at(input);
                    *target.add_initializer() = quantize_initializer(
                        *index.initializers.at(input), plan.initializer_values.at(input), choice);
                    add_param_initializers(target, input, choice);
                    *target.add_node() = make_qdq_node("DequantizeLinear", input,
                                                       quantized_name(input), output, choice);
                }
                rewritten.set_input(i, output);
            }
        }
        for (int o = 0; o < node.output_size(); ++o) {
            if (activations.contains(node.output(o))) {
                rewritten.set_output(o, produced(node.output(o)));
            }
        }
        *target.add_node() = rewritten;
        for (const std::string& output : node.output()) {
            if (activations.contains(output)) {
                add_activation_qdq(output);
            }
        }
    }
}

std::string upper_case(std::string text) {
    for (char& c : text) {
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return text;
}

}  // namespace

const std::vector<Preset>& all_presets() {
    static const std::vector<Preset> presets = {Preset::kXint8, Preset::kA8W8, Preset::kU8S8,
                                                Preset::kS8S8, Preset::kA16W8};
    return presets;
}

std::string preset_name(Preset preset) {
    switch (preset) {
        case Preset::kXint8:
            return "XINT8";
        case Preset::kA8W8:
            return "A8W8";
        case Preset::kU8S8:
            return "U8S8";
        case Preset::kS8S8:
            return "S8S8";
        case Preset::kA16W8:
            return "A16W8";
    }
    return "?";
}

Preset parse_preset(const std::string& name) {
    for (const Preset preset : all_presets()) {
        if (upper_case(name) == preset_name(preset)) {
            return preset;
        }
    }
    fail(ExitCode::kUsage, "unknown preset '{}'; use XINT8, A8W8, U8S8, S8S8 or A16W8", name);
}

BiasMode parse_bias_mode(const std::string& name) {
    if (name == "int8") {
        return BiasMode::kInt8PowerOfTwo;
    }
    if (name == "int32") {
        return BiasMode::kInt32;
    }
    fail(ExitCode::kUsage, "unknown bias type '{}'; use int8 or int32", name);
}

std::string bias_mode_name(BiasMode mode) {
    return mode == BiasMode::kInt32 ? "int32" : "int8";
}

const std::vector<std::string>& quantizable_op_types() {
    return kQuantizableOps;
}

QuantScheme resolve_scheme(const QuantizeOptions& options) {
    QuantScheme scheme;
    scheme.preset = options.preset;
    scheme.weight_type = QuantType::kInt8;
    scheme.bias = BiasMode::kInt32;
    scheme.method.method = CalibrationMethod::kMinMax;
    switch (options.preset) {
        case Preset::kXint8:
            scheme.activation = {QuantType::kUint8, /*symmetric=*/true, /*power_of_two=*/true};
            scheme.bias = BiasMode::kInt8PowerOfTwo;
            scheme.method.method = CalibrationMethod::kMinMse;
            if (options.per_channel) {
                fail(ExitCode::kUsage,
                     "XINT8 takes per-tensor weights only: the NPU requantizes each layer with "
                     "one shift; drop --per-channel or choose another --preset");
            }
            if (options.power_of_two == false) {
                fail(ExitCode::kUsage,
                     "XINT8 needs power-of-two scales: the NPU requantizes by bit shifts; drop "
                     "--scales float or choose another --preset");
            }
            break;
        case Preset::kA8W8:
            scheme.activation = {QuantType::kInt8, true, false};
            break;
        case Preset::kU8S8:
            scheme.activation = {QuantType::kUint8, false, false};
            break;
        case Preset::kS8S8:
            scheme.activation = {QuantType::kInt8, false, false};
            break;
        case Preset::kA16W8:
            scheme.activation = {QuantType::kInt16, true, false};
            break;
    }
    if (options.power_of_two.has_value()) {
        scheme.activation.power_of_two = *options.power_of_two;
    }
    scheme.power_of_two = scheme.activation.power_of_two;
    scheme.per_channel = options.per_channel;
    if (options.method.has_value()) {
        scheme.method.method = *options.method;
    }
    scheme.method.percentile = options.percentile;
    if (options.bias.has_value()) {
        scheme.bias = *options.bias;
    }
    if (scheme.bias == BiasMode::kInt8PowerOfTwo && !scheme.power_of_two) {
        fail(ExitCode::kUsage,
             "an int8 bias needs power-of-two scales (its shifts are bit shifts); use --bias "
             "int32 or --scales power-of-two");
    }
    if (scheme.bias == BiasMode::kInt8PowerOfTwo && scheme.per_channel) {
        fail(ExitCode::kUsage,
             "an int8 bias takes per-tensor weights only; use --bias int32 or drop --per-channel");
    }
    if (!(options.percentile > 0.0 && options.percentile <= 100.0)) {
        fail(ExitCode::kUsage, "--percentile {} must be in (0, 100]", options.percentile);
    }
    return scheme;
}

std::string describe_scheme(const QuantScheme& scheme) {
    return fmt::format(
        "{}: {} scales, {} {} activations, {} {} weights, {} bias, {}", preset_name(scheme.preset),
        scheme.power_of_two ? "power-of-two" : "float", quant_type_name(scheme.activation.type),
        scheme.activation.symmetric ? "symmetric" : "asymmetric",
        quant_type_name(scheme.weight_type), scheme.per_channel ? "per-channel" : "per-tensor",
        bias_mode_name(scheme.bias), calibration_method_name(scheme.method.method));
}

QdqModel quantize_to_qdq(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                         const QuantizeOptions& options, const SessionConfig& session,
                         const std::string& model_label,
                         const std::function<void(int64_t, int64_t)>& on_calibration_batch,
                         const std::function<void(int64_t, int64_t)>& on_histogram_batch) {
    QdqModel result;
    result.scheme = resolve_scheme(options);
    const QuantScheme& scheme = result.scheme;
    const onnx::GraphProto& graph = float_model.graph();
    check_opset(float_model, scheme, model_label);
    const GraphIndex index = index_graph(float_model);
    const NodeDecisions decisions = decide_nodes(graph, index, options, model_label);
    result.float_nodes = decisions.float_nodes;
    for (const FloatNode& node : decisions.float_nodes) {
        if (node.reason != "excluded") {
            result.warnings.push_back(fmt::format("node '{}' ({}) stays in float: {}", node.name,
                                                  node.op_type, node.reason));
        }
    }

    QuantizationPlan plan;
    plan.activations = list_activations(graph, index, decisions);
    if (plan.activations.empty()) {
        fail(ExitCode::kUnsupported,
             "model '{}' has no operator the quantizer handles ({}); nothing to quantize",
             model_label, fmt::join(kQuantizableOps, ", "));
    }

    // Calibrate every activation, then histograms for the methods that need them.
    const auto start = std::chrono::steady_clock::now();
    const std::string calibration_label = "calibration copy of " + model_label;
    const std::map<std::string, TensorRange> ranges = collect_tensor_ranges(
        float_model, plan.activations, reader, session, calibration_label, on_calibration_batch);
    std::map<std::string, TensorHistogram> histograms;
    if (method_needs_histogram(scheme.method.method)) {
        histograms = collect_tensor_histograms(float_model, ranges, reader, session,
                                               calibration_label, on_histogram_batch);
    }
    result.calibration_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Activation scales, in graph order so that a shared scale is known before it is copied.
    for (const std::string& tensor : plan.activations) {
        const TensorRange& range = ranges.at(tensor);
        QuantizedTensor choice;
        choice.name = tensor;
        choice.role = "activation";
        choice.min = range.min;
        choice.max = range.max;

        const auto producer = index.producer.find(tensor);
        if (producer != index.producer.end() && decisions.quantized[producer->second]) {
            const onnx::NodeProto& node = graph.node(producer->second);
            if (moves_values(node, index) && plan.choices.contains(node.input(0))) {
                choice.params = plan.choices.at(node.input(0)).params;
                choice.note = "shares the scale of " + node.input(0);
                plan.choices[tensor] = choice;
                continue;
            }
        }
        const auto histogram = histograms.find(tensor);
        const ScaleChoice chosen = choose_activation_params(
            range, histogram != histograms.end() ? &histogram->second : nullptr, scheme.activation,
            scheme.method);
        choice.params = chosen.params;
        choice.note = chosen.note;
        choice.saturates = chosen.saturates;
        if (chosen.degenerate) {
            result.warnings.push_back(fmt::format(
                "tensor '{}' was constant ({}) over the calibration data; it gets scale {}", tensor,
                range.min, choice.params.scale()));
        }
        if (chosen.saturates) {
            result.warnings.push_back(
                fmt::format("tensor '{}' spans [{}, {}], beyond what scale {} covers; it will "
                            "saturate",
                            tensor, range.min, range.max, choice.params.scale()));
        }
        plan.choices[tensor] = choice;
    }

    // Weight and bias scales need the input and output scales chosen above.
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        if (!decisions.quantized[n]) {
            continue;
        }
        if (kHasWeights.contains(node.op_type())) {
            plan_weights(graph, index, decisions, n, scheme, plan);
        }
        if (kQuantizesConstants.contains(node.op_type())) {
            for (const std::string& input : node.input()) {
                if (index.initializers.contains(input)) {
                    plan_constant(index, input, scheme, plan);
                }
            }
        }
    }

    // The report lists activations in graph order, then initializers in the order planned.
    std::set<std::string> reported;
    auto report = [&](const std::string& name) {
        if (reported.insert(name).second) {
            result.tensors.push_back(plan.choices.at(name));
        }
    };
    for (const std::string& tensor : plan.activations) {
        report(tensor);
    }
    for (const onnx::NodeProto& node : graph.node()) {
        for (const std::string& input : node.input()) {
            if (plan.initializer_values.contains(input)) {
                report(input);
            }
        }
    }
    for (const QuantizedTensor& tensor : result.tensors) {
        if (tensor.role != "activation" && tensor.saturates) {
            result.warnings.push_back(fmt::format("{} '{}' spans [{}, {}]: {}", tensor.role,
                                                  tensor.name, tensor.min, tensor.max,
                                                  tensor.note));
        }
    }

    // The rewritten model keeps the float model's metadata and opset.
    result.model = float_model;
    result.model.clear_graph();
    result.model.set_producer_name("edgeq");
    build_qdq_graph(graph, index, plan, *result.model.mutable_graph());
    if (is_16_bit(scheme.activation.type)) {
        bool has_domain = false;
        for (const onnx::OperatorSetIdProto& opset : result.model.opset_import()) {
            has_domain = has_domain || opset.domain() == kMicrosoftDomain;
        }
        if (!has_domain) {
            onnx::OperatorSetIdProto* opset = result.model.add_opset_import();
            opset->set_domain(kMicrosoftDomain);
            opset->set_version(1);
        }
    }
    return result;
}

}  // namespace edgeq
