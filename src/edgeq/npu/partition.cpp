#include "edgeq/npu/partition.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/defs/printer.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include "edgeq/common/files.h"

namespace edgeq::npu {

namespace {

using nlohmann::ordered_json;

// Maximum length of a nodeStat comment, because a Constant node would print its whole tensor.
constexpr size_t kMaxCommentLength = 240;

bool is_standard_domain(const std::string& domain) {
    return domain.empty() || domain == "ai.onnx";
}

bool is_op(const onnx::NodeProto& node, const char* op_type) {
    return node.op_type() == op_type && is_standard_domain(node.domain());
}

bool is_quantization_node(const onnx::NodeProto& node) {
    return node.op_type() == "QuantizeLinear" || node.op_type() == "DequantizeLinear";
}

bool contains(const std::vector<int32_t>& types, int32_t type) {
    return std::ranges::find(types, type) != types.end();
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
    return std::ranges::find(names, name) != names.end();
}

// Runs ONNX shape inference on a copy. It is not strict: a node it cannot infer leaves its
// outputs untyped, which the callers treat as unknown.
onnx::ModelProto infer_shapes(const onnx::ModelProto& model) {
    onnx::ModelProto inferred = model;
    try {
        onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance());
    } catch (const std::exception&) {
        // Types and shapes stay unknown.
    }
    return inferred;
}

// Every typed tensor of an inferred model: graph inputs, value_info and graph outputs.
std::map<std::string, const onnx::ValueInfoProto*> value_infos(const onnx::ModelProto& inferred) {
    std::map<std::string, const onnx::ValueInfoProto*> infos;
    for (const onnx::ValueInfoProto& info : inferred.graph().input()) {
        infos[info.name()] = &info;
    }
    for (const onnx::ValueInfoProto& info : inferred.graph().value_info()) {
        infos[info.name()] = &info;
    }
    for (const onnx::ValueInfoProto& info : inferred.graph().output()) {
        infos[info.name()] = &info;
    }
    return infos;
}

// The graph's tensors and who produces and reads them.
struct GraphIndex {
    std::map<std::string, int> producer;                // tensor -> node index
    std::map<std::string, std::vector<int>> consumers;  // tensor -> node indices
    std::map<std::string, int32_t> initializer_types;
    std::set<std::string> graph_inputs;  // graph inputs that are not initializers
    std::set<std::string> graph_outputs;
    std::map<std::string, int32_t> inferred_types;  // from ONNX shape inference
};

GraphIndex index_graph(const onnx::ModelProto& model) {
    const onnx::GraphProto& graph = model.graph();
    GraphIndex index;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        index.initializer_types[initializer.name()] = initializer.data_type();
    }
    for (const onnx::ValueInfoProto& input : graph.input()) {
        if (!index.initializer_types.contains(input.name())) {
            index.graph_inputs.insert(input.name());
        }
    }
    for (const onnx::ValueInfoProto& output : graph.output()) {
        index.graph_outputs.insert(output.name());
    }
    for (int n = 0; n < graph.node_size(); ++n) {
        for (const std::string& output : graph.node(n).output()) {
            if (!output.empty()) {
                index.producer[output] = n;
            }
        }
        for (const std::string& input : graph.node(n).input()) {
            if (!input.empty()) {
                index.consumers[input].push_back(n);
            }
        }
    }
    const onnx::ModelProto inferred = infer_shapes(model);
    for (const auto& [name, info] : value_infos(inferred)) {
        if (info->type().has_tensor_type() && info->type().tensor_type().elem_type() != 0) {
            index.inferred_types[name] = info->type().tensor_type().elem_type();
        }
    }
    return index;
}

std::string types_text(const std::vector<int32_t>& types) {
    std::vector<std::string> names;
    for (int32_t type : types) {
        names.push_back(element_type_name(type));
    }
    return fmt::format("{}", fmt::join(names, "/"));
}

