#include "edgeq/npu/node_runner.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <type_traits>

#include <fmt/ranges.h>

#include "edgeq/common/error.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq::npu {

// ---------------------------------------------------------------------------------------------
// Element types and TensorProto reading

std::string element_type_name(ElementType type) {
    switch (type) {
        case ElementType::kFloat:
            return "float";
        case ElementType::kUint8:
            return "uint8";
        case ElementType::kInt8:
            return "int8";
        case ElementType::kInt32:
            return "int32";
        case ElementType::kInt64:
            return "int64";
    }
    return "?";
}

ElementType element_type(const NodeTensor& tensor) {
    // The alternatives of NodeTensor are declared in the order of ElementType.
    return static_cast<ElementType>(tensor.index());
}

const std::vector<int64_t>& tensor_shape(const NodeTensor& tensor) {
    return std::visit([](const auto& typed) -> const std::vector<int64_t>& { return typed.shape; },
                      tensor);
}

namespace {

// Reads the values of `proto`. raw_data contains them little-endian in their own width. Otherwise
// ONNX stores uint8, int8 and int32 in int32_data, int64 in int64_data and
// float in float_data.
// NOTE: raw_data is copied as it is, which is correct on little-endian hosts only.
template <typename T, typename Field>
Tensor<T> read_proto_values(const onnx::TensorProto& proto, const Field& typed_field,
                            const std::string& label) {
    Tensor<T> tensor;
    tensor.shape.assign(proto.dims().begin(), proto.dims().end());
    const auto count = static_cast<size_t>(element_count(tensor.shape));
    tensor.data.resize(count);

    if (proto.has_raw_data()) {
        if (proto.raw_data().size() != count * sizeof(T)) {
            fail(ExitCode::kInvalidInput,
                 "tensor '{}' has {} bytes of raw_data for {} elements of {} bytes; the file is "
                 "truncated or its dims are wrong",
                 label, proto.raw_data().size(), count, sizeof(T));
        }
        if (count > 0) {
            // An empty vector's data() may be null, which memcpy must not get.
            std::memcpy(tensor.data.data(), proto.raw_data().data(), proto.raw_data().size());
        }
        return tensor;
    }

    if (static_cast<size_t>(typed_field.size()) != count) {
        fail(ExitCode::kInvalidInput,
             "tensor '{}' has {} typed values for {} elements; the file is truncated or its dims "
             "are wrong",
             label, typed_field.size(), count);
    }
    for (size_t i = 0; i < count; ++i) {
        tensor.data[i] = static_cast<T>(typed_field[static_cast<int>(i)]);
    }
    return tensor;
}

}  // namespace

NodeTensor node_tensor_from_proto(const onnx::TensorProto& proto, const std::string& label) {
    if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
        fail(ExitCode::kUnsupported,
             "tensor '{}' keeps its data in an external file, which edgeq does not read; save "
             "the model with its data inside",
             label);
    }
    switch (proto.data_type()) {
        case onnx::TensorProto::FLOAT:
            return read_proto_values<float>(proto, proto.float_data(), label);
        case onnx::TensorProto::UINT8:
            return read_proto_values<uint8_t>(proto, proto.int32_data(), label);
        case onnx::TensorProto::INT8:
            return read_proto_values<int8_t>(proto, proto.int32_data(), label);
        case onnx::TensorProto::INT32:
            return read_proto_values<int32_t>(proto, proto.int32_data(), label);
        case onnx::TensorProto::INT64:
            return read_proto_values<int64_t>(proto, proto.int64_data(), label);
        default:
            fail(ExitCode::kUnsupported,
                 "tensor '{}' has ONNX data type {}; npu-sim's kernels run on float, uint8, int8, "
                 "int32 and int64 only",
                 label, onnx::TensorProto::DataType_Name(proto.data_type()));
    }
}

// ---------------------------------------------------------------------------------------------
// Node context: attributes, inputs and errors that name the node

