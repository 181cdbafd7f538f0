#include "edgeq/quant/quant_report.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {

namespace {

using json = nlohmann::ordered_json;

// Operators whose input 1 is a weight and input 2 an optional bias.
const std::set<std::string> kWeightedOps = {"Conv", "Gemm", "MatMul"};

// ---------------------------------------------------------------------------------------------
// Reading the QDQ model

struct GraphIndex {
    std::map<std::string, const onnx::TensorProto*> initializers;
    std::map<std::string, int> producer;                // tensor -> node index
    std::map<std::string, std::vector<int>> consumers;  // tensor -> node indices
    std::set<std::string> graph_inputs;
    std::set<std::string> graph_outputs;
};

GraphIndex index_graph(const onnx::GraphProto& graph) {
    GraphIndex index;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        index.initializers[initializer.name()] = &initializer;
    }
    for (int n = 0; n < graph.node_size(); ++n) {
        for (const std::string& output : graph.node(n).output()) {
            index.producer[output] = n;
        }
        for (const std::string& input : graph.node(n).input()) {
            if (!input.empty()) {
                index.consumers[input].push_back(n);
            }
        }
    }
    for (const onnx::ValueInfoProto& input : graph.input()) {
        index.graph_inputs.insert(input.name());
    }
    for (const onnx::ValueInfoProto& output : graph.output()) {
        index.graph_outputs.insert(output.name());
    }
    return index;
}

const std::vector<int>& consumers_of(const GraphIndex& index, const std::string& tensor) {
    static const std::vector<int> kNone;
    const auto found = index.consumers.find(tensor);
    return found == index.consumers.end() ? kNone : found->second;
}

const onnx::NodeProto* producer_node(const onnx::GraphProto& graph, const GraphIndex& index,
                                     const std::string& tensor) {
    const auto found = index.producer.find(tensor);
    return found == index.producer.end() ? nullptr : &graph.node(found->second);
}

std::string serialize(const onnx::ModelProto& model) {
    std::string bytes;
    model.SerializeToString(&bytes);
    return bytes;
}

std::optional<std::string> strip_suffix(const std::string& text, const std::string& suffix) {
    if (text.size() > suffix.size() && text.ends_with(suffix)) {
        return text.substr(0, text.size() - suffix.size());
    }
    return std::nullopt;
}

// Name of the float model's initializer behind a DequantizeLinear of a stored initializer. In
// edgeq's layout node `W_DequantizeLinear` reads `W_quantized` and writes
// `W_DequantizeLinear_Output`; ONNX Runtime's quantizer uses the same names.
std::string float_initializer_name(const onnx::NodeProto& dequantize,
                                   const std::set<std::string>& float_initializers) {
    const std::optional<std::string> candidates[] = {
        strip_suffix(dequantize.input(0), "_quantized"),
        strip_suffix(dequantize.name(), "_DequantizeLinear"),
        strip_suffix(dequantize.output(0), "_DequantizeLinear_Output"),
    };
    for (const std::optional<std::string>& candidate : candidates) {
        if (candidate && float_initializers.contains(*candidate)) {
            return *candidate;
        }
    }
    fail(ExitCode::kInvalidInput,
         "DequantizeLinear node '{}' reads initializer '{}', but the float model has no matching "
         "initializer (expected '{}'); pass the float model the QDQ model was made from",
         dequantize.name(), dequantize.input(0),
         candidates[0].value_or(dequantize.input(0) + " without _quantized"));
}

// Name in the float model of the activation a Q/DQ pair quantizes: the QuantizeLinear's input,
// except for a graph output, whose final DequantizeLinear keeps the name (the producer then
// writes `<name>_float`).
std::string activation_float_name(const GraphIndex& index, const onnx::NodeProto& quantize,
                                  const onnx::NodeProto& dequantize) {
    return index.graph_outputs.contains(dequantize.output(0)) ? dequantize.output(0)
                                                              : quantize.input(0);
}

// The QuantizeLinear that feeds `dequantize`, or nullptr when it reads an initializer. Fails for
// any other input, which edgeq's layout never has.
const onnx::NodeProto* feeding_quantize(const onnx::GraphProto& graph, const GraphIndex& index,
                                        const onnx::NodeProto& dequantize) {
    const std::string& input = dequantize.input(0);
    if (index.initializers.contains(input)) {
        return nullptr;
    }
    const onnx::NodeProto* producer = producer_node(graph, index, input);
    if (producer == nullptr || producer->op_type() != "QuantizeLinear") {
        fail(ExitCode::kUnsupported,
             "DequantizeLinear node '{}' reads '{}', which is neither an initializer nor a "
             "QuantizeLinear output; only QDQ models with Q/DQ pairs can be measured",
             dequantize.name(), input);
    }
    return producer;
}

