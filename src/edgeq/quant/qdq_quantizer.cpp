#include "edgeq/quant/qdq_quantizer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {

namespace {

// Operators the quantizer places Q/DQ pairs around. Anything else is rejected by name.
const std::set<std::string> kSupportedOps = {
    "Conv",    "Gemm",    "MatMul", "Relu",        "MaxPool",
    "Reshape", "Flatten", "Add",    "AveragePool", "GlobalAveragePool"};

// Operators whose float output feeds a following Relu directly on the NPU (no Q/DQ between).
const std::set<std::string> kFusesWithRelu = {"Conv", "Gemm", "MatMul", "Add"};

// Operators that only select or move values: the output keeps the input's quantization.
const std::set<std::string> kSharesInputScale = {"MaxPool", "Reshape", "Flatten"};

// Operators with a weight (input 1) and an optional bias (input 2) to quantize.
const std::set<std::string> kHasWeights = {"Conv", "Gemm", "MatMul"};

// Activation position used when calibration saw only zeros: any scale represents zero exactly.
constexpr int kFallbackActivationPosition = 7;

constexpr int kActivationZeroPoint = 128;

std::string quantized_name(const std::string& tensor) {
    return tensor + "_quantized";
}
std::string scale_name(const std::string& tensor) {
    return tensor + "_scale";
}
std::string zero_point_name(const std::string& tensor) {
    return tensor + "_zero_point";
}

// The float model's graph, indexed for the rewrite.
struct GraphIndex {
    std::map<std::string, const onnx::TensorProto*> initializers;
    std::map<std::string, int> producer;                // tensor -> node index
    std::map<std::string, std::vector<int>> consumers;  // tensor -> node indices
    std::set<std::string> graph_outputs;
};

GraphIndex index_graph(const onnx::GraphProto& graph) {
    GraphIndex index;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        index.initializers[initializer.name()] = &initializer;
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
    return index;
}

// True when `tensor`, the output of `node`, goes only into a Relu, so the Q/DQ pair belongs
// after the Relu instead.
bool fuses_into_relu(const onnx::GraphProto& graph, const GraphIndex& index,
                     const onnx::NodeProto& node, const std::string& tensor) {
    if (!kFusesWithRelu.contains(node.op_type()) || index.graph_outputs.contains(tensor)) {
        return false;
    }
    const auto found = index.consumers.find(tensor);
    return found != index.consumers.end() && found->second.size() == 1 &&
           graph.node(found->second.front()).op_type() == "Relu";
}

onnx::TensorProto make_integer_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                      const std::vector<int64_t>& values, QuantType type) {
    onnx::TensorProto tensor;
    tensor.set_name(name);
    for (const int64_t size : shape) {
        tensor.add_dims(size);
    }
    std::string raw;
    switch (type) {
        case QuantType::kUint8:
            tensor.set_data_type(onnx::TensorProto::UINT8);
            for (const int64_t value : values) {
                raw.push_back(static_cast<char>(static_cast<uint8_t>(value)));
            }
            break;
        case QuantType::kInt8:
            tensor.set_data_type(onnx::TensorProto::INT8);
            for (const int64_t value : values) {
                raw.push_back(static_cast<char>(static_cast<int8_t>(value)));
            }
            break;
        case QuantType::kInt32:
            tensor.set_data_type(onnx::TensorProto::INT32);
            for (const int64_t value : values) {
                const auto value32 = static_cast<int32_t>(value);
                raw.append(reinterpret_cast<const char*>(&value32), sizeof(value32));
            }
            break;
    }
    tensor.set_raw_data(raw);
    return tensor;
}

// Adds the scale and zero-point initializers of `tensor` (scalars: per-tensor quantization).
void add_quant_param_initializers(onnx::GraphProto& graph, const std::string& tensor,
                                  const QuantParams& params) {
    *graph.add_initializer() = make_float_tensor(scale_name(tensor), {}, {params.scale()});
    *graph.add_initializer() =
        make_integer_tensor(zero_point_name(tensor), {}, {params.zero_point}, params.type);
}

