// Inference speed of the deployed models, measured in one run against a peer: ONNX Runtime fp32
// is the baseline, and ONNX Runtime int8 and npu-sim are reported as ratios to it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgeq/npu/npu_sim.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

inline constexpr const char* kBenchFile = "bench.json";

struct BenchOptions {
    std::filesystem::path float_model;
    std::filesystem::path qdq_model;
    std::filesystem::path data_folder;
    std::filesystem::path out_folder;  // bench.json goes here; empty: not written
    std::vector<int64_t> batch_sizes = {1, 1000};
    double min_seconds = 1.0;    // each measurement repeats until it has run this long
    int64_t max_images = 10000;  // and stops after this many images
    SessionConfig session;
    npu::NpuSimOptions npu_sim;
};

struct BenchRow {
    std::string engine;  // "onnxruntime fp32", "onnxruntime int8", "npu-sim"
    int64_t batch_size = 0;
    int64_t images = 0;
    double seconds = 0;

    double images_per_second() const {
        return seconds > 0 ? static_cast<double>(images) / seconds : 0.0;
    }
};

// Runs every engine at every batch size on the Fashion-MNIST test images, prints the table with
// the ratios and writes <out_folder>/bench.json; returns what it wrote.
nlohmann::ordered_json run_bench(const BenchOptions& options);

}  // namespace edgeq
