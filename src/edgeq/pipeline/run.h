// The main job end to end: Fashion-MNIST -> FashionCNN -> ONNX -> int8 QDQ -> ONNX Runtime ->
// evaluation, with every artifact written to one output folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "edgeq/common/progress.h"
#include "edgeq/model/train.h"
#include "edgeq/npu/npu_sim.h"
#include "edgeq/quant/quantize_model.h"
#include "edgeq/runtime/execution_provider.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

inline constexpr const char* kFloatModelFile = "fashion-mnist.onnx";
inline constexpr const char* kQdqModelFile = "fashion-mnist.qdq.U8S8.onnx";
inline constexpr const char* kDefaultCheckpoint = "models/fashion-cnn.pt";
inline constexpr const char* kTrainedCheckpointFile = "fashion-cnn.pt";  // written by --retrain
inline constexpr const char* kEpReportFile = "vitisai_ep_report.json";
inline constexpr const char* kNpuSimDifferencesFile = "npu_sim_differences.csv";
inline constexpr double kReportInt8Accuracy = 0.8883;  // the Ryzen AI tutorial report's figure

// Largest difference between ONNX Runtime's and libtorch's fp32 logits that the export check
// accepts, relative to max(1, |logit|). Folding BatchNorm into Conv reorders float32 arithmetic,
// which moves logits of magnitude ~10 by ~1e-5; a wrong graph is off by far more than 1e-3.
inline constexpr float kExportLogitTolerance = 1e-3f;
inline constexpr int64_t kExportCheckImages = 1000;

struct RunOptions {
    std::filesystem::path data_folder;
    std::filesystem::path out_folder = "out";
    std::filesystem::path checkpoint = kDefaultCheckpoint;
    std::optional<std::filesystem::path> state_dict;  // a Python torch.save(state_dict) file
    uint64_t seed = 42;
    int64_t calibration_count = 5000;
    bool retrain = false;
    TrainOptions train;
    QuantizeOptions quantize;
    Algorithms algorithms;
    MixedPrecisionOptions mixed_precision;
    // The execution provider the int8 model is deployed on (--ep). ONNX Runtime runs the fp32
    // model, and the int8 model unless the provider is npu-sim, on `session`.
    ProviderSetup provider;
    SessionConfig session;
    // The NPU placement model's target description; empty: the built-in Strix XINT8 target.
    std::filesystem::path target_file;
    // npu-sim's settings when it deploys the int8 model (--ep npu-sim). The run also always
    // compares npu-sim with both roundings against ONNX Runtime's CPU EP.
    npu::NpuSimOptions npu_sim;
    int64_t eval_batch_size = 1000;
    int64_t train_subset = 0;  // > 0: train on only this many images (quick checks)
    int64_t test_subset = 0;   // > 0: evaluate on only the first this many test images
    std::string command_line;
};

// Runs every stage and writes the artifacts; returns the contents of metrics.json. The artifacts
// appear in the output folder only when every stage succeeded (a checkpoint trained by
// --retrain is kept as soon as training ends).
nlohmann::ordered_json run_pipeline(const RunOptions& options);

// A quantize_model progress callback that shows its steps on `progress`: calibration counted in
// samples, AdaRound in layers. `progress` must outlive the callback.
ProgressCallback quantize_progress_callback(StepProgress& progress);

}  // namespace edgeq
