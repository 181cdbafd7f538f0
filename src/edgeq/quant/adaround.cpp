#include "edgeq/quant/adaround.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>
#include <span>

#include <torch/torch.h>

#include "edgeq/common/error.h"
#include "edgeq/common/random.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/quant/quant_math.h"

namespace edgeq {

namespace {

// Stretch of the rectified sigmoid h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), the
// values of the AdaRound paper and AMD Quark. Because of the stretch, h reaches exactly 0 and 1 for
// finite V, so the regularizer can settle it there.
constexpr double kZeta = 1.1;
constexpr double kGamma = -0.1;

// Samples per forward pass when the output error is measured over all collected samples.
constexpr int64_t kEvaluationBatch = 256;

enum class LayerKind { kConv, kGemm, kMatMul };

// ------------------------------------------------------------------------------------------------
// Integer initializers and DequantizeLinear parameters

struct IntegerFormat {
    int byte_count = 0;
    bool is_signed = false;
    int64_t min = 0;
    int64_t max = 0;
};

// The integer types a DequantizeLinear input can have and that AdaRound rewrites; nothing for
// other types (float8, int4), which are skipped.
std::optional<IntegerFormat> integer_format(int32_t data_type) {
    switch (data_type) {
        case onnx::TensorProto::INT8:
            return IntegerFormat{1, true, std::numeric_limits<int8_t>::min(),
                                 std::numeric_limits<int8_t>::max()};
        case onnx::TensorProto::UINT8:
            return IntegerFormat{1, false, 0, std::numeric_limits<uint8_t>::max()};
        case onnx::TensorProto::INT16:
            return IntegerFormat{2, true, std::numeric_limits<int16_t>::min(),
                                 std::numeric_limits<int16_t>::max()};
        case onnx::TensorProto::UINT16:
            return IntegerFormat{2, false, 0, std::numeric_limits<uint16_t>::max()};
        case onnx::TensorProto::INT32:
            return IntegerFormat{4, true, std::numeric_limits<int32_t>::min(),
                                 std::numeric_limits<int32_t>::max()};
        default:
            return std::nullopt;
    }
}

// Reads an integer initializer from raw_data (little-endian, as ONNX specifies) or from
// int32_data, where ONNX stores 8-, 16- and 32-bit integers without raw_data.
std::vector<int64_t> read_integer_tensor(const onnx::TensorProto& tensor,
                                         const IntegerFormat& format) {
    const auto count = static_cast<size_t>(element_count(tensor.dims()));
    std::vector<int64_t> values(count);
    if (!tensor.has_raw_data()) {
        if (static_cast<size_t>(tensor.int32_data_size()) != count) {
            fail(ExitCode::kInvalidInput, "initializer '{}' holds {} integers for {} elements",
                 tensor.name(), tensor.int32_data_size(), count);
        }
        std::copy(tensor.int32_data().begin(), tensor.int32_data().end(), values.begin());
        return values;
    }
    const std::string& raw = tensor.raw_data();
    if (raw.size() != count * static_cast<size_t>(format.byte_count)) {
        fail(ExitCode::kInvalidInput, "initializer '{}' holds {} bytes for {} elements of {} bytes",
             tensor.name(), raw.size(), count, format.byte_count);
    }
    const int bits = 8 * format.byte_count;
    for (size_t i = 0; i < count; ++i) {
        uint64_t bytes = 0;
        for (int b = 0; b < format.byte_count; ++b) {
            bytes |= uint64_t{static_cast<uint8_t>(raw[i * format.byte_count + b])} << (8 * b);
        }
        auto value = static_cast<int64_t>(bytes);
        if (format.is_signed && (bytes >> (bits - 1)) != 0) {
            value -= int64_t{1} << bits;  // two's complement sign extension
        }
        values[i] = value;
    }
    return values;
}

// Replaces the values of an integer initializer, keeping its name, type and shape, as
// little-endian raw_data.
void write_integer_tensor(onnx::TensorProto& tensor, const IntegerFormat& format,
                          const std::vector<int64_t>& values) {
    std::string raw(values.size() * static_cast<size_t>(format.byte_count), '\0');
    for (size_t i = 0; i < values.size(); ++i) {
        const auto bytes = static_cast<uint64_t>(values[i]);
        for (int b = 0; b < format.byte_count; ++b) {
            raw[i * format.byte_count + b] = static_cast<char>((bytes >> (8 * b)) & 0xFF);
        }
    }
    tensor.clear_int32_data();
    tensor.set_raw_data(raw);
}

// Scale and zero point of one DequantizeLinear node, per tensor (one entry) or per slice along
// `axis` of the dequantized tensor: x = (q - zero_point[c]) * scale[c].
struct DequantizeParams {
    std::vector<float> scale;
    std::vector<int64_t> zero_point;
    int64_t axis = 0;   // normalized to [0, rank); used only when there is more than one entry
    int64_t inner = 1;  // elements per step along `axis` (product of the later dimensions)