onnx::NodeProto make_qdq_node(const std::string& op_type, const std::string& tensor,
                              const std::string& input, const std::string& output) {
    onnx::NodeProto node;
    node.set_op_type(op_type);
    node.set_name(tensor + "_" + op_type);
    node.add_input(input);
    node.add_input(scale_name(tensor));
    node.add_input(zero_point_name(tensor));
    node.add_output(output);
    return node;
}

std::pair<float, float> value_range(const std::vector<float>& values) {
    if (values.empty()) {
        return {0.0f, 0.0f};
    }
    const auto [low, high] = std::minmax_element(values.begin(), values.end());
    return {*low, *high};
}

// Quantizes `values` with `params` into an initializer named `<tensor>_quantized`.
onnx::TensorProto quantize_initializer(const onnx::TensorProto& source,
                                       const std::vector<float>& values,
                                       const QuantParams& params) {
    std::vector<int64_t> quantized(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        quantized[i] = quantize_value(values[i], params);
    }
    std::vector<int64_t> shape(source.dims().begin(), source.dims().end());
    return make_integer_tensor(quantized_name(source.name()), shape, quantized, params.type);
}

// Mean squared error of quantizing the values of `histogram` with `params`, each bin standing for
// its center value.
double quantization_mse(const TensorHistogram& histogram, const QuantParams& params) {
    double error_sum = 0;
    int64_t total = 0;
    for (size_t bin = 0; bin < histogram.counts.size(); ++bin) {
        if (histogram.counts[bin] == 0) {
            continue;
        }
        const double value = histogram.bin_center(bin);
        const double error =
            value - dequantize_value(quantize_value(static_cast<float>(value), params), params);
        error_sum += static_cast<double>(histogram.counts[bin]) * error * error;
        total += histogram.counts[bin];
    }
    return total > 0 ? error_sum / static_cast<double>(total) : 0.0;
}

// Chooses a power-of-two position by MinMSE, as AMD Quark does: it tries positions from one below
// to three above the non-overflow one and keeps the least mean squared error. Finer scales clip
// the tails but round the bulk more finely. Of equal errors the first wins, so the coarser scale.
int min_mse_position(const TensorHistogram& histogram, QuantParams params) {
    const int start = params.position;
    int best_position = start;
    double best_error = std::numeric_limits<double>::infinity();
    for (int position = start - 1; position <= start + 3; ++position) {
        params.position = std::clamp(position, kMinPosition, kMaxPosition);
        const double error = quantization_mse(histogram, params);
        if (error < best_error) {
            best_error = error;
            best_position = params.position;
        }
    }
    return best_position;
}

// Everything decided before the graph is rewritten.
struct QuantizationPlan {
    std::vector<std::string> activations;       // tensors that get a Q/DQ pair, in graph order
    std::map<std::string, QuantParams> params;  // activations, weights and biases
    std::map<std::string, std::vector<float>> initializer_values;  // weights and biases
};

// Lists the activations that get a Q/DQ pair: float graph inputs, then node outputs in order.
std::vector<std::string> list_activations(const onnx::GraphProto& graph, const GraphIndex& index) {
    std::vector<std::string> activations;
    for (const onnx::ValueInfoProto& input : graph.input()) {
        if (!index.initializers.contains(input.name()) &&
            input.type().tensor_type().elem_type() == onnx::TensorProto::FLOAT) {
            activations.push_back(input.name());
        }
    }
    for (const onnx::NodeProto& node : graph.node()) {
        // Only the first output carries data; MaxPool's optional second output contains indices.
        const std::string& output = node.output(0);
        const bool used = index.consumers.contains(output) || index.graph_outputs.contains(output);
        if (used && !fuses_into_relu(graph, index, node, output)) {
            activations.push_back(output);
        }
    }
    return activations;
}

