// Runs one standard ONNX node with npu-sim's reference kernels (kernels.h).
//
// ONNX's node tests (a model with a single node, its inputs and the expected outputs) check the
// kernels against ONNX's own definition of each operator. The integer operators (QuantizeLinear,
// DequantizeLinear, QLinearConv, QLinearMatMul) run as the NPU computes them. The float operators
// run through the float instantiations of the same templates, which checks their window geometry
// (pads, strides, dilations, groups, ceil mode).
//
// ONNX attributes (auto_pad, pads, strides, kernel_shape, transA, axis, ...) are resolved here into
// the kernels' parameters. What the kernels cannot compute (1-D or 3-D spatial inputs, MaxPool's
// Indices output, an element type without a kernel) is rejected with ExitCode::kUnsupported.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/npu/kernels.h"

namespace edgeq::npu {

// Element types a node input or output can have, a subset of ONNX's TensorProto.DataType.
enum class ElementType { kFloat, kUint8, kInt8, kInt32, kInt64 };

std::string element_type_name(ElementType type);  // "float", "uint8", "int8", "int32", "int64"

// A node input or output: a dense row-major tensor tagged with its element type by the variant's
// alternative.
using NodeTensor =
    std::variant<Tensor<float>, Tensor<uint8_t>, Tensor<int8_t>, Tensor<int32_t>, Tensor<int64_t>>;

ElementType element_type(const NodeTensor& tensor);
const std::vector<int64_t>& tensor_shape(const NodeTensor& tensor);

// Reads a TensorProto (raw_data or the typed repeated field) into a NodeTensor. Throws
// kUnsupported for an element type outside ElementType, and kInvalidInput when the data size does
// not match the dimensions. `label` names the tensor's file or initializer in the message.
NodeTensor node_tensor_from_proto(const onnx::TensorProto& proto, const std::string& label);

// Operator types run_node accepts (ONNX domain only), in a fixed order.
const std::vector<std::string>& supported_node_ops();
bool is_supported_node_op(const std::string& op_type);

// Runs `node` on `inputs`, given in the order of node.input(); an omitted optional input (an empty
// name in the node) is std::nullopt. Returns the node's outputs in the order of node.output().
//
// Throws Error with kUnsupported, naming the node, its op and what is missing, when the kernels
// cannot compute it (an input of an element type without a kernel included). Throws kInvalidInput
// when the inputs or attributes do not fit the operator (a missing required input, shapes that do
// not match).
//
// NOTE: attributes are read as ONNX 1.12 (opset 17) defines them, and the node's opset version is
// not checked.
std::vector<NodeTensor> run_node(const onnx::NodeProto& node,
                                 const std::vector<std::optional<NodeTensor>>& inputs);

}  // namespace edgeq::npu
