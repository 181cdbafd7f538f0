// A description of an ONNX model read from its ModelProto: header fields, graph inputs and
// outputs, operator counts, parameter counts and, for a QDQ model, its number formats. The
// `edgeq info` command prints it as text or JSON.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

namespace edgeq {

// A graph input or output. A dimension is a number, a symbolic name such as "batch_size", or
// "?" when the model leaves it unknown.
struct TensorInfo {
    std::string name;
    std::string element_type;       // lowercase ONNX name: "float", "uint8", "int64", ...
    std::vector<std::string> dims;  // empty for a scalar
    bool has_shape = false;         // false when the model gives no shape at all
};

// Initializers by role. Element counts, not bytes.
struct ParameterCounts {
    int64_t float_tensors = 0;  // float initializers that are not Q/DQ scales
    int64_t float_elements = 0;
    int64_t quantized_tensors = 0;  // integer initializers read by a DequantizeLinear as input 0
    int64_t quantized_elements = 0;
    int64_t quantization_tensors = 0;  // scales and zero points of Q/DQ nodes
    int64_t quantization_elements = 0;
    int64_t other_tensors = 0;  // everything else, for example a Reshape's int64 shape
    int64_t other_elements = 0;

    // The model's weights and biases, whether stored in float or quantized.
    int64_t total_elements() const { return float_elements + quantized_elements; }
};

// The number formats of a QDQ model. Types are lowercase ONNX names ("uint8", "int8", "int16").
struct QuantizationInfo {
    int quantize_nodes = 0;                     // QuantizeLinear
    int dequantize_nodes = 0;                   // DequantizeLinear
    std::vector<std::string> activation_types;  // of QuantizeLinear outputs, sorted
    std::vector<std::string> weight_types;      // input 1 of Conv/Gemm/MatMul, sorted
    std::vector<std::string> bias_types;        // input 2 of Conv/Gemm, sorted
    bool symmetric_activations = false;  // zero points 0 (signed), 128 (uint8) or 32768 (uint16)
    int scale_count = 0;                 // scale tensors of all Q/DQ nodes
    int power_of_two_scales = 0;         // those whose every element is an exact 2^k
    bool all_scales_power_of_two() const {
        return scale_count > 0 && power_of_two_scales == scale_count;
    }
    int per_tensor_weights = 0;   // weight or bias DequantizeLinear nodes with a scalar scale
    int per_channel_weights = 0;  // ... with one scale per channel
    std::string granularity;      // "per-tensor", "per-channel" or "mixed"
    std::string preset;           // the edgeq preset the formats match, or "custom"
};

// NPU placement counts of the model, filled by the caller from npu::partition_model.
struct PlacementInfo {
    std::string target;
    std::string summary;  // npu::partition_summary_line
    int cpu_nodes = 0;
    int npu_nodes = 0;
};

struct ModelInfo {
    std::string file;        // the label given to describe_model, usually the path
    int64_t file_bytes = 0;  // the serialized size; the CLI sets the size on disk
    int64_t ir_version = 0;
    std::vector<std::pair<std::string, int64_t>> opsets;  // domain ("ai.onnx" for ""), version
    std::string producer;                                 // name and version, may be empty
    std::string graph_name;
    std::string checker_error;       // empty when the model passes check_onnx_model
    std::vector<TensorInfo> inputs;  // graph inputs that are not initializers
    std::vector<TensorInfo> outputs;
    int node_count = 0;
    std::vector<std::pair<std::string, int>> op_counts;  // by count (descending), then name
    ParameterCounts parameters;
    std::optional<QuantizationInfo> quantization;  // set when the graph has Q or DQ nodes
    std::optional<PlacementInfo> placement;
};

// Describes `model`. `label` names the model in the result. A model that the ONNX checker or
// shape inference rejects is still described, with the checker's message in checker_error.
ModelInfo describe_model(const onnx::ModelProto& model, const std::string& label);

// Multi-line text for a terminal, ending in a newline.
std::string format_model_info(const ModelInfo& info);

// The same fields as JSON. Dimensions are numbers or strings ("batch_size", "?").
nlohmann::ordered_json model_info_json(const ModelInfo& info);

}  // namespace edgeq
