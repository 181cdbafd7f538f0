#include "edgeq/eval/evaluate.h"

#include <chrono>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"

namespace edgeq {

int argmax(const float* logits, int count) {
    int best = 0;
    for (int i = 1; i < count; ++i) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

ClassificationResult score_predictions(const std::vector<uint8_t>& predictions,
                                       const std::vector<uint8_t>& labels) {
    ClassificationResult result;
    result.predictions = predictions;
    result.total = static_cast<int64_t>(labels.size());
    for (size_t i = 0; i < labels.size(); ++i) {
        result.confusion[labels[i]][predictions[i]] += 1;
        result.correct += predictions[i] == labels[i] ? 1 : 0;
    }
    return result;
}

ClassificationResult evaluate_classifier(OrtModel& model, const LabelledImages& images,
                                         int64_t batch_size,
                                         const std::function<void(int64_t, int64_t)>& on_progress) {
    const BatchRunner runner = [&model](const std::vector<float>& input,
                                        const std::vector<int64_t>& shape) {
        return model.run(input, shape);
    };
    return evaluate_classifier(runner, images, batch_size, on_progress);
}

ClassificationResult evaluate_classifier(const BatchRunner& model, const LabelledImages& images,
                                         int64_t batch_size,
                                         const std::function<void(int64_t, int64_t)>& on_progress) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<uint8_t> predictions;
    predictions.reserve(static_cast<size_t>(images.size()));

    for (int64_t first = 0; first < images.size(); first += batch_size) {
        const int64_t count = std::min(batch_size, images.size() - first);
        const std::vector<float> batch = gather_image_range(images, first, count);
        const std::vector<FloatOutput> outputs = model(batch, {count, 1, kImageSide, kImageSide});
        const FloatOutput& logits = outputs.front();
        if (logits.shape.size() != 2 || logits.shape[0] != count ||
            logits.shape[1] != kFashionClassCount) {
            fail(ExitCode::kInvalidInput, "model output has shape [{}], expected [{}, {}]",
                 fmt::join(logits.shape, ", "), count, kFashionClassCount);
        }
        for (int64_t i = 0; i < count; ++i) {
            predictions.push_back(static_cast<uint8_t>(
                argmax(logits.values.data() + i * kFashionClassCount, kFashionClassCount)));
        }
        if (on_progress) {
            on_progress(first + count, images.size());
        }
    }

    ClassificationResult result = score_predictions(predictions, images.labels);
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
}

void write_confusion_csv(const ConfusionMatrix& confusion, const std::filesystem::path& path) {
    std::string csv = "true\\predicted";
    for (const std::string_view name : kFashionClassNames) {
        csv += fmt::format(",{}", name);
    }
    csv += '\n';
    for (int t = 0; t < kFashionClassCount; ++t) {
        csv += kFashionClassNames[t];
        for (int p = 0; p < kFashionClassCount; ++p) {
            csv += fmt::format(",{}", confusion[t][p]);
        }
        csv += '\n';
    }
    write_file_atomic(path, csv);
}

}  // namespace edgeq
