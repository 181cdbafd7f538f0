// Summaries of an ONNX model read back from the file: node counts per operator type and, for a
// QDQ model, the data types that feed each float operator (like AMD Quark's summary table).
#pragma once

#include <map>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

namespace edgeq {

// Number of nodes of each operator type.
std::map<std::string, int> count_op_types(const onnx::ModelProto& model);

// One row per float operator type of a QDQ model. Each map counts nodes by the quantized type
// (for example "UINT8" -> 2) of the tensor in that role.
struct OpTypeQuantization {
    std::string op_type;
    int count = 0;
    std::map<std::string, int> activation;  // input 0, read through a DequantizeLinear
    std::map<std::string, int> weights;     // input 1 of Conv/Gemm/MatMul, an initializer
    std::map<std::string, int> bias;        // input 2 of Conv/Gemm, an initializer
};

std::vector<OpTypeQuantization> summarize_qdq_model(const onnx::ModelProto& model);

// The table as text, one line per operator type, for example
//   Conv        2   UINT8(2)   INT8(2)   INT8(2)
std::string format_qdq_summary(const std::vector<OpTypeQuantization>& rows);

}  // namespace edgeq
