#include "edgeq/npu/target.h"

#include <algorithm>
#include <array>
#include <set>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
// Generated at configure time from src/edgeq/npu/targets/*.json (see src/CMakeLists.txt).
#include "edgeq/npu/builtin_targets.h"

namespace edgeq::npu {

namespace {

using nlohmann::json;

struct TypeName {
    int32_t type;
    const char* name;
};

constexpr std::array<TypeName, 5> kTypeNames = {{
    {onnx::TensorProto::INT8, "int8"},
    {onnx::TensorProto::UINT8, "uint8"},
    {onnx::TensorProto::INT16, "int16"},
    {onnx::TensorProto::UINT16, "uint16"},
    {onnx::TensorProto::INT32, "int32"},
}};

const std::set<std::string> kTopLevelFields = {
    "name", "device", "description", "quantized_types", "bias_types", "min_conv_layers", "ops"};

const std::set<std::string> kOpConditions = {"quantized_inputs", "bias_input", "quantized_outputs",
                                             "fuses_after", "follows_neighbours"};

// The JSON type of `value` in the words of the JSON specification, for errors.
std::string json_type_name(const json& value) {
    if (value.is_number_integer()) {
        return "integer";
    }
    return value.type_name();
}

// Reads and checks one JSON document. Every error names `label` and the field.
class TargetParser {
  public:
    explicit TargetParser(std::string label) : label_(std::move(label)) {}

    TargetDescription parse(const std::string& text) const {
        const json root = parse_json(text);
        if (!root.is_object()) {
            fail_field("the document", "an object", root);
        }
        reject_unknown(root, kTopLevelFields, "field", "");

        TargetDescription target;
        target.name = string_field(root, "name");
        target.device = string_field(root, "device");
        if (target.name.empty() || target.device.empty()) {
            fail(ExitCode::kInvalidInput, "target {}: 'name' and 'device' must not be empty",
                 label_);
        }
        if (target.device == "CPU") {
            fail(ExitCode::kInvalidInput,
                 "target {}: device 'CPU' is where unplaced nodes go; name the accelerator "
                 "(for example \"NPU\")",
                 label_);
        }
        if (root.contains("description")) {
            target.description = string_field(root, "description");
        }
        target.quantized_types = type_list(root, "quantized_types");
        target.bias_types =
            root.contains("bias_types") ? type_list(root, "bias_types") : target.quantized_types;
        if (root.contains("min_conv_layers")) {
            target.min_conv_layers = integer_field(root, "min_conv_layers", "'min_conv_layers'");
        }

        const json& ops = field(root, "ops");
        if (!ops.is_object() || ops.empty()) {
            fail_field("'ops'", "a non-empty object of op types", ops);
        }
        for (const auto& [op_type, conditions] : ops.items()) {
            target.ops[op_type] = parse_op(op_type, conditions);
        }
        check_fusions(target);
        return target;
    }

  private:
    std::string label_;

    json parse_json(const std::string& text) const {
        try {
            return json::parse(text);
        } catch (const json::parse_error& error) {
            // nlohmann's message starts with "[json.exception.parse_error.101] ", and the rest
            // gives the line and column.
            std::string_view message = error.what();
            const size_t prefix_end = message.find("] ");
            if (prefix_end != std::string_view::npos) {
                message.remove_prefix(prefix_end + 2);
            }
            fail(ExitCode::kInvalidInput, "target {}: not valid JSON: {}", label_, message);
        }
    }

    [[noreturn]] void fail_field(const std::string& field_label, const std::string& expected,
                                 const json& value) const {
        fail(ExitCode::kInvalidInput, "target {}: {} must be {}, found {}", label_, field_label,
             expected, json_type_name(value));
    }

    const json& field(const json& object, const std::string& key) const {
        const auto found = object.find(key);
        if (found == object.end()) {
            fail(ExitCode::kInvalidInput, "target {}: missing field '{}'", label_, key);
        }
        return *found;
    }

