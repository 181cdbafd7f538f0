#include "edgeq/onnx/model_info.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/qdq_summary.h"

namespace edgeq {

namespace {

using json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Tensor types and values

std::string lowercase(std::string text) {
    std::ranges::transform(text, text.begin(), [](unsigned char c) { return std::tolower(c); });
    return text;
}

// "FLOAT" -> "float", "UINT8" -> "uint8". An unknown code becomes "type<code>".
std::string element_type_name(int onnx_type) {
    if (!onnx::TensorProto_DataType_IsValid(onnx_type)) {
        return fmt::format("type{}", onnx_type);
    }
    return lowercase(
        onnx::TensorProto_DataType_Name(static_cast<onnx::TensorProto_DataType>(onnx_type)));
}

bool is_float_type(int onnx_type) {
    return onnx_type == onnx::TensorProto::FLOAT || onnx_type == onnx::TensorProto::DOUBLE ||
           onnx_type == onnx::TensorProto::FLOAT16 || onnx_type == onnx::TensorProto::BFLOAT16;
}

// Integer values of an 8-, 16- or 32-bit initializer (zero points). Without raw_data, ONNX
// stores these types in int32_data. Returns nothing for other types and for external data.
std::optional<std::vector<int64_t>> read_integer_values(const onnx::TensorProto& tensor) {
    if (!tensor.has_raw_data()) {
        if (tensor.data_location() == onnx::TensorProto::EXTERNAL) {
            return std::nullopt;
        }
        return std::vector<int64_t>(tensor.int32_data().begin(), tensor.int32_data().end());
    }
    const std::string& raw = tensor.raw_data();
    std::vector<int64_t> values;
    const auto read_all = [&]<typename T>() {
        std::vector<T> typed(raw.size() / sizeof(T));
        std::memcpy(typed.data(), raw.data(), typed.size() * sizeof(T));
        values.assign(typed.begin(), typed.end());
    };
    switch (tensor.data_type()) {
        case onnx::TensorProto::UINT8:
            read_all.operator()<uint8_t>();
            break;
        case onnx::TensorProto::INT8:
            read_all.operator()<int8_t>();
            break;
        case onnx::TensorProto::UINT16:
            read_all.operator()<uint16_t>();
            break;
        case onnx::TensorProto::INT16:
            read_all.operator()<int16_t>();
            break;
        case onnx::TensorProto::INT32:
            read_all.operator()<int32_t>();
            break;
        default:
            return std::nullopt;
    }
    return values;
}

// True when every element of a float scale is an exact power of two, 2^k: frexp returns a
// mantissa of exactly 0.5 only then.
bool is_power_of_two_scale(const onnx::TensorProto& scale) {
    if (scale.data_type() != onnx::TensorProto::FLOAT ||
        scale.data_location() == onnx::TensorProto::EXTERNAL) {
        return false;
    }
    const std::vector<float> values = read_float_tensor(scale);
    return !values.empty() && std::ranges::all_of(values, [](float value) {
        int exponent = 0;
        return value > 0 && std::frexp(value, &exponent) == 0.5f;
    });
}

TensorInfo describe_value(const onnx::ValueInfoProto& value) {
    TensorInfo info;
    info.name = value.name();
    if (!value.type().has_tensor_type()) {
        info.element_type = value.type().has_sequence_type() ? "sequence" : "non-tensor";
        return info;
    }
    const onnx::TypeProto_Tensor& tensor = value.type().tensor_type();
    info.element_type = element_type_name(tensor.elem_type());
    info.has_shape = tensor.has_shape();
    for (const onnx::TensorShapeProto_Dimension& dim : tensor.shape().dim()) {
        if (dim.has_dim_value()) {
            info.dims.push_back(std::to_string(dim.dim_value()));
        } else if (dim.has_dim_param() && !dim.dim_param().empty()) {
            info.dims.push_back(dim.dim_param());
        } else {
            info.dims.push_back("?");
        }
    }
    return info;
}

std::vector<std::string> sorted(const std::set<std::string>& names) {
    return {names.begin(), names.end()};
}

// ---------------------------------------------------------------------------------------------
// Quantization

// The preset whose formats the model's match, by the definitions in qdq_quantizer.h:
//   XINT8  uint8 symmetric activations, int8 per-tensor weights, power-of-two scales
//   A8W8   int8 symmetric activations, int8 weights
//   U8S8   uint8 asymmetric activations, int8 weights
//   S8S8   int8 asymmetric activations, int8 weights
//   A16W8  int16 activations, int8 weights
// NOTE: this is a match on formats only. A U8S8 model whose calibrated zero points all happen
// to be 128 with power-of-two scales reads as XINT8.
std::string match_preset(const QuantizationInfo& quantization) {
    const bool int8_weights = std::ranges::all_of(
        quantization.weight_types, [](const std::string& type) { return type == "int8"; });
    if (!int8_weights || quantization.activation_types.size() != 1) {
        return "custom";
    }
    const std::string& activation = quantization.activation_types.front();
    if (activation == "uint8" && quantization.symmetric_activations &&
        quantization.all_scales_power_of_two() && quantization.per_channel_weights == 0) {
        return "XINT8";
    }
    if (activation == "uint8") {
        return "U8S8";
    }
    if (activation == "int8") {
        return quantization.symmetric_activations ? "A8W8" : "S8S8";
    }
    if (activation == "int16") {
        return "A16W8";
    }
    return "custom";
}

QuantizationInfo describe_quantization(
    const onnx::ModelProto& model,
    const std::map<std::string, const onnx::TensorProto*>& initializers) {
    QuantizationInfo info;
    std::set<std::string> activation_types;
    std::set<std::string> scale_names;
    bool symmetric = true;
    for (const onnx::NodeProto& node : model.graph().node()) {
        const bool quantize = node.op_type() == "QuantizeLinear";
        const bool dequantize = node.op_type() == "DequantizeLinear";
        if (!quantize && !dequantize) {
            continue;
        }
        info.quantize_nodes += quantize ? 1 : 0;
        info.dequantize_nodes += dequantize ? 1 : 0;
        if (node.input_size() > 1) {
            scale_names.insert(node.input(1));
        }
        const auto zero_point =
            node.input_size() > 2 ? initializers.find(node.input(2)) : initializers.end();

        // A QuantizeLinear without a zero point writes uint8 with zero point 0 (ONNX's default).
        // The type of a zero point computed by a node is not read here, so it shows as unknown.
        const bool zero_point_omitted = node.input_size() <= 2 || node.input(2).empty();
        if (quantize && !zero_point_omitted && zero_point == initializers.end()) {
            activation_types.insert("unknown");
            symmetric = false;
        } else if (quantize) {
            const int type =
                zero_point_omitted ? onnx::TensorProto::UINT8 : zero_point->second->data_type();
            activation_types.insert(element_type_name(type));
            const int64_t center = type == onnx::TensorProto::UINT8    ? 128
                                   : type == onnx::TensorProto::UINT16 ? 32768
                                                                       : 0;
            const auto values = zero_point_omitted
                                    ? std::optional<std::vector<int64_t>>(std::vector<int64_t>{0})
                                    : read_integer_values(*zero_point->second);
            symmetric = symmetric && values.has_value() &&
                        std::ranges::all_of(*values, [&](int64_t v) { return v == center; });
        }

        // A DequantizeLinear of an initializer reads a weight or bias: one scale element means
        // per-tensor, more mean per-channel.
        if (dequantize && initializers.contains(node.input(0)) && node.input_size() > 1) {
            const auto scale = initializers.find(node.input(1));
            const bool per_channel =
                scale != initializers.end() && element_count(scale->second->dims()) > 1;
            (per_channel ? info.per_channel_weights : info.per_tensor_weights) += 1;
        }
    }
    info.activation_types = sorted(activation_types);
    info.symmetric_activations = symmetric && !activation_types.empty();

    // NOTE: a scale produced by a node (a Constant, say) instead of an initializer is counted
    // but never as a power of two, since its value is not read here.
    info.scale_count = static_cast<int>(scale_names.size());
    for (const std::string& name : scale_names) {
        const auto scale = initializers.find(name);
        if (scale != initializers.end() && is_power_of_two_scale(*scale->second)) {
            info.power_of_two_scales += 1;
        }
    }

    // summarize_qdq_model names types in upper case ("INT8").
    std::set<std::string> weight_types;
    std::set<std::string> bias_types;
    for (const OpTypeQuantization& row : summarize_qdq_model(model)) {
        for (const auto& [type, count] : row.weights) {
            weight_types.insert(lowercase(type));
        }
        for (const auto& [type, count] : row.bias) {
            bias_types.insert(lowercase(type));
        }
    }
    info.weight_types = sorted(weight_types);
    info.bias_types = sorted(bias_types);

    if (info.per_channel_weights == 0) {
        info.granularity = "per-tensor";
    } else {
        info.granularity = info.per_tensor_weights == 0 ? "per-channel" : "mixed";
    }
    info.preset = match_preset(info);
    return info;
}

// ---------------------------------------------------------------------------------------------
// Parameters

ParameterCounts count_parameters(
    const onnx::ModelProto& model,
    const std::map<std::string, const onnx::TensorProto*>& initializers) {
    std::set<std::string> quantized;
    std::set<std::string> quantization;
    for (const onnx::NodeProto& node : model.graph().node()) {
        if (node.op_type() != "QuantizeLinear" && node.op_type() != "DequantizeLinear") {
            continue;
        }
        if (node.op_type() == "DequantizeLinear" && node.input_size() > 0) {
            quantized.insert(node.input(0));
        }
        for (int i = 1; i < node.input_size() && i <= 2; ++i) {
            quantization.insert(node.input(i));
        }
    }

    ParameterCounts counts;
    for (const auto& [name, tensor] : initializers) {
        const int64_t elements = element_count(tensor->dims());
        if (quantization.contains(name)) {
            counts.quantization_tensors += 1;
            counts.quantization_elements += elements;
        } else if (quantized.contains(name) && !is_float_type(tensor->data_type())) {
            counts.quantized_tensors += 1;
            counts.quantized_elements += elements;
        } else if (is_float_type(tensor->data_type())) {
            counts.float_tensors += 1;
            counts.float_elements += elements;
        } else {
            counts.other_tensors += 1;
            counts.other_elements += elements;
        }
    }
    return counts;
}

// ---------------------------------------------------------------------------------------------
// Text

std::string format_tensor(const TensorInfo& tensor) {
    if (!tensor.has_shape) {
        return fmt::format("{}: {}, shape unknown", tensor.name, tensor.element_type);
    }
    return fmt::format("{}: {} [{}]", tensor.name, tensor.element_type,
                       fmt::join(tensor.dims, ", "));
}

std::string join_or_dash(const std::vector<std::string>& names) {
    return names.empty() ? "-" : fmt::format("{}", fmt::join(names, ", "));
}

constexpr int kKeyWidth = 14;

std::string tensor_count(int64_t tensors) {
    return fmt::format("{} tensor{}", tensors, tensors == 1 ? "" : "s");
}

std::string format_line(const std::string& key, const std::string& value) {
    return fmt::format("{:<{}}{}\n", key, kKeyWidth, value);
}

std::string format_quantization(const QuantizationInfo& quantization) {
    std::string text = "quantization\n";
    text += format_line("  nodes",
                        fmt::format("{} QuantizeLinear, {} DequantizeLinear",
                                    quantization.quantize_nodes, quantization.dequantize_nodes));
    text +=
        format_line("  activations",
                    fmt::format("{} ({})", join_or_dash(quantization.activation_types),
                                quantization.symmetric_activations ? "symmetric" : "asymmetric"));
    text +=
        format_line("  weights",
                    fmt::format("{}, {} ({} per-tensor, {} per-channel)",
                                join_or_dash(quantization.weight_types), quantization.granularity,
                                quantization.per_tensor_weights, quantization.per_channel_weights));
    text += format_line("  bias", join_or_dash(quantization.bias_types));
    text += format_line(
        "  scales", fmt::format("{} of {} are powers of two{}", quantization.power_of_two_scales,
                                quantization.scale_count,
                                quantization.all_scales_power_of_two() ? " (XINT8-style)" : ""));
    text += format_line("  preset", quantization.preset == "custom"
                                        ? "none of edgeq's presets"
                                        : "looks like " + quantization.preset);
    return text;
}

json tensor_json(const TensorInfo& tensor) {
    json shape = nullptr;
    if (tensor.has_shape) {
        shape = json::array();
        for (const std::string& dim : tensor.dims) {
            const bool numeric = !dim.empty() && std::ranges::all_of(dim, [](unsigned char c) {
                return std::isdigit(c) != 0;
            });
            if (numeric) {
                shape.push_back(std::stoll(dim));
            } else {
                shape.push_back(dim);
            }
        }
    }
    return {{"name", tensor.name}, {"element_type", tensor.element_type}, {"shape", shape}};
}

json count_json(int64_t tensors, int64_t elements) {
    return {{"tensors", tensors}, {"elements", elements}};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public functions

ModelInfo describe_model(const onnx::ModelProto& model, const std::string& label) {
    const onnx::GraphProto& graph = model.graph();
    ModelInfo info;
    info.file = label;
    info.file_bytes = static_cast<int64_t>(model.ByteSizeLong());
    info.ir_version = model.ir_version();
    for (const onnx::OperatorSetIdProto& opset : model.opset_import()) {
        info.opsets.emplace_back(opset.domain().empty() ? "ai.onnx" : opset.domain(),
                                 opset.version());
    }
    info.producer = model.producer_name();
    if (!model.producer_version().empty()) {
        info.producer += (info.producer.empty() ? "" : " ") + model.producer_version();
    }
    info.graph_name = graph.name();
    try {
        check_onnx_model(model, label);
    } catch (const Error& error) {
        info.checker_error = error.what();
    }

    // Before IR version 4, initializers were also listed as graph inputs; those are parameters.
    std::map<std::string, const onnx::TensorProto*> initializers;
    for (const onnx::TensorProto& tensor : graph.initializer()) {
        initializers[tensor.name()] = &tensor;
    }
    for (const onnx::ValueInfoProto& input : graph.input()) {
        if (!initializers.contains(input.name())) {
            info.inputs.push_back(describe_value(input));
        }
    }
    for (const onnx::ValueInfoProto& output : graph.output()) {
        info.outputs.push_back(describe_value(output));
    }

    info.node_count = graph.node_size();
    const std::map<std::string, int> counts = count_op_types(model);
    info.op_counts.assign(counts.begin(), counts.end());
    std::ranges::stable_sort(info.op_counts,
                             [](const auto& a, const auto& b) { return a.second > b.second; });

    info.parameters = count_parameters(model, initializers);
    if (counts.contains("QuantizeLinear") || counts.contains("DequantizeLinear")) {
        info.quantization = describe_quantization(model, initializers);
    }
    return info;
}

std::string format_model_info(const ModelInfo& info) {
    std::string text =
        format_line("model", fmt::format("{} ({} bytes)", info.file, info.file_bytes));
    std::vector<std::string> opsets;
    for (const auto& [domain, version] : info.opsets) {
        opsets.push_back(fmt::format("{} {}", domain, version));
    }
    text += format_line("IR version",
                        fmt::format("{}, opsets: {}", info.ir_version, join_or_dash(opsets)));
    text += format_line("producer", info.producer.empty() ? "-" : info.producer);
    text += format_line("ONNX checker", info.checker_error.empty() ? "passes" : info.checker_error);
    for (const TensorInfo& input : info.inputs) {
        text += format_line("input", format_tensor(input));
    }
    for (const TensorInfo& output : info.outputs) {
        text += format_line("output", format_tensor(output));
    }

    text += format_line("nodes", std::to_string(info.node_count));
    for (const auto& [op_type, count] : info.op_counts) {
        text += fmt::format("  {:<20} {:>6}\n", op_type, count);
    }

    const ParameterCounts& parameters = info.parameters;
    text += format_line(
        "parameters",
        fmt::format("{} ({} float in {}, {} quantized in {})", parameters.total_elements(),
                    parameters.float_elements, tensor_count(parameters.float_tensors),
                    parameters.quantized_elements, tensor_count(parameters.quantized_tensors)));
    if (parameters.quantization_tensors > 0) {
        text += format_line("  Q/DQ", fmt::format("{} scale and zero-point values in {}",
                                                  parameters.quantization_elements,
                                                  tensor_count(parameters.quantization_tensors)));
    }
    if (parameters.other_tensors > 0) {
        text += format_line("  other", fmt::format("{} values in {}", parameters.other_elements,
                                                   tensor_count(parameters.other_tensors)));
    }

    if (info.quantization) {
        text += format_quantization(*info.quantization);
    }
    if (info.placement) {
        text += format_line("NPU placement", fmt::format("{} (target {})", info.placement->summary,
                                                         info.placement->target));
    }
    return text;
}

json model_info_json(const ModelInfo& info) {
    json opsets = json::object();
    for (const auto& [domain, version] : info.opsets) {
        opsets[domain] = version;
    }
    json inputs = json::array();
    for (const TensorInfo& input : info.inputs) {
        inputs.push_back(tensor_json(input));
    }
    json outputs = json::array();
    for (const TensorInfo& output : info.outputs) {
        outputs.push_back(tensor_json(output));
    }
    json op_counts = json::object();
    for (const auto& [op_type, count] : info.op_counts) {
        op_counts[op_type] = count;
    }
    const ParameterCounts& parameters = info.parameters;
    const json parameter_json = {
        {"total_elements", parameters.total_elements()},
        {"float", count_json(parameters.float_tensors, parameters.float_elements)},
        {"quantized", count_json(parameters.quantized_tensors, parameters.quantized_elements)},
        {"quantization",
         count_json(parameters.quantization_tensors, parameters.quantization_elements)},
        {"other", count_json(parameters.other_tensors, parameters.other_elements)},
    };

    json quantization = nullptr;
    if (info.quantization) {
        const QuantizationInfo& q = *info.quantization;
        quantization = {
            {"quantize_nodes", q.quantize_nodes},
            {"dequantize_nodes", q.dequantize_nodes},
            {"activation_types", q.activation_types},
            {"symmetric_activations", q.symmetric_activations},
            {"weight_types", q.weight_types},
            {"bias_types", q.bias_types},
            {"scale_count", q.scale_count},
            {"power_of_two_scales", q.power_of_two_scales},
            {"all_scales_power_of_two", q.all_scales_power_of_two()},
            {"per_tensor_weights", q.per_tensor_weights},
            {"per_channel_weights", q.per_channel_weights},
            {"granularity", q.granularity},
            {"preset", q.preset},
        };
    }
    json placement = nullptr;
    if (info.placement) {
        placement = {{"target", info.placement->target},
                     {"summary", info.placement->summary},
                     {"cpu_nodes", info.placement->cpu_nodes},
                     {"npu_nodes", info.placement->npu_nodes}};
    }

    return {{"file", info.file},
            {"file_bytes", info.file_bytes},
            {"ir_version", info.ir_version},
            {"opsets", opsets},
            {"producer", info.producer},
            {"graph_name", info.graph_name},
            {"checker_error", info.checker_error},
            {"inputs", inputs},
            {"outputs", outputs},
            {"node_count", info.node_count},
            {"op_counts", op_counts},
            {"parameters", parameter_json},
            {"quantization", quantization},
            {"placement", placement}};
}

}  // namespace edgeq