// Reads an integer initializer of a type that a zero point or a quantized initializer can have.
// Without raw_data, ONNX stores all of these types in int32_data.
std::vector<int64_t> read_integer_tensor(const onnx::TensorProto& tensor) {
    const auto count = static_cast<size_t>(element_count(tensor.dims()));
    size_t element_size = 0;
    switch (tensor.data_type()) {
        case onnx::TensorProto::UINT8:
        case onnx::TensorProto::INT8:
            element_size = 1;
            break;
        case onnx::TensorProto::UINT16:
        case onnx::TensorProto::INT16:
            element_size = 2;
            break;
        case onnx::TensorProto::INT32:
            element_size = 4;
            break;
        default:
            fail(ExitCode::kUnsupported,
                 "initializer '{}' has ONNX data type {}; quantized values must be UINT8, INT8, "
                 "UINT16, INT16 or INT32",
                 tensor.name(), tensor.data_type());
    }

    std::vector<int64_t> values(count);
    if (!tensor.has_raw_data()) {
        if (static_cast<size_t>(tensor.int32_data_size()) != count) {
            fail(ExitCode::kInvalidInput, "initializer '{}' holds {} values for a shape of {}",
                 tensor.name(), tensor.int32_data_size(), count);
        }
        std::copy(tensor.int32_data().begin(), tensor.int32_data().end(), values.begin());
        return values;
    }
    const std::string& raw = tensor.raw_data();
    if (raw.size() != count * element_size) {
        fail(ExitCode::kInvalidInput, "initializer '{}' holds {} bytes for {} values of {} bytes",
             tensor.name(), raw.size(), count, element_size);
    }
    // ONNX raw_data is little-endian, like every host edgeq builds for.
    for (size_t i = 0; i < count; ++i) {
        const char* bytes = raw.data() + i * element_size;
        switch (tensor.data_type()) {
            case onnx::TensorProto::UINT8:
                values[i] = static_cast<uint8_t>(*bytes);
                break;
            case onnx::TensorProto::INT8:
                values[i] = static_cast<int8_t>(*bytes);
                break;
            case onnx::TensorProto::UINT16: {
                uint16_t value = 0;
                std::memcpy(&value, bytes, sizeof(value));
                values[i] = value;
                break;
            }
            case onnx::TensorProto::INT16: {
                int16_t value = 0;
                std::memcpy(&value, bytes, sizeof(value));
                values[i] = value;
                break;
            }
            default: {
                int32_t value = 0;
                std::memcpy(&value, bytes, sizeof(value));
                values[i] = value;
                break;
            }
        }
    }
    return values;
}

// Name and integer range [q_min, q_max] of the ONNX type of a zero point.
struct IntegerType {
    const char* name;
    int64_t q_min;
    int64_t q_max;
};

IntegerType integer_type(int onnx_type, const onnx::NodeProto& node) {
    switch (onnx_type) {
        case onnx::TensorProto::UINT8:
            return {"UINT8", 0, 255};
        case onnx::TensorProto::INT8:
            return {"INT8", -128, 127};
        case onnx::TensorProto::UINT16:
            return {"UINT16", 0, 65535};
        case onnx::TensorProto::INT16:
            return {"INT16", -32768, 32767};
        case onnx::TensorProto::INT32:
            return {"INT32", std::numeric_limits<int32_t>::min(),
                    std::numeric_limits<int32_t>::max()};
        default:
            fail(ExitCode::kUnsupported,
                 "node '{}' quantizes to ONNX data type {}; only UINT8, INT8, UINT16, INT16 and "
                 "INT32 can be measured",
                 node.name(), onnx_type);
    }
}

// Reads the scale, zero point and axis of a DequantizeLinear node from its initializers.
TensorQuantization read_quantization(const onnx::NodeProto& dequantize, const GraphIndex& index) {
    TensorQuantization result;
    const std::string& scale_name = dequantize.input(1);
    if (!index.initializers.contains(scale_name)) {
        fail(ExitCode::kUnsupported,
             "node '{}' reads its scale '{}' from another node; only scales stored as "
             "initializers can be measured",
             dequantize.name(), scale_name);
    }
    const onnx::TensorProto& scale = *index.initializers.at(scale_name);
    const bool has_zero_point = dequantize.input_size() > 2 && !dequantize.input(2).empty();
    if (has_zero_point && !index.initializers.contains(dequantize.input(2))) {
        fail(ExitCode::kUnsupported,
             "node '{}' reads its zero point '{}' from another node; only zero points stored as "
             "initializers can be measured",
             dequantize.name(), dequantize.input(2));
    }

    // ONNX: without a zero point the quantized type is uint8 with zero point 0.
    const onnx::TensorProto* zero_point =
        has_zero_point ? index.initializers.at(dequantize.input(2)) : nullptr;
    const IntegerType type =
        integer_type(zero_point ? zero_point->data_type() : onnx::TensorProto::UINT8, dequantize);
    result.type = type.name;
    result.q_min = type.q_min;
    result.q_max = type.q_max;
    result.scales = read_float_tensor(scale);
    result.zero_points = zero_point ? read_integer_tensor(*zero_point)
                                    : std::vector<int64_t>(result.scales.size(), 0);
    if (scale.dims_size() > 1 || result.zero_points.size() != result.scales.size()) {
        fail(ExitCode::kInvalidInput,
             "node '{}' has {} scales of rank {} and {} zero points; expected a scalar or 1-D "
             "scale and as many zero points",
             dequantize.name(), result.scales.size(), scale.dims_size(), result.zero_points.size());
    }
    result.per_channel = scale.dims_size() == 1;
    result.axis = 1;  // the ONNX default of DequantizeLinear
    for (const onnx::AttributeProto& attribute : dequantize.attribute()) {
        if (attribute.name() == "axis") {
            result.axis = attribute.i();
        }
    }

    bool powers_of_two = true;
    for (const float value : result.scales) {
        if (!(value > 0.0f) || !std::isfinite(value)) {
            fail(ExitCode::kInvalidInput, "node '{}' has scale {}; scales must be positive",
                 dequantize.name(), value);
        }
        int exponent = 0;
        powers_of_two = powers_of_two && std::frexp(value, &exponent) == 0.5f;
        // value = 0.5 * 2^exponent = 2^-(1 - exponent)
        result.positions.push_back(1 - exponent);
    }
    if (!powers_of_two) {
        result.positions.clear();
    }
    return result;
}

