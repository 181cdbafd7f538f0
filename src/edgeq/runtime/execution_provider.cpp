#include "edgeq/runtime/execution_provider.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"

namespace edgeq {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct ProviderName {
    ExecutionProvider provider;
    const char* name;
};

constexpr std::array<ProviderName, 4> kProviderNames = {{
    {ExecutionProvider::kCpu, "cpu"},
    {ExecutionProvider::kVitisAi, "vitisai"},
    {ExecutionProvider::kNpuSim, "npu-sim"},
    {ExecutionProvider::kAuto, "auto"},
}};

// edgeq's option name and the key the Vitis AI EP reads. ONNX Runtime's factory
// (vitisai_provider_factory.cc) hands the map to AMD's Vitis AI runtime unchanged, so the spelling
// is AMD's. The Ryzen AI Software documentation ("Model Compilation and Deployment", latest page,
// read in 2026) lists config_file, xclbin, cache_dir, cache_key and encryptionKey. ONNX Runtime's
// Vitis AI EP documentation has used cache_dir and cache_key, and has listed log_level, since May
// 2025.
// NOTE: Vitis AI 3.5 and the older Ryzen AI pages spell cacheDir and cacheKey. Users of those
// releases can pass the old keys, because unknown keys reach the EP unchanged.
// NOTE: neither document lists target (the compiler back end, "X1" or "X2"), so its spelling is
// unverified. Check it against the installed SDK.
struct VitisAiOptionKey {
    const char* option_name;
    const char* provider_key;
};

constexpr std::array<VitisAiOptionKey, 7> kVitisAiOptionKeys = {{
    {"config_file", "config_file"},
    {"cache_dir", "cache_dir"},
    {"cache_key", "cache_key"},
    {"xclbin", "xclbin"},
    {"target", "target"},
    {"encryption_key", "encryptionKey"},
    {"log_level", "log_level"},
}};

// Options whose value names a file that must exist before the EP is created. cache_dir is left
// out because the EP creates it.
constexpr std::array<const char*, 2> kFileOptions = {"config_file", "xclbin"};

// The provider key whose value is a secret and never reaches a report.
constexpr const char* kSecretProviderKey = "encryptionKey";

std::string known_option_names() {
    std::string names;
    for (const VitisAiOptionKey& key : kVitisAiOptionKeys) {
        names += names.empty() ? "" : ", ";
        names += key.option_name;
    }
    return names;
}

const VitisAiOptionKey* find_option_key(std::string_view option_name) {
    for (const VitisAiOptionKey& key : kVitisAiOptionKeys) {
        if (option_name == key.option_name) {
            return &key;
        }
    }
    return nullptr;
}

void warn_unknown_option(const std::string& option_name, const std::string& source) {
    spdlog::warn(
        "warning: Vitis AI option '{}' from {} is not one of {}; it is passed to the EP unchanged",
        option_name, source, known_option_names());
}

// Drops nlohmann's "[json.exception.parse_error.101] " prefix and keeps the parser's position and
// reason ("parse error at line 2, column 5: ...").
std::string parser_message(const json::parse_error& error) {
    const std::string message = error.what();
    const size_t prefix_end = message.find("] ");
    return prefix_end == std::string::npos ? message : message.substr(prefix_end + 2);
}

bool has_vitisai_options(const ProviderRequest& request) {
    return !request.vitisai_options_file.empty() || !request.vitisai_options.empty();
}

}  // namespace

ExecutionProvider parse_execution_provider(std::string_view text) {
    for (const ProviderName& entry : kProviderNames) {
        if (text == entry.name) {
            return entry.provider;
        }
    }
    fail(ExitCode::kUsage, "unknown execution provider '{}'; use cpu, vitisai, npu-sim or auto",
         text);
}

const char* execution_provider_name(ExecutionProvider provider) {
    for (const ProviderName& entry : kProviderNames) {
        if (entry.provider == provider) {
            return entry.name;
        }
    }
    fail(ExitCode::kInternal, "execution provider {} has no name", static_cast<int>(provider));
}

VitisAiOptions read_vitisai_options_file(const fs::path& path) {
    std::string text;
    try {
        text = read_file(path);
    } catch (const Error& error) {
        throw Error(error.code(),
                    fmt::format("Vitis AI options file (--vitisai-config): {}", error.what()));
    }
    json document;
    try {
        document = json::parse(text);
    } catch (const json::parse_error& error) {
        fail(ExitCode::kInvalidInput,
             "Vitis AI options file '{}' is not valid JSON (byte {}, {}); fix the file",
             path.string(), error.byte, parser_message(error));
    }
    if (!document.is_object()) {
        fail(ExitCode::kInvalidInput,
             "Vitis AI options file '{}' contains a JSON {}; it must contain an object of option "
             "names to string values, for example {{\"cache_dir\": \"cache\"}}",
             path.string(), document.type_name());
    }

    VitisAiOptions options;
    for (const auto& [name, value] : document.items()) {
        if (name.empty()) {
            fail(ExitCode::kInvalidInput, "Vitis AI options file '{}' contains an empty key",
                 path.string());
        }
        if (value.is_string()) {
            options[name] = value.get<std::string>();
        } else if (value.is_number() || value.is_boolean()) {
            // The EP takes strings only: 1 becomes "1" and true becomes "true".
            options[name] = value.dump();
        } else {
            fail(ExitCode::kInvalidInput,
                 "Vitis AI option '{}' in '{}' is a JSON {}; give a string, number or boolean",
                 name, path.string(), value.type_name());
        }
        if (find_option_key(name) == nullptr) {
            warn_unknown_option(name, path.string());
        }
    }
    return options;
}

