#include "edgeq/quant/qdq_summary.h"

#include <fmt/format.h>

namespace edgeq {

namespace {

std::string type_name(int onnx_type) {
    switch (onnx_type) {
        case onnx::TensorProto::UINT8:
            return "UINT8";
        case onnx::TensorProto::INT8:
            return "INT8";
        case onnx::TensorProto::INT32:
            return "INT32";
        case onnx::TensorProto::UINT16:
            return "UINT16";
        case onnx::TensorProto::INT16:
            return "INT16";
        default:
            return fmt::format("type{}", onnx_type);
    }
}

std::string format_counts(const std::map<std::string, int>& counts) {
    std::string text;
    for (const auto& [type, count] : counts) {
        text += fmt::format("{}{}({})", text.empty() ? "" : " ", type, count);
    }
    return text.empty() ? "-" : text;
}

}  // namespace

std::map<std::string, int> count_op_types(const onnx::ModelProto& model) {
    std::map<std::string, int> counts;
    for (const onnx::NodeProto& node : model.graph().node()) {
        counts[node.op_type()] += 1;
    }
    return counts;
}

std::vector<OpTypeQuantization> summarize_qdq_model(const onnx::ModelProto& model) {
    const onnx::GraphProto& graph = model.graph();

    // The quantized data type behind every DequantizeLinear output: the type of its zero point
    // (or of its input initializer when the zero point is omitted).
    std::map<std::string, int> initializer_types;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        initializer_types[initializer.name()] = initializer.data_type();
    }
    std::map<std::string, int> dequantized_type;
    for (const onnx::NodeProto& node : graph.node()) {
        if (node.op_type() != "DequantizeLinear") {
            continue;
        }
        int type = onnx::TensorProto::UNDEFINED;
        if (node.input_size() > 2 && initializer_types.contains(node.input(2))) {
            type = initializer_types.at(node.input(2));
        } else if (initializer_types.contains(node.input(0))) {
            type = initializer_types.at(node.input(0));
        }
        dequantized_type[node.output(0)] = type;
    }

    std::map<std::string, OpTypeQuantization> rows;
    std::vector<std::string> order;
    for (const onnx::NodeProto& node : graph.node()) {
        if (node.op_type() == "QuantizeLinear" || node.op_type() == "DequantizeLinear") {
            continue;
        }
        if (!rows.contains(node.op_type())) {
            rows[node.op_type()].op_type = node.op_type();
            order.push_back(node.op_type());
        }
        OpTypeQuantization& row = rows[node.op_type()];
        row.count += 1;
        const bool weighted =
            node.op_type() == "Conv" || node.op_type() == "Gemm" || node.op_type() == "MatMul";
        for (int i = 0; i < node.input_size(); ++i) {
            const auto found = dequantized_type.find(node.input(i));
            if (found == dequantized_type.end()) {
                continue;
            }
            const std::string name = type_name(found->second);
            if (weighted && i == 1) {
                row.weights[name] += 1;
            } else if (weighted && i == 2) {
                row.bias[name] += 1;
            } else if (i == 0) {
                row.activation[name] += 1;
            }
        }
    }

    std::vector<OpTypeQuantization> result;
    for (const std::string& op_type : order) {
        result.push_back(rows.at(op_type));
    }
    return result;
}

std::string format_qdq_summary(const std::vector<OpTypeQuantization>& rows) {
    std::string text = fmt::format("{:<18} {:>5}  {:<12} {:<12} {:<12}\n", "Op Type", "Count",
                                   "Activation", "Weights", "Bias");
    for (const OpTypeQuantization& row : rows) {
        text += fmt::format("{:<18} {:>5}  {:<12} {:<12} {:<12}\n", row.op_type, row.count,
                            format_counts(row.activation), format_counts(row.weights),
                            format_counts(row.bias));
    }
    return text;
}

}  // namespace edgeq