// QuantizeLinear and DequantizeLinear exist from opset 10 on, and the rewrite keeps the model's
// opset, so an older model cannot take Q/DQ nodes.
void check_opset(const onnx::ModelProto& model, const std::string& model_label) {
    for (const onnx::OperatorSetIdProto& opset : model.opset_import()) {
        if ((opset.domain().empty() || opset.domain() == "ai.onnx") && opset.version() < 10) {
            fail(ExitCode::kUnsupported,
                 "model '{}' uses ONNX opset {}; quantization needs opset 10 or later "
                 "(re-export it with a newer opset)",
                 model_label, opset.version());
        }
    }
}

void check_supported(const onnx::GraphProto& graph) {
    for (const onnx::NodeProto& node : graph.node()) {
        if (!kSupportedOps.contains(node.op_type())) {
            fail(ExitCode::kUnsupported,
                 "node '{}' has operator {}, which the quantizer does not handle; supported: "
                 "Conv, Gemm, MatMul, Relu, MaxPool, AveragePool, GlobalAveragePool, Add, "
                 "Reshape, Flatten",
                 node.name(), node.op_type());
        }
        if (!node.domain().empty() && node.domain() != "ai.onnx") {
            fail(ExitCode::kUnsupported,
                 "node '{}' is in domain '{}'; only standard ONNX "
                 "operators can be quantized",
                 node.name(), node.domain());
        }
    }
}

// The tensor whose quantization a layer's output takes: the layer's own output, or the Relu's
// when the two are fused.
std::string effective_output(const onnx::GraphProto& graph, const GraphIndex& index,
                             const onnx::NodeProto& node) {
    const std::string& output = node.output(0);
    if (fuses_into_relu(graph, index, node, output)) {
        return graph.node(index.consumers.at(output).front()).output(0);
    }
    return output;
}

// Records the quantization of a weight or bias initializer, noting when its values saturate.
void record_initializer(const std::string& name, const std::string& role, const QuantParams& params,
                        std::vector<float> values, std::string note, QuantizationPlan& plan,
                        std::vector<QuantizedTensor>& report) {
    const auto [min, max] = value_range(values);
    const bool saturates = !fits_without_clipping(min, max, params);
    if (saturates) {
        note += note.empty() ? "" : "; ";
        note += "values beyond the " + quant_type_name(params.type) + " range saturate";
    }
    plan.params[name] = params;
    plan.initializer_values[name] = std::move(values);
    report.push_back({name, role, params, min, max, note, saturates});
}

// Chooses the bias quantization of one Conv/Gemm node from its weight, input and output scales.
void plan_bias(const GraphIndex& index, const onnx::NodeProto& node, const QuantizeOptions& options,
               const QuantParams& weight_params, const QuantParams& input_params,
               const QuantParams& output_params, QuantizationPlan& plan,
               std::vector<QuantizedTensor>& report) {
    if (node.input_size() < 3 || node.input(2).empty()) {
        return;
    }
    const std::string& bias_name = node.input(2);
    if (!index.initializers.contains(bias_name)) {
        fail(ExitCode::kUnsupported,
             "node '{}' takes its bias '{}' from another node; the "
             "quantizer needs a constant bias",
             node.name(), bias_name);
    }
    const int product_position = weight_params.position + input_params.position;
    if (plan.params.contains(bias_name)) {
        // Shared with an earlier layer. An int32 bias must have the scale s_input * s_weight of
        // every layer that reads it, so layers with different products cannot share one.
        const QuantParams& shared = plan.params.at(bias_name);
        if (shared.type == QuantType::kInt32 && shared.position != product_position) {
            fail(ExitCode::kUnsupported,
                 "bias '{}' is shared by layers with different input and weight scales, which an "
                 "int32 bias cannot serve (node '{}'); use --bias int8 or give each layer its "
                 "own bias",
                 bias_name, node.name());
        }
        return;
    }
    const std::vector<float> bias = read_float_tensor(*index.initializers.at(bias_name));
    const auto [bias_min, bias_max] = value_range(bias);

    QuantParams bias_params;
    std::string bias_note;
    if (options.bias == BiasMode::kInt32) {
        bias_params = {QuantType::kInt32, product_position, 0};
    } else {
        bias_params = {QuantType::kInt8, 0, 0};
        const int natural =
            non_overflow_position(bias_min, bias_max, QuantType::kInt8, 0, product_position);
        const int shift_cut = product_position - output_params.position;
        const int lowest = product_position - kMaxBiasShift;
        const int highest = product_position - std::min(0, shift_cut - kMaxOutputShift);
        bias_params.position = std::clamp(natural, lowest, highest);
        if (bias_params.position != natural) {
            bias_note = fmt::format("position {} clamped to {} by the NPU's bias shift range",
                                    natural, bias_params.position);
        }
    }
    record_initializer(bias_name, "bias", bias_params, bias, bias_note, plan, report);
}