// Maps a row-major flat index to its channel along the quantization axis: (i / inner) % channels,
// with inner the product of the dimensions after the axis. Per-tensor: always channel 0.
struct ChannelIndexer {
    size_t inner = 1;
    size_t channels = 1;
    size_t channel(size_t index) const { return (index / inner) % channels; }
};

ChannelIndexer make_channel_indexer(TensorQuantization& quantization,
                                    const std::vector<int64_t>& shape, const std::string& tensor) {
    ChannelIndexer indexer;
    if (!quantization.per_channel) {
        return indexer;
    }
    const auto rank = static_cast<int64_t>(shape.size());
    const int64_t axis = quantization.axis < 0 ? quantization.axis + rank : quantization.axis;
    if (axis < 0 || axis >= rank ||
        shape[static_cast<size_t>(axis)] != static_cast<int64_t>(quantization.scales.size())) {
        fail(ExitCode::kInvalidInput,
             "tensor '{}' of shape [{}] is quantized per channel along axis {} with {} scales; "
             "the axis must exist and have one scale per index",
             tensor, fmt::join(shape, ", "), quantization.axis, quantization.scales.size());
    }
    quantization.axis = axis;
    indexer.channels = quantization.scales.size();
    for (int64_t d = axis + 1; d < rank; ++d) {
        indexer.inner *= static_cast<size_t>(shape[static_cast<size_t>(d)]);
    }
    return indexer;
}

// A tensor quantized in the QDQ model.
struct QuantizedSite {
    std::string float_name;
    std::string role;
    std::string dequantized;  // the DequantizeLinear output, read by the float operators
    std::string stored;       // the integer initializer, for weights and biases
    TensorQuantization quantization;
};

// Role of an initializer from the node that reads its dequantized values.
std::string initializer_role(const onnx::GraphProto& graph, const GraphIndex& index,
                             const std::string& dequantized) {
    for (const int n : consumers_of(index, dequantized)) {
        const onnx::NodeProto& node = graph.node(n);
        if (!kWeightedOps.contains(node.op_type())) {
            continue;
        }
        if (node.input_size() > 1 && node.input(1) == dequantized) {
            return "weight";
        }
        if (node.input_size() > 2 && node.input(2) == dequantized) {
            return "bias";
        }
    }
    return "constant";
}

std::set<std::string> initializer_names(const onnx::GraphProto& graph) {
    std::set<std::string> names;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        names.insert(initializer.name());
    }
    return names;
}

// Names of every tensor the float model computes or takes as input.
std::set<std::string> float_tensor_names(const onnx::GraphProto& graph) {
    std::set<std::string> names;
    for (const onnx::ValueInfoProto& input : graph.input()) {
        names.insert(input.name());
    }
    for (const onnx::NodeProto& node : graph.node()) {
        names.insert(node.output().begin(), node.output().end());
    }
    return names;
}

// Lists the quantized tensors of `qdq_model`: activations in graph order, then initializers.
std::vector<QuantizedSite> find_quantized_tensors(const onnx::ModelProto& float_model,
                                                  const onnx::ModelProto& qdq_model) {
    const onnx::GraphProto& graph = qdq_model.graph();
    const GraphIndex index = index_graph(graph);
    const std::set<std::string> float_initializers = initializer_names(float_model.graph());
    const std::set<std::string> float_tensors = float_tensor_names(float_model.graph());

    std::vector<QuantizedSite> activations;
    std::vector<QuantizedSite> initializers;
    std::set<const onnx::NodeProto*> seen_quantize;
    for (const onnx::NodeProto& node : graph.node()) {
        if (node.op_type() != "DequantizeLinear") {
            continue;
        }
        if (node.input_size() < 2) {
            fail(ExitCode::kInvalidInput, "DequantizeLinear node '{}' has no scale input",
                 node.name());
        }
        QuantizedSite site;
        site.dequantized = node.output(0);
        site.quantization = read_quantization(node, index);

        const onnx::NodeProto* quantize = feeding_quantize(graph, index, node);
        if (quantize == nullptr) {
            site.float_name = float_initializer_name(node, float_initializers);
            site.role = initializer_role(graph, index, site.dequantized);
            site.stored = node.input(0);
            initializers.push_back(std::move(site));
            continue;
        }
        if (!seen_quantize.insert(quantize).second) {
            continue;  // another DequantizeLinear of the same QuantizeLinear: the same tensor
        }
        site.float_name = activation_float_name(index, *quantize, node);
        site.role = "activation";
        if (!float_tensors.contains(site.float_name)) {
            fail(ExitCode::kInvalidInput,
                 "QuantizeLinear node '{}' quantizes '{}', which the float model does not "
                 "compute; pass the float model the QDQ model was made from",
                 quantize->name(), site.float_name);
        }
        activations.push_back(std::move(site));
    }
    activations.insert(activations.end(), std::make_move_iterator(initializers.begin()),
                       std::make_move_iterator(initializers.end()));
    return activations;
}

// ---------------------------------------------------------------------------------------------
// Error sums

// One value quantized and dequantized as ONNX Runtime's QuantizeLinear and DequantizeLinear do it,
// in float: q = saturate(round_half_to_even(x / s) + z), x_q = (q - z) s.
struct FakeQuantized {
    float value = 0;         // x_q
    bool saturated = false;  // round_half_to_even(x / s) + z fell outside [q_min, q_max]
};

FakeQuantized quantize_dequantize(float value, float scale, int64_t zero_point, int64_t q_min,
                                  int64_t q_max) {
    const double rounded = std::nearbyint(value / scale);  // ties to even in the default mode
    const double unsaturated = rounded + static_cast<double>(zero_point);
    const double quantized =
        std::clamp(unsaturated, static_cast<double>(q_min), static_cast<double>(q_max));
    return {static_cast<float>(quantized - static_cast<double>(zero_point)) * scale,
            quantized != unsaturated};
}

