// The training stage: loads or trains FashionCNN and records how the checkpoint was made.
#pragma once

#include <filesystem>
#include <string>

#include "edgeq/data/dataset.h"
#include "edgeq/model/fashion_cnn.h"
#include "edgeq/model/train.h"

namespace edgeq {

// Fashion-MNIST with the training set split into training and calibration images.
struct PreparedData {
    LabelledImages train;
    LabelledImages calibration;
    LabelledImages test;
    TrainCalibrationSplit split;  // indices into the official training set
};

// Loads Fashion-MNIST from `folder` and splits off `calibration_count` images with `seed`.
PreparedData prepare_data(const std::filesystem::path& folder, int64_t calibration_count,
                          uint64_t seed);

// Trains a new FashionCNN, saves it to `checkpoint` and writes `<checkpoint stem>.json` beside
// it with the command line, seed, options and per-epoch metrics. Both writes are atomic.
FashionCnn train_and_save(const PreparedData& data, const TrainOptions& options,
                          const std::filesystem::path& checkpoint, const std::string& command_line);

// Path of the metadata file written beside a checkpoint.
std::filesystem::path checkpoint_metadata_path(const std::filesystem::path& checkpoint);

}  // namespace edgeq
