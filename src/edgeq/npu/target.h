// Target descriptions: which ONNX operators an accelerator takes from a QDQ model, and under which
// data-type conditions. partition.h uses them to predict where the Vitis AI execution provider
// places each node.
//
// A target is a JSON file (the built-in ones live in src/edgeq/npu/targets/ and are embedded in
// the library at build time):
//
//   {
//     "name": "strix-xint8",             // what --target and the reports call it
//     "device": "NPU",                   // the device name the EP's report uses ("DPU" in old EPs)
//     "description": "...",              // optional, free text
//     "quantized_types": ["int8", "uint8"],  // the integer types the device computes in
//     "bias_types": ["int8", "int32"],   // optional, the types a bias may be stored in
//                                        // (default: quantized_types)
//     "min_conv_layers": 2,              // optional, a whole-model rule (default 0: none)
//     "ops": {                           // ONNX op types of the standard domain, each with its
//       "Conv": {"quantized_inputs": [0, 1], "bias_input": 2, "quantized_outputs": true},
//       "Relu": {"quantized_inputs": [0], "quantized_outputs": true,
//                "fuses_after": ["Conv", "Gemm"]},
//       "QuantizeLinear": {"follows_neighbours": true}
//     }
//   }
//
// Op conditions (an op with none is taken whatever its inputs):
//   quantized_inputs    input slots (or "all") that must be read through a DequantizeLinear of a
//                       `quantized_types` tensor, or come straight from a node of a `fuses_after`
//                       op type on the same device. Absent optional inputs are skipped.
//   bias_input          the slot of the bias, which must be read through a DequantizeLinear of a
//                       `bias_types` tensor.
//   quantized_outputs   every output feeds only QuantizeLinear nodes to `quantized_types`, or
//                       nodes that fuse this op on the same device, and is no graph output.
//   fuses_after         op types whose float output this op reads directly, because the device
//                       runs the pair as one layer (the QDQ layout has no Q/DQ between them).
//   follows_neighbours  for QuantizeLinear / DequantizeLinear: the node goes where its neighbours
//                       are (see partition.h) and its integer type must be a `quantized_types` one
//                       (or a `bias_types` one for a DequantizeLinear of an initializer).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace edgeq::npu {

// The conditions under which the target takes one op type.
struct OpRule {
    std::string op_type;
    bool all_inputs_quantized = false;  // "quantized_inputs": "all"
    std::vector<int> quantized_inputs;  // "quantized_inputs": [0, 1]
    std::optional<int> bias_input;
    bool quantized_outputs = false;
    std::vector<std::string> fuses_after;
    bool follows_neighbours = false;
};

struct TargetDescription {
    std::string name;
    std::string device;
    std::string description;
    std::vector<int32_t> quantized_types;  // onnx::TensorProto::DataType values
    std::vector<int32_t> bias_types;       // onnx::TensorProto::DataType values
    int min_conv_layers = 0;  // fewer Conv nodes on the device than this: the whole model is CPU's
    std::map<std::string, OpRule> ops;  // by op type

    // The rule of `op_type`, or nullptr when the target does not take it.
    const OpRule* find_op(const std::string& op_type) const;
};

// Parses a target description from JSON text. `label` (the file, or "built-in 'x'") names
// the source in errors. Throws Error(kInvalidInput) with one line for invalid JSON (with the
// parser's line and column), a missing field, a field of the wrong type, an unknown field, op
// condition or type name.
TargetDescription parse_target(const std::string& text, const std::string& label);

// Reads and parses a target file. Throws Error(kIo) when the file cannot be read.
TargetDescription load_target(const std::filesystem::path& path);

// A target embedded in the library. Throws Error(kUsage) listing the names for an unknown one.
TargetDescription builtin_target(const std::string& name = "strix-xint8");

std::vector<std::string> builtin_target_names();

// "int8", "uint8", "int16", "uint16", "int32" for those ONNX element types, else "type<N>".
std::string element_type_name(int32_t type);

}  // namespace edgeq::npu