// Labels every node with one node of its subgraph: a maximal connected group of nodes on one
// device, where two nodes are connected when one reads a tensor the other writes.
std::vector<int> subgraph_roots(const onnx::GraphProto& graph, const GraphIndex& index,
                                const std::vector<bool>& on_device) {
    std::vector<int> parent(graph.node_size());
    std::iota(parent.begin(), parent.end(), 0);
    auto root = [&](int n) {
        while (parent[n] != n) {
            parent[n] = parent[parent[n]];
            n = parent[n];
        }
        return n;
    };
    for (int n = 0; n < graph.node_size(); ++n) {
        for (const std::string& input : graph.node(n).input()) {
            const auto producer = index.producer.find(input);
            if (producer != index.producer.end() && on_device[producer->second] == on_device[n]) {
                parent[root(producer->second)] = root(n);
            }
        }
    }
    std::vector<int> roots(graph.node_size());
    for (int n = 0; n < graph.node_size(); ++n) {
        roots[n] = root(n);
    }
    return roots;
}

// Decides the device of every node. Each check returns the reason a node cannot stay on the
// target's device, or nothing when it can.
class Placer {
  public:
    Placer(const onnx::GraphProto& graph, const GraphIndex& index, const TargetDescription& target)
        : graph_(graph), index_(index), target_(target) {}

    // Every node starts on the device and moves to the CPU when a check fails, until nothing
    // moves. Starting from the device finds the largest consistent placement: a Conv and the Relu
    // fused after it each need the other on the device, so starting from the CPU would place
    // neither. A node only ever moves to the CPU, so the loop ends after at most N + 1 passes
    // over the N nodes.
    void place() {
        on_device_.assign(graph_.node_size(), true);
        reasons_.assign(graph_.node_size(), "");
        bool moved = true;
        while (moved) {
            moved = false;
            for (int n = 0; n < graph_.node_size(); ++n) {
                if (!on_device_[n]) {
                    continue;
                }
                std::optional<std::string> reason = check_node(n);
                if (reason) {
                    on_device_[n] = false;
                    reasons_[n] = std::move(*reason);
                    moved = true;
                }
            }
        }
    }

    // Quantization nodes only run on the device inside a subgraph that computes something, so a
    // device subgraph of QuantizeLinear / DequantizeLinear nodes alone (a requantization chain
    // between CPU nodes) goes to the CPU.
    void drop_quantization_only_subgraphs() {
        const std::vector<int> roots = subgraph_roots(graph_, index_, on_device_);
        std::set<int> computing;
        for (int n = 0; n < graph_.node_size(); ++n) {
            if (on_device_[n] && !is_quantization_node(graph_.node(n))) {
                computing.insert(roots[n]);
            }
        }
        for (int n = 0; n < graph_.node_size(); ++n) {
            if (on_device_[n] && !computing.contains(roots[n])) {
                on_device_[n] = false;
                reasons_[n] = fmt::format(
                    "its {} subgraph contains only QuantizeLinear and DequantizeLinear nodes",
                    target_.device);
            }
        }
    }

    // Moves every node to the CPU when the device would get fewer than `min_conv_layers` Conv
    // nodes, because the Ryzen AI flow places a model on the NPU only when it has that many
    // convolution layers. Returns the reason, or "" when the rule does not apply.
    // NOTE: the two-layer minimum comes from an AMD maintainer's remark, not from AMD's
    // documentation, so the EP's real test may differ (count other layer types, for example).
    std::string apply_model_rule() {
        int conv_count = 0;
        for (int n = 0; n < graph_.node_size(); ++n) {
            if (on_device_[n] && is_op(graph_.node(n), "Conv")) {
                ++conv_count;
            }
        }
        if (conv_count >= target_.min_conv_layers) {
            return "";
        }
        const std::string reason = fmt::format(
            "the model has {} Conv node(s) the {} takes, and target '{}' places a model only with "
            "at least {} convolution layers",
            conv_count, target_.device, target_.name, target_.min_conv_layers);
        for (int n = 0; n < graph_.node_size(); ++n) {
            if (on_device_[n]) {
                on_device_[n] = false;
                reasons_[n] = reason;
            }
        }
        return reason;
    }

    bool on_device(int n) const { return on_device_[n]; }
    const std::string& reason(int n) const { return reasons_[n]; }