// Sums over every element of a tensor, in double, in element order.
struct ErrorSums {
    int64_t count = 0;
    int64_t clipped = 0;
    double signal = 0;       // sum x^2
    double error = 0;        // sum (x - x_q)^2, x_q from the QDQ model
    double local_error = 0;  // sum (x - x_local)^2, x_local quantized with the tensor's own scale
    double min = std::numeric_limits<double>::infinity();
    double max = -std::numeric_limits<double>::infinity();
};

double sqnr_db(double signal, double error) {
    if (error == 0.0) {
        return std::numeric_limits<double>::infinity();
    }
    return 10.0 * std::log10(signal / error);  // -infinity when the signal is zero
}

// Adds one batch of a tensor: `reference` from the float model, `quantized` its dequantized
// values (nullptr for an initializer, whose local error is its error).
void add_values(const std::string& tensor, TensorQuantization& quantization,
                const std::vector<int64_t>& shape, const std::vector<float>& reference,
                const float* quantized, ErrorSums& sums) {
    const ChannelIndexer indexer = make_channel_indexer(quantization, shape, tensor);
    for (size_t i = 0; i < reference.size(); ++i) {
        const size_t c = indexer.channel(i);
        const float x = reference[i];
        const FakeQuantized local =
            quantize_dequantize(x, quantization.scales[c], quantization.zero_points[c],
                                quantization.q_min, quantization.q_max);
        const float x_q = quantized != nullptr ? quantized[i] : local.value;
        if (!std::isfinite(x) || !std::isfinite(x_q)) {
            fail(ExitCode::kInvalidInput,
                 "tensor '{}' has a non-finite value ({} in the float model, {} quantized); check "
                 "the models and the data",
                 tensor, x, x_q);
        }
        const double error = double{x} - double{x_q};
        const double local_error = double{x} - double{local.value};
        sums.signal += double{x} * double{x};
        sums.error += error * error;
        sums.local_error += local_error * local_error;
        sums.clipped += local.saturated ? 1 : 0;
        sums.min = std::min(sums.min, double{x});
        sums.max = std::max(sums.max, double{x});
    }
    sums.count += static_cast<int64_t>(reference.size());
}

TensorError finish_tensor(const QuantizedSite& site, const ErrorSums& sums) {
    TensorError result;
    result.name = site.float_name;
    result.role = site.role;
    result.quantization = site.quantization;
    result.element_count = sums.count;
    if (sums.count == 0) {
        return result;
    }
    const auto count = static_cast<double>(sums.count);
    result.min = static_cast<float>(sums.min);
    result.max = static_cast<float>(sums.max);
    result.clipped_share = static_cast<double>(sums.clipped) / count;
    result.sqnr_db = sqnr_db(sums.signal, sums.error);
    result.mean_squared_error = sums.error / count;
    result.local_sqnr_db = sqnr_db(sums.signal, sums.local_error);
    result.local_mean_squared_error = sums.local_error / count;
    return result;
}

// Compares a float initializer with the dequantized values of its stored integers.
TensorError measure_initializer(QuantizedSite site, const onnx::TensorProto& reference,
                                const onnx::TensorProto& stored) {
    const std::vector<float> values = read_float_tensor(reference);
    const std::vector<int64_t> integers = read_integer_tensor(stored);
    const std::vector<int64_t> shape(reference.dims().begin(), reference.dims().end());
    const std::vector<int64_t> stored_shape(stored.dims().begin(), stored.dims().end());
    if (shape != stored_shape) {
        fail(ExitCode::kInvalidInput,
             "quantized initializer '{}' has shape [{}] but float initializer '{}' has shape [{}]; "
             "pass the float model the QDQ model was made from",
             stored.name(), fmt::join(stored_shape, ", "), reference.name(),
             fmt::join(shape, ", "));
    }

    // x_q = (q - z) s, in float as ONNX Runtime's DequantizeLinear computes it.
    const ChannelIndexer indexer = make_channel_indexer(site.quantization, shape, site.float_name);
    std::vector<float> dequantized(integers.size());
    for (size_t i = 0; i < integers.size(); ++i) {
        const size_t c = indexer.channel(i);
        dequantized[i] = static_cast<float>(integers[i] - site.quantization.zero_points[c]) *
                         site.quantization.scales[c];
    }

    ErrorSums sums;
    add_values(site.float_name, site.quantization, shape, values, dequantized.data(), sums);
    // An initializer inherits no error, so its local error is the error of its stored integers.
    sums.local_error = sums.error;
    return finish_tensor(site, sums);
}

// A copy of `model` with `tensor_names` added as float graph outputs.
std::string serialize_with_outputs(const onnx::ModelProto& model,
                                   const std::vector<std::string>& tensor_names) {
    onnx::ModelProto augmented = model;
    std::set<std::string> outputs;
    for (const onnx::ValueInfoProto& output : augmented.graph().output()) {
        outputs.insert(output.name());
    }
    for (const std::string& name : tensor_names) {
        if (outputs.insert(name).second) {
            onnx::ValueInfoProto* output = augmented.mutable_graph()->add_output();
            output->set_name(name);
            output->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
        }
    }
    return serialize(augmented);
}

// Passes the batches of another reader through and keeps the last one, so that a second model
// can run on the batch the first one is running on.
class BatchRecorder : public CalibrationDataReader {
  public:
    explicit BatchRecorder(CalibrationDataReader& source) : source_(source) {}
    std::optional<CalibrationBatch> next() override {
        last_ = source_.next();
        return last_;
    }
    void rewind() override {
        source_.rewind();
        last_.reset();
    }
    int64_t sample_count() const override { return source_.sample_count(); }
    const CalibrationBatch& last() const { return *last_; }