namespace {

// The element type T of a (possibly const reference to a) Tensor<T>.
template <typename TypedTensor>
using ElementOf = typename decltype(std::decay_t<TypedTensor>::data)::value_type;

struct NodeContext {
    const onnx::NodeProto& node;
    const std::vector<std::optional<NodeTensor>>& inputs;
};

// Test nodes are often unnamed; their first output names them then.
std::string node_label(const onnx::NodeProto& node) {
    const std::string& name =
        node.name().empty() && node.output_size() > 0 ? node.output(0) : node.name();
    return fmt::format("ONNX node '{}' ({})", name, node.op_type());
}

[[noreturn]] void fail_unsupported(const NodeContext& context, const std::string& what) {
    fail(ExitCode::kUnsupported, "{}: npu-sim's kernels do not support {}",
         node_label(context.node), what);
}

[[noreturn]] void fail_invalid(const NodeContext& context, const std::string& what) {
    fail(ExitCode::kInvalidInput, "{}: {}; fix the model or its inputs", node_label(context.node),
         what);
}

const onnx::AttributeProto* find_attribute(const NodeContext& context, const std::string& name) {
    for (const onnx::AttributeProto& attribute : context.node.attribute()) {
        if (attribute.name() == name) {
            return &attribute;
        }
    }
    return nullptr;
}

int64_t int_attribute(const NodeContext& context, const std::string& name, int64_t fallback) {
    const onnx::AttributeProto* attribute = find_attribute(context, name);
    return attribute != nullptr ? attribute->i() : fallback;
}

float float_attribute(const NodeContext& context, const std::string& name, float fallback) {
    const onnx::AttributeProto* attribute = find_attribute(context, name);
    return attribute != nullptr ? attribute->f() : fallback;
}

std::string string_attribute(const NodeContext& context, const std::string& name,
                             const std::string& fallback) {
    const onnx::AttributeProto* attribute = find_attribute(context, name);
    return attribute != nullptr ? attribute->s() : fallback;
}

std::optional<std::vector<int64_t>> ints_attribute(const NodeContext& context,
                                                   const std::string& name) {
    const onnx::AttributeProto* attribute = find_attribute(context, name);
    if (attribute == nullptr) {
        return std::nullopt;
    }
    return std::vector<int64_t>(attribute->ints().begin(), attribute->ints().end());
}

const NodeTensor* optional_input(const NodeContext& context, size_t index) {
    if (index >= context.inputs.size() || !context.inputs[index].has_value()) {
        return nullptr;
    }
    return &*context.inputs[index];
}

const NodeTensor& required_input(const NodeContext& context, size_t index,
                                 const std::string& name) {
    const NodeTensor* input = optional_input(context, index);
    if (input == nullptr) {
        fail_invalid(context, fmt::format("required input {} ('{}') is missing", index, name));
    }
    return *input;
}

template <typename T>
ElementType element_type_of();
template <>
ElementType element_type_of<float>() {
    return ElementType::kFloat;
}
template <>
ElementType element_type_of<uint8_t>() {
    return ElementType::kUint8;
}
template <>
ElementType element_type_of<int8_t>() {
    return ElementType::kInt8;
}
template <>
ElementType element_type_of<int32_t>() {
    return ElementType::kInt32;
}
template <>
ElementType element_type_of<int64_t>() {
    return ElementType::kInt64;
}

// The input as a Tensor<T>; any other element type is one this operator has no kernel for.
template <typename T>
const Tensor<T>& typed_input(const NodeContext& context, size_t index, const std::string& name) {
    const NodeTensor& input = required_input(context, index, name);
    const auto* typed = std::get_if<Tensor<T>>(&input);
    if (typed == nullptr) {
        fail_unsupported(context, fmt::format("input '{}' of element type {} (expected {})", name,
                                              element_type_name(element_type(input)),
                                              element_type_name(element_type_of<T>())));
    }
    return *typed;
}

// Values of an integer tensor of any integer element type, widened to int64.
std::vector<int64_t> integer_values(const NodeContext& context, const NodeTensor& tensor,
                                    const std::string& name) {
    return std::visit(
        [&](const auto& typed) {
            using T = ElementOf<decltype(typed)>;
            if constexpr (std::is_floating_point_v<T>) {
                fail_invalid(context, fmt::format("input '{}' must be an integer tensor", name));
                return std::vector<int64_t>{};
            } else {
                return std::vector<int64_t>(typed.data.begin(), typed.data.end());
            }
        },
        tensor);
}

// An axis in [-rank, rank) made non-negative.
int64_t normalize_axis(const NodeContext& context, int64_t axis, int64_t rank) {
    if (axis < -rank || axis >= rank) {
        fail_invalid(context,
                     fmt::format("axis {} is out of range for a tensor of rank {}", axis, rank));
    }
    return axis < 0 ? axis + rank : axis;
}

// ---------------------------------------------------------------------------------------------
// Broadcasting (numpy rules, as ONNX's multidirectional broadcasting)

std::vector<int64_t> broadcast_shapes(const NodeContext& context, const std::vector<int64_t>& a,
                                      const std::vector<int64_t>& b) {
    const size_t rank = std::max(a.size(), b.size());
    std::vector<int64_t> shape(rank, 1);
    for (size_t i = 0; i < rank; ++i) {
        // Dimensions are aligned from the right; a missing one counts as 1.
        const int64_t from_a = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
        const int64_t from_b = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
        if (from_a != from_b && from_a != 1 && from_b != 1) {
            fail_invalid(context, fmt::format("shapes [{}] and [{}] do not broadcast",
                                              fmt::join(a, ", "), fmt::join(b, ", ")));
        }
        shape[i] = from_a == 1 ? from_b : from_a;
    }
    return shape;
}

// For each element of a tensor of `output_shape`, the flat index of the element of a tensor of
// `input_shape` broadcast to it. `input_shape` must broadcast to `output_shape`.
std::vector<int64_t> broadcast_indices(const std::vector<int64_t>& input_shape,
                                       const std::vector<int64_t>& output_shape) {
    const size_t rank = output_shape.size();
    const size_t offset = rank - input_shape.size();

    // Input strides aligned with the output's axes; a broadcast axis has stride 0.
    std::vector<int64_t> strides(rank, 0);
    int64_t stride = 1;
    for (size_t i = rank; i-- > offset;) {
        const int64_t size = input_shape[i - offset];
        strides[i] = size == 1 ? 0 : stride;
        stride *= size;
    }

    std::vector<int64_t> indices(static_cast<size_t>(element_count(output_shape)));
    std::vector<int64_t> position(rank, 0);
    for (int64_t& index : indices) {
        int64_t flat = 0;
        for (size_t axis = 0; axis < rank; ++axis) {
            flat += position[axis] * strides[axis];
        }
        index = flat;
        // Advance the row-major position by one element.
        for (size_t axis = rank; axis-- > 0;) {
            if (++position[axis] < output_shape[axis]) {
                break;
            }
            position[axis] = 0;
        }
    }
    return indices;
}

// ---------------------------------------------------------------------------------------------
// QuantizeLinear and DequantizeLinear
//
//   QuantizeLinear:   y = saturate(round_half_to_even(x / s) + z), x / s in float
//   DequantizeLinear: y = (x - z) * s
// with s and z scalars (per tensor) or 1-D along `axis` (per axis).

// Layout of per-axis quantization parameters: element i uses entry (i / inner) % count.
struct ParameterLayout {
    int64_t inner = 1;
    int64_t count = 1;

