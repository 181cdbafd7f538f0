#include "edgeq/model/train.h"

#include <chrono>
#include <cmath>
#include <numbers>
#include <numeric>
#include <random>

#include "edgeq/common/error.h"
#include "edgeq/common/random.h"

namespace edgeq {

namespace {

// Learning rate of epoch `epoch` (0-based): cosine decay from `initial` to `final` over `epochs`.
double cosine_learning_rate(int epoch, int epochs, double initial, double final) {
    if (epochs <= 1) {
        return initial;
    }
    const double progress = static_cast<double>(epoch) / (epochs - 1);
    return final + 0.5 * (initial - final) * (1.0 + std::cos(std::numbers::pi * progress));
}

// Copies one image into `destination` as float in [0, 1], shifted by (dx, dy) pixels with zero
// fill and mirrored left-right when `flip` is set.
void augment_image(const uint8_t* source, float* destination, int dx, int dy, bool flip) {
    for (int64_t y = 0; y < kImageSide; ++y) {
        for (int64_t x = 0; x < kImageSide; ++x) {
            const int64_t source_y = y - dy;
            int64_t source_x = x - dx;
            if (flip) {
                source_x = kImageSide - 1 - source_x;
            }
            const bool inside =
                source_y >= 0 && source_y < kImageSide && source_x >= 0 && source_x < kImageSide;
            destination[y * kImageSide + x] =
                inside ? static_cast<float>(source[source_y * kImageSide + source_x]) / 255.0f
                       : 0.0f;
        }
    }
}

}  // namespace

std::vector<EpochStats> train_fashion_cnn(
    FashionCnn& model, const LabelledImages& train, const LabelledImages& held_out,
    const TrainOptions& options, const std::function<void(const EpochStats&)>& on_epoch_end,
    const std::function<void(const BatchStats&)>& on_batch_end) {
    torch::manual_seed(options.seed);
    std::mt19937_64 generator(options.seed);

    torch::optim::Adam optimizer(model->parameters(),
                                 torch::optim::AdamOptions(options.learning_rate));
    const int64_t train_count = train.size();
    const int64_t batch_count = train_count / options.batch_size;  // drops a final partial batch
    if (batch_count == 0) {
        fail(ExitCode::kUsage,
             "batch size {} is larger than the {} training images; lower "
             "--batch-size",
             options.batch_size, train_count);
    }
    if (!(options.learning_rate > 0) || !(options.final_learning_rate >= 0) ||
        !std::isfinite(options.learning_rate) || !std::isfinite(options.final_learning_rate)) {
        fail(ExitCode::kUsage,
             "learning rates must be finite and positive (got --lr {}, --final-lr {})",
             options.learning_rate, options.final_learning_rate);
    }

    std::vector<int64_t> order(static_cast<size_t>(train_count));
    std::vector<float> batch_images(static_cast<size_t>(options.batch_size * kImageSize));
    std::vector<int64_t> batch_labels(static_cast<size_t>(options.batch_size));
    std::vector<EpochStats> history;

    for (int epoch = 0; epoch < options.epochs; ++epoch) {
        const auto start = std::chrono::steady_clock::now();
        const double learning_rate = cosine_learning_rate(
            epoch, options.epochs, options.learning_rate, options.final_learning_rate);
        for (auto& group : optimizer.param_groups()) {
            static_cast<torch::optim::AdamOptions&>(group.options()).lr(learning_rate);
        }

        // A new training order for every epoch.
        std::iota(order.begin(), order.end(), int64_t{0});
        shuffle_in_place(std::span<int64_t>(order), generator);

        model->train();
        double loss_sum = 0;
        int64_t correct = 0;
        for (int64_t b = 0; b < batch_count; ++b) {
            for (int64_t i = 0; i < options.batch_size; ++i) {
                const int64_t index = order[b * options.batch_size + i];
                const uint64_t shift_range = 2 * options.max_shift + 1;
                const int dx =
                    static_cast<int>(uniform_below(generator, shift_range)) - options.max_shift;
                const int dy =
                    static_cast<int>(uniform_below(generator, shift_range)) - options.max_shift;
                const bool flip = options.horizontal_flip && uniform_below(generator, 2) == 1;
                augment_image(train.image(index), batch_images.data() + i * kImageSize, dx, dy,
                              flip);
                batch_labels[i] = train.labels[index];
            }
            const torch::Tensor images =
                torch::from_blob(batch_images.data(),
                                 {options.batch_size, 1, kImageSide, kImageSide}, torch::kFloat32);
            const torch::Tensor labels =
                torch::from_blob(batch_labels.data(), {options.batch_size}, torch::kInt64);

            optimizer.zero_grad();
            const torch::Tensor logits = model->forward(images);
            const torch::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
            loss.backward();
            optimizer.step();

            loss_sum += loss.item<double>();
            correct += logits.argmax(1).eq(labels).sum().item<int64_t>();
            if (on_batch_end) {
                on_batch_end(
                    {epoch + 1, b + 1, batch_count, loss_sum / static_cast<double>(b + 1)});
            }
        }

        EpochStats stats;
        stats.epoch = epoch + 1;
        stats.learning_rate = learning_rate;
        stats.train_loss = loss_sum / static_cast<double>(batch_count);
        stats.train_accuracy =
            static_cast<double>(correct) / static_cast<double>(batch_count * options.batch_size);
        stats.held_out_accuracy = held_out.size() > 0 ? evaluate_accuracy(model, held_out) : 0.0;
        stats.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        history.push_back(stats);
        if (on_epoch_end) {
            on_epoch_end(stats);
        }
    }
    model->eval();
    return history;
}

std::vector<float> predict_logits(FashionCnn& model, const LabelledImages& images,
                                  int64_t batch_size) {
    torch::NoGradGuard no_grad;
    const bool was_training = model->is_training();
    model->eval();
    std::vector<float> logits;
    logits.reserve(static_cast<size_t>(images.size() * kFashionClassCount));
    for (int64_t first = 0; first < images.size(); first += batch_size) {
        const int64_t count = std::min(batch_size, images.size() - first);
        std::vector<float> batch = gather_image_range(images, first, count);
        const torch::Tensor output =
            model->forward(torch::from_blob(batch.data(), {count, 1, kImageSide, kImageSide}))
                .contiguous();
        logits.insert(logits.end(), output.data_ptr<float>(),
                      output.data_ptr<float>() + output.numel());
    }
    model->train(was_training);
    return logits;
}

double evaluate_accuracy(FashionCnn& model, const LabelledImages& images) {
    const std::vector<float> logits = predict_logits(model, images);
    int64_t correct = 0;
    for (int64_t i = 0; i < images.size(); ++i) {
        const float* row = logits.data() + i * kFashionClassCount;
        const auto predicted = std::max_element(row, row + kFashionClassCount) - row;
        correct += predicted == images.labels[i] ? 1 : 0;
    }
    return static_cast<double>(correct) / static_cast<double>(images.size());
}

}  // namespace edgeq