  private:
    CalibrationDataReader& source_;
    std::optional<CalibrationBatch> last_;
};

// Streams the activations of both models batch by batch: the float model through
// visit_calibration_outputs, the QDQ model on the same batch as soon as its first tensor arrives.
// Pairing the two element by element needs both outputs of a batch at once, and this way neither
// model's outputs are kept beyond one batch.
// NOTE: ONNX Runtime does not fuse a Q/DQ pair whose DequantizeLinear output is a graph output
// into an integer kernel (QLinearConv and the like), so these values can come from float
// operators where an ordinary session would run integer kernels. The two agree up to float
// rounding of the accumulation. For the trained FashionCNN (XINT8, ONNX Runtime 1.30, CPU) the
// logits' SQNR on the 5,000 calibration images was 23.99 dB both ways.
std::vector<TensorError> measure_activations(
    const onnx::ModelProto& float_model, const onnx::ModelProto& qdq_model,
    std::vector<QuantizedSite>& sites, CalibrationDataReader& reader, const SessionConfig& session,
    const std::function<void(int64_t, int64_t)>& on_batch) {
    std::vector<std::string> float_names;
    std::vector<std::string> dequantized_names;
    for (const QuantizedSite& site : sites) {
        float_names.push_back(site.float_name);
        dequantized_names.push_back(site.dequantized);
    }
    OrtModel qdq_runner(serialize_with_outputs(qdq_model, dequantized_names),
                        "QDQ model with exposed activations", session);

    BatchRecorder recorder(reader);
    std::vector<FloatOutput> quantized_outputs;
    std::vector<ErrorSums> sums(sites.size());
    visit_calibration_outputs(
        float_model, float_names, recorder, session, "float model with exposed activations",
        [&](size_t t, const FloatOutput& reference) {
            if (t == 0) {
                const CalibrationBatch& batch = recorder.last();
                quantized_outputs = qdq_runner.run(batch.values, batch.shape, dequantized_names);
            }
            const FloatOutput& quantized = quantized_outputs[t];
            if (quantized.shape != reference.shape) {
                fail(ExitCode::kInvalidInput,
                     "tensor '{}' has shape [{}] in the float model but [{}] in the QDQ model "
                     "('{}'); pass the float model the QDQ model was made from",
                     float_names[t], fmt::join(reference.shape, ", "),
                     fmt::join(quantized.shape, ", "), dequantized_names[t]);
            }
            add_values(float_names[t], sites[t].quantization, reference.shape, reference.values,
                       quantized.values.data(), sums[t]);
        },
        on_batch);

    std::vector<TensorError> results;
    for (size_t t = 0; t < sites.size(); ++t) {
        results.push_back(finish_tensor(sites[t], sums[t]));
    }
    return results;
}

// ---------------------------------------------------------------------------------------------
// Single-layer models

// The quantization kept when only one layer is quantized: node indices of the QDQ graph, and the
// float-model names of the tensors these nodes quantize.
struct SingleLayerPlan {
    std::set<int> kept_nodes;
    std::vector<std::string> quantized_tensors;
};

int find_layer(const onnx::GraphProto& graph, const std::string& layer) {
    for (int n = 0; n < graph.node_size(); ++n) {
        if (graph.node(n).name() != layer) {
            continue;
        }
        if (!kWeightedOps.contains(graph.node(n).op_type())) {
            fail(ExitCode::kUsage, "node '{}' is a {}, not a Conv, Gemm or MatMul layer", layer,
                 graph.node(n).op_type());
        }
        return n;
    }
    fail(ExitCode::kUsage, "the QDQ model has no node named '{}'", layer);
}

SingleLayerPlan plan_single_layer(const onnx::GraphProto& graph, const GraphIndex& index,
                                  const std::set<std::string>& float_initializers, int layer_node) {
    SingleLayerPlan plan;
    const onnx::NodeProto& layer = graph.node(layer_node);

    // A Q/DQ pair stays whole: the QuantizeLinear and every DequantizeLinear of its output.
    auto keep_pair = [&](int quantize_node) {
        const onnx::NodeProto& quantize = graph.node(quantize_node);
        plan.kept_nodes.insert(quantize_node);
        std::string name = quantize.input(0);
        for (const int consumer : consumers_of(index, quantize.output(0))) {
            if (graph.node(consumer).op_type() == "DequantizeLinear") {
                plan.kept_nodes.insert(consumer);
                name = activation_float_name(index, quantize, graph.node(consumer));
            }
        }
        plan.quantized_tensors.push_back(name);
    };

    // The input activation's pair.
    if (const onnx::NodeProto* dequantize = producer_node(graph, index, layer.input(0));
        dequantize != nullptr && dequantize->op_type() == "DequantizeLinear") {
        if (const onnx::NodeProto* quantize = feeding_quantize(graph, index, *dequantize)) {
            keep_pair(index.producer.at(quantize->output(0)));
        }
    }

    // The weight and bias DequantizeLinear nodes.
    for (int i = 1; i < std::min(layer.input_size(), 3); ++i) {
        const onnx::NodeProto* dequantize = producer_node(graph, index, layer.input(i));
        if (dequantize != nullptr && dequantize->op_type() == "DequantizeLinear" &&
            feeding_quantize(graph, index, *dequantize) == nullptr) {
            plan.kept_nodes.insert(index.producer.at(layer.input(i)));
            plan.quantized_tensors.push_back(
                float_initializer_name(*dequantize, float_initializers));
        }
    }

    // The output's pair, after the Relu when the layer's only consumer is one (fused on the NPU).
    std::string output = layer.output(0);
    const std::vector<int>& output_readers = consumers_of(index, output);
    if (output_readers.size() == 1 && graph.node(output_readers.front()).op_type() == "Relu") {
        output = graph.node(output_readers.front()).output(0);
    }
    for (const int reader : consumers_of(index, output)) {
        if (graph.node(reader).op_type() == "QuantizeLinear") {
            keep_pair(reader);
        }
    }
    return plan;
}

