#include "edgeq/onnx/model_io.h"

#include <cstring>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <onnx/checker.h>
#include <onnx/shape_inference/implementation.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"

namespace edgeq {
namespace fs = std::filesystem;

onnx::ModelProto load_onnx_model(const fs::path& path) {
    if (!fs::exists(path)) {
        fail(ExitCode::kIo, "model '{}' not found; check the path", path.string());
    }
    const std::string bytes = read_file(path);
    onnx::ModelProto model;
    if (bytes.empty() || !model.ParseFromString(bytes) || !model.has_graph()) {
        fail(ExitCode::kInvalidInput,
             "'{}' is not an ONNX model (it does not parse as a ModelProto "
             "with a graph); pass a .onnx file",
             path.string());
    }
    return model;
}

void save_onnx_model(const onnx::ModelProto& model, const fs::path& path) {
    std::string bytes;
    {
        google::protobuf::io::StringOutputStream stream(&bytes);
        google::protobuf::io::CodedOutputStream coded(&stream);
        coded.SetSerializationDeterministic(true);
        if (!model.SerializeToCodedStream(&coded)) {
            fail(ExitCode::kInternal, "serializing the ONNX model for '{}' failed", path.string());
        }
    }
    write_file_atomic(path, bytes);
}

onnx::ModelProto check_onnx_model(const onnx::ModelProto& model, const std::string& label) {
    onnx::ModelProto checked = model;
    try {
        onnx::checker::check_model(checked);
        onnx::ShapeInferenceOptions options(/*check_type_val=*/true, /*strict_mode_val=*/1);
        onnx::shape_inference::InferShapes(checked, onnx::OpSchemaRegistry::Instance(), options);
    } catch (const std::exception& error) {
        std::string message = error.what();
        std::replace(message.begin(), message.end(), '\n', ' ');
        fail(ExitCode::kInvalidInput, "ONNX model '{}' fails the ONNX checker: {}", label, message);
    }
    return checked;
}

onnx::TensorProto make_float_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    const std::vector<float>& values) {
    onnx::TensorProto tensor;
    tensor.set_name(name);
    tensor.set_data_type(onnx::TensorProto::FLOAT);
    for (const int64_t size : shape) {
        tensor.add_dims(size);
    }
    tensor.set_raw_data(values.data(), values.size() * sizeof(float));
    return tensor;
}

onnx::TensorProto make_int64_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    const std::vector<int64_t>& values) {
    onnx::TensorProto tensor;
    tensor.set_name(name);
    tensor.set_data_type(onnx::TensorProto::INT64);
    for (const int64_t size : shape) {
        tensor.add_dims(size);
    }
    tensor.set_raw_data(values.data(), values.size() * sizeof(int64_t));
    return tensor;
}

onnx::AttributeProto make_ints_attribute(const std::string& name,
                                         const std::vector<int64_t>& values) {
    onnx::AttributeProto attribute;
    attribute.set_name(name);
    attribute.set_type(onnx::AttributeProto::INTS);
    for (const int64_t value : values) {
        attribute.add_ints(value);
    }
    return attribute;
}

onnx::AttributeProto make_int_attribute(const std::string& name, int64_t value) {
    onnx::AttributeProto attribute;
    attribute.set_name(name);
    attribute.set_type(onnx::AttributeProto::INT);
    attribute.set_i(value);
    return attribute;
}

onnx::AttributeProto make_float_attribute(const std::string& name, float value) {
    onnx::AttributeProto attribute;
    attribute.set_name(name);
    attribute.set_type(onnx::AttributeProto::FLOAT);
    attribute.set_f(value);
    return attribute;
}

int64_t element_count(const google::protobuf::RepeatedField<int64_t>& dims) {
    int64_t count = 1;
    for (const int64_t size : dims) {
        count *= size;
    }
    return count;
}

std::vector<float> read_float_tensor(const onnx::TensorProto& tensor) {
    if (tensor.data_type() != onnx::TensorProto::FLOAT) {
        fail(ExitCode::kUnsupported, "initializer '{}' has ONNX data type {}, expected float",
             tensor.name(), tensor.data_type());
    }
    const int64_t count = element_count(tensor.dims());
    std::vector<float> values(static_cast<size_t>(count));
    if (tensor.has_raw_data()) {
        if (tensor.raw_data().size() != values.size() * sizeof(float)) {
            fail(ExitCode::kInvalidInput, "initializer '{}' holds {} bytes for {} floats",
                 tensor.name(), tensor.raw_data().size(), count);
        }
        std::memcpy(values.data(), tensor.raw_data().data(), tensor.raw_data().size());
    } else {
        if (tensor.float_data_size() != count) {
            fail(ExitCode::kInvalidInput, "initializer '{}' holds {} floats for shape of {}",
                 tensor.name(), tensor.float_data_size(), count);
        }
        std::copy(tensor.float_data().begin(), tensor.float_data().end(), values.begin());
    }
    return values;
}

}  // namespace edgeq
