// --ep parsing, Vitis AI options (file, flags, renaming, checks), the XLNX_* environment, and the
// resolution of vitisai and auto against the ONNX Runtime the tests link, which has no Vitis AI EP.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "edgeq/common/error.h"
#include "edgeq/runtime/execution_provider.h"
#include "edgeq/runtime/ort_session.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

struct CaughtError {
    ExitCode code = ExitCode::kSuccess;
    std::string message;
};

// Runs `action` and returns the edgeq::Error it throws, or nothing when it throws none.
template <typename Action>
std::optional<CaughtError> catch_error(Action action) {
    try {
        action();
    } catch (const Error& error) {
        return CaughtError{error.code(), error.what()};
    }
    return std::nullopt;
}

bool is_one_line(const std::string& message) {
    return message.find('\n') == std::string::npos && message.find('\r') == std::string::npos;
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream stream(path, std::ios::binary);
    stream << text;
}

// Sets an environment variable for the lifetime of the object and restores the old state.
class ScopedEnvironmentVariable {
  public:
    ScopedEnvironmentVariable(const char* name, const char* value) : name_(name) {
        if (const char* old_value = std::getenv(name)) {
            old_value_ = old_value;
        }
        setenv(name, value, 1);
    }
    ~ScopedEnvironmentVariable() {
        if (old_value_) {
            setenv(name_.c_str(), old_value_->c_str(), 1);
        } else {
            unsetenv(name_.c_str());
        }
    }
    ScopedEnvironmentVariable(const ScopedEnvironmentVariable&) = delete;
    ScopedEnvironmentVariable& operator=(const ScopedEnvironmentVariable&) = delete;

  private:
    std::string name_;
    std::optional<std::string> old_value_;
};

// The error that creating a Vitis AI session throws with the linked ONNX Runtime, or nothing when
// this ONNX Runtime has the Vitis AI EP (then the tests of the missing-EP path are skipped).
std::optional<CaughtError> missing_vitisai_error() {
    SessionConfig config;
    config.execution_provider = kVitisAiProvider;
    return catch_error([&] { check_execution_provider(config); });
}

TEST(ExecutionProviderName, ParsesEachChoice) {
    const std::vector<std::pair<std::string, ExecutionProvider>> cases = {
        {"cpu", ExecutionProvider::kCpu},
        {"vitisai", ExecutionProvider::kVitisAi},
        {"npu-sim", ExecutionProvider::kNpuSim},
        {"auto", ExecutionProvider::kAuto},
    };
    for (const auto& [text, provider] : cases) {
        EXPECT_EQ(parse_execution_provider(text), provider) << text;
        EXPECT_EQ(execution_provider_name(provider), text);
    }
}

TEST(ExecutionProviderName, RejectsUnknownName) {
    for (const std::string text : {"gpu", "CPU", "", "vitis-ai"}) {
        const auto error = catch_error([&] { parse_execution_provider(text); });
        ASSERT_TRUE(error.has_value()) << text;
        EXPECT_EQ(error->code, ExitCode::kUsage);
        EXPECT_TRUE(is_one_line(error->message)) << error->message;
        EXPECT_NE(error->message.find("'" + text + "'"), std::string::npos) << error->message;
        for (const char* name : {"cpu", "vitisai", "npu-sim", "auto"}) {
            EXPECT_NE(error->message.find(name), std::string::npos) << error->message;
        }
    }
}

TEST(VitisAiOptionFlag, SplitsAtFirstEquals) {
    EXPECT_EQ(parse_vitisai_option("cache_dir=/tmp/a=b"),
              (std::pair<std::string, std::string>{"cache_dir", "/tmp/a=b"}));
    EXPECT_EQ(parse_vitisai_option("log_level="),
              (std::pair<std::string, std::string>{"log_level", ""}));
}

TEST(VitisAiOptionFlag, RejectsMissingKey) {
    for (const std::string argument : {"cache_dir", "=value", ""}) {
        const auto error = catch_error([&] { parse_vitisai_option(argument); });
        ASSERT_TRUE(error.has_value()) << argument;
        EXPECT_EQ(error->code, ExitCode::kUsage);
        EXPECT_TRUE(is_one_line(error->message)) << error->message;
        EXPECT_NE(error->message.find("key=value"), std::string::npos) << error->message;
    }
}

TEST(VitisAiOptionsFile, ConvertsNumbersAndBooleans) {
    ScratchFolder folder("ep-options");
    write_text(folder / "options.json",
               R"({"cache_key": "fashion", "log_level": 2, "target": "X2",
                   "ratio": 0.5, "verbose": true, "customKey": "kept"})");

    const VitisAiOptions options = read_vitisai_options_file(folder / "options.json");

    const VitisAiOptions expected = {{"cache_key", "fashion"}, {"log_level", "2"},
                                     {"target", "X2"},         {"ratio", "0.5"},
                                     {"verbose", "true"},      {"customKey", "kept"}};
    EXPECT_EQ(options, expected);
}