    size_t entry(size_t element) const {
        return scale.size() == 1 ? 0 : (element / static_cast<size_t>(inner)) % scale.size();
    }
};

using InitializerMap = std::map<std::string, onnx::TensorProto*>;

InitializerMap index_initializers(onnx::GraphProto& graph) {
    InitializerMap initializers;
    for (onnx::TensorProto& initializer : *graph.mutable_initializer()) {
        initializers[initializer.name()] = &initializer;
    }
    return initializers;
}

// Reads the scale and zero point of `dequantize` for a quantized tensor of `shape` and `format`.
// Returns an empty string, or why the parameters cannot be used.
std::string read_dequantize_params(const onnx::NodeProto& dequantize,
                                   const InitializerMap& initializers,
                                   const std::vector<int64_t>& shape, const IntegerFormat& format,
                                   int32_t data_type, DequantizeParams& params) {
    const auto scale = initializers.find(dequantize.input(1));
    if (scale == initializers.end()) {
        return fmt::format("the scale '{}' is not an initializer", dequantize.input(1));
    }
    if (scale->second->data_type() != onnx::TensorProto::FLOAT) {
        return fmt::format("the scale '{}' is not float32", dequantize.input(1));
    }
    params.scale = read_float_tensor(*scale->second);
    if (dequantize.input_size() > 2 && !dequantize.input(2).empty()) {
        const auto zero_point = initializers.find(dequantize.input(2));
        if (zero_point == initializers.end()) {
            return fmt::format("the zero point '{}' is not an initializer", dequantize.input(2));
        }
        if (zero_point->second->data_type() != data_type) {
            return fmt::format("the zero point '{}' has another type than the quantized tensor",
                               dequantize.input(2));
        }
        params.zero_point = read_integer_tensor(*zero_point->second, format);
    } else {
        params.zero_point.assign(params.scale.size(), 0);  // ONNX's default zero point
    }
    if (params.scale.empty() || params.zero_point.size() != params.scale.size()) {
        return "the scale and zero point have different sizes";
    }
    for (const float value : params.scale) {
        if (!(value > 0.0f) || !std::isfinite(value)) {
            fail(ExitCode::kInvalidInput,
                 "DequantizeLinear node '{}' has scale {}; scales must be positive and finite, "
                 "so quantize the model again",
                 dequantize.name(), value);
        }
    }
    if (params.scale.size() > 1) {
        // DequantizeLinear's axis defaults to 1 and may count from the end.
        const auto rank = static_cast<int64_t>(shape.size());
        int64_t axis = 1;
        for (const onnx::AttributeProto& attribute : dequantize.attribute()) {
            if (attribute.name() == "axis") {
                axis = attribute.i();
            }
        }
        axis = axis < 0 ? axis + rank : axis;
        if (axis < 0 || axis >= rank ||
            shape[static_cast<size_t>(axis)] != static_cast<int64_t>(params.scale.size())) {
            return fmt::format("its {} scales do not match axis {} of the shape",
                               params.scale.size(), axis);
        }
        params.axis = axis;
        params.inner =
            std::accumulate(shape.begin() + axis + 1, shape.end(), int64_t{1}, std::multiplies<>());
    }
    return "";
}

// Returns [1, ..., channels at `axis`, ..., 1], the shape that spreads one value per entry of
// `params` over a tensor of rank `rank`. Per-tensor parameters get all ones.
std::vector<int64_t> broadcast_shape(const DequantizeParams& params, size_t rank) {
    std::vector<int64_t> shape(rank, 1);
    if (params.scale.size() > 1) {
        shape[static_cast<size_t>(params.axis)] = static_cast<int64_t>(params.scale.size());
    }
    return shape;
}

// ------------------------------------------------------------------------------------------------
// Layer plans: everything about one layer that is read from the two models

struct ConvGeometry {
    std::vector<int64_t> strides;
    std::vector<int64_t> dilations;
    std::vector<int64_t> pads;  // ONNX order: every spatial begin, then every spatial end
    std::string auto_pad = "NOTSET";
    int64_t group = 1;
};

struct LayerPlan {
    const onnx::NodeProto* node = nullptr;  // in the QDQ model
    LayerKind kind = LayerKind::kConv;
    std::string input;         // the tensor of the QDQ model the layer reads
    std::string float_output;  // the layer's output in the float model
    onnx::TensorProto* quantized_weight = nullptr;
    IntegerFormat format;
    std::vector<int64_t> weight_shape;
    std::vector<float> float_weight;
    DequantizeParams weight_params;
    std::optional<std::vector<float>> bias;  // dequantized, one value per output
    ConvGeometry conv;
    bool trans_b = false;  // Gemm: the weight is [out, in]
};

std::map<std::string, std::vector<const onnx::NodeProto*>> index_consumers(
    const onnx::GraphProto& graph) {
    std::map<std::string, std::vector<const onnx::NodeProto*>> consumers;
    for (const onnx::NodeProto& node : graph.node()) {
        for (const std::string& input : node.input()) {
            if (!input.empty()) {
                consumers[input].push_back(&node);
            }
        }
    }
    return consumers;
}

std::map<std::string, const onnx::NodeProto*> index_producers(const onnx::GraphProto& graph) {
    std::map<std::string, const onnx::NodeProto*> producers;
    for (const onnx::NodeProto& node : graph.node()) {
        for (const std::string& output : node.output()) {
            producers[output] = &node;
        }
    }
    return producers;
}

const onnx::AttributeProto* find_attribute(const onnx::NodeProto& node, const std::string& name) {
    for (const onnx::AttributeProto& attribute : node.attribute()) {
        if (attribute.name() == name) {
            return &attribute;
        }
    }
    return nullptr;
}

int64_t int_attribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    return attribute ? attribute->i() : fallback;
}

float float_attribute(const onnx::NodeProto& node, const std::string& name, float fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    return attribute ? attribute->f() : fallback;
}

std::vector<int64_t> ints_attribute(const onnx::NodeProto& node, const std::string& name,
                                    size_t count, int64_t fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    if (!attribute || attribute->ints_size() == 0) {
        return std::vector<int64_t>(count, fallback);
    }
    return {attribute->ints().begin(), attribute->ints().end()};
}

// Reads the Conv attributes for a weight of rank `weight_rank`; returns why they cannot be used,
// or an empty string.
std::string read_conv_geometry(const onnx::NodeProto& node, size_t weight_rank,
                               ConvGeometry& conv) {
    const size_t spatial = weight_rank - 2;
    conv.strides = ints_attribute(node, "strides", spatial, 1);
    conv.dilations = ints_attribute(node, "dilations", spatial, 1);
    conv.pads = ints_attribute(node, "pads", 2 * spatial, 0);
    conv.group = int_attribute(node, "group", 1);
    if (const onnx::AttributeProto* auto_pad = find_attribute(node, "auto_pad")) {
        conv.auto_pad = auto_pad->s();
    }
    if (conv.strides.size() != spatial || conv.dilations.size() != spatial ||
        conv.pads.size() != 2 * spatial) {
        return "its strides, dilations or pads do not match the weight's rank";
    }
    if (conv.auto_pad != "NOTSET" && conv.auto_pad != "VALID" && conv.auto_pad != "SAME_UPPER" &&
        conv.auto_pad != "SAME_LOWER") {
        return fmt::format("auto_pad '{}' is not an ONNX value", conv.auto_pad);
    }
    return "";
}

// Dequantizes the bias of `node` (input 2) from its DequantizeLinear, or reads it when it is a
// float initializer. Returns why it cannot be used, or an empty string.
std::string read_bias(const onnx::NodeProto& node, const InitializerMap& initializers,
                      const std::map<std::string, const onnx::NodeProto*>& producers,
                      std::optional<std::vector<float>>& bias) {
    if (node.input_size() < 3 || node.input(2).empty()) {
        return "";
    }
    const std::string& name = node.input(2);
    const auto initializer = initializers.find(name);
    if (initializer != initializers.end()) {
        if (initializer->second->data_type() != onnx::TensorProto::FLOAT) {
            return fmt::format("its bias '{}' is neither float nor dequantized", name);
        }
        bias = read_float_tensor(*initializer->second);
        return "";
    }
    const auto producer = producers.find(name);
    if (producer == producers.end() || producer->second->op_type() != "DequantizeLinear" ||
        !initializers.contains(producer->second->input(0))) {
        return fmt::format("its bias '{}' is not a constant", name);
    }
    const onnx::NodeProto& dequantize = *producer->second;
    const onnx::TensorProto& quantized = *initializers.at(dequantize.input(0));
    const std::optional<IntegerFormat> format = integer_format(quantized.data_type());
    if (!format) {
        return fmt::format("its bias '{}' has an integer type AdaRound does not read", name);
    }
    const std::vector<int64_t> shape(quantized.dims().begin(), quantized.dims().end());
    DequantizeParams params;
    const std::string problem = read_dequantize_params(dequantize, initializers, shape, *format,
                                                       quantized.data_type(), params);
    if (!problem.empty()) {
        return "its bias: " + problem;
    }
    const std::vector<int64_t> values = read_integer_tensor(quantized, *format);
    std::vector<float> dequantized(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        const size_t c = params.entry(i);
        dequantized[i] = static_cast<float>(values[i] - params.zero_point[c]) * params.scale[c];
    }
    bias = std::move(dequantized);
    return "";
}

// Reads the quantized weight of `plan.node` and its float original. Returns why the layer
// cannot be rounded, or an empty string.
std::string read_weight(const onnx::NodeProto& float_node, const onnx::GraphProto& float_graph,
                        const InitializerMap& initializers,
                        const std::map<std::string, const onnx::NodeProto*>& producers,
                        const std::map<std::string, std::vector<const onnx::NodeProto*>>& consumers,
                        LayerPlan& plan) {
    const onnx::NodeProto& node = *plan.node;
    const auto producer = producers.find(node.input(1));
    if (producer == producers.end() || producer->second->op_type() != "DequantizeLinear" ||
        !initializers.contains(producer->second->input(0))) {
        return "its weight is not a quantized initializer read through DequantizeLinear";
    }
    const onnx::NodeProto& dequantize = *producer->second;
    // A weight shared by several layers would be rounded for one of them and then again for the
    // next; it keeps its nearest rounding instead.
    if (consumers.at(node.input(1)).size() > 1 || consumers.at(dequantize.input(0)).size() > 1) {
        return fmt::format("its weight '{}' is shared with another node", dequantize.input(0));
    }
    plan.quantized_weight = initializers.at(dequantize.input(0));
    const std::optional<IntegerFormat> format = integer_format(plan.quantized_weight->data_type());
    if (!format) {
        return fmt::format("its weight '{}' has ONNX type {}, not an 8-, 16- or 32-bit integer",
                           plan.quantized_weight->name(), plan.quantized_weight->data_type());
    }
    plan.format = *format;
    plan.weight_shape.assign(plan.quantized_weight->dims().begin(),
                             plan.quantized_weight->dims().end());
    const std::string problem =
        read_dequantize_params(dequantize, initializers, plan.weight_shape, plan.format,
                               plan.quantized_weight->data_type(), plan.weight_params);
    if (!problem.empty()) {
        return "its weight: " + problem;
    }

    const onnx::TensorProto* float_weight = nullptr;
    for (const onnx::TensorProto& initializer : float_graph.initializer()) {
        if (float_node.input_size() > 1 && initializer.name() == float_node.input(1)) {
            float_weight = &initializer;
        }
    }
    if (float_weight == nullptr || float_weight->data_type() != onnx::TensorProto::FLOAT) {
        return "its weight in the float model is not a float initializer";
    }
    if (!std::equal(float_weight->dims().begin(), float_weight->dims().end(),
                    plan.weight_shape.begin(), plan.weight_shape.end())) {
        return fmt::format("its float weight '{}' and quantized weight '{}' differ in shape",
                           float_weight->name(), plan.quantized_weight->name());
    }
    plan.float_weight = read_float_tensor(*float_weight);
    return "";
}

// Reads the attributes that decide how the layer computes. Returns why AdaRound cannot replay
// the layer in libtorch, or an empty string.
std::string read_layer_attributes(LayerPlan& plan) {
    const onnx::NodeProto& node = *plan.node;
    const size_t weight_rank = plan.weight_shape.size();
    switch (plan.kind) {
        case LayerKind::kConv:
            if (weight_rank < 3) {
                return "its weight has fewer than 3 dimensions";
            }
            return read_conv_geometry(node, weight_rank, plan.conv);
        case LayerKind::kGemm: {
            const float alpha = float_attribute(node, "alpha", 1.0f);
            const float beta = float_attribute(node, "beta", 1.0f);
            if (int_attribute(node, "transA", 0) != 0 || alpha != 1.0f || beta != 1.0f) {
                return fmt::format(
                    "Gemm with transA {}, alpha {}, beta {}; AdaRound needs transA 0, alpha 1 "
                    "and beta 1",
                    int_attribute(node, "transA", 0), alpha, beta);
            }
            plan.trans_b = int_attribute(node, "transB", 0) != 0;
            if (weight_rank != 2) {
                return "its weight is not a matrix";
            }
            const int64_t outputs = plan.weight_shape[plan.trans_b ? 0 : 1];
            if (plan.bias && plan.bias->size() != static_cast<size_t>(outputs) &&
                plan.bias->size() != 1) {
                return "its bias C has neither one value nor one per output";
            }
            return "";
        }
        case LayerKind::kMatMul:
            if (weight_rank != 2) {
                return "its weight is not a matrix";
            }
            return "";
    }
    return "";
}

// Plans the rounding of one Conv, Gemm or MatMul node of the QDQ model. `plan.node` is always
// set. The returned string gives the reason to skip the layer, or is empty.
std::string plan_layer(const onnx::NodeProto& node, const onnx::GraphProto& float_graph,
                       const std::map<std::string, const onnx::NodeProto*>& float_nodes,
                       const InitializerMap& initializers,
                       const std::map<std::string, const onnx::NodeProto*>& producers,
                       const std::map<std::string, std::vector<const onnx::NodeProto*>>& consumers,
                       LayerPlan& plan) {
    plan.node = &node;
    plan.kind = node.op_type() == "Conv"   ? LayerKind::kConv
                : node.op_type() == "Gemm" ? LayerKind::kGemm
                                           : LayerKind::kMatMul;
    const auto float_node = float_nodes.find(node.name());
    if (node.name().empty() || float_node == float_nodes.end() ||
        float_node->second->op_type() != node.op_type()) {
        return "the float model has no node of that name and operator";
    }
    if (node.input_size() < 2) {
        return "it has no weight input";
    }
    plan.input = node.input(0);
    plan.float_output = float_node->second->output(0);

    std::string problem =
        read_weight(*float_node->second, float_graph, initializers, producers, consumers, plan);
    if (problem.empty() && plan.kind != LayerKind::kMatMul) {
        problem = read_bias(node, initializers, producers, plan.bias);
    }
    if (problem.empty()) {
        problem = read_layer_attributes(plan);
    }
    return problem;
}

// ------------------------------------------------------------------------------------------------
// Calibration data of one layer

// Passes on the batches of another reader up to `limit` samples, cutting the last batch short.
class FirstSamplesReader : public CalibrationDataReader {
  public:
    FirstSamplesReader(CalibrationDataReader& source, int64_t limit)
        : source_(source), limit_(limit) {}