    size_t entry(size_t element) const {
        return static_cast<size_t>((static_cast<int64_t>(element) / inner) % count);
    }
};

ParameterLayout quantization_layout(const NodeContext& context, const std::vector<int64_t>& shape,
                                    const std::vector<int64_t>& scale_shape) {
    const int64_t count = element_count(scale_shape);
    if (scale_shape.size() > 1) {
        fail_invalid(context, fmt::format("the scale has rank {}; it must be a scalar or 1-D",
                                          scale_shape.size()));
    }
    if (count == 1) {
        // A single scale is per tensor, whatever its rank.
        return {1, 1};
    }
    const int64_t rank = static_cast<int64_t>(shape.size());
    const int64_t axis = normalize_axis(context, int_attribute(context, "axis", 1), rank);
    if (shape[static_cast<size_t>(axis)] != count) {
        fail_invalid(context,
                     fmt::format("the scale has {} entries but axis {} of the input has size {}",
                                 count, axis, shape[static_cast<size_t>(axis)]));
    }
    int64_t inner = 1;
    for (size_t i = static_cast<size_t>(axis) + 1; i < shape.size(); ++i) {
        inner *= shape[i];
    }
    return {inner, count};
}

// The zero points of a quantized tensor, one per scale entry; absent means 0.
std::vector<int64_t> zero_points(const NodeContext& context, const NodeTensor* zero_point,
                                 int64_t count) {
    if (zero_point == nullptr) {
        return std::vector<int64_t>(static_cast<size_t>(count), 0);
    }
    std::vector<int64_t> values = integer_values(context, *zero_point, "zero_point");
    if (static_cast<int64_t>(values.size()) != count) {
        fail_invalid(context, fmt::format("the zero point has {} entries and the scale has {}",
                                          values.size(), count));
    }
    return values;
}

// ONNX QuantizeLinear's output types (without the float8 types of opset 19).
QuantType output_quant_type(const NodeContext& context, const NodeTensor* zero_point) {
    const ElementType type =
        zero_point != nullptr ? element_type(*zero_point) : ElementType::kUint8;
    switch (type) {
        case ElementType::kUint8:
            return QuantType::kUint8;
        case ElementType::kInt8:
            return QuantType::kInt8;
        default:
            fail_unsupported(context,
                             fmt::format("quantized tensors of element type {} (only uint8 "
                                         "and int8)",
                                         element_type_name(type)));
    }
}

template <typename Q>
Tensor<Q> quantize_tensor(const Tensor<float>& x, const std::vector<float>& scales,
                          const std::vector<int64_t>& zero_point_values,
                          const ParameterLayout& layout, QuantType type) {
    Tensor<Q> y{x.shape, std::vector<Q>(x.data.size())};
    for (size_t i = 0; i < x.data.size(); ++i) {
        const size_t entry = layout.entry(i);
        const QuantParams params =
            float_scale_params(type, scales[entry], zero_point_values[entry]);
        y.data[i] = static_cast<Q>(quantize_value(x.data[i], params));
    }
    return y;
}

std::vector<NodeTensor> run_quantize_linear(const NodeContext& context) {
    const Tensor<float>& x = typed_input<float>(context, 0, "x");
    const Tensor<float>& scale = typed_input<float>(context, 1, "y_scale");
    const NodeTensor* zero_point = optional_input(context, 2);

    const ParameterLayout layout = quantization_layout(context, x.shape, scale.shape);
    const std::vector<int64_t> zero_point_values =
        zero_points(context, zero_point, element_count(scale.shape));
    const QuantType type = output_quant_type(context, zero_point);
    if (type == QuantType::kUint8) {
        return {quantize_tensor<uint8_t>(x, scale.data, zero_point_values, layout, type)};
    }
    return {quantize_tensor<int8_t>(x, scale.data, zero_point_values, layout, type)};
}

std::vector<NodeTensor> run_dequantize_linear(const NodeContext& context) {
    const NodeTensor& x = required_input(context, 0, "x");
    const Tensor<float>& scale = typed_input<float>(context, 1, "x_scale");
    const NodeTensor* zero_point = optional_input(context, 2);

    if (element_type(x) == ElementType::kFloat || element_type(x) == ElementType::kInt64) {
        fail_unsupported(context, fmt::format("dequantizing element type {} (only uint8, int8 "
                                              "and int32)",
                                              element_type_name(element_type(x))));
    }
    if (zero_point != nullptr && element_type(*zero_point) != element_type(x)) {
        fail_invalid(context, "x and x_zero_point have different element types");
    }
    const std::vector<int64_t> values = integer_values(context, x, "x");
    const ParameterLayout layout = quantization_layout(context, tensor_shape(x), scale.shape);
    const std::vector<int64_t> zero_point_values =
        zero_points(context, zero_point, element_count(scale.shape));

    Tensor<float> y{tensor_shape(x), std::vector<float>(values.size())};
    for (size_t i = 0; i < values.size(); ++i) {
        const size_t entry = layout.entry(i);
        // The quantization type only selects the clamp of quantize_value; dequantizing ignores it.
        const QuantParams params =
            float_scale_params(QuantType::kInt32, scale.data[entry], zero_point_values[entry]);
        y.data[i] = dequantize_value(values[i], params);
    }
    return {y};
}

// ---------------------------------------------------------------------------------------------
// Window geometry: ONNX's kernel_shape, strides, dilations, pads and auto_pad for 2-D inputs

void require_2d_spatial(const NodeContext& context, const std::vector<int64_t>& shape) {
    if (shape.size() != 4) {
        fail_unsupported(context,
                         fmt::format("{}-D spatial inputs (input rank {}); they compute 2-D "
                                     "windows over NCHW only",
                                     static_cast<int64_t>(shape.size()) - 2, shape.size()));
    }
}

std::array<int64_t, 2> pair_attribute(const NodeContext& context, const std::string& name,
                                      std::array<int64_t, 2> fallback) {
    const std::optional<std::vector<int64_t>> values = ints_attribute(context, name);
    if (!values.has_value()) {
        return fallback;
    }
    if (values->size() != 2) {
        fail_invalid(context, fmt::format("attribute {} has {} values; a 2-D window needs 2", name,
                                          values->size()));
    }
    return {(*values)[0], (*values)[1]};
}

// Resolves the window of a Conv or pool over an NCHW input. `kernel` is kernel_shape (or the
// weight's spatial dimensions for Conv).
Window2d resolve_window(const NodeContext& context, const std::vector<int64_t>& input_shape,
                        std::array<int64_t, 2> kernel) {
    Window2d window;
    window.kernel = kernel;
    window.strides = pair_attribute(context, "strides", {1, 1});
    window.dilations = pair_attribute(context, "dilations", {1, 1});
    window.ceil_mode = int_attribute(context, "ceil_mode", 0) != 0;
    window.count_include_pad = int_attribute(context, "count_include_pad", 0) != 0;
    for (size_t axis = 0; axis < 2; ++axis) {
        if (window.kernel[axis] < 1 || window.strides[axis] < 1 || window.dilations[axis] < 1) {
            fail_invalid(context, "kernel_shape, strides and dilations must be positive");
        }
    }

    const std::string auto_pad = string_attribute(context, "auto_pad", "NOTSET");
    if (auto_pad == "NOTSET") {
        const std::vector<int64_t> pads =
            ints_attribute(context, "pads").value_or(std::vector<int64_t>{0, 0, 0, 0});
        if (pads.size() != 4) {
            fail_invalid(context, fmt::format("attribute pads has {} values; a 2-D window needs 4 "
                                              "(top, left, bottom, right)",
                                              pads.size()));
        }
        // ONNX orders pads as [x1_begin, x2_begin, x1_end, x2_end], as Window2d does.
        std::copy(pads.begin(), pads.end(), window.pads.begin());
        return window;
    }
    if (auto_pad == "VALID") {
        return window;
    }
    if (auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER") {
        fail_invalid(context, fmt::format("auto_pad '{}' is not one of NOTSET, SAME_UPPER, "
                                          "SAME_LOWER, VALID",
                                          auto_pad));
    }

    // SAME: output = ceil(input / stride), with just enough padding for the last window; an odd
    // total puts the extra row or column at the end (SAME_UPPER) or at the start (SAME_LOWER).
    for (size_t axis = 0; axis < 2; ++axis) {
        const int64_t input = input_shape[2 + axis];
        const int64_t stride = window.strides[axis];
        const int64_t output = (input + stride - 1) / stride;
        const int64_t extent = (window.kernel[axis] - 1) * window.dilations[axis] + 1;
        const int64_t total = std::max<int64_t>(0, (output - 1) * stride + extent - input);
        const int64_t begin = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
        window.pads[axis] = begin;
        window.pads[axis + 2] = total - begin;
    }
    return window;
}

// ---------------------------------------------------------------------------------------------
// Conv and QLinearConv

// Checks the shapes of x [N, C, H, W] and w [M, C / group, kh, kw].
void check_conv_shapes(const NodeContext& context, const std::vector<int64_t>& x_shape,
                       const std::vector<int64_t>& w_shape, int64_t group) {
    require_2d_spatial(context, x_shape);
    if (w_shape.size() != 4) {
        fail_invalid(context, fmt::format("the weight has rank {}; a 2-D Conv needs rank 4",
                                          w_shape.size()));
    }
    if (group < 1 || x_shape[1] % group != 0 || w_shape[0] % group != 0 ||
        w_shape[1] * group != x_shape[1]) {
        fail_invalid(context,
                     fmt::format("input channels {}, weight [{}] and group {} do not match (the "
                                 "weight must be [M, C / group, kh, kw] with M divisible by group)",
                                 x_shape[1], fmt::join(w_shape, ", "), group));
    }
}

Window2d conv_window(const NodeContext& context, const std::vector<int64_t>& x_shape,
                     const std::vector<int64_t>& w_shape) {
    const std::array<int64_t, 2> kernel =
        pair_attribute(context, "kernel_shape", {w_shape[2], w_shape[3]});
    if (kernel[0] != w_shape[2] || kernel[1] != w_shape[3]) {
        fail_invalid(context, "kernel_shape differs from the weight's spatial dimensions");
    }
    return resolve_window(context, x_shape, kernel);
}

// The per-output-channel bias B of Conv or QLinearConv, or nullptr; checks it has M entries.
template <typename T>
const Tensor<T>* conv_bias(const NodeContext& context, size_t index, int64_t output_channels) {
    if (optional_input(context, index) == nullptr) {
        return nullptr;
    }
    const Tensor<T>& bias = typed_input<T>(context, index, "B");
    if (element_count(bias.shape) != output_channels) {
        fail_invalid(context, fmt::format("the bias has {} entries for {} output channels",
                                          element_count(bias.shape), output_channels));
    }
    return &bias;
}

std::vector<NodeTensor> run_conv(const NodeContext& context) {
    const Tensor<float>& x = typed_input<float>(context, 0, "X");
    const Tensor<float>& w = typed_input<float>(context, 1, "W");
    const int64_t group = int_attribute(context, "group", 1);
    check_conv_shapes(context, x.shape, w.shape, group);
    const Tensor<float>* bias = conv_bias<float>(context, 2, w.shape[0]);
    const Window2d window = conv_window(context, x.shape, w.shape);

    Tensor<float> y = conv2d_accumulate<float, float, float>(x, 0.0f, w, 0.0f, window, group);
    if (bias != nullptr) {
        const int64_t plane = y.shape[2] * y.shape[3];
        for (size_t i = 0; i < y.data.size(); ++i) {
            y.data[i] +=
                bias->data[static_cast<size_t>((static_cast<int64_t>(i) / plane) % y.shape[1])];
        }
    }
    return {y};
}

// One scalar of a scale or zero-point input that must be per tensor.
float scalar_scale(const NodeContext& context, size_t index, const std::string& name) {
    const Tensor<float>& scale = typed_input<float>(context, index, name);
    if (scale.data.size() != 1) {
        fail_unsupported(context, fmt::format("a per-axis {} ({} entries; only a single scale)",
                                              name, scale.data.size()));
    }
    if (!(scale.data[0] > 0.0f)) {
        fail_invalid(context,
                     fmt::format("{} is {}; scales must be positive", name, scale.data[0]));
    }
    return scale.data[0];
}

// The common value of a zero-point input; per-channel zero points that differ have no kernel
// (the accumulating kernels subtract one zero point per operand).
int32_t uniform_zero_point(const NodeContext& context, size_t index, const std::string& name) {
    const std::vector<int64_t> values =
        integer_values(context, required_input(context, index, name), name);
    if (values.empty()) {
        fail_invalid(context, fmt::format("{} is empty", name));
    }
    if (std::any_of(values.begin(), values.end(), [&](int64_t v) { return v != values[0]; })) {
        fail_unsupported(context, fmt::format("{} that differ between channels", name));
    }
    return static_cast<int32_t>(values[0]);
}

// The requantization of QLinearConv and QLinearMatMul:
//   y = saturate(round_half_to_even((acc + bias) * s_a * s_b / s_y) + z_y)
// with the real multiplier s_a * s_b / s_y written in fixed point, as the NPU applies it. The
// multiplier is computed in float from the float scales, as a float implementation does, and
// float has fewer bits than the fixed-point multiplier, so the multipliers are equal. The
// fixed-point product is exact, but a float implementation rounds acc * multiplier to float before
// rounding it to an integer. So the two can round a near tie to neighbouring integers.
struct Requantization {
    std::vector<FixedPointMultiplier> multipliers;  // one per channel, or one for the tensor
    ParameterLayout layout;                         // channel of each accumulator
    std::vector<int32_t> bias;                      // empty, or one per channel
    int64_t zero_point = 0;
    QuantType type = QuantType::kUint8;
};

Requantization make_requantization(const NodeContext& context, float scale_a,
                                   const std::vector<float>& scales_b, float scale_y,
                                   ParameterLayout layout, const NodeTensor& y_zero_point) {
    Requantization requantization;
    for (const float scale_b : scales_b) {
        if (!(scale_b > 0.0f)) {
            fail_invalid(context,
                         fmt::format("a weight scale is {}; scales must be positive", scale_b));
        }
        const float real = scale_a * scale_b / scale_y;
        requantization.multipliers.push_back(fixed_point_from_real(static_cast<double>(real)));
    }
    requantization.layout = layout;
    requantization.type = output_quant_type(context, &y_zero_point);
    const std::vector<int64_t> zero_point = integer_values(context, y_zero_point, "y_zero_point");
    if (zero_point.size() != 1) {
        fail_unsupported(context, "a per-axis y_zero_point (only a single output zero point)");
    }
    requantization.zero_point = zero_point[0];
    return requantization;
}

template <typename Q>
Tensor<Q> requantize_as(const Tensor<int32_t>& accumulators, const Requantization& requantization) {
    Tensor<Q> y{accumulators.shape, std::vector<Q>(accumulators.data.size())};
    for (size_t i = 0; i < accumulators.data.size(); ++i) {
        const size_t channel = requantization.layout.entry(i);
        int64_t total = accumulators.data[i];
        if (!requantization.bias.empty()) {
            // NOTE: the sum saturates to int32 where ONNX Runtime's int32 addition would wrap;
            // neither happens for accumulators of real 8-bit convolutions.
            total = saturate(total + requantization.bias[channel], QuantType::kInt32);
        }
        const FixedPointMultiplier& multiplier =
            requantization.multipliers[requantization.multipliers.size() == 1 ? 0 : channel];
        const int64_t scaled = multiply_round(total, multiplier, Rounding::kHalfEven);
        y.data[i] =
            static_cast<Q>(saturate(scaled + requantization.zero_point, requantization.type));
    }
    return y;
}

NodeTensor requantize(const Tensor<int32_t>& accumulators, const Requantization& requantization) {
    if (requantization.type == QuantType::kUint8) {
        return requantize_as<uint8_t>(accumulators, requantization);
    }
    return requantize_as<int8_t>(accumulators, requantization);
}

// conv2d_accumulate with int32 accumulators for the 8-bit input and weight types.
Tensor<int32_t> accumulate_qlinear_conv(const NodeContext& context, const NodeTensor& x,
                                        int32_t x_zero_point, const NodeTensor& w,
                                        int32_t w_zero_point, const Window2d& window,
                                        int64_t group) {
    return std::visit(
        [&](const auto& typed_x, const auto& typed_w) -> Tensor<int32_t> {
            using X = ElementOf<decltype(typed_x)>;
            using W = ElementOf<decltype(typed_w)>;
            constexpr bool kEightBit = (std::is_same_v<X, uint8_t> || std::is_same_v<X, int8_t>)&&(
                std::is_same_v<W, uint8_t> || std::is_same_v<W, int8_t>);
            if constexpr (kEightBit) {
                return conv2d_accumulate<int32_t, X, W>(typed_x, x_zero_point, typed_w,
                                                        w_zero_point, window, group);
            } else {
                fail_unsupported(context, fmt::format("x of element type {} with w of element "
                                                      "type {} (only uint8 and int8)",
                                                      element_type_name(element_type_of<X>()),
                                                      element_type_name(element_type_of<W>())));
            }
        },
        x, w);
}

std::vector<NodeTensor> run_qlinear_conv(const NodeContext& context) {
    const NodeTensor& x = required_input(context, 0, "x");
    const NodeTensor& w = required_input(context, 3, "w");
    const int64_t group = int_attribute(context, "group", 1);
    check_conv_shapes(context, tensor_shape(x), tensor_shape(w), group);
    const int64_t output_channels = tensor_shape(w)[0];

    const float x_scale = scalar_scale(context, 1, "x_scale");
    const int32_t x_zero_point = uniform_zero_point(context, 2, "x_zero_point");
    const Tensor<float>& w_scale = typed_input<float>(context, 4, "w_scale");
    const int32_t w_zero_point = uniform_zero_point(context, 5, "w_zero_point");
    const float y_scale = scalar_scale(context, 6, "y_scale");
    const NodeTensor& y_zero_point = required_input(context, 7, "y_zero_point");
    const Tensor<int32_t>* bias = conv_bias<int32_t>(context, 8, output_channels);
    if (w_scale.data.size() != 1 && static_cast<int64_t>(w_scale.data.size()) != output_channels) {
        fail_invalid(context, fmt::format("w_scale has {} entries for {} output channels",
                                          w_scale.data.size(), output_channels));
    }

    const Window2d window = conv_window(context, tensor_shape(x), tensor_shape(w));
    const Tensor<int32_t> accumulators =
        accumulate_qlinear_conv(context, x, x_zero_point, w, w_zero_point, window, group);

    // Output channel m of y [N, M, OH, OW] is entry (i / (OH * OW)) % M.
    const ParameterLayout layout{accumulators.shape[2] * accumulators.shape[3], output_channels};
    Requantization requantization =
        make_requantization(context, x_scale, w_scale.data, y_scale, layout, y_zero_point);
    if (bias != nullptr) {
        requantization.bias = bias->data;
    }
    return {requantize(accumulators, requantization)};
}

// ---------------------------------------------------------------------------------------------
// MatMul, QLinearMatMul and Gemm

// numpy's matmul for operands of rank >= 2. matmul_accumulate takes a rank-2 b and treats the
// leading axes of a as batch axes. A b with batch axes is run one matrix pair at a time, and the
// batch axes of a and b are broadcast against each other.
template <typename Acc, typename A, typename B>
Tensor<Acc> batched_matmul(const NodeContext& context, const Tensor<A>& a, Acc a_zero_point,
                           const Tensor<B>& b, Acc b_zero_point) {
    if (a.shape.size() < 2 || b.shape.size() < 2) {
        fail_unsupported(context, "1-D MatMul operands (both must have rank 2 or more)");
    }
    const int64_t rows = a.shape[a.shape.size() - 2];
    const int64_t depth = a.shape.back();
    const int64_t columns = b.shape.back();
    if (b.shape[b.shape.size() - 2] != depth) {
        fail_invalid(context, fmt::format("a [{}] and b [{}] have different inner dimensions",
                                          fmt::join(a.shape, ", "), fmt::join(b.shape, ", ")));
    }
    if (b.shape.size() == 2) {
        return matmul_accumulate<Acc, A, B>(a, a_zero_point, b, b_zero_point);
    }

    const std::vector<int64_t> a_batch(a.shape.begin(), a.shape.end() - 2);
    const std::vector<int64_t> b_batch(b.shape.begin(), b.shape.end() - 2);
    const std::vector<int64_t> batch = broadcast_shapes(context, a_batch, b_batch);
    const std::vector<int64_t> a_index = broadcast_indices(a_batch, batch);
    const std::vector<int64_t> b_index = broadcast_indices(b_batch, batch);

    Tensor<Acc> y;
    y.shape = batch;
    y.shape.push_back(rows);
    y.shape.push_back(columns);
    y.data.reserve(static_cast<size_t>(element_count(y.shape)));
    const int64_t a_size = rows * depth;
    const int64_t b_size = depth * columns;
    for (size_t i = 0; i < a_index.size(); ++i) {
        const auto a_begin = a.data.begin() + a_index[i] * a_size;
        const auto b_begin = b.data.begin() + b_index[i] * b_size;
        const Tensor<A> a_matrix{{rows, depth}, std::vector<A>(a_begin, a_begin + a_size)};
        const Tensor<B> b_matrix{{depth, columns}, std::vector<B>(b_begin, b_begin + b_size)};
        const Tensor<Acc> product =
            matmul_accumulate<Acc, A, B>(a_matrix, a_zero_point, b_matrix, b_zero_point);
        y.data.insert(y.data.end(), product.data.begin(), product.data.end());
    }
    return y;
}

std::vector<NodeTensor> run_matmul(const NodeContext& context) {
    const Tensor<float>& a = typed_input<float>(context, 0, "A");
    const Tensor<float>& b = typed_input<float>(context, 1, "B");
    return {batched_matmul<float, float, float>(context, a, 0.0f, b, 0.0f)};
}

Tensor<int32_t> accumulate_qlinear_matmul(const NodeContext& context, const NodeTensor& a,
                                          int32_t a_zero_point, const NodeTensor& b,
                                          int32_t b_zero_point) {
    return std::visit(
        [&](const auto& typed_a, const auto& typed_b) -> Tensor<int32_t> {
            using A = ElementOf<decltype(typed_a)>;
            using B = ElementOf<decltype(typed_b)>;
            constexpr bool kEightBit = (std::is_same_v<A, uint8_t> || std::is_same_v<A, int8_t>)&&(
                std::is_same_v<B, uint8_t> || std::is_same_v<B, int8_t>);
            if constexpr (kEightBit) {
                return batched_matmul<int32_t, A, B>(context, typed_a, a_zero_point, typed_b,
                                                     b_zero_point);
            } else {
                fail_unsupported(context, fmt::format("a of element type {} with b of element "
                                                      "type {} (only uint8 and int8)",
                                                      element_type_name(element_type_of<A>()),
                                                      element_type_name(element_type_of<B>())));
            }
        },
        a, b);
}

std::vector<NodeTensor> run_qlinear_matmul(const NodeContext& context) {
    const NodeTensor& a = required_input(context, 0, "a");
    const NodeTensor& b = required_input(context, 3, "b");
    const float a_scale = scalar_scale(context, 1, "a_scale");
    const int32_t a_zero_point = uniform_zero_point(context, 2, "a_zero_point");
    const Tensor<float>& b_scale = typed_input<float>(context, 4, "b_scale");
    const int32_t b_zero_point = uniform_zero_point(context, 5, "b_zero_point");
    const float y_scale = scalar_scale(context, 6, "y_scale");
    const NodeTensor& y_zero_point = required_input(context, 7, "y_zero_point");

    const Tensor<int32_t> accumulators =
        accumulate_qlinear_matmul(context, a, a_zero_point, b, b_zero_point);

    // b may be quantized per column: column j of y [..., M, N] is entry i % N.
    const int64_t columns = accumulators.shape.back();
    const auto scale_count = static_cast<int64_t>(b_scale.data.size());
    if (scale_count != 1 && scale_count != columns) {
        fail_invalid(context,
                     fmt::format("b_scale has {} entries for {} columns", scale_count, columns));
    }
    const ParameterLayout layout{1, scale_count};
    const Requantization requantization =
        make_requantization(context, a_scale, b_scale.data, y_scale, layout, y_zero_point);
    return {requantize(accumulators, requantization)};
}

// Gemm: Y = alpha * A' * B' + beta * C, with A' = transpose(A) when transA (B' likewise) and C
// broadcast to [M, N].
std::vector<NodeTensor> run_gemm(const NodeContext& context) {
    const Tensor<float>& a = typed_input<float>(context, 0, "A");
    const Tensor<float>& b = typed_input<float>(context, 1, "B");
    if (a.shape.size() != 2 || b.shape.size() != 2) {
        fail_invalid(context, "Gemm's A and B must have rank 2");
    }
    const Tensor<float> a_matrix =
        int_attribute(context, "transA", 0) != 0 ? transpose2d<float>(a) : a;
    const Tensor<float> b_matrix =
        int_attribute(context, "transB", 0) != 0 ? transpose2d<float>(b) : b;
    if (a_matrix.shape[1] != b_matrix.shape[0]) {
        fail_invalid(context,
                     fmt::format("A' [{}] and B' [{}] have different inner dimensions",
                                 fmt::join(a_matrix.shape, ", "), fmt::join(b_matrix.shape, ", ")));
    }
    Tensor<float> y = matmul_accumulate<float, float, float>(a_matrix, 0.0f, b_matrix, 0.0f);

    const float alpha = float_attribute(context, "alpha", 1.0f);
    const float beta = float_attribute(context, "beta", 1.0f);
    for (float& value : y.data) {
        value *= alpha;
    }
    if (optional_input(context, 2) != nullptr) {
        const Tensor<float>& c = typed_input<float>(context, 2, "C");
        // C broadcasts to Y in one direction only.
        if (broadcast_shapes(context, c.shape, y.shape) != y.shape) {
            fail_invalid(context, fmt::format("C [{}] does not broadcast to [{}]",
                                              fmt::join(c.shape, ", "), fmt::join(y.shape, ", ")));
        }
        const std::vector<int64_t> c_index = broadcast_indices(c.shape, y.shape);
        for (size_t i = 0; i < y.data.size(); ++i) {
            y.data[i] += beta * c.data[static_cast<size_t>(c_index[i])];
        }
    }
    return {y};
}

// ---------------------------------------------------------------------------------------------
// Pools

// Average of each window: the float window sums divided by the divisor ONNX uses for each.
Tensor<float> average_pool(const Tensor<float>& x, const Window2d& window) {
    std::vector<int64_t> divisors;
    Tensor<float> y = window_sums2d<float, float>(x, 0.0f, window, divisors);
    for (size_t i = 0; i < y.data.size(); ++i) {
        y.data[i] /= static_cast<float>(divisors[i]);
    }
    return y;
}

NodeTensor max_pool(const NodeContext& context, const NodeTensor& x, const Window2d& window) {
    return std::visit(
        [&](const auto& typed) -> NodeTensor {
            using T = ElementOf<decltype(typed)>;
            if constexpr (std::is_same_v<T, float> || std::is_same_v<T, uint8_t> ||
                          std::is_same_v<T, int8_t>) {
                return max_pool2d<T>(typed, window);
            } else {
                fail_unsupported(context, fmt::format("MaxPool on element type {} (only float, "
                                                      "uint8 and int8)",
                                                      element_type_name(element_type_of<T>())));
            }
        },
        x);
}

Window2d pool_window(const NodeContext& context, const std::vector<int64_t>& x_shape) {
    require_2d_spatial(context, x_shape);
    if (!ints_attribute(context, "kernel_shape").has_value()) {
        fail_invalid(context, "the required attribute kernel_shape is missing");
    }
    return resolve_window(context, x_shape, pair_attribute(context, "kernel_shape", {1, 1}));
}

// A window over the whole of each H x W plane, as GlobalAveragePool and GlobalMaxPool use.
Window2d global_window(const NodeContext& context, const std::vector<int64_t>& x_shape) {
    require_2d_spatial(context, x_shape);
    Window2d window;
    window.kernel = {x_shape[2], x_shape[3]};
    return window;
}

std::vector<NodeTensor> run_max_pool(const NodeContext& context) {
    // storage_order only sets how the Indices output numbers positions, so without that output
    // it changes nothing.
    if (context.node.output_size() > 1 && !context.node.output(1).empty()) {
        fail_unsupported(context, "MaxPool's second output (Indices, with storage_order)");
    }
    const NodeTensor& x = required_input(context, 0, "X");
    return {max_pool(context, x, pool_window(context, tensor_shape(x)))};
}

std::vector<NodeTensor> run_average_pool(const NodeContext& context) {
    const Tensor<float>& x = typed_input<float>(context, 0, "X");
    return {average_pool(x, pool_window(context, x.shape))};
}

std::vector<NodeTensor> run_global_average_pool(const NodeContext& context) {
    const Tensor<float>& x = typed_input<float>(context, 0, "X");
    return {average_pool(x, global_window(context, x.shape))};
}

std::vector<NodeTensor> run_global_max_pool(const NodeContext& context) {
    const NodeTensor& x = required_input(context, 0, "X");
    return {max_pool(context, x, global_window(context, tensor_shape(x)))};
}

// ---------------------------------------------------------------------------------------------
// Element-wise operators and data movement

std::vector<NodeTensor> run_relu(const NodeContext& context) {
    const NodeTensor& x = required_input(context, 0, "X");
    return {std::visit(
        [](const auto& typed) -> NodeTensor {
            using T = ElementOf<decltype(typed)>;
            auto y = typed;
            for (T& value : y.data) {
                value = std::max(value, T{0});
            }
            return y;
        },
        x)};
}

// A + B with integer sums wrapping around modulo 2^bits, as ONNX's reference (numpy) computes
// them.
template <typename T>
T add_values(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
        return a + b;
    } else {
        using Unsigned = std::make_unsigned_t<T>;
        return static_cast<T>(
            static_cast<Unsigned>(static_cast<Unsigned>(a) + static_cast<Unsigned>(b)));
    }
}