  private:
    const onnx::GraphProto& graph_;
    const GraphIndex& index_;
    const TargetDescription& target_;
    std::vector<bool> on_device_;
    std::vector<std::string> reasons_;

    std::string describe(int n) const {
        const onnx::NodeProto& node = graph_.node(n);
        if (node.name().empty()) {
            return fmt::format("{} node #{}", node.op_type(), n);
        }
        return fmt::format("{} '{}'", node.op_type(), node.name());
    }

    // The integer type a DequantizeLinear reads: its input's, which the zero point shares.
    int32_t dequantized_type(const onnx::NodeProto& node) const {
        return integer_type(node.input(0), node.input_size() > 2 ? node.input(2) : "");
    }

    // The integer type a QuantizeLinear writes: its zero point's, uint8 when the zero point is
    // omitted (ONNX's default).
    int32_t quantized_type(const onnx::NodeProto& node) const {
        if (node.input_size() < 3 || node.input(2).empty()) {
            return onnx::TensorProto::UINT8;
        }
        return integer_type(node.output(0), node.input(2));
    }

    int32_t integer_type(const std::string& tensor, const std::string& zero_point) const {
        for (const std::string& name : {tensor, zero_point}) {
            const auto initializer = index_.initializer_types.find(name);
            if (initializer != index_.initializer_types.end()) {
                return initializer->second;
            }
        }
        const auto inferred = index_.inferred_types.find(tensor);
        return inferred != index_.inferred_types.end() ? inferred->second
                                                       : onnx::TensorProto::UNDEFINED;
    }

    const std::vector<int>& consumers_of(const std::string& tensor) const {
        static const std::vector<int> kNone;
        const auto found = index_.consumers.find(tensor);
        return found != index_.consumers.end() ? found->second : kNone;
    }

    std::optional<int> producer_of(const std::string& tensor) const {
        const auto found = index_.producer.find(tensor);
        return found != index_.producer.end() ? std::optional<int>(found->second) : std::nullopt;
    }

    std::optional<std::string> check_node(int n) const {
        const onnx::NodeProto& node = graph_.node(n);
        if (!is_standard_domain(node.domain())) {
            return fmt::format(
                "domain '{}' is not the standard ONNX domain, the only one target "
                "'{}' lists",
                node.domain(), target_.name);
        }
        const OpRule* rule = target_.find_op(node.op_type());
        if (rule == nullptr) {
            return fmt::format("target '{}' does not take op type {}", target_.name,
                               node.op_type());
        }
        if (rule->follows_neighbours) {
            return node.op_type() == "QuantizeLinear" ? check_quantize(n) : check_dequantize(n);
        }
        return check_conditions(n, *rule);
    }

    std::optional<std::string> check_conditions(int n, const OpRule& rule) const {
        const onnx::NodeProto& node = graph_.node(n);
        std::vector<int> slots = rule.quantized_inputs;
        if (rule.all_inputs_quantized) {
            slots.resize(node.input_size());
            std::iota(slots.begin(), slots.end(), 0);
        }
        for (int slot : slots) {
            if (slot < node.input_size() && !node.input(slot).empty()) {
                if (auto reason = check_quantized_input(node, slot, rule)) {
                    return reason;
                }
            }
        }
        if (rule.bias_input && *rule.bias_input < node.input_size() &&
            !node.input(*rule.bias_input).empty()) {
            if (auto reason = check_bias_input(node, *rule.bias_input)) {
                return reason;
            }
        }
        if (rule.quantized_outputs) {
            return check_quantized_outputs(node);
        }
        return std::nullopt;
    }

