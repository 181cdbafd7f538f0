// Classification metrics of a model on labelled images: accuracy, predictions, confusion matrix.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "edgeq/data/dataset.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

// confusion[true class][predicted class] = number of images.
using ConfusionMatrix = std::array<std::array<int64_t, kFashionClassCount>, kFashionClassCount>;

struct ClassificationResult {
    std::vector<uint8_t> predictions;  // top-1 class per image
    ConfusionMatrix confusion{};
    int64_t correct = 0;
    int64_t total = 0;
    double seconds = 0;  // wall time of the inference

    double accuracy() const {
        return total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
    }
};

// Runs a batch of images [N, 1, 28, 28] through a model and returns its outputs, the logits
// first. ONNX Runtime sessions and npu-sim both fit behind it.
using BatchRunner = std::function<std::vector<FloatOutput>(const std::vector<float>& input,
                                                           const std::vector<int64_t>& shape)>;

// Runs `model` over `images` in batches of `batch_size` and scores its top-1 predictions.
// `on_progress(done, total)` is called after each batch when set.
ClassificationResult evaluate_classifier(
    const BatchRunner& model, const LabelledImages& images, int64_t batch_size,
    const std::function<void(int64_t, int64_t)>& on_progress = {});

ClassificationResult evaluate_classifier(
    OrtModel& model, const LabelledImages& images, int64_t batch_size,
    const std::function<void(int64_t, int64_t)>& on_progress = {});

// Index of the largest of `count` logits; the first one wins a tie, as torch.argmax does.
int argmax(const float* logits, int count);

// Scores `predictions` against `labels`.
ClassificationResult score_predictions(const std::vector<uint8_t>& predictions,
                                       const std::vector<uint8_t>& labels);

// Writes the confusion matrix as CSV: a header row of predicted class names, then one row per
// true class. Atomic.
void write_confusion_csv(const ConfusionMatrix& confusion, const std::filesystem::path& path);

}  // namespace edgeq