std::vector<NodeTensor> run_add(const NodeContext& context) {
    const NodeTensor& a = required_input(context, 0, "A");
    const NodeTensor& b = required_input(context, 1, "B");
    if (element_type(a) != element_type(b)) {
        fail_invalid(context, fmt::format("A is {} and B is {}; Add needs one element type",
                                          element_type_name(element_type(a)),
                                          element_type_name(element_type(b))));
    }
    return {std::visit(
        [&](const auto& typed_a) -> NodeTensor {
            using Typed = std::decay_t<decltype(typed_a)>;
            const auto& typed_b = std::get<Typed>(b);
            Typed y;
            y.shape = broadcast_shapes(context, typed_a.shape, typed_b.shape);
            const std::vector<int64_t> a_index = broadcast_indices(typed_a.shape, y.shape);
            const std::vector<int64_t> b_index = broadcast_indices(typed_b.shape, y.shape);
            y.data.resize(a_index.size());
            for (size_t i = 0; i < y.data.size(); ++i) {
                y.data[i] = add_values(typed_a.data[static_cast<size_t>(a_index[i])],
                                       typed_b.data[static_cast<size_t>(b_index[i])]);
            }
            return y;
        },
        a)};
}

// The data of `x` under a new shape with the same element count.
NodeTensor with_shape(const NodeTensor& x, const std::vector<int64_t>& shape) {
    NodeTensor y = x;
    std::visit([&](auto& typed) { typed.shape = shape; }, y);
    return y;
}