    void reject_unknown(const json& object, const std::set<std::string>& known,
                        const std::string& kind, const std::string& where) const {
        for (const auto& item : object.items()) {
            if (!known.contains(item.key())) {
                fail(ExitCode::kInvalidInput, "target {}: unknown {} '{}'{}; known: {}", label_,
                     kind, item.key(), where, fmt::join(known, ", "));
            }
        }
    }

    std::string string_field(const json& object, const std::string& key) const {
        const json& value = field(object, key);
        if (!value.is_string()) {
            fail_field(fmt::format("'{}'", key), "a string", value);
        }
        return value.get<std::string>();
    }

    int integer_field(const json& object, const std::string& key,
                      const std::string& field_label) const {
        const json& value = field(object, key);
        if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 1024) {
            fail_field(field_label, "an integer in [0, 1024]", value);
        }
        return value.get<int>();
    }

    std::vector<int32_t> type_list(const json& object, const std::string& key) const {
        const json& value = field(object, key);
        if (!value.is_array() || value.empty()) {
            fail_field(fmt::format("'{}'", key), "a non-empty array of type names", value);
        }
        std::vector<int32_t> types;
        for (const json& entry : value) {
            if (!entry.is_string()) {
                fail_field(fmt::format("each entry of '{}'", key), "a string", entry);
            }
            types.push_back(parse_type(entry.get<std::string>(), key));
        }
        return types;
    }

    int32_t parse_type(const std::string& name, const std::string& key) const {
        for (const TypeName& entry : kTypeNames) {
            if (name == entry.name) {
                return entry.type;
            }
        }
        fail(ExitCode::kInvalidInput,
             "target {}: unknown type '{}' in '{}'; known: int8, uint8, int16, uint16, int32",
             label_, name, key);
    }

    std::vector<int> slot_list(const json& value, const std::string& field_label) const {
        if (!value.is_array()) {
            fail_field(field_label, "\"all\" or an array of input slots", value);
        }
        std::vector<int> slots;
        for (const json& entry : value) {
            if (!entry.is_number_integer() || entry.get<int64_t>() < 0 ||
                entry.get<int64_t>() > 1024) {
                fail_field(fmt::format("each slot of {}", field_label), "an integer in [0, 1024]",
                           entry);
            }
            slots.push_back(entry.get<int>());
        }
        return slots;
    }

    bool boolean_field(const json& object, const std::string& key,
                       const std::string& field_label) const {
        const json& value = field(object, key);
        if (!value.is_boolean()) {
            fail_field(field_label, "true or false", value);
        }
        return value.get<bool>();
    }

