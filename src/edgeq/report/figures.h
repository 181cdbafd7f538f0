// The figures of a run's results, drawn with cairo into PNG files. Each function takes the data
// itself (no file to parse), draws one figure with the "DejaVu Sans" face and writes the PNG
// atomically (a temporary file, then a rename). The same data gives the same bytes.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "edgeq/data/dataset.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/model/train.h"

namespace edgeq::report {

inline constexpr const char* kClassSamplesFigure = "class_samples.png";
inline constexpr const char* kPredictionsFigure = "predictions.png";
inline constexpr const char* kMisclassifiedFigure = "misclassified.png";
inline constexpr const char* kConfusionFp32Figure = "confusion_fp32.png";
inline constexpr const char* kConfusionInt8Figure = "confusion_int8.png";
inline constexpr const char* kPerClassAccuracyFigure = "per_class_accuracy.png";
inline constexpr const char* kTrainingCurvesFigure = "training_curves.png";  // needs a record
inline constexpr const char* kLayerSqnrFigure = "layer_sqnr.png";  // needs SQNR measurements

// Every figure file the report can write, in the order the report shows them.
inline constexpr std::array<const char*, 8> kFigureFiles = {
    kClassSamplesFigure,  kPredictionsFigure,      kMisclassifiedFigure,  kConfusionFp32Figure,
    kConfusionInt8Figure, kPerClassAccuracyFigure, kTrainingCurvesFigure, kLayerSqnrFigure,
};

inline constexpr int kClassSampleColumns = 8;  // sample images per class in class_samples.png
inline constexpr int kPredictionCount = 20;    // images in predictions.png
inline constexpr int kMaxMisclassified = 60;   // images in misclassified.png at most

// One quantized tensor's signal-to-quantization-noise ratio, 10 log10(sum x^2 / sum (x - q)^2).
struct TensorSqnr {
    std::string tensor;
    std::string role;               // "activation", "weight" or "bias"
    std::optional<double> sqnr_db;  // empty: no quantization error at all (infinite SQNR)
};

// The first kClassSampleColumns images of each class, one labelled row per class.
void draw_class_samples(const LabelledImages& images, const std::filesystem::path& path);

// The first kPredictionCount images with the int8 prediction and the true label; wrong ones get
// a red frame and red text. predictions[i] is the predicted class of images.image(i).
void draw_predictions(const LabelledImages& images, std::span<const uint8_t> predictions,
                      const std::filesystem::path& path);

// Up to kMaxMisclassified of the images whose prediction differs from the label, in index order,
// with both labels, and a title giving how many of how many are wrong. Only the first
// predictions.size() images count.
void draw_misclassified(const LabelledImages& images, std::span<const uint8_t> predictions,
                        const std::filesystem::path& path);

// The confusion matrix as a heat map: colour from the square root of the share of the true
// class's row, and each cell's count and share written in it. Rows are true classes, columns
// predicted classes.
void draw_confusion_matrix(const ConfusionMatrix& confusion, std::string_view title,
                           const std::filesystem::path& path);

// Per-class accuracy (the confusion matrix's diagonal over its row sum), fp32 beside int8.
void draw_per_class_accuracy(const ConfusionMatrix& fp32, const ConfusionMatrix& int8,
                             const std::filesystem::path& path);

// Training loss, and training and held-out accuracy, per epoch. Throws Error(kInvalidInput)
// when `epochs` is empty.
void draw_training_curves(std::span<const EpochStats> epochs, const std::filesystem::path& path);

// One horizontal bar per tensor with its SQNR in dB. Throws Error(kInvalidInput) when `tensors`
// is empty.
void draw_layer_sqnr(std::span<const TensorSqnr> tensors, const std::filesystem::path& path);

}  // namespace edgeq::report