// Follows renames until a tensor that is not renamed.
std::string resolve(const std::map<std::string, std::string>& renames, std::string tensor) {
    for (auto found = renames.find(tensor); found != renames.end(); found = renames.find(tensor)) {
        tensor = found->second;
    }
    return tensor;
}

onnx::NodeProto make_identity(const std::string& name, const std::string& input,
                              const std::string& output) {
    onnx::NodeProto node;
    node.set_op_type("Identity");
    node.set_name(name);
    node.add_input(input);
    node.add_output(output);
    return node;
}

// Rewrites `qdq_model` so that only the nodes of `plan` quantize anything.
onnx::ModelProto build_single_layer_model(const onnx::ModelProto& float_model,
                                          const onnx::ModelProto& qdq_model,
                                          const GraphIndex& index, const SingleLayerPlan& plan) {
    const onnx::GraphProto& graph = qdq_model.graph();
    std::map<std::string, const onnx::TensorProto*> float_initializers;
    for (const onnx::TensorProto& initializer : float_model.graph().initializer()) {
        float_initializers[initializer.name()] = &initializer;
    }
    std::set<std::string> float_initializer_set;
    for (const auto& [name, tensor] : float_initializers) {
        float_initializer_set.insert(name);
    }

    // Consumers of a bypassed DequantizeLinear read the QuantizeLinear's float input or the float
    // initializer instead. A graph output keeps its name through an Identity node.
    std::map<std::string, std::string> renames;
    std::map<int, onnx::NodeProto> identities;  // node index -> the node that replaces it
    std::set<int> removed;
    std::vector<std::string> restored_initializers;
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        if (plan.kept_nodes.contains(n)) {
            continue;
        }
        if (node.op_type() == "QuantizeLinear") {
            for (const int consumer : consumers_of(index, node.output(0))) {
                if (graph.node(consumer).op_type() != "DequantizeLinear") {
                    fail(ExitCode::kUnsupported,
                         "QuantizeLinear node '{}' feeds node '{}' ({}), not a DequantizeLinear; "
                         "only QDQ models with Q/DQ pairs can be taken apart",
                         node.name(), graph.node(consumer).name(), graph.node(consumer).op_type());
                }
            }
            removed.insert(n);
            continue;
        }
        if (node.op_type() != "DequantizeLinear") {
            continue;
        }
        removed.insert(n);
        std::string source;
        if (const onnx::NodeProto* quantize = feeding_quantize(graph, index, node)) {
            source = quantize->input(0);
        } else {
            source = float_initializer_name(node, float_initializer_set);
            restored_initializers.push_back(source);
        }
        if (index.graph_outputs.contains(node.output(0))) {
            identities[n] = make_identity(node.name() + "_Bypass", source, node.output(0));
        } else {
            renames[node.output(0)] = source;
        }
    }

    onnx::ModelProto result = qdq_model;
    onnx::GraphProto& target = *result.mutable_graph();
    target.clear_node();
    target.clear_initializer();
    target.clear_value_info();  // shapes of tensors that may be gone; ONNX Runtime infers them
    std::set<std::string> read_tensors;
    for (int n = 0; n < graph.node_size(); ++n) {
        onnx::NodeProto node;
        if (identities.contains(n)) {
            node = identities.at(n);
        } else if (removed.contains(n)) {
            continue;
        } else {
            node = graph.node(n);
        }
        for (int i = 0; i < node.input_size(); ++i) {
            if (!node.input(i).empty()) {
                node.set_input(i, resolve(renames, node.input(i)));
                read_tensors.insert(node.input(i));
            }
        }
        *target.add_node() = std::move(node);
    }

    // Keep the initializers something still reads (or that the graph lists as inputs), then add
    // the float initializers that replace dequantized ones.
    std::set<std::string> present;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        if (read_tensors.contains(initializer.name()) ||
            index.graph_inputs.contains(initializer.name()) ||
            !index.consumers.contains(initializer.name())) {
            *target.add_initializer() = initializer;
            present.insert(initializer.name());
        }
    }
    for (const std::string& name : restored_initializers) {
        if (present.insert(name).second) {
            *target.add_initializer() = *float_initializers.at(name);
        }
    }
    return result;
}

// ---------------------------------------------------------------------------------------------
// Accuracy

struct Accuracy {
    int64_t correct = 0;
    int64_t total = 0;
    double value() const {
        return total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
    }
};