    OpRule parse_op(const std::string& op_type, const json& conditions) const {
        const std::string where = fmt::format(" in op '{}'", op_type);
        if (!conditions.is_object()) {
            fail_field(fmt::format("op '{}'", op_type), "an object of conditions", conditions);
        }
        reject_unknown(conditions, kOpConditions, "condition", where);

        OpRule rule;
        rule.op_type = op_type;
        if (conditions.contains("quantized_inputs")) {
            const json& inputs = conditions.at("quantized_inputs");
            const std::string field_label = fmt::format("'quantized_inputs'{}", where);
            if (inputs.is_string()) {
                if (inputs.get<std::string>() != "all") {
                    fail(ExitCode::kInvalidInput,
                         "target {}: {} must be \"all\" or an array of input slots, found \"{}\"",
                         label_, field_label, inputs.get<std::string>());
                }
                rule.all_inputs_quantized = true;
            } else {
                rule.quantized_inputs = slot_list(inputs, field_label);
            }
        }
        if (conditions.contains("bias_input")) {
            rule.bias_input =
                integer_field(conditions, "bias_input", fmt::format("'bias_input'{}", where));
            const bool also_quantized =
                rule.all_inputs_quantized ||
                std::ranges::find(rule.quantized_inputs, *rule.bias_input) !=
                    rule.quantized_inputs.end();
            if (also_quantized) {
                fail(ExitCode::kInvalidInput,
                     "target {}: input {}{} is both a bias and a quantized input; list it in "
                     "one of the two",
                     label_, *rule.bias_input, where);
            }
        }
        if (conditions.contains("quantized_outputs")) {
            rule.quantized_outputs = boolean_field(conditions, "quantized_outputs",
                                                   fmt::format("'quantized_outputs'{}", where));
        }
        if (conditions.contains("follows_neighbours")) {
            rule.follows_neighbours = boolean_field(conditions, "follows_neighbours",
                                                    fmt::format("'follows_neighbours'{}", where));
            if (rule.follows_neighbours && op_type != "QuantizeLinear" &&
                op_type != "DequantizeLinear") {
                fail(ExitCode::kInvalidInput,
                     "target {}: 'follows_neighbours'{} applies to QuantizeLinear and "
                     "DequantizeLinear only",
                     label_, where);
            }
        }
        if (conditions.contains("fuses_after")) {
            const json& producers = conditions.at("fuses_after");
            if (!producers.is_array()) {
                fail_field(fmt::format("'fuses_after'{}", where), "an array of op types",
                           producers);
            }
            for (const json& producer : producers) {
                if (!producer.is_string()) {
                    fail_field(fmt::format("each entry of 'fuses_after'{}", where), "a string",
                               producer);
                }
                rule.fuses_after.push_back(producer.get<std::string>());
            }
        }
        return rule;
    }

    // A fused producer has to be an op the target takes, or the pair could never be placed.
    void check_fusions(const TargetDescription& target) const {
        for (const auto& [op_type, rule] : target.ops) {
            for (const std::string& producer : rule.fuses_after) {
                if (!target.ops.contains(producer)) {
                    fail(ExitCode::kInvalidInput,
                         "target {}: op '{}' fuses after '{}', which is not in 'ops'; add it or "
                         "remove it from 'fuses_after'",
                         label_, op_type, producer);
                }
            }
        }
    }
};

struct BuiltinTarget {
    const char* name;
    std::string_view json_text;
};

constexpr std::array<BuiltinTarget, 1> kBuiltinTargets = {{
    {"strix-xint8", kStrixXint8TargetJson},
}};

}  // namespace

const OpRule* TargetDescription::find_op(const std::string& op_type) const {
    const auto found = ops.find(op_type);
    return found == ops.end() ? nullptr : &found->second;
}

TargetDescription parse_target(const std::string& text, const std::string& label) {
    return TargetParser(label).parse(text);
}

TargetDescription load_target(const std::filesystem::path& path) {
    std::string text;
    try {
        text = read_file(path);
    } catch (const Error& error) {
        throw Error(error.code(), fmt::format("target description (--target): {}", error.what()));
    }

    // Every error about the contents ends with the two ways on.
    try {
        return parse_target(text, path.string());
    } catch (const Error& error) {
        throw Error(error.code(),
                    fmt::format("{}; fix the target description (its format is in the header of "
                                "src/edgeq/npu/target.h) or omit --target for the built-in "
                                "strix-xint8",
                                error.what()));
    }
}

TargetDescription builtin_target(const std::string& name) {
    for (const BuiltinTarget& target : kBuiltinTargets) {
        if (name == target.name) {
            return parse_target(std::string(target.json_text),
                                fmt::format("built-in '{}'", target.name));
        }
    }
    fail(ExitCode::kUsage, "unknown target '{}'; built-in targets: {}", name,
         fmt::join(builtin_target_names(), ", "));
}

std::vector<std::string> builtin_target_names() {
    std::vector<std::string> names;
    for (const BuiltinTarget& target : kBuiltinTargets) {
        names.emplace_back(target.name);
    }
    return names;
}

std::string element_type_name(int32_t type) {
    for (const TypeName& entry : kTypeNames) {
        if (type == entry.type) {
            return entry.name;
        }
    }
    return fmt::format("type{}", type);
}

}  // namespace edgeq::npu
