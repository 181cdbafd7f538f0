// Loading, checking and saving ONNX models with ONNX's own protobuf classes (libonnx).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

namespace edgeq {

// Reads and parses an ONNX model. Throws Error naming the file when it is missing or not a
// valid ModelProto.
onnx::ModelProto load_onnx_model(const std::filesystem::path& path);

// Serializes deterministically (the same model gives the same bytes) and writes atomically.
void save_onnx_model(const onnx::ModelProto& model, const std::filesystem::path& path);

// Runs onnx::checker::check_model and strict shape inference on a copy of `model`. Throws Error
// naming `label` and the checker's message on failure. Returns the model with inferred shapes.
onnx::ModelProto check_onnx_model(const onnx::ModelProto& model, const std::string& label);

// Builders for graph pieces, shared by the exporter and the quantizer.
onnx::TensorProto make_float_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    const std::vector<float>& values);
onnx::TensorProto make_int64_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    const std::vector<int64_t>& values);
onnx::AttributeProto make_ints_attribute(const std::string& name,
                                         const std::vector<int64_t>& values);
onnx::AttributeProto make_int_attribute(const std::string& name, int64_t value);
onnx::AttributeProto make_float_attribute(const std::string& name, float value);

// Reads a float initializer (raw_data or float_data) into a flat vector.
std::vector<float> read_float_tensor(const onnx::TensorProto& tensor);

// Number of elements of a tensor with the given shape.
int64_t element_count(const google::protobuf::RepeatedField<int64_t>& dims);

}  // namespace edgeq