// Chooses the weight and bias quantization of one Conv/Gemm/MatMul node.
void plan_weights(const onnx::GraphProto& graph, const GraphIndex& index,
                  const onnx::NodeProto& node, const QuantizeOptions& options,
                  QuantizationPlan& plan, std::vector<QuantizedTensor>& report) {
    if (node.input_size() < 2 || !index.initializers.contains(node.input(1))) {
        return;  // a MatMul of two activations has no weight
    }
    const std::string& weight_name = node.input(1);
    const QuantParams& input_params = plan.params.at(node.input(0));
    const QuantParams& output_params = plan.params.at(effective_output(graph, index, node));
    if (plan.params.contains(weight_name)) {
        // NOTE: a weight shared by several layers keeps the scale chosen for its first layer, so
        // the output-shift limit is only enforced for that layer.
        plan_bias(index, node, options, plan.params.at(weight_name), input_params, output_params,
                  plan, report);
        return;
    }
    const std::vector<float> weight = read_float_tensor(*index.initializers.at(weight_name));
    const auto [weight_min, weight_max] = value_range(weight);

    QuantParams weight_params{QuantType::kInt8, 0, 0};
    weight_params.position =
        non_overflow_position(weight_min, weight_max, QuantType::kInt8, 0, kMaxPosition);
    std::string weight_note;

    // Keep the output shift p_w + p_in - p_out within the NPU's [0, 16].
    const int shift_cut = weight_params.position + input_params.position - output_params.position;
    if (shift_cut > kMaxOutputShift) {
        weight_params.position = kMaxOutputShift + output_params.position - input_params.position;
        weight_note =
            fmt::format("position lowered from {} so the output shift is {}",
                        weight_params.position + shift_cut - kMaxOutputShift, kMaxOutputShift);
    } else if (shift_cut < 0) {
        weight_params.position = output_params.position - input_params.position;
        weight_note = fmt::format("position raised from {} so the output shift is 0 (may clip)",
                                  weight_params.position + shift_cut);
    }
    record_initializer(weight_name, "weight", weight_params, weight, weight_note, plan, report);
    plan_bias(index, node, options, weight_params, input_params, output_params, plan, report);
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
        const QuantParams& params = plan.params.at(tensor);
        add_quant_param_initializers(target, tensor, params);
        const std::string quantized = tensor + "_QuantizeLinear_Output";
        *target.add_node() = make_qdq_node("QuantizeLinear", tensor, produced(tensor), quantized);
        *target.add_node() =
            make_qdq_node("DequantizeLinear", tensor, quantized, dequantized(tensor));
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
                    const QuantParams& params = plan.params.at(input);
                    *target.add_initializer() = quantize_initializer(
                        *index.initializers.at(input), plan.initializer_values.at(input), params);
                    add_quant_param_initializers(target, input, params);
                    *target.add_node() =
                        make_qdq_node("DequantizeLinear", input, quantized_name(input), output);
                }
                rewritten.set_input(i, output);
            }
        }
        const std::string& output = node.output(0);
        if (activations.contains(output)) {
            rewritten.set_output(0, produced(output));
        }
        *target.add_node() = rewritten;
        if (activations.contains(output)) {
            add_activation_qdq(output);
        }
    }
}

}  // namespace

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