    // The device computes on integers: a data input arrives as a quantized tensor, which the QDQ
    // model shows as a DequantizeLinear in front of the node. The one exception is a fused pair
    // (Conv + Relu), whose intermediate result never leaves the device.
    std::optional<std::string> check_quantized_input(const onnx::NodeProto& node, int slot,
                                                     const OpRule& rule) const {
        const std::string& tensor = node.input(slot);
        const std::optional<int> producer = producer_of(tensor);
        if (!producer) {
            const char* kind =
                index_.initializer_types.contains(tensor) ? "initializer" : "graph input";
            return fmt::format("input {} ('{}') is a {} read without a DequantizeLinear", slot,
                               tensor, kind);
        }
        const onnx::NodeProto& source = graph_.node(*producer);
        if (source.op_type() == "DequantizeLinear" && !is_standard_domain(source.domain())) {
            // ONNX Runtime's contrib DequantizeLinear carries the 16-bit types that the standard
            // op lacks before opset 21.
            return fmt::format(
                "input {} ('{}') is dequantized by {} of domain '{}', which target "
                "'{}' does not take",
                slot, tensor, describe(*producer), source.domain(), target_.name);
        }
        if (is_op(source, "DequantizeLinear")) {
            const int32_t type = dequantized_type(source);
            if (!contains(target_.quantized_types, type)) {
                return fmt::format(
                    "input {} ('{}') is dequantized from {}, and the {} computes on "
                    "{} only",
                    slot, tensor, element_type_name(type), target_.device,
                    types_text(target_.quantized_types));
            }
            return std::nullopt;
        }
        if (is_standard_domain(source.domain()) && contains(rule.fuses_after, source.op_type())) {
            if (!on_device_[*producer]) {
                return fmt::format(
                    "input {} ('{}') comes from {}, which fuses with this node but "
                    "runs on the CPU",
                    slot, tensor, describe(*producer));
            }
            return std::nullopt;
        }
        return fmt::format("input {} ('{}') comes from {} without a DequantizeLinear between", slot,
                           tensor, describe(*producer));
    }

    std::optional<std::string> check_bias_input(const onnx::NodeProto& node, int slot) const {
        const std::string& tensor = node.input(slot);
        const std::optional<int> producer = producer_of(tensor);
        if (!producer || !is_op(graph_.node(*producer), "DequantizeLinear")) {
            return fmt::format("bias ('{}') is not read through a DequantizeLinear", tensor);
        }
        const int32_t type = dequantized_type(graph_.node(*producer));
        if (!contains(target_.bias_types, type)) {
            return fmt::format("bias ('{}') is stored as {}, and the {} takes {} biases only",
                               tensor, element_type_name(type), target_.device,
                               types_text(target_.bias_types));
        }
        return std::nullopt;
    }

    // The device writes quantized tensors: each output goes through a QuantizeLinear before
    // anything outside the fused layer reads it.
    std::optional<std::string> check_quantized_outputs(const onnx::NodeProto& node) const {
        for (const std::string& output : node.output()) {
            if (output.empty()) {
                continue;
            }
            if (index_.graph_outputs.contains(output)) {
                return fmt::format("output '{}' is a graph output without a QuantizeLinear",
                                   output);
            }
            for (int consumer : consumers_of(output)) {
                if (auto reason = check_output_consumer(node, output, consumer)) {
                    return reason;
                }
            }
        }
        return std::nullopt;
    }

    std::optional<std::string> check_output_consumer(const onnx::NodeProto& node,
                                                     const std::string& output,
                                                     int consumer) const {
        const onnx::NodeProto& reader = graph_.node(consumer);
        if (is_op(reader, "QuantizeLinear")) {
            const int32_t type = quantized_type(reader);
            if (!contains(target_.quantized_types, type)) {
                return fmt::format(
                    "output '{}' is quantized to {} by {}, and the {} computes on "
                    "{} only",
                    output, element_type_name(type), describe(consumer), target_.device,
                    types_text(target_.quantized_types));
            }
            return std::nullopt;
        }
        const OpRule* reader_rule =
            is_standard_domain(reader.domain()) ? target_.find_op(reader.op_type()) : nullptr;
        if (reader_rule != nullptr && contains(reader_rule->fuses_after, node.op_type())) {
            if (!on_device_[consumer]) {
                return fmt::format(
                    "output '{}' feeds {}, which fuses with this node but runs on "
                    "the CPU",
                    output, describe(consumer));
            }
            return std::nullopt;
        }
        return fmt::format("output '{}' feeds {} without a QuantizeLinear between", output,
                           describe(consumer));
    }