    std::optional<CalibrationBatch> next() override {
        if (samples_done_ >= limit_) {
            return std::nullopt;
        }
        std::optional<CalibrationBatch> batch = source_.next();
        if (!batch) {
            return std::nullopt;
        }
        const int64_t count = batch->shape.front();
        const int64_t keep = std::min(count, limit_ - samples_done_);
        if (keep < count) {
            batch->values.resize(batch->values.size() / static_cast<size_t>(count) *
                                 static_cast<size_t>(keep));
            batch->shape.front() = keep;
        }
        samples_done_ += keep;
        return batch;
    }

    void rewind() override {
        source_.rewind();
        samples_done_ = 0;
    }

    int64_t sample_count() const override { return std::min(limit_, source_.sample_count()); }

  private:
    CalibrationDataReader& source_;
    int64_t limit_;
    int64_t samples_done_ = 0;
};

// One tensor over all collected samples, concatenated along the first (batch) dimension.
struct CollectedTensor {
    std::vector<int64_t> shape;
    std::vector<float> values;
};

CollectedTensor collect_tensor(const onnx::ModelProto& model, const std::string& tensor,
                               CalibrationDataReader& reader, const SessionConfig& session,
                               const std::string& label) {
    CollectedTensor collected;
    visit_calibration_outputs(
        model, {tensor}, reader, session, label, [&](size_t, const FloatOutput& output) {
            if (output.shape.empty()) {
                fail(ExitCode::kUnsupported,
                     "tensor '{}' of {} is a scalar; AdaRound needs a batch "
                     "dimension",
                     tensor, label);
            }
            if (collected.shape.empty()) {
                collected.shape = output.shape;
                collected.shape.front() = 0;
            } else if (!std::equal(output.shape.begin() + 1, output.shape.end(),
                                   collected.shape.begin() + 1, collected.shape.end())) {
                fail(ExitCode::kUnsupported,
                     "tensor '{}' of {} changes shape between batches; "
                     "AdaRound needs a fixed shape per sample",
                     tensor, label);
            }
            collected.shape.front() += output.shape.front();
            collected.values.insert(collected.values.end(), output.values.begin(),
                                    output.values.end());
        });
    return collected;
}

torch::Tensor as_tensor(CollectedTensor& collected) {
    // No copy: the tensor views the vector, which outlives every use in optimize_layer().
    return torch::from_blob(collected.values.data(), collected.shape, torch::kFloat32);
}

// ------------------------------------------------------------------------------------------------
// The layer in libtorch

// Resolves auto_pad and pads into explicit begin and end pads for an input of `input_shape`.
std::vector<int64_t> explicit_pads(const ConvGeometry& conv,
                                   const std::vector<int64_t>& input_shape,
                                   const std::vector<int64_t>& weight_shape) {
    const size_t spatial = weight_shape.size() - 2;
    if (conv.auto_pad == "NOTSET") {
        return conv.pads;
    }
    std::vector<int64_t> pads(2 * spatial, 0);
    if (conv.auto_pad == "VALID") {
        return pads;
    }
    // SAME_*: output size ceil(in / stride); the odd pixel of padding goes at the end (UPPER) or
    // at the beginning (LOWER).
    for (size_t d = 0; d < spatial; ++d) {
        const int64_t in = input_shape[d + 2];
        const int64_t out = (in + conv.strides[d] - 1) / conv.strides[d];
        const int64_t extent = (weight_shape[d + 2] - 1) * conv.dilations[d] + 1;
        const int64_t total = std::max<int64_t>(0, (out - 1) * conv.strides[d] + extent - in);
        const int64_t smaller = total / 2;
        pads[d] = conv.auto_pad == "SAME_UPPER" ? smaller : total - smaller;
        pads[d + spatial] = total - pads[d];
    }
    return pads;
}

// Replay settings of one layer: the dimension of the output channels, and for a Conv whose pads
// differ at the two ends, the explicit padding torch::constant_pad_nd adds first.
struct LayerReplay {
    std::vector<int64_t> conv_padding;   // symmetric part, per spatial dimension
    std::vector<int64_t> input_padding;  // torch::constant_pad_nd order; empty when symmetric
    int64_t channel_dimension = 1;
};

LayerReplay prepare_replay(const LayerPlan& plan, const std::vector<int64_t>& input_shape) {
    LayerReplay replay;
    if (plan.kind != LayerKind::kConv) {
        replay.channel_dimension = -1;  // Gemm and MatMul: the last dimension
        return replay;
    }
    const size_t spatial = plan.weight_shape.size() - 2;
    const std::vector<int64_t> pads = explicit_pads(plan.conv, input_shape, plan.weight_shape);
    bool symmetric = true;
    for (size_t d = 0; d < spatial; ++d) {
        symmetric = symmetric && pads[d] == pads[d + spatial];
    }
    if (symmetric) {
        replay.conv_padding.assign(pads.begin(), pads.begin() + static_cast<int64_t>(spatial));
        return replay;
    }
    // constant_pad_nd takes (begin, end) pairs from the last dimension to the first.
    replay.conv_padding.assign(spatial, 0);
    for (size_t d = spatial; d-- > 0;) {
        replay.input_padding.push_back(pads[d]);
        replay.input_padding.push_back(pads[d + spatial]);
    }
    return replay;
}

torch::Tensor run_layer(const LayerPlan& plan, const LayerReplay& replay, torch::Tensor input,
                        const torch::Tensor& weight, const torch::Tensor& bias) {
    switch (plan.kind) {
        case LayerKind::kConv: {
            if (!replay.input_padding.empty()) {
                input = torch::constant_pad_nd(input, replay.input_padding, 0.0);
            }
            const std::vector<int64_t> output_padding(replay.conv_padding.size(), 0);
            return torch::convolution(input, weight, bias, plan.conv.strides, replay.conv_padding,
                                      plan.conv.dilations, /*transposed=*/false, output_padding,
                                      plan.conv.group);
        }
        case LayerKind::kGemm: {
            torch::Tensor output =
                plan.trans_b ? torch::linear(input, weight) : torch::matmul(input, weight);
            return bias.defined() ? output + bias : output;
        }
        case LayerKind::kMatMul:
            return torch::matmul(input, weight);
    }
    return {};
}

// Mean squared error of the layer with `weight` against `target`, over all samples.
double output_mse(const LayerPlan& plan, const LayerReplay& replay, const torch::Tensor& inputs,
                  const torch::Tensor& targets, const torch::Tensor& weight,
                  const torch::Tensor& bias) {
    torch::NoGradGuard no_grad;
    double squared_error = 0;
    const int64_t count = inputs.size(0);
    for (int64_t first = 0; first < count; first += kEvaluationBatch) {
        const int64_t length = std::min(kEvaluationBatch, count - first);
        const torch::Tensor output =
            run_layer(plan, replay, inputs.narrow(0, first, length), weight, bias);
        squared_error += (output - targets.narrow(0, first, length))
                             .to(torch::kFloat64)
                             .pow(2)
                             .sum()
                             .item<double>();
    }
    return squared_error / static_cast<double>(targets.numel());
}

// ------------------------------------------------------------------------------------------------
// The optimization

// Beta of the regularizer at `iteration`: cosine decay from beta_start right after the warm-up
// to beta_end at the last iteration, as AMD Quark's AdaRound (quark.onnx.finetuning) does.
double annealed_beta(const AdaRoundOptions& options, int64_t iteration,
                     int64_t warm_up_iterations) {
    const double span = static_cast<double>(options.iterations - warm_up_iterations);
    const double progress = static_cast<double>(iteration - warm_up_iterations) / span;
    return options.beta_end + 0.5 * (options.beta_start - options.beta_end) *
                                  (1.0 + std::cos(std::numbers::pi * progress));
}

torch::Tensor rectified_sigmoid(const torch::Tensor& v) {
    return torch::clamp(torch::sigmoid(v) * (kZeta - kGamma) + kGamma, 0.0, 1.0);
}

// The weight in integer steps, prepared once per layer.
struct WeightSteps {
    std::vector<double> ratio;      // W / s per element
    torch::Tensor floor_plus_zero;  // floor(W / s) + z, weight-shaped
    torch::Tensor zero_point;       // broadcastable to the weight
    torch::Tensor scale;            // broadcastable to the weight
    std::vector<int64_t> nearest;   // round_half_to_even(W / s) + z, clamped
    // True when floor(W / s) + z or the step above it leaves [q_min, q_max] for some weight. When
    // false the soft weight needs no clamp: W~ = s * floor(W / s) + s * h(V), from `scaled_floor`.
    bool may_saturate = false;
    torch::Tensor scaled_floor;  // s * floor(W / s), weight-shaped
};

WeightSteps prepare_weight_steps(const LayerPlan& plan) {
    const DequantizeParams& params = plan.weight_params;
    WeightSteps steps;
    const size_t count = plan.float_weight.size();
    steps.ratio.resize(count);
    steps.nearest.resize(count);
    std::vector<float> floor_plus_zero(count);
    for (size_t i = 0; i < count; ++i) {
        const size_t c = params.entry(i);
        // Double keeps W / s exact enough that floor and nearest agree with the reference maths.
        steps.ratio[i] = double{plan.float_weight[i]} / double{params.scale[c]};
        const auto zero_point = static_cast<double>(params.zero_point[c]);
        floor_plus_zero[i] = static_cast<float>(std::floor(steps.ratio[i]) + zero_point);
        steps.may_saturate = steps.may_saturate ||
                             floor_plus_zero[i] < static_cast<float>(plan.format.min) ||
                             floor_plus_zero[i] + 1.0f > static_cast<float>(plan.format.max);
        steps.nearest[i] = std::clamp(
            static_cast<int64_t>(round_half_to_even(steps.ratio[i])) + params.zero_point[c],
            plan.format.min, plan.format.max);
    }
    const std::vector<int64_t> broadcast = broadcast_shape(params, plan.weight_shape.size());
    std::vector<float> zero_points(params.zero_point.begin(), params.zero_point.end());
    steps.floor_plus_zero = torch::tensor(floor_plus_zero).reshape(plan.weight_shape);
    steps.zero_point = torch::tensor(zero_points).reshape(broadcast);
    steps.scale = torch::tensor(params.scale).reshape(broadcast);
    steps.scaled_floor = steps.scale * (steps.floor_plus_zero - steps.zero_point);
    return steps;
}

// s * (clamp(integer, q_min, q_max) - z) for a weight-shaped tensor of integer steps.
torch::Tensor dequantize_steps(const LayerPlan& plan, const WeightSteps& steps,
                               const torch::Tensor& integer) {
    return steps.scale * (torch::clamp(integer, static_cast<double>(plan.format.min),
                                       static_cast<double>(plan.format.max)) -
                          steps.zero_point);
}

// The soft-quantized weight W~ = s * (clamp(floor(W / s) + h + z, q_min, q_max) - z). Without
// saturation it is one fused multiply-add, which matters for large weights: the element-wise
// work on the weight costs more than the matrix product in a Gemm of 1.4 million weights.
torch::Tensor soft_weight(const LayerPlan& plan, const WeightSteps& steps, const torch::Tensor& h) {
    if (!steps.may_saturate) {
        return torch::addcmul(steps.scaled_floor, h, steps.scale);
    }
    return dequantize_steps(plan, steps, steps.floor_plus_zero + h);
}

// V with h(V) = W / s - floor(W / s): the soft weight starts at the float weight.
torch::Tensor initial_rounding_variable(const LayerPlan& plan, const WeightSteps& steps) {
    std::vector<float> initial(steps.ratio.size());
    for (size_t i = 0; i < initial.size(); ++i) {
        const double rest = steps.ratio[i] - std::floor(steps.ratio[i]);  // in [0, 1)
        const double probability = (rest - kGamma) / (kZeta - kGamma);    // sigmoid(V)
        initial[i] = static_cast<float>(std::log(probability / (1.0 - probability)));
    }
    return torch::tensor(initial).reshape(plan.weight_shape);
}

// Learns V with Adam on random batches of the collected samples; returns the final V.
torch::Tensor learn_rounding(const LayerPlan& plan, const LayerReplay& replay,
                             const WeightSteps& steps, const torch::Tensor& inputs,
                             const torch::Tensor& targets, const torch::Tensor& bias,
                             const AdaRoundOptions& options, std::mt19937_64& generator) {
    torch::Tensor v = initial_rounding_variable(plan, steps).requires_grad_(true);
    torch::optim::Adam optimizer({v}, torch::optim::AdamOptions(options.learning_rate));

    const int64_t sample_count = inputs.size(0);
    const int64_t batch_size = std::min(options.batch_size, sample_count);
    const auto warm_up_iterations =
        static_cast<int64_t>(options.warm_up * static_cast<double>(options.iterations));
    std::vector<int64_t> order(static_cast<size_t>(sample_count));
    std::iota(order.begin(), order.end(), int64_t{0});
    int64_t position = sample_count;  // reshuffle before the first batch

    for (int64_t iteration = 0; iteration < options.iterations; ++iteration) {
        // Every sample once per pass, in a new seeded order for each pass.
        if (position + batch_size > sample_count) {
            shuffle_in_place(std::span<int64_t>(order), generator);
            position = 0;
        }
        const torch::Tensor indices =
            torch::from_blob(order.data() + position, {batch_size}, torch::kInt64);
        position += batch_size;
        const torch::Tensor input = inputs.index_select(0, indices);
        const torch::Tensor target = targets.index_select(0, indices);

        const torch::Tensor h = rectified_sigmoid(v);
        const torch::Tensor error =
            run_layer(plan, replay, input, soft_weight(plan, steps, h), bias) - target;
        // Squared error summed over the output channels and averaged over samples and positions,
        // the normalization AMD Quark's AdaRound pairs with lambda = 0.01. A plain mean would
        // divide the reconstruction term by the channel count and let the regularizer win.
        torch::Tensor loss = error.pow(2).sum(replay.channel_dimension).mean();
        if (iteration >= warm_up_iterations) {
            const double beta = annealed_beta(options, iteration, warm_up_iterations);
            // sum(1 - |2h - 1|^beta), written as count - sum(|2h - 1|^beta) to save a pass.
            const double count = static_cast<double>(h.numel());
            loss = loss + options.regularization * (count - (2.0 * h - 1.0).abs().pow(beta).sum());
        }
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
    }
    return v.detach();
}

// Runs AdaRound on one planned layer and rewrites its quantized weight.
void optimize_layer(const LayerPlan& plan, const onnx::ModelProto& float_model,
                    onnx::ModelProto& qdq_model, CalibrationDataReader& reader,
                    const SessionConfig& session, const AdaRoundOptions& options,
                    std::mt19937_64& generator, AdaRoundLayerReport& report) {
    CollectedTensor collected_inputs =
        collect_tensor(qdq_model, plan.input, reader, session, "AdaRound copy of the QDQ model");
    CollectedTensor collected_targets = collect_tensor(float_model, plan.float_output, reader,
                                                       session, "AdaRound copy of the float model");
    if (collected_inputs.shape.front() != collected_targets.shape.front()) {
        report.note = fmt::format(
            "its input has {} rows but its output {}; AdaRound needs one row per sample",
            collected_inputs.shape.front(), collected_targets.shape.front());
        return;
    }
    const torch::Tensor inputs = as_tensor(collected_inputs);
    const torch::Tensor targets = as_tensor(collected_targets);
    const LayerReplay replay = prepare_replay(plan, collected_inputs.shape);
    const WeightSteps steps = prepare_weight_steps(plan);
    torch::Tensor bias;
    if (plan.bias) {
        bias = torch::tensor(*plan.bias);
    }

    const std::vector<float> nearest_steps(steps.nearest.begin(), steps.nearest.end());
    const torch::Tensor nearest_weight =
        dequantize_steps(plan, steps, torch::tensor(nearest_steps).reshape(plan.weight_shape));
    report.nearest_mse = output_mse(plan, replay, inputs, targets, nearest_weight, bias);

    const torch::Tensor v =
        learn_rounding(plan, replay, steps, inputs, targets, bias, options, generator);

    // Hard rounding: up where h(V) >= 0.5, so every weight ends at floor or ceil of W / s.
    const torch::Tensor rounded =
        torch::clamp(steps.floor_plus_zero + (rectified_sigmoid(v) >= 0.5).to(torch::kFloat32),
                     static_cast<double>(plan.format.min), static_cast<double>(plan.format.max))
            .contiguous();
    const float* rounded_values = rounded.data_ptr<float>();
    std::vector<int64_t> quantized(steps.nearest.size());
    for (size_t i = 0; i < quantized.size(); ++i) {
        quantized[i] = static_cast<int64_t>(rounded_values[i]);
        report.flipped_weights += quantized[i] != steps.nearest[i] ? 1 : 0;
    }
    report.adaround_mse =
        output_mse(plan, replay, inputs, targets, dequantize_steps(plan, steps, rounded), bias);

    write_integer_tensor(*plan.quantized_weight, plan.format, quantized);
    report.samples = inputs.size(0);
    report.iterations = options.iterations;
    report.rounded = true;
}

void check_options(const AdaRoundOptions& options) {
    if (options.iterations < 1 || options.batch_size < 1 || options.max_samples < 1) {
        fail(ExitCode::kUsage,
             "AdaRound needs at least one iteration, batch size and sample (got iterations {}, "
             "batch size {}, samples {})",
             options.iterations, options.batch_size, options.max_samples);
    }
    if (!(options.regularization >= 0) || !std::isfinite(options.regularization) ||
        !(options.learning_rate > 0) || !std::isfinite(options.learning_rate)) {
        fail(ExitCode::kUsage,
             "AdaRound's regularization must be finite and non-negative and its learning rate "
             "finite and positive (got {} and {})",
             options.regularization, options.learning_rate);
    }
    if (!(options.beta_end > 0) || !(options.beta_start >= options.beta_end) ||
        !std::isfinite(options.beta_start) || !(options.warm_up >= 0) || !(options.warm_up < 1)) {
        fail(ExitCode::kUsage,
             "AdaRound needs beta_start >= beta_end > 0 and a warm-up fraction in [0, 1) (got "
             "beta {} to {}, warm-up {})",
             options.beta_start, options.beta_end, options.warm_up);
    }
}

}  // namespace