QdqModel quantize_to_qdq(const onnx::ModelProto& float_model, CalibrationDataReader& reader,
                         const QuantizeOptions& options, const SessionConfig& session,
                         const std::string& model_label,
                         const std::function<void(int64_t, int64_t)>& on_calibration_batch) {
    const onnx::GraphProto& graph = float_model.graph();
    check_opset(float_model, model_label);
    check_supported(graph);
    const GraphIndex index = index_graph(graph);

    QdqModel result;
    QuantizationPlan plan;
    plan.activations = list_activations(graph, index);

    // Calibrate every activation that gets its own scale.
    const auto start = std::chrono::steady_clock::now();
    const std::map<std::string, TensorRange> ranges =
        collect_tensor_ranges(float_model, plan.activations, reader, session,
                              "calibration copy of " + model_label, on_calibration_batch);
    std::map<std::string, TensorHistogram> histograms;
    if (options.method == CalibrationMethod::kMinMse) {
        histograms = collect_tensor_histograms(float_model, ranges, reader, session,
                                               "calibration copy of " + model_label);
    }
    result.calibration_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Activation scales, in graph order so that a shared scale is known before it is copied.
    for (const std::string& tensor : plan.activations) {
        const TensorRange& range = ranges.at(tensor);
        const auto producer = index.producer.find(tensor);
        if (producer != index.producer.end()) {
            const onnx::NodeProto& node = graph.node(producer->second);
            if (kSharesInputScale.contains(node.op_type()) && plan.params.contains(node.input(0))) {
                plan.params[tensor] = plan.params.at(node.input(0));
                result.tensors.push_back({tensor, "activation", plan.params[tensor], range.min,
                                          range.max, "shares the scale of " + node.input(0)});
                continue;
            }
        }
        QuantParams params{QuantType::kUint8, 0, kActivationZeroPoint};
        params.position = non_overflow_position(range.min, range.max, QuantType::kUint8,
                                                kActivationZeroPoint, kFallbackActivationPosition);
        std::string note;
        const bool saturates = !fits_without_clipping(range.min, range.max, params);
        if (saturates) {
            note = "calibrated range exceeds the largest scale; values beyond it saturate";
            result.warnings.push_back(fmt::format(
                "tensor '{}' spans [{}, {}], beyond what scale 2^{} covers; it will saturate",
                tensor, range.min, range.max, -params.position));
        } else if (options.method == CalibrationMethod::kMinMse && histograms.contains(tensor)) {
            const int non_overflow = params.position;
            params.position = min_mse_position(histograms.at(tensor), params);
            if (params.position > non_overflow) {
                note = fmt::format("MinMSE chose position {} over {}: the tails clip",
                                   params.position, non_overflow);
            }
        }
        if (range.min == 0.0f && range.max == 0.0f) {
            note = "all zero during calibration; scale chosen arbitrarily";
            result.warnings.push_back(
                fmt::format("tensor '{}' was zero for every calibration image; it gets scale 2^-{}",
                            tensor, params.position));
        }
        plan.params[tensor] = params;
        result.tensors.push_back(
            {tensor, "activation", params, range.min, range.max, note, saturates});
    }

    // Weight and bias scales need the input and output positions chosen above.
    for (const onnx::NodeProto& node : graph.node()) {
        if (kHasWeights.contains(node.op_type())) {
            if (!plan.params.contains(node.input(0))) {
                fail(ExitCode::kUnsupported,
                     "node '{}' reads '{}', which is not quantized; the "
                     "quantizer needs a quantized input for every weighted layer",
                     node.name(), node.input(0));
            }
            plan_weights(graph, index, node, options, plan, result.tensors);
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
    return result;
}

}  // namespace edgeq