    // A QuantizeLinear converts float to int8. Fed by a graph input or a CPU node, the float
    // values are on the CPU, so the EP leaves the conversion to the CPU and hands the device the
    // quantized tensor. Fed by a device node, it is the device's own requantization.
    std::optional<std::string> check_quantize(int n) const {
        const onnx::NodeProto& node = graph_.node(n);
        const int32_t type = quantized_type(node);
        if (!contains(target_.quantized_types, type)) {
            return fmt::format("quantizes to {}, and the {} computes on {} only",
                               element_type_name(type), target_.device,
                               types_text(target_.quantized_types));
        }
        const std::string& input = node.input(0);
        if (index_.graph_inputs.contains(input)) {
            return fmt::format("reads graph input '{}': the CPU converts float to {} for the {}",
                               input, element_type_name(type), target_.device);
        }
        const std::optional<int> producer = producer_of(input);
        if (producer && !on_device_[*producer]) {
            return fmt::format("reads '{}' from {}, which runs on the CPU", input,
                               describe(*producer));
        }
        if (!producer) {
            // A quantized constant goes with the nodes that read it, like a weight.
            return check_follows_consumers(n);
        }
        return std::nullopt;
    }

    // A DequantizeLinear converts int8 back to float. When its float output is a graph output or
    // only CPU nodes read it, the conversion is the CPU's: the device hands over the int8 tensor.
    // A DequantizeLinear of an initializer (a weight or bias) is part of the layer that reads it.
    std::optional<std::string> check_dequantize(int n) const {
        const onnx::NodeProto& node = graph_.node(n);
        const int32_t type = dequantized_type(node);
        const bool reads_initializer = index_.initializer_types.contains(node.input(0));
        const bool type_taken = contains(target_.quantized_types, type) ||
                                (reads_initializer && contains(target_.bias_types, type));
        if (!type_taken) {
            return fmt::format("dequantizes {}, and the {} computes on {} only",
                               element_type_name(type), target_.device,
                               types_text(target_.quantized_types));
        }
        const std::string& output = node.output(0);
        if (index_.graph_outputs.contains(output)) {
            return fmt::format(
                "writes graph output '{}': the CPU converts the {}'s result to "
                "float",
                output, target_.device);
        }
        if (reads_initializer) {
            return check_follows_consumers(n);
        }
        // NOTE: a DequantizeLinear that feeds a device node and a CPU node stays on the device, so
        // the CPU node reads the device's output. The EP may give the CPU its own copy instead.
        const std::vector<int>& consumers = consumers_of(output);
        const bool feeds_device =
            std::ranges::any_of(consumers, [&](int consumer) { return on_device_[consumer]; });
        if (!feeds_device) {
            return std::string("feeds only CPU nodes");
        }
        return std::nullopt;
    }

    // NOTE: a constant that a device node and a CPU node share goes to the CPU here. The EP may
    // instead copy the DequantizeLinear into both partitions.
    std::optional<std::string> check_follows_consumers(int n) const {
        const std::vector<int>& consumers = consumers_of(graph_.node(n).output(0));
        if (consumers.empty()) {
            return std::string("feeds no node");
        }
        for (int consumer : consumers) {
            if (!on_device_[consumer]) {
                return fmt::format("feeds {}, which runs on the CPU", describe(consumer));
            }
        }
        return std::nullopt;
    }
};

void count_subgraphs(const onnx::GraphProto& graph, const GraphIndex& index,
                     PartitionReport& report) {
    std::vector<bool> on_device(report.nodes.size());
    for (size_t n = 0; n < report.nodes.size(); ++n) {
        on_device[n] = report.nodes[n].device != kCpuDevice;
    }
    const std::vector<int> roots = subgraph_roots(graph, index, on_device);
    for (int n = 0; n < graph.node_size(); ++n) {
        if (roots[n] == n) {
            (on_device[n] ? report.npu_subgraphs : report.cpu_subgraphs) += 1;
        }
    }
}

