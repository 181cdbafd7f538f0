#include "edgeq/pipeline/bench.h"

#include <chrono>
#include <functional>
#include <memory>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/data/dataset.h"
#include "edgeq/eval/evaluate.h"

namespace edgeq {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

struct Engine {
    std::string name;
    BatchRunner run;
};

// Times `engine` at one batch size: one untimed batch first (sessions allocate on their first
// run), then batches taken in turn from the test images until `min_seconds` have passed or
// `max_images` were classified. A single batch is always timed, however long it takes.
BenchRow measure(const Engine& engine, const LabelledImages& images, int64_t batch_size,
                 const BenchOptions& options) {
    const int64_t batch_count = std::max<int64_t>(1, images.size() / batch_size);
    std::vector<std::vector<float>> batches;
    for (int64_t b = 0; b < std::min<int64_t>(batch_count, 16); ++b) {
        batches.push_back(gather_image_range(images, b * batch_size, batch_size));
    }
    const std::vector<int64_t> shape = {batch_size, 1, kImageSide, kImageSide};
    engine.run(batches.front(), shape);

    BenchRow row{engine.name, batch_size, 0, 0.0};
    const auto start = std::chrono::steady_clock::now();
    for (size_t b = 0;; b = (b + 1) % batches.size()) {
        engine.run(batches[b], shape);
        row.images += batch_size;
        row.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (row.seconds >= options.min_seconds || row.images + batch_size > options.max_images) {
            break;
        }
    }
    return row;
}

}  // namespace

json run_bench(const BenchOptions& options) {
    if (!options.out_folder.empty()) {
        ensure_writable_folder(options.out_folder, "--out");
    }
    const LabelledImages test = load_fashion_mnist_test(options.data_folder);
    for (const int64_t batch_size : options.batch_sizes) {
        if (batch_size < 1 || batch_size > test.size()) {
            fail(ExitCode::kUsage, "batch size {} is outside 1..{} (the test images)", batch_size,
                 test.size());
        }
    }

    OrtModel float_session(options.float_model, options.session);
    OrtModel qdq_session(options.qdq_model, options.session);
    const npu::NpuSimModel simulator(options.qdq_model, options.npu_sim);
    const std::vector<Engine> engines = {
        {"onnxruntime fp32",
         [&](const std::vector<float>& input, const std::vector<int64_t>& shape) {
             return float_session.run(input, shape);
         }},
        {"onnxruntime int8",
         [&](const std::vector<float>& input, const std::vector<int64_t>& shape) {
             return qdq_session.run(input, shape);
         }},
        {"npu-sim", [&](const std::vector<float>& input,
                        const std::vector<int64_t>& shape) { return simulator.run(input, shape); }},
    };
    spdlog::info(
        "bench: ONNX Runtime {} on {} ({} threads: {}); npu-sim scalar reference, one "
        "thread, rounding {}",
        onnxruntime_version(), float_session.execution_provider(),
        options.session.intra_op_threads > 0 ? "intra-op" : "default",
        options.session.intra_op_threads > 0 ? std::to_string(options.session.intra_op_threads)
                                             : "ONNX Runtime's choice",
        npu::rounding_name(options.npu_sim.rounding));

    // The baseline of each batch size is ONNX Runtime fp32 at that batch size.
    std::vector<BenchRow> rows;
    for (const int64_t batch_size : options.batch_sizes) {
        for (const Engine& engine : engines) {
            spdlog::info("bench: {} at batch {}...", engine.name, batch_size);
            rows.push_back(measure(engine, test, batch_size, options));
        }
    }

    json table = json::array();
    std::string text = fmt::format("{:<18} {:>6} {:>8} {:>10} {:>12} {:>14}\n", "engine", "batch",
                                   "images", "seconds", "images/s", "vs ORT fp32");
    for (const BenchRow& row : rows) {
        double baseline = 0;
        for (const BenchRow& other : rows) {
            if (other.batch_size == row.batch_size && other.engine == engines.front().name) {
                baseline = other.images_per_second();
            }
        }
        const double ratio = baseline > 0 ? row.images_per_second() / baseline : 0.0;
        text +=
            fmt::format("{:<18} {:>6} {:>8} {:>10.3f} {:>12.1f} {:>13.3f}x\n", row.engine,
                        row.batch_size, row.images, row.seconds, row.images_per_second(), ratio);
        table.push_back({{"engine", row.engine},
                         {"batch_size", row.batch_size},
                         {"images", row.images},
                         {"seconds", row.seconds},
                         {"images_per_second", row.images_per_second()},
                         {"ratio_to_onnxruntime_fp32", ratio}});
    }
    spdlog::info("bench (throughput, ratio to ONNX Runtime fp32 at the same batch size):\n{}",
                 text);

    json result = {{"onnxruntime_version", onnxruntime_version()},
                   {"execution_provider", float_session.execution_provider()},
                   {"float_model", options.float_model.string()},
                   {"qdq_model", options.qdq_model.string()},
                   {"npu_sim_rounding", npu::rounding_name(options.npu_sim.rounding)},
                   {"rows", table}};
    if (!options.out_folder.empty()) {
        const fs::path path = options.out_folder / kBenchFile;
        write_file_atomic(path, result.dump(2) + "\n");
        spdlog::info("bench results in {}", path.string());
    }
    return result;
}

}  // namespace edgeq
