// Fashion-MNIST in memory, and the seeded split of its training set into training and
// calibration images.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

namespace edgeq {

inline constexpr int kFashionClassCount = 10;
inline constexpr int64_t kImageSide = 28;
inline constexpr int64_t kImageSize = kImageSide * kImageSide;
inline constexpr std::array<std::string_view, kFashionClassCount> kFashionClassNames = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

inline constexpr std::string_view kDefaultDataFolder = "/usr/share/datasets/fashion-mnist";

// Labelled 28x28 grey images. Pixels stay uint8 in memory (a quarter of the float size) and
// become float32 in [0, 1] when a batch is gathered.
struct LabelledImages {
    std::vector<uint8_t> pixels;  // [count, 28, 28], row-major
    std::vector<uint8_t> labels;  // [count], each in 0..9

    int64_t size() const { return static_cast<int64_t>(labels.size()); }
    const uint8_t* image(int64_t index) const { return pixels.data() + index * kImageSize; }
};

struct FashionMnist {
    LabelledImages train;  // the 60,000 official training images
    LabelledImages test;   // the 10,000 official test images
};

// Reads train-{images,labels}-idx?-ubyte[.gz] and t10k-* from `folder`. Checks that the images
// are 28x28, that image and label counts agree and that every label is 0..9.
FashionMnist load_fashion_mnist(const std::filesystem::path& folder);

// Reads only the 10,000 test images (t10k-*) from `folder`, with the same checks.
LabelledImages load_fashion_mnist_test(const std::filesystem::path& folder);

// Reads one image file and its label file and checks them against each other.
LabelledImages load_labelled_images(const std::filesystem::path& images_path,
                                    const std::filesystem::path& labels_path);

// Indices into the official training set: disjoint, together all of it, each sorted ascending.
struct TrainCalibrationSplit {
    std::vector<int64_t> train;
    std::vector<int64_t> calibration;
};

// Draws `calibration_count` calibration images from `total` training images with a seeded
// Fisher-Yates shuffle on std::mt19937_64, whose output the C++ standard fixes, so the same seed
// gives the same split with any compiler.
TrainCalibrationSplit split_train_calibration(int64_t total, int64_t calibration_count,
                                              uint64_t seed);

// Copies the images at `indices` into a float32 batch [n, 1, 28, 28] scaled to [0, 1].
std::vector<float> gather_images(const LabelledImages& images, std::span<const int64_t> indices);

// Copies the images [first, first + count) into a float32 batch [count, 1, 28, 28] in [0, 1].
std::vector<float> gather_image_range(const LabelledImages& images, int64_t first, int64_t count);

// The first `count` images, or all of them when count <= 0 or count >= images.size().
LabelledImages first_images(const LabelledImages& images, int64_t count);

// Keeps only the images at `indices`, in that order.
LabelledImages select_images(const LabelledImages& images, std::span<const int64_t> indices);

}  // namespace edgeq