std::string op_type_key(const NodePlacement& node) {
    return fmt::format("{}::{}", is_standard_domain(node.domain) ? "" : node.domain, node.op_type);
}

ordered_json device_stat(const std::string& name, const PartitionReport& report,
                         const std::string& device) {
    std::set<std::string> op_types;
    int count = 0;
    for (const NodePlacement& node : report.nodes) {
        if (device.empty() || node.device == device) {
            op_types.insert(op_type_key(node));
            ++count;
        }
    }
    ordered_json entry;
    entry["name"] = name;
    entry["nodeNum"] = count;
    entry["supportedOpType"] = op_types;
    return entry;
}

// The node in ONNX's textual syntax ("y = Conv <strides = [1, 1]> (x, w, b)") on one line,
// preceded by its name.
std::string node_comment(const onnx::NodeProto& node) {
    std::ostringstream stream;
    stream << node;
    std::string text = stream.str();
    std::ranges::replace(text, '\n', ' ');
    if (!node.name().empty()) {
        text = node.name() + ": " + text;
    }
    if (text.size() > kMaxCommentLength) {
        text = text.substr(0, kMaxCommentLength - 3) + "...";
    }
    return text;
}

// A tensor's shape as the EP writes it: unknown dimensions (symbolic or missing) as -1, a scalar
// as isScalar, an unknown rank as isUnknown.
ordered_json shape_entry(const std::string& name, const onnx::ValueInfoProto* info) {
    ordered_json entry;
    entry["name"] = name;
    if (info == nullptr || !info->type().has_tensor_type() ||
        !info->type().tensor_type().has_shape()) {
        entry["isUnknown"] = true;
        return entry;
    }
    const onnx::TensorShapeProto& shape = info->type().tensor_type().shape();
    if (shape.dim_size() == 0) {
        entry["isScalar"] = true;
        return entry;
    }
    std::vector<int64_t> dims;
    for (const onnx::TensorShapeProto_Dimension& dim : shape.dim()) {
        dims.push_back(dim.has_dim_value() ? dim.dim_value() : -1);
    }
    entry["shape"] = dims;
    return entry;
}

ordered_json shape_info(const onnx::ModelProto& model) {
    const onnx::ModelProto inferred = infer_shapes(model);
    const auto infos = value_infos(inferred);

    // Initializers are typed by their own dims, which shape inference does not copy into
    // value_info.
    std::map<std::string, onnx::ValueInfoProto> initializer_infos;
    for (const onnx::TensorProto& initializer : model.graph().initializer()) {
        onnx::ValueInfoProto info;
        info.set_name(initializer.name());
        onnx::TypeProto_Tensor* tensor_type = info.mutable_type()->mutable_tensor_type();
        tensor_type->set_elem_type(initializer.data_type());
        onnx::TensorShapeProto* shape = tensor_type->mutable_shape();
        for (int64_t dim : initializer.dims()) {
            shape->add_dim()->set_dim_value(dim);
        }
        initializer_infos[initializer.name()] = info;
    }
    auto find_info = [&](const std::string& name) -> const onnx::ValueInfoProto* {
        const auto initializer = initializer_infos.find(name);
        if (initializer != initializer_infos.end()) {
            return &initializer->second;
        }
        const auto found = infos.find(name);
        return found != infos.end() ? found->second : nullptr;
    };

    // Tensors in the order the graph first mentions them: graph inputs, then node by node.
    ordered_json entries = ordered_json::array();
    std::set<std::string> seen;
    auto add = [&](const std::string& name) {
        if (!name.empty() && seen.insert(name).second) {
            entries.push_back(shape_entry(name, find_info(name)));
        }
    };
    for (const onnx::ValueInfoProto& input : model.graph().input()) {
        add(input.name());
    }
    for (const onnx::NodeProto& node : model.graph().node()) {
        for (const std::string& input : node.input()) {
            add(input);
        }
        for (const std::string& output : node.output()) {
            add(output);
        }
    }
    return entries;
}

}  // namespace

double PartitionReport::npu_percent() const {
    return nodes.empty() ? 0.0 : 100.0 * npu_nodes / static_cast<double>(nodes.size());
}

