// ONNX Runtime inference sessions through the C++ API, with a choice of execution provider.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>

namespace edgeq {

// Execution providers edgeq can ask ONNX Runtime for.
inline constexpr const char* kCpuProvider = "cpu";
inline constexpr const char* kVitisAiProvider = "vitisai";

struct SessionConfig {
    std::string execution_provider = kCpuProvider;
    // Vitis AI EP options in the EP's spelling (see build_vitisai_provider_options), passed as is.
    std::map<std::string, std::string> provider_options;
    int intra_op_threads = 0;  // 0 = ONNX Runtime's default
};

// A float tensor produced by a session: values row-major plus the shape.
struct FloatOutput {
    std::vector<int64_t> shape;
    std::vector<float> values;
};

class OrtModel {
  public:
    // Loads a model from a file or from serialized bytes. `label` names the model in errors.
    OrtModel(const std::filesystem::path& path, const SessionConfig& config);
    OrtModel(const std::string& model_bytes, const std::string& label, const SessionConfig& config);

    // Runs the model on one float input of `shape` and returns the requested outputs (all graph
    // outputs when `output_names` is empty), in order.
    std::vector<FloatOutput> run(const std::vector<float>& input, const std::vector<int64_t>& shape,
                                 const std::vector<std::string>& output_names = {});

    const std::string& input_name() const { return input_name_; }
    const std::vector<std::string>& output_names() const { return output_names_; }

    // The execution provider the session was created with, in ONNX Runtime's spelling
    // ("CPUExecutionProvider", "VitisAIExecutionProvider").
    // NOTE: with Vitis AI, nodes the NPU does not take still run on the CPU; this names the
    // provider that was requested and accepted, not where each node ran.
    const std::string& execution_provider() const { return execution_provider_; }

  private:
    void finish_setup();

    std::string label_;
    std::unique_ptr<Ort::Session> session_;
    std::string input_name_;
    std::vector<std::string> output_names_;
    std::string execution_provider_;
};

// Throws the same Error that creating a session with `config` would throw when its execution
// provider is unknown or missing from the loaded ONNX Runtime, without loading a model. Lets a
// long run fail before its first stage. (Ort::GetAvailableProviders is no help here: the official
// Linux build lists CUDA and TensorRT, which it cannot load without their libraries.)
void check_execution_provider(const SessionConfig& config);

// Version string of the loaded ONNX Runtime library.
std::string onnxruntime_version();

}  // namespace edgeq
