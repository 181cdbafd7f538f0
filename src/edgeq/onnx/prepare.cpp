#include "edgeq/onnx/prepare.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <variant>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>
#include <onnx/version_converter/convert.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq {

namespace {

// QuantizeLinear and DequantizeLinear exist from opset 10 on.
constexpr int64_t kMinimumQdqOpset = 10;

// IR version 4 (published January 2019) is the first in which an initializer need not be a
// graph input.
constexpr int64_t kIrVersionWithOptionalInitializerInputs = 4;

// Clip takes min and max as inputs from opset 11 on, as attributes before.
constexpr int64_t kClipInputsOpset = 11;

// BatchNormalization's epsilon when the attribute is absent, in every opset.
constexpr float kDefaultBatchNormEpsilon = 1e-5f;

// The model being prepared, with what has been done to it so far.
struct Preparation {
    onnx::ModelProto model;
    std::string label;
    std::vector<std::string> changes;
    std::vector<std::string> warnings;

    onnx::GraphProto& graph() { return *model.mutable_graph(); }
};

// ------------------------------------------------------------------------------------------------
// Graph queries

bool is_default_domain(const std::string& domain) {
    return domain.empty() || domain == "ai.onnx";
}

bool is_op(const onnx::NodeProto& node, const std::string& op_type) {
    return node.op_type() == op_type && is_default_domain(node.domain());
}

// Opset version of the default ONNX domain, or 0 when the model does not import it.
int64_t default_opset(const onnx::ModelProto& model) {
    for (const onnx::OperatorSetIdProto& opset : model.opset_import()) {
        if (is_default_domain(opset.domain())) {
            return opset.version();
        }
    }
    return 0;
}

std::set<std::string> initializer_names(const onnx::GraphProto& graph) {
    std::set<std::string> names;
    for (const onnx::TensorProto& initializer : graph.initializer()) {
        names.insert(initializer.name());
    }
    return names;
}

int find_initializer(const onnx::GraphProto& graph, const std::string& name) {
    for (int i = 0; i < graph.initializer_size(); ++i) {
        if (graph.initializer(i).name() == name) {
            return i;
        }
    }
    return -1;
}

bool is_graph_output(const onnx::GraphProto& graph, const std::string& tensor) {
    return std::any_of(graph.output().begin(), graph.output().end(),
                       [&](const onnx::ValueInfoProto& output) { return output.name() == tensor; });
}

// Index of the node that writes `tensor`, or -1 for a graph input, an initializer or a name that
// nothing writes.
int find_producer(const onnx::GraphProto& graph, const std::string& tensor) {
    for (int n = 0; n < graph.node_size(); ++n) {
        const auto& outputs = graph.node(n).output();
        if (std::find(outputs.begin(), outputs.end(), tensor) != outputs.end()) {
            return n;
        }
    }
    return -1;
}

// Number of node inputs that read `tensor`, plus one when it is a graph output.
int count_uses(const onnx::GraphProto& graph, const std::string& tensor) {
    int uses = is_graph_output(graph, tensor) ? 1 : 0;
    for (const onnx::NodeProto& node : graph.node()) {
        uses += static_cast<int>(std::count(node.input().begin(), node.input().end(), tensor));
    }
    return uses;
}

// Makes every node that reads `from` read `to` instead.
void rename_uses(onnx::GraphProto& graph, const std::string& from, const std::string& to) {
    for (onnx::NodeProto& node : *graph.mutable_node()) {
        for (std::string& input : *node.mutable_input()) {
            if (input == from) {
                input = to;
            }
        }
    }
}

void erase_node(onnx::GraphProto& graph, int index) {
    graph.mutable_node()->erase(graph.mutable_node()->begin() + index);
}

// `base`, or `base_1`, `base_2`, ... when a tensor or node of the graph already has that name.
std::string unique_name(const onnx::GraphProto& graph, const std::string& base) {
    std::set<std::string> used_names = initializer_names(graph);
    for (const onnx::ValueInfoProto& value : graph.input()) {
        used_names.insert(value.name());
    }
    for (const onnx::ValueInfoProto& value : graph.output()) {
        used_names.insert(value.name());
    }
    for (const onnx::NodeProto& node : graph.node()) {
        used_names.insert(node.name());
        used_names.insert(node.output().begin(), node.output().end());
    }
    std::string name = base;
    for (int suffix = 1; used_names.contains(name); ++suffix) {
        name = fmt::format("{}_{}", base, suffix);
    }
    return name;
}

const onnx::AttributeProto* find_attribute(const onnx::NodeProto& node, const std::string& name) {
    for (const onnx::AttributeProto& attribute : node.attribute()) {
        if (attribute.name() == name) {
            return &attribute;
        }
    }
    return nullptr;
}

// The values of a float initializer named `name`, or nothing when `name` is not a float
// initializer (a graph input, a node output or another data type).
std::optional<std::vector<float>> float_initializer_values(const onnx::GraphProto& graph,
                                                           const std::string& name) {
    const int index = find_initializer(graph, name);
    if (index < 0 || graph.initializer(index).data_type() != onnx::TensorProto::FLOAT) {
        return std::nullopt;
    }
    return read_float_tensor(graph.initializer(index));
}

// True when `name` is a BOOL initializer with the single value false.
bool is_false_initializer(const onnx::GraphProto& graph, const std::string& name) {
    const int index = find_initializer(graph, name);
    if (index < 0) {
        return false;
    }
    const onnx::TensorProto& tensor = graph.initializer(index);
    if (tensor.data_type() != onnx::TensorProto::BOOL || element_count(tensor.dims()) != 1) {
        return false;
    }
    if (tensor.has_raw_data()) {
        return tensor.raw_data().size() == 1 && tensor.raw_data()[0] == 0;
    }
    return tensor.int32_data_size() == 1 && tensor.int32_data(0) == 0;
}

std::string one_line(std::string text) {
    std::replace(text.begin(), text.end(), '\n', ' ');
    return text;
}

// ------------------------------------------------------------------------------------------------
// Checks that reject a model

void check_single_float_input(const onnx::ModelProto& model, const std::string& label) {
    const std::set<std::string> initializers = initializer_names(model.graph());
    std::vector<const onnx::ValueInfoProto*> inputs;
    std::vector<std::string> input_names;
    for (const onnx::ValueInfoProto& input : model.graph().input()) {
        if (!initializers.contains(input.name())) {
            inputs.push_back(&input);
            input_names.push_back("'" + input.name() + "'");
        }
    }
    if (inputs.empty()) {
        fail(ExitCode::kUnsupported,
             "model '{}' has no graph input besides its initializers; edgeq prepares models with "
             "exactly one float input",
             label);
    }
    if (inputs.size() > 1) {
        fail(ExitCode::kUnsupported,
             "model '{}' has {} graph inputs besides its initializers ({}); edgeq prepares models "
             "with exactly one float input",
             label, inputs.size(), fmt::join(input_names, ", "));
    }
    const onnx::ValueInfoProto& input = *inputs.front();
    if (!input.type().has_tensor_type() ||
        input.type().tensor_type().elem_type() != onnx::TensorProto::FLOAT) {
        const std::string type_name =
            input.type().has_tensor_type()
                ? onnx::TensorProto::DataType_Name(static_cast<onnx::TensorProto::DataType>(
                      input.type().tensor_type().elem_type()))
                : std::string("not a tensor");
        fail(ExitCode::kUnsupported,
             "input '{}' of model '{}' has type {}, not FLOAT; edgeq prepares models with "
             "exactly one float input",
             input.name(), label, type_name);
    }
}

// The rewrites below rename tensors of the main graph only, which would break a subgraph that
// reads an outer tensor by name.
void check_no_subgraphs(const onnx::ModelProto& model, const std::string& label) {
    for (const onnx::NodeProto& node : model.graph().node()) {
        for (const onnx::AttributeProto& attribute : node.attribute()) {
            if (attribute.type() == onnx::AttributeProto::GRAPH ||
                attribute.type() == onnx::AttributeProto::GRAPHS) {
                fail(ExitCode::kUnsupported,
                     "node '{}' ({}) of model '{}' has a subgraph; edgeq prepares graphs without "
                     "control flow",
                     node.name(), node.op_type(), label);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Rewrites

// Upgrades a model below opset 10 with ONNX's version converter, because the QDQ model keeps the
// float model's opset and QuantizeLinear needs opset 10.
void upgrade_old_opset(Preparation& preparation) {
    const int64_t opset = default_opset(preparation.model);
    if (opset >= kMinimumQdqOpset) {
        return;
    }
    const int64_t ir_version = preparation.model.ir_version();

    // ONNX 1.12's converter can crash on an invalid node (a Scatter without its inputs does), so
    // only a model that passes the checker is converted.
    try {
        onnx::checker::check_model(preparation.model);
    } catch (const std::exception& error) {
        fail(ExitCode::kInvalidInput,
             "model '{}' uses ONNX opset {} and fails the ONNX checker, so it cannot be upgraded "
             "to opset {} ({}); re-export it with opset {} or later",
             preparation.label, opset, kExportOpset, one_line(error.what()), kMinimumQdqOpset);
    }

    // NOTE: the tests run the converter's adapters for the operators of the quantizer's list only
    // (through the opset 6 models of Debian's libonnx-testdata and hand-built opset 9 graphs).
    try {
        preparation.model = onnx::version_conversion::ConvertVersion(
            preparation.model, static_cast<int>(kExportOpset));
    } catch (const std::exception& error) {
        fail(ExitCode::kUnsupported,
             "model '{}' uses ONNX opset {} and ONNX's version converter cannot upgrade it to "
             "opset {} ({}); re-export it with opset {} or later",
             preparation.label, opset, kExportOpset, one_line(error.what()), kMinimumQdqOpset);
    }

    // The converter keeps the IR version, which may predate the new opset.
    preparation.model.set_ir_version(std::max(preparation.model.ir_version(), kExportIrVersion));
    preparation.changes.push_back(
        fmt::format("upgraded from opset {} (IR version {}) to opset {} (IR version {}) with "
                    "ONNX's version converter",
                    opset, ir_version, kExportOpset, preparation.model.ir_version()));
}

// The tensor a Constant node writes, or nothing for the attribute forms without an initializer
// equivalent (sparse_value, value_string, value_strings).
std::optional<onnx::TensorProto> constant_value(const onnx::NodeProto& node) {
    const std::string& name = node.output(0);
    for (const onnx::AttributeProto& attribute : node.attribute()) {
        if (attribute.name() == "value" && attribute.type() == onnx::AttributeProto::TENSOR) {
            onnx::TensorProto tensor = attribute.t();
            tensor.set_name(name);
            return tensor;
        }
        if (attribute.name() == "value_float") {
            return make_float_tensor(name, {}, {attribute.f()});
        }
        if (attribute.name() == "value_floats") {
            const std::vector<float> values(attribute.floats().begin(), attribute.floats().end());
            return make_float_tensor(name, {static_cast<int64_t>(values.size())}, values);
        }
        if (attribute.name() == "value_int") {
            return make_int64_tensor(name, {}, {attribute.i()});
        }
        if (attribute.name() == "value_ints") {
            const std::vector<int64_t> values(attribute.ints().begin(), attribute.ints().end());
            return make_int64_tensor(name, {static_cast<int64_t>(values.size())}, values);
        }
    }
    return std::nullopt;
}

// Turns Constant nodes into initializers, so that the quantizer and the folds below see Clip
// bounds, Reshape shapes and Pad amounts as initializers, as torch exports often write them as
// Constant nodes.
void convert_constants_to_initializers(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    int converted = 0;
    for (int n = 0; n < graph.node_size();) {
        const onnx::NodeProto& node = graph.node(n);
        if (!is_op(node, "Constant")) {
            ++n;
            continue;
        }
        // A graph output must be written by a node.
        if (is_graph_output(graph, node.output(0))) {
            preparation.warnings.push_back(fmt::format(
                "Constant '{}' stays a node because its output is a graph output", node.name()));
            ++n;
            continue;
        }
        std::optional<onnx::TensorProto> value = constant_value(node);
        if (!value) {
            preparation.warnings.push_back(fmt::format(
                "Constant '{}' stays a node: only value, value_float(s) and value_int(s) become "
                "initializers",
                node.name()));
            ++n;
            continue;
        }
        *graph.add_initializer() = std::move(*value);
        erase_node(graph, n);
        ++converted;
    }
    if (converted > 0) {
        preparation.changes.push_back(
            fmt::format("turned {} Constant nodes into initializers", converted));
    }
}

// Drops initializers from the graph inputs. Listed there (as IR versions below 4 require), they
// are inputs with a default value that a session may override, and they hide the one real input.
void remove_initializers_from_inputs(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    const std::set<std::string> initializers = initializer_names(graph);
    google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> real_inputs;
    for (const onnx::ValueInfoProto& input : graph.input()) {
        if (!initializers.contains(input.name())) {
            *real_inputs.Add() = input;
        }
    }
    const int removed = graph.input_size() - real_inputs.size();
    if (removed == 0) {
        return;
    }
    graph.mutable_input()->Swap(&real_inputs);
    preparation.changes.push_back(
        fmt::format("removed {} initializers from the graph inputs", removed));
}

// Raises the IR version to 4 when the rewrites left initializers outside the graph inputs (the
// Constant nodes they replaced, the inputs they dropped, a folded bias), which IR version 3
// forbids.
void raise_ir_version_for_initializers(Preparation& preparation) {
    const int64_t ir_version = preparation.model.ir_version();
    if (ir_version >= kIrVersionWithOptionalInitializerInputs ||
        preparation.graph().initializer_size() == 0) {
        return;
    }
    preparation.model.set_ir_version(kIrVersionWithOptionalInitializerInputs);
    preparation.changes.push_back(
        fmt::format("raised the IR version from {} to {}, the first that allows initializers "
                    "outside the graph inputs",
                    ir_version, kIrVersionWithOptionalInitializerInputs));
}

// Names every unnamed node `<op type>_<node index>`, so that messages and the quantizer's tensor
// names can refer to it.
void name_unnamed_nodes(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    int named = 0;
    for (int n = 0; n < graph.node_size(); ++n) {
        if (graph.node(n).name().empty()) {
            const std::string name =
                unique_name(graph, fmt::format("{}_{}", graph.node(n).op_type(), n));
            graph.mutable_node(n)->set_name(name);
            ++named;
        }
    }
    if (named > 0) {
        preparation.changes.push_back(fmt::format("named {} unnamed nodes", named));
    }
}

// Why an Identity or Dropout node cannot be removed, or nothing when it can.
std::optional<std::string> why_pass_through_stays(const onnx::GraphProto& graph,
                                                  const onnx::NodeProto& node) {
    if (node.input_size() < 1 || node.output_size() < 1) {
        return "it has no input or no output";
    }
    if (is_op(node, "Dropout")) {
        if (node.output_size() > 1 && !node.output(1).empty() &&
            count_uses(graph, node.output(1)) > 0) {
            return fmt::format("its mask output '{}' is read", node.output(1));
        }
        // From opset 12 on, input 2 (training_mode) switches dropout on at inference time.
        if (node.input_size() > 2 && !node.input(2).empty() &&
            !is_false_initializer(graph, node.input(2))) {
            return fmt::format("its training_mode input '{}' is not a constant false",
                               node.input(2));
        }
    }
    const std::string& input = node.input(0);
    const std::string& output = node.output(0);
    // Consumers of the output can read the input instead. A graph output keeps its name, so then
    // the input's producer must write it, which needs a producer that writes no graph output.
    if (is_graph_output(graph, output) &&
        (find_producer(graph, input) < 0 || is_graph_output(graph, input))) {
        return fmt::format("it copies '{}' to the graph output '{}'", input, output);
    }
    return std::nullopt;
}

// Removes node `index` (an Identity or Dropout) and reconnects its consumers to its input.
void bypass_pass_through(onnx::GraphProto& graph, int index) {
    const std::string input = graph.node(index).input(0);
    const std::string output = graph.node(index).output(0);
    if (!is_graph_output(graph, output)) {
        rename_uses(graph, output, input);
    } else {
        onnx::NodeProto& producer = *graph.mutable_node(find_producer(graph, input));
        for (std::string& produced : *producer.mutable_output()) {
            if (produced == input) {
                produced = output;
            }
        }
        rename_uses(graph, input, output);
    }
    erase_node(graph, index);
}

// Removes Identity nodes and Dropout nodes, which copy their input at inference time.
void remove_identity_and_dropout(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    std::map<std::string, int> removed;
    for (int n = 0; n < graph.node_size();) {
        const onnx::NodeProto& node = graph.node(n);
        if (!is_op(node, "Identity") && !is_op(node, "Dropout")) {
            ++n;
            continue;
        }
        if (const std::optional<std::string> reason = why_pass_through_stays(graph, node)) {
            preparation.warnings.push_back(
                fmt::format("{} '{}' stays because {}", node.op_type(), node.name(), *reason));
            ++n;
            continue;
        }
        ++removed[node.op_type()];
        bypass_pass_through(graph, n);
    }
    for (const auto& [op_type, count] : removed) {
        preparation.changes.push_back(fmt::format("removed {} {} nodes", count, op_type));
    }
}

// ------------------------------------------------------------------------------------------------
// Reshape shapes computed with Shape

// The values of an INT64 initializer named `name`, or nothing when `name` is not one.
std::optional<std::vector<int64_t>> int64_initializer_values(const onnx::GraphProto& graph,
                                                             const std::string& name) {
    const int index = find_initializer(graph, name);
    if (index < 0 || graph.initializer(index).data_type() != onnx::TensorProto::INT64) {
        return std::nullopt;
    }
    const onnx::TensorProto& tensor = graph.initializer(index);
    std::vector<int64_t> values(static_cast<size_t>(element_count(tensor.dims())));
    if (tensor.has_raw_data()) {
        if (tensor.raw_data().size() != values.size() * sizeof(int64_t)) {
            return std::nullopt;
        }
        std::memcpy(values.data(), tensor.raw_data().data(), tensor.raw_data().size());
    } else {
        if (tensor.int64_data_size() != static_cast<int>(values.size())) {
            return std::nullopt;
        }
        std::copy(tensor.int64_data().begin(), tensor.int64_data().end(), values.begin());
    }
    return values;
}

// The dimensions of every tensor whose shape ONNX's shape inference derives, -1 where a
// dimension is symbolic or unknown.
std::map<std::string, std::vector<int64_t>> infer_dimensions(const onnx::ModelProto& model) {
    onnx::ModelProto inferred = model;
    inferred.mutable_graph()->clear_value_info();
    try {
        onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                           onnx::ShapeInferenceOptions{});
    } catch (const std::exception&) {
        // The dimensions stay unknown, so nothing is folded. The strict inference at the end of
        // the preparation reports the error.
    }
    std::map<std::string, std::vector<int64_t>> dimensions;
    auto record = [&](const onnx::ValueInfoProto& value) {
        if (!value.type().tensor_type().has_shape()) {
            return;
        }
        std::vector<int64_t>& dims = dimensions[value.name()];
        for (const auto& dim : value.type().tensor_type().shape().dim()) {
            dims.push_back(dim.has_dim_value() ? dim.dim_value() : -1);
        }
    };
    std::for_each(inferred.graph().input().begin(), inferred.graph().input().end(), record);
    std::for_each(inferred.graph().value_info().begin(), inferred.graph().value_info().end(),
                  record);
    std::for_each(inferred.graph().output().begin(), inferred.graph().output().end(), record);
    return dimensions;
}

// Dimension `index` of `tensor`, read as Unsqueeze(Gather(Shape(tensor), index), axes=[0]).
struct ShapeDimension {
    std::string tensor;
    int64_t index = 0;
};

// Matches the Unsqueeze -> Gather -> Shape chain that writes `name`.
std::optional<ShapeDimension> match_shape_dimension(const onnx::GraphProto& graph,
                                                    const std::string& name, int64_t opset) {
    const int unsqueeze_index = find_producer(graph, name);
    if (unsqueeze_index < 0 || !is_op(graph.node(unsqueeze_index), "Unsqueeze")) {
        return std::nullopt;
    }
    const onnx::NodeProto& unsqueeze = graph.node(unsqueeze_index);
    // Unsqueeze takes its axes as an input from opset 13 on, as an attribute before.
    std::optional<std::vector<int64_t>> axes;
    if (opset >= 13 && unsqueeze.input_size() > 1) {
        axes = int64_initializer_values(graph, unsqueeze.input(1));
    } else if (const onnx::AttributeProto* attribute = find_attribute(unsqueeze, "axes")) {
        axes = std::vector<int64_t>(attribute->ints().begin(), attribute->ints().end());
    }
    if (axes != std::vector<int64_t>{0}) {
        return std::nullopt;
    }

    const int gather_index = find_producer(graph, unsqueeze.input(0));
    if (gather_index < 0 || !is_op(graph.node(gather_index), "Gather")) {
        return std::nullopt;
    }
    const onnx::NodeProto& gather = graph.node(gather_index);
    const onnx::AttributeProto* gather_axis = find_attribute(gather, "axis");
    const std::optional<std::vector<int64_t>> indices =
        gather.input_size() > 1 ? int64_initializer_values(graph, gather.input(1)) : std::nullopt;
    if ((gather_axis != nullptr && gather_axis->i() != 0) || !indices || indices->size() != 1) {
        return std::nullopt;
    }

    const int shape_index = find_producer(graph, gather.input(0));
    if (shape_index < 0 || !is_op(graph.node(shape_index), "Shape")) {
        return std::nullopt;
    }
    const onnx::NodeProto& shape = graph.node(shape_index);
    // Shape's start and end (opset 15) select a slice, which moves the indices.
    if (find_attribute(shape, "start") != nullptr || find_attribute(shape, "end") != nullptr) {
        return std::nullopt;
    }
    return ShapeDimension{shape.input(0), indices->front()};
}

// The constant that can replace the computed shape input of `reshape`. Returns nothing when the
// shape does not come from a Concat with at least one Shape -> Gather -> Unsqueeze entry, and the
// reason when such a shape cannot be made constant.
//
// An entry that reads dimension p of the Reshape's own data input at output position p becomes 0
// ("copy the input's dimension"), so a dynamic batch dimension stays dynamic. A static dimension
// becomes its value. One remaining dynamic dimension becomes -1 when no entry is -1 already.
std::optional<std::variant<std::vector<int64_t>, std::string>> plan_reshape_shape(
    const onnx::GraphProto& graph, const onnx::NodeProto& reshape,
    const std::map<std::string, std::vector<int64_t>>& dimensions, int64_t opset) {
    const int concat_index = reshape.input_size() > 1 ? find_producer(graph, reshape.input(1)) : -1;
    if (concat_index < 0 || !is_op(graph.node(concat_index), "Concat")) {
        return std::nullopt;
    }
    const onnx::AttributeProto* allow_zero = find_attribute(reshape, "allowzero");
    const bool zero_copies = allow_zero == nullptr || allow_zero->i() == 0;

    std::vector<int64_t> shape;
    std::vector<size_t> dynamic_positions;
    bool reads_shape = false;
    std::string reason;
    for (const std::string& entry : graph.node(concat_index).input()) {
        if (const std::optional<std::vector<int64_t>> values =
                int64_initializer_values(graph, entry)) {
            shape.insert(shape.end(), values->begin(), values->end());
            continue;
        }
        const std::optional<ShapeDimension> dimension = match_shape_dimension(graph, entry, opset);
        if (!dimension) {
            reason = fmt::format(
                "its shape part '{}' is neither an INT64 initializer nor read by "
                "Shape -> Gather -> Unsqueeze",
                entry);
            continue;
        }
        reads_shape = true;
        const auto found = dimensions.find(dimension->tensor);
        const int64_t rank =
            found != dimensions.end() ? static_cast<int64_t>(found->second.size()) : 0;
        const int64_t index = dimension->index < 0 ? dimension->index + rank : dimension->index;
        const int64_t position = static_cast<int64_t>(shape.size());
        if (dimension->tensor == reshape.input(0) && index == position && zero_copies) {
            shape.push_back(0);
        } else if (index >= 0 && index < rank && found->second[static_cast<size_t>(index)] >= 0) {
            shape.push_back(found->second[static_cast<size_t>(index)]);
        } else {
            dynamic_positions.push_back(shape.size());
            shape.push_back(-1);
        }
    }
    if (!reads_shape) {
        return std::nullopt;
    }
    if (!reason.empty()) {
        return reason;
    }
    const auto inferred_count = std::count(shape.begin(), shape.end(), -1);
    if (!dynamic_positions.empty() && inferred_count > 1) {
        return fmt::format(
            "its shape would need {} entries of -1 ({} for dynamic dimensions that "
            "are not copied from its input)",
            inferred_count, dynamic_positions.size());
    }
    return shape;
}

// Removes the Shape, Gather, Unsqueeze and Concat nodes whose outputs nothing reads any more.
int remove_unread_shape_nodes(onnx::GraphProto& graph) {
    const std::set<std::string> shape_ops = {"Shape", "Gather", "Unsqueeze", "Concat"};
    int removed = 0;
    for (bool again = true; again;) {
        again = false;
        for (int n = graph.node_size() - 1; n >= 0; --n) {
            const onnx::NodeProto& node = graph.node(n);
            const bool unread = std::all_of(
                node.output().begin(), node.output().end(),
                [&](const std::string& output) { return count_uses(graph, output) == 0; });
            if (shape_ops.contains(node.op_type()) && is_default_domain(node.domain()) && unread) {
                erase_node(graph, n);
                ++removed;
                again = true;
            }
        }
    }
    return removed;
}

// Replaces the shapes that torch exports compute for x.view(x.size(0), -1) with a dynamic batch
// (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) by constants, so that the quantizer gets a
// Reshape with a constant shape.
void fold_computed_reshape_shapes(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    const std::map<std::string, std::vector<int64_t>> dimensions =
        infer_dimensions(preparation.model);
    const int64_t opset = default_opset(preparation.model);
    int folded = 0;
    for (onnx::NodeProto& reshape : *graph.mutable_node()) {
        if (!is_op(reshape, "Reshape")) {
            continue;
        }
        const auto plan = plan_reshape_shape(graph, reshape, dimensions, opset);
        if (!plan) {
            continue;
        }
        if (const std::string* reason = std::get_if<std::string>(&*plan)) {
            preparation.warnings.push_back(fmt::format(
                "Reshape '{}' keeps its computed shape because {}", reshape.name(), *reason));
            continue;
        }
        const std::vector<int64_t>& shape = std::get<std::vector<int64_t>>(*plan);
        const std::string name = unique_name(graph, reshape.name() + "_shape");
        *graph.add_initializer() =
            make_int64_tensor(name, {static_cast<int64_t>(shape.size())}, shape);
        reshape.set_input(1, name);
        preparation.changes.push_back(
            fmt::format("replaced the computed shape of Reshape '{}' by the constant [{}]",
                        reshape.name(), fmt::join(shape, ",")));
        ++folded;
    }
    if (folded > 0) {
        const int removed = remove_unread_shape_nodes(graph);
        preparation.changes.push_back(
            fmt::format("removed {} Shape, Gather, Unsqueeze and Concat nodes that computed "
                        "Reshape shapes",
                        removed));
    }
}

// ------------------------------------------------------------------------------------------------
// BatchNormalization folding

// A BatchNormalization node and the Conv it folds into, with the float values both read.
struct BatchNormFold {
    int conv_index = -1;
    std::vector<float> weights;   // Conv weights [C_out, C_in / groups, k...], row-major
    std::vector<float> bias;      // Conv bias [C_out], zeros when the Conv has none
    std::vector<float> scale;     // BatchNormalization's gamma [C_out]
    std::vector<float> shift;     // BatchNormalization's beta [C_out]
    std::vector<float> mean;      // running mean [C_out]
    std::vector<float> variance;  // running variance [C_out]
    double epsilon = kDefaultBatchNormEpsilon;
};

// Reads what folding `batch_norm` needs. Returns the reason instead when it cannot be folded.
std::variant<BatchNormFold, std::string> plan_batch_norm_fold(const onnx::GraphProto& graph,
                                                              const onnx::NodeProto& batch_norm) {
    if (batch_norm.input_size() != 5) {
        return std::string("it does not have the 5 inputs X, scale, B, mean and var");
    }
    for (int i = 1; i < batch_norm.output_size(); ++i) {
        if (!batch_norm.output(i).empty()) {
            return std::string("it also writes training statistics");
        }
    }
    if (const onnx::AttributeProto* training = find_attribute(batch_norm, "training_mode");
        training != nullptr && training->i() != 0) {
        return std::string("it is in training mode");
    }

    BatchNormFold fold;
    const std::string& conv_output = batch_norm.input(0);
    fold.conv_index = find_producer(graph, conv_output);
    if (fold.conv_index < 0 || !is_op(graph.node(fold.conv_index), "Conv")) {
        return fmt::format("its input '{}' is not written by a Conv", conv_output);
    }
    const onnx::NodeProto& conv = graph.node(fold.conv_index);
    if (count_uses(graph, conv_output) != 1) {
        return fmt::format("the output '{}' of Conv '{}' is also read elsewhere", conv_output,
                           conv.name());
    }

    std::optional<std::vector<float>> weights =
        conv.input_size() > 1 ? float_initializer_values(graph, conv.input(1)) : std::nullopt;
    if (!weights) {
        return fmt::format("the weights of Conv '{}' are not a float initializer", conv.name());
    }
    const int64_t channels = graph.initializer(find_initializer(graph, conv.input(1))).dims(0);
    fold.weights = std::move(*weights);

    const bool has_bias = conv.input_size() > 2 && !conv.input(2).empty();
    if (has_bias) {
        std::optional<std::vector<float>> bias = float_initializer_values(graph, conv.input(2));
        if (!bias || static_cast<int64_t>(bias->size()) != channels) {
            return fmt::format("the bias of Conv '{}' is not a float initializer of {} values",
                               conv.name(), channels);
        }
        fold.bias = std::move(*bias);
    } else {
        fold.bias.assign(static_cast<size_t>(channels), 0.0f);
    }

    const std::vector<std::pair<std::vector<float>*, const char*>> parameters = {
        {&fold.scale, "scale"}, {&fold.shift, "B"}, {&fold.mean, "mean"}, {&fold.variance, "var"}};
    for (size_t p = 0; p < parameters.size(); ++p) {
        const std::string& name = batch_norm.input(static_cast<int>(p) + 1);
        std::optional<std::vector<float>> values = float_initializer_values(graph, name);
        if (!values || static_cast<int64_t>(values->size()) != channels) {
            return fmt::format("its {} input '{}' is not a float initializer of {} values",
                               parameters[p].second, name, channels);
        }
        *parameters[p].first = std::move(*values);
    }
    if (const onnx::AttributeProto* epsilon = find_attribute(batch_norm, "epsilon")) {
        fold.epsilon = epsilon->f();
    }
    return fold;
}

// Writes `values` into initializer `name` in place when one node input is its only reader, else
// into a new initializer named after `new_name_base`. Returns the name the node should read.
std::string write_folded_initializer(onnx::GraphProto& graph, const std::string& name,
                                     const std::string& new_name_base,
                                     const std::vector<int64_t>& dims,
                                     const std::vector<float>& values) {
    const int index = find_initializer(graph, name);
    if (index >= 0 && count_uses(graph, name) == 1) {
        *graph.mutable_initializer(index) = make_float_tensor(name, dims, values);
        return name;
    }
    const std::string new_name = unique_name(graph, new_name_base);
    *graph.add_initializer() = make_float_tensor(new_name, dims, values);
    return new_name;
}

// Name of a bias created for a Conv without one: torch's "<module>.bias" when the weights are
// "<module>.weight", else "<weights>_bias".
std::string new_bias_name(const std::string& weights_name) {
    const std::string suffix = ".weight";
    if (weights_name.size() > suffix.size() && weights_name.ends_with(suffix)) {
        return weights_name.substr(0, weights_name.size() - suffix.size()) + ".bias";
    }
    return weights_name + "_bias";
}

// Folds BatchNormalization node `batch_norm_index` into its Conv. With
//   y = scale * (conv(x) + b - mean) / sqrt(var + epsilon) + B
// and factor = scale / sqrt(var + epsilon) per output channel c, the Conv computes y itself with
//   W'[c] = W[c] * factor[c]   and   b'[c] = (b[c] - mean[c]) * factor[c] + B[c].
// Dimension 0 of Conv weights is the output channel for any group count, so this holds for
// grouped and depthwise Convs too. The products are taken in double and rounded once.
void fold_batch_norm(onnx::GraphProto& graph, int batch_norm_index, const BatchNormFold& fold) {
    const onnx::NodeProto batch_norm = graph.node(batch_norm_index);
    onnx::NodeProto& conv = *graph.mutable_node(fold.conv_index);
    const onnx::TensorProto& weights = graph.initializer(find_initializer(graph, conv.input(1)));
    const std::vector<int64_t> weight_dims(weights.dims().begin(), weights.dims().end());
    const int64_t channels = weight_dims.front();

    std::vector<float> folded_weights = fold.weights;
    std::vector<float> folded_bias(static_cast<size_t>(channels));
    const size_t per_channel = folded_weights.size() / static_cast<size_t>(channels);
    for (size_t c = 0; c < static_cast<size_t>(channels); ++c) {
        const double factor = static_cast<double>(fold.scale[c]) /
                              std::sqrt(static_cast<double>(fold.variance[c]) + fold.epsilon);
        for (size_t k = c * per_channel; k < (c + 1) * per_channel; ++k) {
            folded_weights[k] = static_cast<float>(static_cast<double>(folded_weights[k]) * factor);
        }
        folded_bias[c] = static_cast<float>(
            (static_cast<double>(fold.bias[c]) - static_cast<double>(fold.mean[c])) * factor +
            static_cast<double>(fold.shift[c]));
    }

    const std::string weights_name = conv.input(1);
    conv.set_input(1, write_folded_initializer(graph, weights_name, weights_name + "_folded",
                                               weight_dims, folded_weights));
    const bool has_bias = conv.input_size() > 2 && !conv.input(2).empty();
    if (has_bias) {
        const std::string bias_name = conv.input(2);
        conv.set_input(2, write_folded_initializer(graph, bias_name, bias_name + "_folded",
                                                   {channels}, folded_bias));
    } else {
        const std::string bias_name = unique_name(graph, new_bias_name(weights_name));
        *graph.add_initializer() = make_float_tensor(bias_name, {channels}, folded_bias);
        if (conv.input_size() == 2) {
            conv.add_input(bias_name);
        } else {
            conv.set_input(2, bias_name);
        }
    }

    conv.set_output(0, batch_norm.output(0));
    erase_node(graph, batch_norm_index);
}

// Folds every BatchNormalization that directly follows a Conv no other node reads. The others
// stay, and the quantizer leaves them in float.
void fold_batch_norms(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    for (int n = 0; n < graph.node_size();) {
        const onnx::NodeProto& node = graph.node(n);
        if (!is_op(node, "BatchNormalization")) {
            ++n;
            continue;
        }
        std::variant<BatchNormFold, std::string> plan = plan_batch_norm_fold(graph, node);
        if (const std::string* reason = std::get_if<std::string>(&plan)) {
            preparation.warnings.push_back(fmt::format(
                "BatchNormalization '{}' stays in float because {}", node.name(), *reason));
            ++n;
            continue;
        }
        const BatchNormFold& fold = std::get<BatchNormFold>(plan);
        preparation.changes.push_back(fmt::format("folded BatchNormalization '{}' into Conv '{}'",
                                                  node.name(), graph.node(fold.conv_index).name()));
        fold_batch_norm(graph, n, fold);
    }
}

// ------------------------------------------------------------------------------------------------
// Clip to Relu

// The value of an optional scalar float initializer: nothing when `name` is empty (the input is
// absent), NaN when it is not a scalar float initializer.
std::optional<float> optional_scalar(const onnx::GraphProto& graph, const std::string& name) {
    if (name.empty()) {
        return std::nullopt;
    }
    const std::optional<std::vector<float>> values = float_initializer_values(graph, name);
    if (!values || values->size() != 1) {
        return std::numeric_limits<float>::quiet_NaN();
    }
    return values->front();
}

// True for a Clip with min 0 and no max, which is Relu. A max of +infinity or of the largest
// float (opset 10's default) counts as no max.
bool is_relu_clip(const onnx::GraphProto& graph, const onnx::NodeProto& clip, int64_t opset) {
    std::optional<float> min;
    std::optional<float> max;
    if (opset >= kClipInputsOpset) {
        min = optional_scalar(graph, clip.input_size() > 1 ? clip.input(1) : "");
        max = optional_scalar(graph, clip.input_size() > 2 ? clip.input(2) : "");
    } else {
        if (const onnx::AttributeProto* attribute = find_attribute(clip, "min")) {
            min = attribute->f();
        }
        if (const onnx::AttributeProto* attribute = find_attribute(clip, "max")) {
            max = attribute->f();
        }
    }
    const bool no_max = !max || *max >= std::numeric_limits<float>::max();
    return min && *min == 0.0f && no_max;
}

void replace_relu_clips(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    const int64_t opset = default_opset(preparation.model);
    for (onnx::NodeProto& node : *graph.mutable_node()) {
        if (!is_op(node, "Clip") || !is_relu_clip(graph, node, opset)) {
            continue;
        }
        node.set_op_type("Relu");
        node.mutable_input()->DeleteSubrange(1, node.input_size() - 1);
        node.clear_attribute();
        preparation.changes.push_back(
            fmt::format("replaced Clip '{}' (min 0, no max) by Relu", node.name()));
    }
}

// ------------------------------------------------------------------------------------------------
// Clean-up and shape inference

void remove_unused_initializers(Preparation& preparation) {
    onnx::GraphProto& graph = preparation.graph();
    std::set<std::string> used;
    for (const onnx::NodeProto& node : graph.node()) {
        used.insert(node.input().begin(), node.input().end());
    }
    for (const onnx::ValueInfoProto& output : graph.output()) {
        used.insert(output.name());
    }
    google::protobuf::RepeatedPtrField<onnx::TensorProto> used_initializers;
    for (onnx::TensorProto& initializer : *graph.mutable_initializer()) {
        if (used.contains(initializer.name())) {
            *used_initializers.Add() = std::move(initializer);
        }
    }
    const int removed = graph.initializer_size() - used_initializers.size();
    graph.mutable_initializer()->Swap(&used_initializers);
    if (removed > 0) {
        preparation.changes.push_back(
            fmt::format("removed {} initializers that no node reads", removed));
    }
}

// Replaces the value_info with what ONNX's strict shape inference derives, because the rewrites
// renamed and removed tensors that the old entries describe.
void infer_shapes(Preparation& preparation) {
    preparation.graph().clear_value_info();
    try {
        const onnx::ShapeInferenceOptions options(/*check_type_val=*/true, /*strict_mode_val=*/1);
        onnx::shape_inference::InferShapes(preparation.model, onnx::OpSchemaRegistry::Instance(),
                                           options);
    } catch (const std::exception& error) {
        fail(ExitCode::kInvalidInput, "ONNX shape inference fails on model '{}': {}",
             preparation.label, one_line(error.what()));
    }
}

void describe_input(const onnx::GraphProto& graph, PreparedModel& prepared) {
    const onnx::ValueInfoProto& input = graph.input(0);
    prepared.input_name = input.name();
    std::vector<std::string> dims_text;
    for (const onnx::TensorShapeProto::Dimension& dim : input.type().tensor_type().shape().dim()) {
        if (dim.has_dim_value()) {
            prepared.input_shape.push_back(dim.dim_value());
            dims_text.push_back(std::to_string(dim.dim_value()));
        } else {
            prepared.input_shape.push_back(-1);
            dims_text.push_back(dim.has_dim_param() ? dim.dim_param() : "?");
        }
    }
    prepared.input_shape_text = fmt::format("[{}]", fmt::join(dims_text, ","));
}

}  // namespace

PreparedModel prepare_for_quantization(const onnx::ModelProto& model, const std::string& label) {
    if (!model.has_graph()) {
        fail(ExitCode::kInvalidInput, "model '{}' has no graph", label);
    }
    check_single_float_input(model, label);
    check_no_subgraphs(model, label);

    Preparation preparation{model, label, {}, {}};
    upgrade_old_opset(preparation);
    convert_constants_to_initializers(preparation);
    remove_initializers_from_inputs(preparation);
    name_unnamed_nodes(preparation);
    remove_identity_and_dropout(preparation);
    fold_computed_reshape_shapes(preparation);
    fold_batch_norms(preparation);
    replace_relu_clips(preparation);
    remove_unused_initializers(preparation);
    raise_ir_version_for_initializers(preparation);
    infer_shapes(preparation);

    PreparedModel prepared;
    prepared.model = std::move(preparation.model);
    prepared.changes = std::move(preparation.changes);
    prepared.warnings = std::move(preparation.warnings);
    describe_input(prepared.model.graph(), prepared);
    return prepared;
}

}  // namespace edgeq