std::vector<NodeTensor> run_reshape(const NodeContext& context) {
    const NodeTensor& data = required_input(context, 0, "data");
    const Tensor<int64_t>& shape = typed_input<int64_t>(context, 1, "shape");
    const bool allow_zero = int_attribute(context, "allowzero", 0) != 0;
    return {with_shape(data, reshape_shape(tensor_shape(data), shape.data, allow_zero))};
}

std::vector<NodeTensor> run_flatten(const NodeContext& context) {
    const NodeTensor& input = required_input(context, 0, "input");
    const int64_t rank = static_cast<int64_t>(tensor_shape(input).size());
    // Flatten's axis may also equal the rank, which gives [prod(shape), 1].
    const int64_t axis = int_attribute(context, "axis", 1);
    if (axis < -rank || axis > rank) {
        fail_invalid(context, fmt::format("axis {} is out of range [{}, {}]", axis, -rank, rank));
    }
    return {with_shape(input, flatten_shape(tensor_shape(input), axis))};
}

std::vector<NodeTensor> run_concat(const NodeContext& context) {
    const NodeTensor& first = required_input(context, 0, "inputs");
    const std::vector<int64_t>& first_shape = tensor_shape(first);
    const int64_t rank = static_cast<int64_t>(first_shape.size());
    if (find_attribute(context, "axis") == nullptr) {
        fail_invalid(context, "the required attribute axis is missing");
    }
    const int64_t axis = normalize_axis(context, int_attribute(context, "axis", 0), rank);

    for (size_t i = 1; i < context.inputs.size(); ++i) {
        const NodeTensor& input = required_input(context, i, "inputs");
        const std::vector<int64_t>& shape = tensor_shape(input);
        bool matches =
            element_type(input) == element_type(first) && shape.size() == first_shape.size();
        for (size_t d = 0; matches && d < shape.size(); ++d) {
            matches = static_cast<int64_t>(d) == axis || shape[d] == first_shape[d];
        }
        if (!matches) {
            fail_invalid(context,
                         fmt::format("input {} ({} [{}]) does not match input 0 ({} [{}]) "
                                     "outside axis {}",
                                     i, element_type_name(element_type(input)),
                                     fmt::join(shape, ", "), element_type_name(element_type(first)),
                                     fmt::join(first_shape, ", "), axis));
        }
    }
    return {std::visit(
        [&](const auto& typed_first) -> NodeTensor {
            using Typed = std::decay_t<decltype(typed_first)>;
            using T = ElementOf<Typed>;
            if constexpr (std::is_same_v<T, int64_t>) {
                fail_unsupported(context, "Concat on int64 (only float, uint8, int8 and int32)");
            } else {
                std::vector<const Tensor<T>*> parts;
                for (const std::optional<NodeTensor>& input : context.inputs) {
                    parts.push_back(&std::get<Typed>(*input));
                }
                return concat<T>(parts, axis);
            }
        },
        first)};
}