// Top-1 accuracy of `model` on every batch of `images`: argmax of its single output [n, classes].
Accuracy measure_accuracy(const onnx::ModelProto& model, const std::string& label,
                          CalibrationDataReader& images, const std::vector<int64_t>& labels,
                          const SessionConfig& session) {
    if (model.graph().output_size() != 1) {
        fail(ExitCode::kUnsupported,
             "{} has {} outputs; measuring accuracy needs a classifier with one output of logits",
             label, model.graph().output_size());
    }
    OrtModel runner(serialize(model), label, session);
    Accuracy accuracy;
    images.rewind();
    while (std::optional<CalibrationBatch> batch = images.next()) {
        const int64_t count = batch->shape.front();
        const std::vector<FloatOutput> outputs = runner.run(batch->values, batch->shape);
        const FloatOutput& logits = outputs.front();
        if (logits.shape.size() != 2 || logits.shape[0] != count || logits.shape[1] <= 0) {
            fail(ExitCode::kInvalidInput,
                 "{} returns logits of shape [{}] for {} images; expected [{}, classes]", label,
                 fmt::join(logits.shape, ", "), count, count);
        }
        if (accuracy.total + count > static_cast<int64_t>(labels.size())) {
            fail(ExitCode::kInvalidInput, "{} labels are given for more images; give one per image",
                 labels.size());
        }
        const auto classes = static_cast<int>(logits.shape[1]);
        for (int64_t i = 0; i < count; ++i) {
            const int predicted = argmax(logits.values.data() + i * classes, classes);
            accuracy.correct += predicted == labels[static_cast<size_t>(accuracy.total + i)];
        }
        accuracy.total += count;
    }
    if (accuracy.total == 0) {
        fail(ExitCode::kInvalidInput, "no images to measure {} on; give at least one image", label);
    }
    if (accuracy.total != static_cast<int64_t>(labels.size())) {
        fail(ExitCode::kInvalidInput, "{} labels are given for {} images; give one per image",
             labels.size(), accuracy.total);
    }
    return accuracy;
}

// ---------------------------------------------------------------------------------------------
// Tables

std::string format_db(double value) {
    if (std::isinf(value)) {
        return value > 0 ? "inf" : "-inf";
    }
    return fmt::format("{:.2f}", value);
}

std::string format_scale(const TensorQuantization& quantization) {
    if (quantization.per_channel) {
        return fmt::format("{} ch", quantization.scales.size());
    }
    if (!quantization.positions.empty()) {
        return fmt::format("2^{}", -quantization.positions.front());
    }
    return fmt::format("{:.4g}", quantization.scales.front());
}

std::string format_zero_point(const TensorQuantization& quantization) {
    const auto [low, high] =
        std::minmax_element(quantization.zero_points.begin(), quantization.zero_points.end());
    return *low == *high ? fmt::format("{}", *low) : fmt::format("{}..{}", *low, *high);
}

json db_to_json(double value) {
    return std::isfinite(value) ? json(value) : json(nullptr);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public functions

std::vector<TensorError> measure_tensor_errors(
    const onnx::ModelProto& float_model, const onnx::ModelProto& qdq_model,
    CalibrationDataReader& reader, const SessionConfig& session,
    const std::function<void(int64_t, int64_t)>& on_batch) {
    std::vector<QuantizedSite> sites = find_quantized_tensors(float_model, qdq_model);
    std::vector<QuantizedSite> activations;
    std::vector<QuantizedSite> initializers;
    for (QuantizedSite& site : sites) {
        (site.role == "activation" ? activations : initializers).push_back(std::move(site));
    }

    std::vector<TensorError> results;
    if (!activations.empty()) {
        results =
            measure_activations(float_model, qdq_model, activations, reader, session, on_batch);
    }

    const GraphIndex float_index = index_graph(float_model.graph());
    const GraphIndex qdq_index = index_graph(qdq_model.graph());
    for (QuantizedSite& site : initializers) {
        const onnx::TensorProto& reference = *float_index.initializers.at(site.float_name);
        const onnx::TensorProto& stored = *qdq_index.initializers.at(site.stored);
        results.push_back(measure_initializer(std::move(site), reference, stored));
    }
    return results;
}

onnx::ModelProto make_single_layer_model(const onnx::ModelProto& float_model,
                                         const onnx::ModelProto& qdq_model,
                                         const std::string& layer) {
    const GraphIndex index = index_graph(qdq_model.graph());
    const SingleLayerPlan plan =
        plan_single_layer(qdq_model.graph(), index, initializer_names(float_model.graph()),
                          find_layer(qdq_model.graph(), layer));
    return build_single_layer_model(float_model, qdq_model, index, plan);
}

SensitivityReport measure_layer_sensitivity(const onnx::ModelProto& float_model,
                                            const onnx::ModelProto& qdq_model,
                                            CalibrationDataReader& images,
                                            const std::vector<int64_t>& labels,
                                            const SessionConfig& session,
                                            const std::function<void(int64_t, int64_t)>& on_model) {
    if (static_cast<int64_t>(labels.size()) != images.sample_count()) {
        fail(ExitCode::kInvalidInput, "{} labels are given for {} images; give one per image",
             labels.size(), images.sample_count());
    }

    // Layers with a dequantized weight, in graph order.
    const onnx::GraphProto& graph = qdq_model.graph();
    const GraphIndex index = index_graph(graph);
    const std::set<std::string> float_initializers = initializer_names(float_model.graph());
    std::vector<int> layers;
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        if (!kWeightedOps.contains(node.op_type()) || node.input_size() < 2) {
            continue;
        }
        const onnx::NodeProto* weight = producer_node(graph, index, node.input(1));
        if (weight != nullptr && weight->op_type() == "DequantizeLinear" &&
            feeding_quantize(graph, index, *weight) == nullptr) {
            layers.push_back(n);
        }
    }

    const auto models_total = static_cast<int64_t>(layers.size()) + 2;
    int64_t models_done = 0;
    auto report_progress = [&] {
        ++models_done;
        if (on_model) {
            on_model(models_done, models_total);
        }
    };

    SensitivityReport report;
    const Accuracy fp32 = measure_accuracy(float_model, "the float model", images, labels, session);
    report.image_count = fp32.total;
    report.fp32_correct = fp32.correct;
    report.fp32_accuracy = fp32.value();
    report_progress();
    const Accuracy quantized =
        measure_accuracy(qdq_model, "the QDQ model", images, labels, session);
    report.quantized_correct = quantized.correct;
    report.quantized_accuracy = quantized.value();
    report_progress();

    for (const int n : layers) {
        const onnx::NodeProto& node = graph.node(n);
        const SingleLayerPlan plan = plan_single_layer(graph, index, float_initializers, n);
        const onnx::ModelProto model =
            build_single_layer_model(float_model, qdq_model, index, plan);
        const Accuracy accuracy =
            measure_accuracy(model, fmt::format("the model with only '{}' quantized", node.name()),
                             images, labels, session);
        // The drop from the counts, so that one image more or less is exactly 1 / image_count.
        const double drop = static_cast<double>(report.fp32_correct - accuracy.correct) /
                            static_cast<double>(report.image_count);
        report.layers.push_back({node.name(), node.op_type(), plan.quantized_tensors,
                                 accuracy.correct, accuracy.value(), drop});
        report_progress();
    }
    return report;
}

