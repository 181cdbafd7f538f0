#include "edgeq/data/dataset.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "edgeq/common/error.h"
#include "edgeq/common/random.h"
#include "edgeq/data/idx.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

// Debian's dataset-fashion-mnist ships the files gzip-compressed; a user's copy may be plain.
fs::path find_data_file(const fs::path& folder, const std::string& stem) {
    for (const fs::path& candidate : {folder / (stem + ".gz"), folder / stem}) {
        if (fs::exists(candidate)) {
            return candidate;
        }
    }
    fail(ExitCode::kIo,
         "data file '{}' not found (nor '{}.gz'); install dataset-fashion-mnist or pass the "
         "folder with --data",
         (folder / stem).string(), (folder / stem).string());
}

}  // namespace

LabelledImages load_labelled_images(const fs::path& images_path, const fs::path& labels_path) {
    IdxImages images = read_idx_images(images_path);
    if (images.rows != kImageSide || images.columns != kImageSide) {
        fail(ExitCode::kInvalidInput, "data file '{}' holds {}x{} images, expected {}x{}",
             images_path.string(), images.rows, images.columns, kImageSide, kImageSide);
    }

    std::vector<uint8_t> labels = read_idx_labels(labels_path);
    if (static_cast<int64_t>(labels.size()) != images.count) {
        fail(ExitCode::kInvalidInput,
             "data files disagree: '{}' holds {} images but '{}' holds {} labels; use files "
             "from the same release",
             images_path.string(), images.count, labels_path.string(), labels.size());
    }
    for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i] >= kFashionClassCount) {
            fail(ExitCode::kInvalidInput,
                 "label file '{}' has label {} at index {}; labels must be 0..9",
                 labels_path.string(), labels[i], i);
        }
    }
    return {std::move(images.pixels), std::move(labels)};
}

namespace {

void check_data_folder(const fs::path& folder) {
    if (fs::exists(folder) && !fs::is_directory(folder)) {
        fail(ExitCode::kIo,
             "data path '{}' is a file, not a folder; pass the folder that "
             "contains the IDX files with --data",
             folder.string());
    }
    if (!fs::is_directory(folder)) {
        fail(ExitCode::kIo,
             "data folder '{}' not found; install dataset-fashion-mnist or pass --data DIR",
             folder.string());
    }
}

}  // namespace

LabelledImages load_fashion_mnist_test(const fs::path& folder) {
    check_data_folder(folder);
    return load_labelled_images(find_data_file(folder, "t10k-images-idx3-ubyte"),
                                find_data_file(folder, "t10k-labels-idx1-ubyte"));
}

FashionMnist load_fashion_mnist(const fs::path& folder) {
    check_data_folder(folder);
    FashionMnist data;
    data.train = load_labelled_images(find_data_file(folder, "train-images-idx3-ubyte"),
                                      find_data_file(folder, "train-labels-idx1-ubyte"));
    data.test = load_labelled_images(find_data_file(folder, "t10k-images-idx3-ubyte"),
                                     find_data_file(folder, "t10k-labels-idx1-ubyte"));
    return data;
}

TrainCalibrationSplit split_train_calibration(int64_t total, int64_t calibration_count,
                                              uint64_t seed) {
    if (calibration_count <= 0 || calibration_count >= total) {
        fail(ExitCode::kUsage, "calibration count {} must be between 1 and {}", calibration_count,
             total - 1);
    }

    std::vector<int64_t> order(static_cast<size_t>(total));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 generator(seed);
    shuffle_in_place(std::span<int64_t>(order), generator);

    TrainCalibrationSplit split;
    split.calibration.assign(order.begin(), order.begin() + calibration_count);
    split.train.assign(order.begin() + calibration_count, order.end());
    std::sort(split.calibration.begin(), split.calibration.end());
    std::sort(split.train.begin(), split.train.end());
    return split;
}

std::vector<float> gather_images(const LabelledImages& images, std::span<const int64_t> indices) {
    std::vector<float> batch(indices.size() * kImageSize);
    float* destination = batch.data();
    for (const int64_t index : indices) {
        const uint8_t* source = images.image(index);
        for (int64_t p = 0; p < kImageSize; ++p) {
            *destination++ = static_cast<float>(source[p]) / 255.0f;
        }
    }
    return batch;
}

std::vector<float> gather_image_range(const LabelledImages& images, int64_t first, int64_t count) {
    std::vector<int64_t> indices(static_cast<size_t>(count));
    std::iota(indices.begin(), indices.end(), first);
    return gather_images(images, indices);
}

LabelledImages first_images(const LabelledImages& images, int64_t count) {
    if (count <= 0 || count >= images.size()) {
        return images;
    }
    LabelledImages subset;
    subset.pixels.assign(images.pixels.begin(), images.pixels.begin() + count * kImageSize);
    subset.labels.assign(images.labels.begin(), images.labels.begin() + count);
    return subset;
}

LabelledImages select_images(const LabelledImages& images, std::span<const int64_t> indices) {
    LabelledImages selected;
    selected.pixels.reserve(indices.size() * kImageSize);
    selected.labels.reserve(indices.size());
    for (const int64_t index : indices) {
        selected.pixels.insert(selected.pixels.end(), images.image(index),
                               images.image(index) + kImageSize);
        selected.labels.push_back(images.labels[static_cast<size_t>(index)]);
    }
    return selected;
}

}  // namespace edgeq
