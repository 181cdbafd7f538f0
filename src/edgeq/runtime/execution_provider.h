// Choice of execution provider (--ep) and the Vitis AI provider options, worked out once before a
// run: the user's request is parsed, `auto` is resolved to the CPU or Vitis AI, and the options
// are translated to the spelling the Vitis AI execution provider reads.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgeq/runtime/ort_session.h"

namespace edgeq {

// The --ep choices. kNpuSim is edgeq's own NPU simulator, not an ONNX Runtime provider.
enum class ExecutionProvider { kCpu, kVitisAi, kNpuSim, kAuto };

// Parses "cpu", "vitisai", "npu-sim" or "auto". Throws Error(kUsage) listing the four otherwise.
ExecutionProvider parse_execution_provider(std::string_view text);

// Returns the --ep spelling of `provider` ("cpu", "vitisai", "npu-sim", "auto").
const char* execution_provider_name(ExecutionProvider provider);

// Vitis AI provider options keyed by edgeq's snake_case names: config_file, cache_dir, cache_key,
// xclbin, target, encryption_key, log_level. Other keys are allowed and passed on unchanged.
using VitisAiOptions = std::map<std::string, std::string>;

// Reads a JSON object of Vitis AI options from `path`. String values are kept, numbers and
// booleans become their JSON text ("1", "true"), and unknown keys are kept with a warning.
// Throws Error(kIo) when the file cannot be read, and Error(kInvalidInput) naming the file and the
// byte offset when it is not valid JSON, or naming the key when a value is null, an array or an
// object.
VitisAiOptions read_vitisai_options_file(const std::filesystem::path& path);

// Splits one --vitisai-option argument "key=value" at its first '='. The value may be empty.
// Throws Error(kUsage) when there is no '=' or the key is empty.
std::pair<std::string, std::string> parse_vitisai_option(std::string_view argument);

// The execution provider and Vitis AI options requested on the command line.
struct ProviderRequest {
    ExecutionProvider provider = ExecutionProvider::kCpu;
    std::filesystem::path vitisai_options_file;  // JSON object of options, or empty for none
    VitisAiOptions vitisai_options;              // from flags, which override the file's values
};

// The execution provider a run uses, resolved once, and what it was configured with.
struct ProviderSetup {
    ExecutionProvider requested = ExecutionProvider::kCpu;
    // kCpu or kVitisAi after `auto`. kNpuSim is passed through for the caller to handle.
    ExecutionProvider resolved = ExecutionProvider::kCpu;
    // Options handed to the Vitis AI EP in its spelling, empty unless `resolved` is kVitisAi.
    std::map<std::string, std::string> provider_options;
    // Every XLNX_* environment variable, sorted by name.
    std::vector<std::pair<std::string, std::string>> environment;
    // Reason `auto` chose the CPU (the Vitis AI error message), empty unless it fell back.
    std::string fallback_reason;
};

// Merges the options file and the flag options (flags win), checks that the files named by
// config_file and xclbin exist, and renames the keys to the Vitis AI EP's spelling.
// Throws what read_vitisai_options_file throws, and Error(kIo) naming a missing file.
std::map<std::string, std::string> build_vitisai_provider_options(const ProviderRequest& request);

// Returns the name=value pairs of all environment variables whose name starts with XLNX_, sorted
// by name, values unchanged. The Vitis AI runtime reads several of them (XLNX_VART_FIRMWARE,
// XLNX_ENABLE_CACHE, XLNX_ONNX_EP_REPORT_FILE, XLNX_TARGET_NAME), so a run reports them all.
std::vector<std::pair<std::string, std::string>> read_xlnx_environment();

// Resolves `request` into the provider a run uses. `vitisai` fails with the error
// check_execution_provider throws (Error(kUnsupported), naming what is missing and how to get it)
// when ONNX Runtime has no Vitis AI EP. `auto` tries Vitis AI and falls back to the CPU with that
// error as fallback_reason. `cpu` and `npu-sim` are returned unchanged.
ProviderSetup resolve_execution_provider(const ProviderRequest& request);

// Returns the ONNX Runtime session configuration for a resolved setup: the CPU for kCpu, Vitis AI
// with its options for kVitisAi. Throws Error(kInternal) for kNpuSim and kAuto, which no ONNX
// Runtime session can use.
SessionConfig make_session_config(const ProviderSetup& setup);

// Converts the setup to a metrics.json object with requested, resolved, options, environment and
// fallback (null unless `auto` fell back).
// The value of encryptionKey is replaced by "<redacted>" so that the key never reaches a report.
nlohmann::json provider_setup_json(const ProviderSetup& setup);

}  // namespace edgeq