PartitionReport partition_model(const onnx::ModelProto& qdq_model,
                                const TargetDescription& target) {
    const onnx::GraphProto& graph = qdq_model.graph();
    const GraphIndex index = index_graph(qdq_model);

    Placer placer(graph, index, target);
    placer.place();
    placer.drop_quantization_only_subgraphs();

    PartitionReport report;
    report.target_name = target.name;
    report.device = target.device;
    report.model_rule = placer.apply_model_rule();
    for (int n = 0; n < graph.node_size(); ++n) {
        const onnx::NodeProto& node = graph.node(n);
        NodePlacement placement;
        placement.node_name = node.name();
        placement.op_type = node.op_type();
        placement.domain = node.domain();
        placement.device = placer.on_device(n) ? target.device : kCpuDevice;
        placement.reason = placer.reason(n);
        (placer.on_device(n) ? report.npu_nodes : report.cpu_nodes) += 1;
        report.nodes.push_back(std::move(placement));
    }
    count_subgraphs(graph, index, report);
    return report;
}

ordered_json vitisai_ep_report_json(const onnx::ModelProto& model, const PartitionReport& report) {
    ordered_json device_stats = ordered_json::array();
    device_stats.push_back(device_stat("all", report, ""));
    device_stats.push_back(device_stat(kCpuDevice, report, kCpuDevice));
    device_stats.push_back(device_stat(report.device, report, report.device));

    ordered_json node_stats = ordered_json::array();
    for (int n = 0; n < model.graph().node_size(); ++n) {
        const onnx::NodeProto& node = model.graph().node(n);
        ordered_json entry;
        entry["input"] = std::vector<std::string>(node.input().begin(), node.input().end());
        entry["output"] = std::vector<std::string>(node.output().begin(), node.output().end());
        entry["opType"] = node.op_type();
        entry["opDomain"] = node.domain();
        entry["comment"] = node_comment(node);
        entry["device"] = n < report.node_count() ? report.nodes[n].device : "";
        node_stats.push_back(std::move(entry));
    }

    // NOTE: the key names inside subgraphStat are this module's choice; the EP's documentation
    // only says the section counts subgraphs per device.
    ordered_json subgraph_stats = ordered_json::array();
    subgraph_stats.push_back({{"name", kCpuDevice}, {"subgraphNum", report.cpu_subgraphs}});
    subgraph_stats.push_back({{"name", report.device}, {"subgraphNum", report.npu_subgraphs}});

    ordered_json document;
    document["deviceStat"] = std::move(device_stats);
    document["nodeStat"] = std::move(node_stats);
    document["shapeInfo"] = shape_info(model);
    document["subgraphStat"] = std::move(subgraph_stats);
    return document;
}

void write_vitisai_ep_report(const std::filesystem::path& path, const onnx::ModelProto& model,
                             const PartitionReport& report) {
    write_file_atomic(path, vitisai_ep_report_json(model, report).dump(2) + "\n");
}

std::string partition_summary_line(const PartitionReport& report) {
    return fmt::format("[Vitis AI EP model] operators: {}, on CPU: {}, on {}: {} ({:.1f}%)",
                       report.node_count(), report.cpu_nodes, report.device, report.npu_nodes,
                       report.npu_percent());
}

ordered_json partition_counts_json(const PartitionReport& report) {
    ordered_json counts;
    counts["all"] = report.node_count();
    counts[kCpuDevice] = report.cpu_nodes;
    counts[report.device] = report.npu_nodes;
    return counts;
}

std::vector<std::string> cpu_placement_lines(const PartitionReport& report) {
    std::vector<std::string> lines;
    for (size_t n = 0; n < report.nodes.size(); ++n) {
        const NodePlacement& node = report.nodes[n];
        if (node.device != kCpuDevice) {
            continue;
        }
        const std::string name =
            node.node_name.empty() ? fmt::format("#{}", n) : fmt::format("'{}'", node.node_name);
        lines.push_back(fmt::format("{} {}: {}", node.op_type, name, node.reason));
    }
    return lines;
}

}  // namespace edgeq::npu