std::string format_tensor_table(const std::vector<TensorError>& tensors) {
    size_t name_width = 6;
    for (const TensorError& tensor : tensors) {
        name_width = std::max(name_width, tensor.name.size());
    }
    std::string text = fmt::format(
        "{:<{}}  {:<10} {:<6} {:>8} {:>6} {:>11} {:>11} {:>9} {:>8} {:>8}\n", "tensor", name_width,
        "role", "type", "scale", "zp", "min", "max", "clipped%", "SQNR dB", "local dB");
    for (const TensorError& tensor : tensors) {
        text += fmt::format(
            "{:<{}}  {:<10} {:<6} {:>8} {:>6} {:>11.5g} {:>11.5g} {:>9.4f} {:>8} {:>8}\n",
            tensor.name, name_width, tensor.role, tensor.quantization.type,
            format_scale(tensor.quantization), format_zero_point(tensor.quantization), tensor.min,
            tensor.max, 100.0 * tensor.clipped_share, format_db(tensor.sqnr_db),
            format_db(tensor.local_sqnr_db));
    }
    return text;
}

std::string format_sensitivity_table(const SensitivityReport& report) {
    size_t name_width = 20;
    for (const LayerSensitivity& layer : report.layers) {
        name_width = std::max(name_width, layer.layer.size());
    }
    std::string text = fmt::format("{:<{}}  {:<7} {:>8} {:>9} {:>12}\n", "quantized layer",
                                   name_width, "op", "correct", "accuracy", "drop points");
    text += fmt::format("{:<{}}  {:<7} {:>8} {:>8.2f}% {:>12}\n", "none (fp32)", name_width, "",
                        report.fp32_correct, 100.0 * report.fp32_accuracy, "-");
    text += fmt::format("{:<{}}  {:<7} {:>8} {:>8.2f}% {:>+12.2f}\n", "all (QDQ model)", name_width,
                        "", report.quantized_correct, 100.0 * report.quantized_accuracy,
                        100.0 * (report.fp32_accuracy - report.quantized_accuracy));
    for (const LayerSensitivity& layer : report.layers) {
        text +=
            fmt::format("{:<{}}  {:<7} {:>8} {:>8.2f}% {:>+12.2f}\n", layer.layer, name_width,
                        layer.op_type, layer.correct, 100.0 * layer.accuracy, 100.0 * layer.drop);
    }
    text += fmt::format("on {} images\n", report.image_count);
    return text;
}

json to_json(const std::vector<TensorError>& tensors) {
    json rows = json::array();
    for (const TensorError& tensor : tensors) {
        const TensorQuantization& quantization = tensor.quantization;
        json row = {{"tensor", tensor.name},
                    {"role", tensor.role},
                    {"type", quantization.type},
                    {"scale", quantization.per_channel ? json(quantization.scales)
                                                       : json(quantization.scales.front())}};
        if (!quantization.positions.empty()) {
            row["position"] = quantization.per_channel ? json(quantization.positions)
                                                       : json(quantization.positions.front());
        }
        row["zero_point"] = quantization.per_channel ? json(quantization.zero_points)
                                                     : json(quantization.zero_points.front());
        if (quantization.per_channel) {
            row["axis"] = quantization.axis;
        }
        row["q_min"] = quantization.q_min;
        row["q_max"] = quantization.q_max;
        row["min"] = tensor.min;
        row["max"] = tensor.max;
        row["element_count"] = tensor.element_count;
        row["clipped_share"] = tensor.clipped_share;
        row["sqnr_db"] = db_to_json(tensor.sqnr_db);
        row["mean_squared_error"] = tensor.mean_squared_error;
        row["local_sqnr_db"] = db_to_json(tensor.local_sqnr_db);
        row["local_mean_squared_error"] = tensor.local_mean_squared_error;
        rows.push_back(std::move(row));
    }
    return rows;
}

json to_json(const SensitivityReport& report) {
    json layers = json::array();
    for (const LayerSensitivity& layer : report.layers) {
        layers.push_back({{"layer", layer.layer},
                          {"op_type", layer.op_type},
                          {"quantized_tensors", layer.quantized_tensors},
                          {"correct", layer.correct},
                          {"accuracy", layer.accuracy},
                          {"drop", layer.drop}});
    }
    return {{"images", report.image_count},
            {"fp32", {{"correct", report.fp32_correct}, {"accuracy", report.fp32_accuracy}}},
            {"quantized",
             {{"correct", report.quantized_correct}, {"accuracy", report.quantized_accuracy}}},
            {"layers", layers}};
}

}  // namespace edgeq