// ---------------------------------------------------------------------------------------------
// Dispatch

using NodeFunction = std::function<std::vector<NodeTensor>(const NodeContext&)>;

struct NodeOperator {
    const char* op_type;
    NodeFunction run;
};

const std::vector<NodeOperator>& node_operators() {
    static const std::vector<NodeOperator> operators = {
        {"QuantizeLinear", run_quantize_linear},
        {"DequantizeLinear", run_dequantize_linear},
        {"QLinearConv", run_qlinear_conv},
        {"QLinearMatMul", run_qlinear_matmul},
        {"Conv", run_conv},
        {"Gemm", run_gemm},
        {"MatMul", run_matmul},
        {"MaxPool", run_max_pool},
        {"AveragePool", run_average_pool},
        {"GlobalAveragePool", run_global_average_pool},
        {"GlobalMaxPool", run_global_max_pool},
        {"Relu", run_relu},
        {"Reshape", run_reshape},
        {"Flatten", run_flatten},
        {"Add", run_add},
        {"Concat", run_concat},
    };
    return operators;
}

}  // namespace

const std::vector<std::string>& supported_node_ops() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> result;
        for (const NodeOperator& entry : node_operators()) {
            result.emplace_back(entry.op_type);
        }
        return result;
    }();
    return names;
}

bool is_supported_node_op(const std::string& op_type) {
    const std::vector<std::string>& names = supported_node_ops();
    return std::find(names.begin(), names.end(), op_type) != names.end();
}

std::vector<NodeTensor> run_node(const onnx::NodeProto& node,
                                 const std::vector<std::optional<NodeTensor>>& inputs) {
    const NodeContext context{node, inputs};
    if (!node.domain().empty() && node.domain() != "ai.onnx") {
        fail_unsupported(
            context, fmt::format("operators of domain '{}' (only the ONNX domain)", node.domain()));
    }
    for (const NodeOperator& entry : node_operators()) {
        if (node.op_type() == entry.op_type) {
            return entry.run(context);
        }
    }
    fail_unsupported(context, fmt::format("this operator (supported: {})",
                                          fmt::join(supported_node_ops(), ", ")));
}

}  // namespace edgeq::npu
