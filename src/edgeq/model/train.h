// Training of FashionCNN with Adam and cross-entropy, as the tutorial does, plus an optional
// cosine learning-rate decay and light augmentation (random shifts and horizontal flips).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "edgeq/data/dataset.h"
#include "edgeq/model/fashion_cnn.h"

namespace edgeq {

struct TrainOptions {
    int epochs = 30;
    int64_t batch_size = 100;
    double learning_rate = 1e-3;
    double final_learning_rate = 1e-5;  // cosine decay target; equal to learning_rate = constant
    int max_shift = 2;                  // augmentation: random translation in pixels, 0 = none
    bool horizontal_flip = false;       // augmentation: mirror half of the images
    uint64_t seed = 42;
};

struct EpochStats {
    int epoch = 0;                 // 1-based
    double learning_rate = 0;      // used during this epoch
    double train_loss = 0;         // mean cross-entropy over the epoch's batches
    double train_accuracy = 0;     // on the augmented training batches, in dropout mode
    double held_out_accuracy = 0;  // on the held-out images, eval mode, no augmentation
    double seconds = 0;
};

// Position of training inside an epoch, after one optimizer step.
struct BatchStats {
    int epoch = 0;            // 1-based
    int64_t batch = 0;        // 1-based, batches done in this epoch
    int64_t batch_count = 0;  // batches per epoch (a final partial batch is dropped)
    double running_loss = 0;  // mean cross-entropy over this epoch's batches so far
};

// Trains `model` in place on `train` and measures `held_out` after each epoch. Calls
// `on_batch_end` after every optimizer step and `on_epoch_end` with each epoch's statistics (both
// for progress output, either may be empty) and returns the epochs' statistics.
std::vector<EpochStats> train_fashion_cnn(
    FashionCnn& model, const LabelledImages& train, const LabelledImages& held_out,
    const TrainOptions& options, const std::function<void(const EpochStats&)>& on_epoch_end,
    const std::function<void(const BatchStats&)>& on_batch_end = {});

// Runs `model` in eval mode over `images` and returns the logits [count, 10], row-major.
std::vector<float> predict_logits(FashionCnn& model, const LabelledImages& images,
                                  int64_t batch_size = 1000);

// Top-1 accuracy of `model` on `images`, eval mode.
double evaluate_accuracy(FashionCnn& model, const LabelledImages& images);

}  // namespace edgeq
