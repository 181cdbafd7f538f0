#include "edgeq/runtime/ort_session.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

// Forwards ONNX Runtime's own log lines to edgeq's logger at debug level (shown with --verbose).
// Every failure that matters already reaches the user as an edgeq error quoting ONNX Runtime's
// message, and printing the raw log too would turn one-line errors into several lines.
void forward_onnxruntime_log(void* /*param*/, OrtLoggingLevel /*severity*/,
                             const char* /*category*/, const char* /*logid*/,
                             const char* code_location, const char* message) {
    spdlog::debug("onnxruntime: {} ({})", message, code_location);
}

// One ONNX Runtime environment per process, as the API recommends.
Ort::Env& ort_environment() {
    static Ort::Env environment(ORT_LOGGING_LEVEL_WARNING, "edgeq", forward_onnxruntime_log,
                                nullptr);
    return environment;
}

std::string one_line(std::string text) {
    std::replace(text.begin(), text.end(), '\n', ' ');
    std::replace(text.begin(), text.end(), '\r', ' ');
    return text;
}

// Fills session options for `config`; returns the provider's ONNX Runtime name.
std::string configure(Ort::SessionOptions& options, const SessionConfig& config) {
    // The default logger lives in the environment. Without an environment, appending a provider
    // fails with a logger error that hides the provider's own message.
    ort_environment();
    if (config.intra_op_threads > 0) {
        options.SetIntraOpNumThreads(config.intra_op_threads);
    }
    if (config.execution_provider == kCpuProvider) {
        return "CPUExecutionProvider";
    }
    if (config.execution_provider == kVitisAiProvider) {
        try {
            std::unordered_map<std::string, std::string> provider_options(
                config.provider_options.begin(), config.provider_options.end());
            options.AppendExecutionProvider_VitisAI(provider_options);
        } catch (const Ort::Exception& error) {
            // ONNX Runtime builds without the EP (the official Linux packages) fail here with
            // "Failed to load shared library". Its message is quoted because an EP that is present
            // but rejects an option fails here too.
            fail(ExitCode::kUnsupported,
                 "ONNX Runtime {} cannot create the Vitis AI execution provider ({}); it comes "
                 "with the ONNX Runtime of the Ryzen AI SDK: install the SDK and point "
                 "ONNXRUNTIME_ROOT at its ONNX Runtime, or use --ep cpu",
                 onnxruntime_version(), one_line(error.what()));
        }
        return "VitisAIExecutionProvider";
    }
    fail(ExitCode::kUsage, "unknown execution provider '{}'; use cpu or vitisai",
         config.execution_provider);
}

}  // namespace

OrtModel::OrtModel(const fs::path& path, const SessionConfig& config) : label_(path.string()) {
    if (!fs::exists(path)) {
        fail(ExitCode::kIo, "model '{}' not found; check the path", path.string());
    }
    Ort::SessionOptions options;
    execution_provider_ = configure(options, config);
    try {
        session_ = std::make_unique<Ort::Session>(ort_environment(), path.c_str(), options);
    } catch (const Ort::Exception& error) {
        fail(ExitCode::kInvalidInput, "ONNX Runtime cannot load '{}': {}", label_,
             one_line(error.what()));
    }
    finish_setup();
}

OrtModel::OrtModel(const std::string& model_bytes, const std::string& label,
                   const SessionConfig& config)
    : label_(label) {
    Ort::SessionOptions options;
    execution_provider_ = configure(options, config);
    try {
        session_ = std::make_unique<Ort::Session>(ort_environment(), model_bytes.data(),
                                                  model_bytes.size(), options);
    } catch (const Ort::Exception& error) {
        fail(ExitCode::kInvalidInput, "ONNX Runtime cannot load '{}': {}", label_,
             one_line(error.what()));
    }
    finish_setup();
}

void OrtModel::finish_setup() {
    Ort::AllocatorWithDefaultOptions allocator;
    if (session_->GetInputCount() != 1) {
        fail(ExitCode::kUnsupported, "model '{}' has {} inputs; edgeq runs single-input models",
             label_, session_->GetInputCount());
    }
    input_name_ = session_->GetInputNameAllocated(0, allocator).get();
    for (size_t i = 0; i < session_->GetOutputCount(); ++i) {
        output_names_.emplace_back(session_->GetOutputNameAllocated(i, allocator).get());
    }
}

std::vector<FloatOutput> OrtModel::run(const std::vector<float>& input,
                                       const std::vector<int64_t>& shape,
                                       const std::vector<std::string>& output_names) {
    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const Ort::Value input_tensor = Ort::Value::CreateTensor<float>(
        memory, const_cast<float*>(input.data()), input.size(), shape.data(), shape.size());

    const std::vector<std::string>& names = output_names.empty() ? output_names_ : output_names;
    std::vector<const char*> name_pointers;
    for (const std::string& name : names) {
        name_pointers.push_back(name.c_str());
    }
    const char* input_names[] = {input_name_.c_str()};

    std::vector<Ort::Value> values;
    try {
        values = session_->Run(Ort::RunOptions{nullptr}, input_names, &input_tensor, 1,
                               name_pointers.data(), name_pointers.size());
    } catch (const Ort::Exception& error) {
        fail(ExitCode::kInvalidInput, "running '{}' failed: {}", label_, one_line(error.what()));
    }

    std::vector<FloatOutput> outputs;
    for (size_t i = 0; i < values.size(); ++i) {
        const Ort::TensorTypeAndShapeInfo info = values[i].GetTensorTypeAndShapeInfo();
        if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
            fail(ExitCode::kUnsupported, "output '{}' of '{}' is not float", names[i], label_);
        }
        FloatOutput output;
        output.shape = info.GetShape();
        const float* data = values[i].GetTensorData<float>();
        output.values.assign(data, data + info.GetElementCount());
        outputs.push_back(std::move(output));
    }
    return outputs;
}

void check_execution_provider(const SessionConfig& config) {
    Ort::SessionOptions options;
    configure(options, config);
}

std::string onnxruntime_version() {
    return Ort::GetVersionString();
}

}  // namespace edgeq