AdaRoundReport adaround_weights(const onnx::ModelProto& float_model, onnx::ModelProto& qdq_model,
                                CalibrationDataReader& reader, const SessionConfig& session,
                                const AdaRoundOptions& options,
                                const std::function<void(const AdaRoundLayerReport&)>& on_layer) {
    check_options(options);
    const auto start = std::chrono::steady_clock::now();
    torch::manual_seed(options.seed);
    std::mt19937_64 generator(options.seed);
    FirstSamplesReader samples(reader, options.max_samples);

    std::map<std::string, const onnx::NodeProto*> float_nodes;
    for (const onnx::NodeProto& node : float_model.graph().node()) {
        float_nodes[node.name()] = &node;
    }

    AdaRoundReport report;
    onnx::GraphProto& graph = *qdq_model.mutable_graph();
    for (const onnx::NodeProto& node : graph.node()) {
        if (node.op_type() != "Conv" && node.op_type() != "Gemm" && node.op_type() != "MatMul") {
            continue;
        }
        const auto layer_start = std::chrono::steady_clock::now();
        // Indexed again for every layer: pointers into the graph stay valid because the pass only
        // rewrites initializer contents, never adds or removes graph elements.
        const InitializerMap initializers = index_initializers(graph);
        AdaRoundLayerReport layer;
        layer.node = node.name();
        layer.op_type = node.op_type();
        LayerPlan plan;
        layer.note = plan_layer(node, float_model.graph(), float_nodes, initializers,
                                index_producers(graph), index_consumers(graph), plan);
        if (plan.quantized_weight != nullptr) {
            layer.weight = plan.quantized_weight->name();
            layer.weight_count = static_cast<int64_t>(plan.float_weight.size());
        }
        if (layer.note.empty()) {
            optimize_layer(plan, float_model, qdq_model, samples, session, options, generator,
                           layer);
        }
        layer.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - layer_start).count();
        if (on_layer) {
            on_layer(layer);
        }
        report.layers.push_back(std::move(layer));
    }
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
}

}  // namespace edgeq