TEST(VitisAiOptionsFile, RejectsInvalidJson) {
    ScratchFolder folder("ep-options");
    const fs::path path = folder / "broken.json";
    write_text(path, "{\n  \"cache_dir\": \"a\",\n  \"cache_key\" \"b\"\n}");

    const auto error = catch_error([&] { read_vitisai_options_file(path); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kInvalidInput);
    EXPECT_TRUE(is_one_line(error->message)) << error->message;
    EXPECT_NE(error->message.find(path.string()), std::string::npos) << error->message;
    // The ':' is missing on line 3, and the parser reports the token after the key there.
    EXPECT_NE(error->message.find("line 3"), std::string::npos) << error->message;
    EXPECT_EQ(error->message.find("[json.exception"), std::string::npos) << error->message;
}

TEST(VitisAiOptionsFile, RejectsNonObjectAndNestedValues) {
    ScratchFolder folder("ep-options");
    write_text(folder / "array.json", R"(["cache_dir", "a"])");
    write_text(folder / "nested.json", R"({"cache_dir": "a", "target": {"name": "X2"}})");
    write_text(folder / "null.json", R"({"cache_key": null})");

    const auto array_error = catch_error([&] { read_vitisai_options_file(folder / "array.json"); });
    ASSERT_TRUE(array_error.has_value());
    EXPECT_EQ(array_error->code, ExitCode::kInvalidInput);
    EXPECT_NE(array_error->message.find("array"), std::string::npos) << array_error->message;

    const auto nested_error =
        catch_error([&] { read_vitisai_options_file(folder / "nested.json"); });
    ASSERT_TRUE(nested_error.has_value());
    EXPECT_EQ(nested_error->code, ExitCode::kInvalidInput);
    EXPECT_NE(nested_error->message.find("'target'"), std::string::npos) << nested_error->message;

    const auto null_error = catch_error([&] { read_vitisai_options_file(folder / "null.json"); });
    ASSERT_TRUE(null_error.has_value());
    EXPECT_EQ(null_error->code, ExitCode::kInvalidInput);
    EXPECT_NE(null_error->message.find("'cache_key'"), std::string::npos) << null_error->message;
}

TEST(VitisAiOptionsFile, MissingFileIsIoError) {
    ScratchFolder folder("ep-options");
    const fs::path path = folder / "absent.json";

    const auto error = catch_error([&] { read_vitisai_options_file(path); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kIo);
    EXPECT_NE(error->message.find(path.string()), std::string::npos) << error->message;
}

TEST(VitisAiProviderOptions, FlagsOverrideFileAndKeysAreRenamed) {
    ScratchFolder folder("ep-options");
    write_text(folder / "vaip_config.json", "{}");
    write_text(folder / "options.json",
               R"({"cache_dir": "from-file", "cache_key": "file-key",
                   "encryption_key": "0123", "cacheDir": "old-spelling"})");
    ProviderRequest request;
    request.provider = ExecutionProvider::kVitisAi;
    request.vitisai_options_file = folder / "options.json";
    request.vitisai_options = {{"cache_dir", "from-flag"},
                               {"config_file", (folder / "vaip_config.json").string()},
                               {"log_level", "info"}};

    const std::map<std::string, std::string> options = build_vitisai_provider_options(request);

    const std::map<std::string, std::string> expected = {
        {"cache_dir", "from-flag"},
        {"cache_key", "file-key"},
        {"encryptionKey", "0123"},
        {"cacheDir", "old-spelling"},
        {"config_file", (folder / "vaip_config.json").string()},
        {"log_level", "info"}};
    EXPECT_EQ(options, expected);
}

TEST(VitisAiProviderOptions, MissingConfigFileIsIoError) {
    ScratchFolder folder("ep-options");
    const fs::path absent = folder / "vaip_config.json";
    write_text(folder / "options.json", R"({"config_file": ")" + absent.string() + R"("})");
    ProviderRequest request;
    request.provider = ExecutionProvider::kVitisAi;
    request.vitisai_options_file = folder / "options.json";

    const auto error = catch_error([&] { build_vitisai_provider_options(request); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kIo);
    EXPECT_TRUE(is_one_line(error->message)) << error->message;
    EXPECT_NE(error->message.find("config_file"), std::string::npos) << error->message;
    EXPECT_NE(error->message.find(absent.string()), std::string::npos) << error->message;
}

TEST(VitisAiProviderOptions, MissingXclbinIsIoError) {
    ProviderRequest request;
    request.provider = ExecutionProvider::kAuto;
    request.vitisai_options = {{"xclbin", "/nonexistent/AMD_AIE2P_Nx4_Overlay.xclbin"}};

    const auto error = catch_error([&] { build_vitisai_provider_options(request); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kIo);
    EXPECT_NE(error->message.find("xclbin"), std::string::npos) << error->message;
}

TEST(XlnxEnvironment, ReadsSetVariablesSorted) {
    const ScopedEnvironmentVariable report("XLNX_ONNX_EP_REPORT_FILE", "vitisai_ep_report.json");
    const ScopedEnvironmentVariable cache("XLNX_ENABLE_CACHE", "0");
    const ScopedEnvironmentVariable spaces("XLNX_EDGEQ_TEST", " a=b ");
    const ScopedEnvironmentVariable other("EDGEQ_TEST_NOT_XLNX", "1");

    const auto variables = read_xlnx_environment();

    EXPECT_TRUE(std::is_sorted(variables.begin(), variables.end()));
    for (const auto& [name, value] : variables) {
        EXPECT_EQ(name.rfind("XLNX_", 0), 0u) << name;
    }
    const std::map<std::string, std::string> by_name(variables.begin(), variables.end());
    EXPECT_EQ(by_name.size(), variables.size()) << "a variable is listed twice";
    EXPECT_EQ(by_name.at("XLNX_ONNX_EP_REPORT_FILE"), "vitisai_ep_report.json");
    EXPECT_EQ(by_name.at("XLNX_ENABLE_CACHE"), "0");
    EXPECT_EQ(by_name.at("XLNX_EDGEQ_TEST"), " a=b ");
}

TEST(XlnxEnvironment, UnsetVariableIsGone) {
    {
        const ScopedEnvironmentVariable variable("XLNX_EDGEQ_TEST", "1");
        const auto variables = read_xlnx_environment();
        EXPECT_NE(std::find(variables.begin(), variables.end(),
                            std::pair<std::string, std::string>{"XLNX_EDGEQ_TEST", "1"}),
                  variables.end());
    }
    for (const auto& [name, value] : read_xlnx_environment()) {
        EXPECT_NE(name, "XLNX_EDGEQ_TEST");
    }
}

TEST(ResolveExecutionProvider, CpuAndNpuSimUnchanged) {
    const ScopedEnvironmentVariable firmware("XLNX_VART_FIRMWARE", "/opt/overlay.xclbin");
    for (const ExecutionProvider provider : {ExecutionProvider::kCpu, ExecutionProvider::kNpuSim}) {
        ProviderRequest request;
        request.provider = provider;
        request.vitisai_options = {{"cache_dir", "ignored"}};

        const ProviderSetup setup = resolve_execution_provider(request);

        EXPECT_EQ(setup.requested, provider);
        EXPECT_EQ(setup.resolved, provider);
        EXPECT_TRUE(setup.provider_options.empty());
        EXPECT_TRUE(setup.fallback_reason.empty());
        const std::map<std::string, std::string> environment(setup.environment.begin(),
                                                             setup.environment.end());
        EXPECT_EQ(environment.at("XLNX_VART_FIRMWARE"), "/opt/overlay.xclbin");
    }
}

TEST(ResolveExecutionProvider, VitisAiWithoutEpFails) {
    const std::optional<CaughtError> missing = missing_vitisai_error();
    if (!missing) {
        GTEST_SKIP() << "this ONNX Runtime has the Vitis AI execution provider";
    }
    ScratchFolder folder("ep-options");
    write_text(folder / "vaip_config.json", "{}");
    write_text(folder / "options.json", R"({"config_file": ")" +
                                            (folder / "vaip_config.json").string() +
                                            R"(", "cache_key": "fashion", "target": "X2"})");
    ProviderRequest request;
    request.provider = ExecutionProvider::kVitisAi;
    request.vitisai_options_file = folder / "options.json";
    request.vitisai_options = {{"cache_dir", (folder / "cache").string()},
                               {"log_level", "warning"}};

    const auto error = catch_error([&] { resolve_execution_provider(request); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kUnsupported);
    EXPECT_TRUE(is_one_line(error->message)) << error->message;
    EXPECT_NE(error->message.find("Vitis AI execution provider"), std::string::npos)
        << error->message;
    EXPECT_NE(error->message.find("Ryzen AI"), std::string::npos) << error->message;
    EXPECT_NE(error->message.find("ONNXRUNTIME_ROOT"), std::string::npos) << error->message;
}

TEST(ResolveExecutionProvider, VitisAiChecksOptionsBeforeEp) {
    ProviderRequest request;
    request.provider = ExecutionProvider::kVitisAi;
    request.vitisai_options = {{"config_file", "/nonexistent/vaip_config.json"}};

    const auto error = catch_error([&] { resolve_execution_provider(request); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kIo);
}

TEST(ResolveExecutionProvider, AutoFallsBackToCpu) {
    const std::optional<CaughtError> missing = missing_vitisai_error();
    if (!missing) {
        GTEST_SKIP() << "this ONNX Runtime has the Vitis AI execution provider";
    }
    ProviderRequest request;
    request.provider = ExecutionProvider::kAuto;
    request.vitisai_options = {{"cache_key", "fashion"}};

    const ProviderSetup setup = resolve_execution_provider(request);

    EXPECT_EQ(setup.requested, ExecutionProvider::kAuto);
    EXPECT_EQ(setup.resolved, ExecutionProvider::kCpu);
    EXPECT_EQ(setup.fallback_reason, missing->message);
    EXPECT_TRUE(setup.provider_options.empty());
    EXPECT_EQ(make_session_config(setup).execution_provider, kCpuProvider);
}

TEST(ResolveExecutionProvider, AutoStillRejectsBadOptions) {
    ScratchFolder folder("ep-options");
    write_text(folder / "options.json", "{\"cache_dir\": ");
    ProviderRequest request;
    request.provider = ExecutionProvider::kAuto;
    request.vitisai_options_file = folder / "options.json";

    const auto error = catch_error([&] { resolve_execution_provider(request); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kInvalidInput);
}

TEST(SessionConfigFromSetup, CarriesVitisAiOptions) {
    ProviderSetup setup;
    setup.requested = ExecutionProvider::kAuto;
    setup.resolved = ExecutionProvider::kVitisAi;
    setup.provider_options = {{"cache_key", "fashion"}, {"target", "X2"}};

    const SessionConfig config = make_session_config(setup);

    EXPECT_EQ(config.execution_provider, kVitisAiProvider);
    EXPECT_EQ(config.provider_options, setup.provider_options);
}

TEST(SessionConfigFromSetup, RejectsNpuSim) {
    ProviderSetup setup;
    setup.requested = ExecutionProvider::kNpuSim;
    setup.resolved = ExecutionProvider::kNpuSim;

    const auto error = catch_error([&] { make_session_config(setup); });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kInternal);
}

TEST(SessionConfigFromSetup, VitisAiSessionFailsOnOneLine) {
    if (!missing_vitisai_error()) {
        GTEST_SKIP() << "this ONNX Runtime has the Vitis AI execution provider";
    }
    ProviderSetup setup;
    setup.resolved = ExecutionProvider::kVitisAi;
    // A value with line breaks must not break the one-line error.
    setup.provider_options = {{"cache_key", "two\nlines"}, {"log_level", "info"}};

    const auto error = catch_error([&] {
        OrtModel model(std::string("not a model"), "test model", make_session_config(setup));
    });

    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(error->code, ExitCode::kUnsupported);
    EXPECT_TRUE(is_one_line(error->message)) << error->message;
    EXPECT_NE(error->message.find("Vitis AI execution provider"), std::string::npos)
        << error->message;
}

TEST(ProviderSetupJson, ListsFieldsAndRedactsKey) {
    ProviderSetup setup;
    setup.requested = ExecutionProvider::kVitisAi;
    setup.resolved = ExecutionProvider::kVitisAi;
    setup.provider_options = {{"cache_key", "fashion"}, {"encryptionKey", "89703f95"}};
    setup.environment = {{"XLNX_ENABLE_CACHE", "0"}, {"XLNX_VART_FIRMWARE", "/opt/a.xclbin"}};

    const nlohmann::json report = provider_setup_json(setup);

    EXPECT_EQ(report["requested"], "vitisai");
    EXPECT_EQ(report["resolved"], "vitisai");
    EXPECT_EQ(report["options"]["cache_key"], "fashion");
    EXPECT_EQ(report["options"]["encryptionKey"], "<redacted>");
    EXPECT_EQ(report.dump().find("89703f95"), std::string::npos) << report.dump();
    EXPECT_EQ(report["environment"]["XLNX_ENABLE_CACHE"], "0");
    EXPECT_EQ(report["environment"]["XLNX_VART_FIRMWARE"], "/opt/a.xclbin");
    EXPECT_TRUE(report["fallback"].is_null());
}

TEST(ProviderSetupJson, RecordsFallbackReason) {
    ProviderSetup setup;
    setup.requested = ExecutionProvider::kAuto;
    setup.resolved = ExecutionProvider::kCpu;
    setup.fallback_reason = "the Vitis AI execution provider is missing";

    const nlohmann::json report = provider_setup_json(setup);

    EXPECT_EQ(report["requested"], "auto");
    EXPECT_EQ(report["resolved"], "cpu");
    EXPECT_TRUE(report["options"].is_object());
    EXPECT_TRUE(report["options"].empty());
    EXPECT_TRUE(report["environment"].is_object());
    EXPECT_EQ(report["fallback"], setup.fallback_reason);
}

}  // namespace
}  // namespace edgeq
