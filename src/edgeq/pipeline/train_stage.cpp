#include "edgeq/pipeline/train_stage.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/common/progress.h"

namespace edgeq {
namespace fs = std::filesystem;

PreparedData prepare_data(const fs::path& folder, int64_t calibration_count, uint64_t seed) {
    FashionMnist mnist = load_fashion_mnist(folder);
    PreparedData data;
    data.split = split_train_calibration(mnist.train.size(), calibration_count, seed);
    data.train = select_images(mnist.train, data.split.train);
    data.calibration = select_images(mnist.train, data.split.calibration);
    data.test = std::move(mnist.test);
    return data;
}

fs::path checkpoint_metadata_path(const fs::path& checkpoint) {
    fs::path metadata = checkpoint;
    metadata.replace_extension(".json");
    return metadata;
}

FashionCnn train_and_save(const PreparedData& data, const TrainOptions& options,
                          const fs::path& checkpoint, const std::string& command_line) {
    // Check the destination before spending minutes on training.
    check_output_file(checkpoint, "--checkpoint");
    if (checkpoint_metadata_path(checkpoint) == checkpoint) {
        fail(ExitCode::kUsage,
             "checkpoint '{}' would be overwritten by its own metadata file; "
             "give it another extension, such as .pt",
             checkpoint.string());
    }
    spdlog::info(
        "training FashionCNN: {} images, {} epochs, batch {}, Adam lr {} (cosine to {}), "
        "shift {} px, flip {}, seed {}",
        data.train.size(), options.epochs, options.batch_size, options.learning_rate,
        options.final_learning_rate, options.max_shift, options.horizontal_flip, options.seed);

    // Seed before the model exists: its initial weights come from libtorch's default generator.
    torch::manual_seed(options.seed);
    FashionCnn model;
    // One bar per epoch over its training images. The per-epoch log line below is the record of
    // the epoch, so the bar writes no summary line of its own.
    ProgressOutput progress_output = console_progress_output();
    progress_output.summary = false;
    Progress progress(fmt::format("epoch 1/{}", options.epochs), 0, "images", progress_output);
    const auto on_batch_end = [&](const BatchStats& batch) {
        if (batch.batch == 1) {
            progress.restart(fmt::format("epoch {}/{}", batch.epoch, options.epochs),
                             batch.batch_count * options.batch_size);
        }
        progress.set_postfix(fmt::format("loss {:.4f}", batch.running_loss));
        progress.update(batch.batch * options.batch_size);
    };
    const std::vector<EpochStats> history = train_fashion_cnn(
        model, data.train, data.calibration, options,
        [&](const EpochStats& stats) {
            progress.finish();
            spdlog::info(
                "epoch {:>2}/{}  lr {:.2e}  loss {:.4f}  train acc {:.4f}  "
                "held-out acc {:.4f}  {:.1f} s",
                stats.epoch, options.epochs, stats.learning_rate, stats.train_loss,
                stats.train_accuracy, stats.held_out_accuracy, stats.seconds);
        },
        on_batch_end);

    // A diverged training (NaN weights) must not leave a checkpoint that looks usable.
    check_fashion_cnn_state_dict(export_state_dict(model), "the trained model");
    const double test_accuracy = evaluate_accuracy(model, data.test);
    spdlog::info("trained: test accuracy {:.4f} (libtorch, fp32)", test_accuracy);

    save_checkpoint(model, checkpoint);

    nlohmann::ordered_json epochs = nlohmann::ordered_json::array();
    for (const EpochStats& stats : history) {
        epochs.push_back({{"epoch", stats.epoch},
                          {"learning_rate", stats.learning_rate},
                          {"train_loss", stats.train_loss},
                          {"train_accuracy", stats.train_accuracy},
                          {"held_out_accuracy", stats.held_out_accuracy},
                          {"seconds", stats.seconds}});
    }
    const nlohmann::ordered_json metadata = {
        {"command", command_line},
        {"seed", options.seed},
        {"options",
         {{"epochs", options.epochs},
          {"batch_size", options.batch_size},
          {"optimizer", "Adam"},
          {"learning_rate", options.learning_rate},
          {"final_learning_rate", options.final_learning_rate},
          {"schedule", "cosine"},
          {"max_shift", options.max_shift},
          {"horizontal_flip", options.horizontal_flip}}},
        {"data", {{"train", data.train.size()}, {"held_out_calibration", data.calibration.size()}}},
        {"metrics", {{"test_accuracy_fp32_libtorch", test_accuracy}, {"epochs", epochs}}},
    };
    write_file_atomic(checkpoint_metadata_path(checkpoint), metadata.dump(2) + "\n");
    spdlog::info("checkpoint saved to {} (metadata in {})", checkpoint.string(),
                 checkpoint_metadata_path(checkpoint).string());
    return model;
}

}  // namespace edgeq
