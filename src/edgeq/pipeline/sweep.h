// The sweep: one float model quantized with every combination of presets, calibration methods and
// algorithms asked for, each evaluated on the test images, so that the choices can be compared
// in one table (and in sweep.json).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgeq/quant/quantize_model.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

inline constexpr const char* kSweepFile = "sweep.json";

struct SweepOptions {
    std::filesystem::path data_folder;
    std::filesystem::path out_folder = "out";
    // The float model: an ONNX file, or else the checkpoint exported in memory.
    std::optional<std::filesystem::path> model;
    std::filesystem::path checkpoint;
    uint64_t seed = 42;
    int64_t calibration_count = 5000;
    std::vector<Preset> presets;
    std::vector<CalibrationMethod> methods;
    // Algorithm sets tried with every preset and method. The extra sets are tried only with the
    // presets in `extra_presets` and the methods in `extra_methods` (all when empty), because
    // AdaRound and bias correction take minutes, and XINT8 is the target.
    std::vector<Algorithms> algorithm_sets;
    std::vector<Algorithms> extra_algorithm_sets;
    std::vector<Preset> extra_presets;
    std::vector<CalibrationMethod> extra_methods;
    int64_t calibration_batch_size = 100;
    int64_t eval_batch_size = 1000;
    int64_t test_subset = 0;  // > 0: evaluate on only the first this many test images
    SessionConfig session;
};

// The default grid: every preset x every method without algorithms, and XINT8 x {minmax, minmse}
// with each algorithm alone and all of them together.
SweepOptions default_sweep_grid(SweepOptions options);

// Runs the sweep, prints its table and writes <out>/sweep.json; returns what it wrote.
nlohmann::ordered_json run_sweep(const SweepOptions& options);

}  // namespace edgeq