std::pair<std::string, std::string> parse_vitisai_option(std::string_view argument) {
    const size_t equals = argument.find('=');
    if (equals == std::string_view::npos || equals == 0) {
        fail(ExitCode::kUsage,
             "--vitisai-option '{}' is not key=value; use for example --vitisai-option "
             "cache_dir=cache",
             argument);
    }
    return {std::string(argument.substr(0, equals)), std::string(argument.substr(equals + 1))};
}

std::map<std::string, std::string> build_vitisai_provider_options(const ProviderRequest& request) {
    // Merge: the file first, then the flags, so that a flag overrides the same key in the file.
    VitisAiOptions merged;
    if (!request.vitisai_options_file.empty()) {
        merged = read_vitisai_options_file(request.vitisai_options_file);
    }
    for (const auto& [name, value] : request.vitisai_options) {
        if (find_option_key(name) == nullptr) {
            warn_unknown_option(name, "--vitisai-option");
        }
        merged[name] = value;
    }

    // Check the files now: the EP would report a missing one only when a model is compiled.
    for (const char* file_option : kFileOptions) {
        const auto found = merged.find(file_option);
        if (found != merged.end() && !fs::is_regular_file(found->second)) {
            fail(ExitCode::kIo, "Vitis AI option {} names '{}', which is not found; check the path",
                 file_option, found->second);
        }
    }

    // Rename to the EP's spelling. Unknown keys keep the user's spelling.
    std::map<std::string, std::string> provider_options;
    for (const auto& [name, value] : merged) {
        const VitisAiOptionKey* key = find_option_key(name);
        provider_options[key != nullptr ? key->provider_key : name] = value;
    }
    return provider_options;
}

std::vector<std::pair<std::string, std::string>> read_xlnx_environment() {
    constexpr std::string_view kPrefix = "XLNX_";
    std::vector<std::pair<std::string, std::string>> variables;
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
        const std::string_view text = *entry;
        if (!text.starts_with(kPrefix)) {
            continue;
        }
        const size_t equals = text.find('=');
        if (equals == std::string_view::npos) {
            continue;
        }
        variables.emplace_back(std::string(text.substr(0, equals)),
                               std::string(text.substr(equals + 1)));
    }
    std::sort(variables.begin(), variables.end());
    return variables;
}

ProviderSetup resolve_execution_provider(const ProviderRequest& request) {
    ProviderSetup setup;
    setup.requested = request.provider;
    setup.resolved = request.provider;
    setup.environment = read_xlnx_environment();

    if (request.provider == ExecutionProvider::kCpu ||
        request.provider == ExecutionProvider::kNpuSim) {
        if (has_vitisai_options(request)) {
            spdlog::warn("warning: Vitis AI options are ignored with --ep {}",
                         execution_provider_name(request.provider));
        }
        return setup;
    }

    // vitisai or auto: bad options are the user's error in both cases, so they fail before the
    // EP is tried.
    SessionConfig config;
    config.execution_provider = kVitisAiProvider;
    config.provider_options = build_vitisai_provider_options(request);

    if (request.provider == ExecutionProvider::kVitisAi) {
        check_execution_provider(config);
        setup.provider_options = config.provider_options;
        return setup;
    }

    try {
        check_execution_provider(config);
        setup.resolved = ExecutionProvider::kVitisAi;
        setup.provider_options = config.provider_options;
    } catch (const Error& error) {
        if (error.code() != ExitCode::kUnsupported) {
            throw;
        }
        setup.resolved = ExecutionProvider::kCpu;
        setup.fallback_reason = error.what();
        spdlog::warn("warning: --ep auto falls back to the CPU: {}", setup.fallback_reason);
    }
    return setup;
}

SessionConfig make_session_config(const ProviderSetup& setup) {
    SessionConfig config;
    if (setup.resolved == ExecutionProvider::kCpu) {
        config.execution_provider = kCpuProvider;
        return config;
    }
    if (setup.resolved == ExecutionProvider::kVitisAi) {
        config.execution_provider = kVitisAiProvider;
        config.provider_options = setup.provider_options;
        return config;
    }
    fail(ExitCode::kInternal, "execution provider '{}' has no ONNX Runtime session",
         execution_provider_name(setup.resolved));
}

json provider_setup_json(const ProviderSetup& setup) {
    json options = json::object();
    for (const auto& [key, value] : setup.provider_options) {
        options[key] = key == kSecretProviderKey ? "<redacted>" : value;
    }
    json environment = json::object();
    for (const auto& [name, value] : setup.environment) {
        environment[name] = value;
    }

    json result;
    result["requested"] = execution_provider_name(setup.requested);
    result["resolved"] = execution_provider_name(setup.resolved);
    result["options"] = std::move(options);
    result["environment"] = std::move(environment);
    result["fallback"] =
        setup.fallback_reason.empty() ? json(nullptr) : json(setup.fallback_reason);
    return result;
}

}  // namespace edgeq
