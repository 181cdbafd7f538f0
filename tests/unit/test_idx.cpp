// IDX reader and Fashion-MNIST loader on files the tests write themselves: good files in both
// encodings, and each kind of damage the reader must name.

#include <gtest/gtest.h>

#include <fstream>

#include "edgeq/common/error.h"
#include "edgeq/data/dataset.h"
#include "edgeq/data/idx.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

void write_plain(const fs::path& path, const std::vector<uint8_t>& bytes) {
    std::ofstream stream(path, std::ios::binary);
    stream.write(reinterpret_cast<const char*>(bytes.data()),
                 static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const fs::path& path, const std::vector<uint8_t>& bytes) {
    ASSERT_TRUE(test::write_gzip_file(path, bytes)) << path;
}

std::vector<uint8_t> image_pixels(uint32_t count) {
    std::vector<uint8_t> pixels(count * 28 * 28);
    for (size_t i = 0; i < pixels.size(); ++i) {
        pixels[i] = static_cast<uint8_t>(i * 7 % 256);
    }
    return pixels;
}

// Runs `action`, expects an edgeq::Error, and returns its message.
template <typename Action>
std::string error_message(Action action) {
    try {
        action();
    } catch (const Error& error) {
        return error.what();
    }
    ADD_FAILURE() << "no edgeq::Error was thrown";
    return {};
}

TEST(IdxReader, ReadsPlainImages) {
    ScratchFolder folder("idx");
    const std::vector<uint8_t> pixels = image_pixels(3);
    write_plain(folder / "images", test::make_idx_bytes(0x00000803, {3, 28, 28}, pixels));

    const IdxImages images = read_idx_images(folder / "images");
    EXPECT_EQ(images.count, 3);
    EXPECT_EQ(images.rows, 28);
    EXPECT_EQ(images.columns, 28);
    EXPECT_EQ(images.pixels, pixels);
}

TEST(IdxReader, ReadsGzipImagesAndLabels) {
    ScratchFolder folder("idx");
    const std::vector<uint8_t> pixels = image_pixels(2);
    write_gzip(folder / "images.gz", test::make_idx_bytes(0x00000803, {2, 28, 28}, pixels));
    write_gzip(folder / "labels.gz", test::make_idx_bytes(0x00000801, {2}, {9, 0}));

    EXPECT_EQ(read_idx_images(folder / "images.gz").pixels, pixels);
    EXPECT_EQ(read_idx_labels(folder / "labels.gz"), (std::vector<uint8_t>{9, 0}));
}

TEST(IdxReader, RejectsWrongMagic) {
    ScratchFolder folder("idx");
    // A label file (IDX1) where an image file (IDX3) is expected.
    write_plain(folder / "images", test::make_idx_bytes(0x00000801, {2}, {1, 2}));
    const std::string message = error_message([&] { read_idx_images(folder / "images"); });
    EXPECT_NE(message.find("magic number 0x00000801"), std::string::npos) << message;
    EXPECT_NE(message.find((folder / "images").string()), std::string::npos) << message;
}

TEST(IdxReader, RejectsTruncatedGzip) {
    ScratchFolder folder("idx");
    write_gzip(folder / "full.gz", test::make_idx_bytes(0x00000803, {4, 28, 28}, image_pixels(4)));
    const std::string full = [&] {
        std::ifstream stream(folder / "full.gz", std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(stream), {});
    }();
    write_plain(
        folder / "cut.gz",
        std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(full.size() / 2)));

    const std::string message = error_message([&] { read_idx_images(folder / "cut.gz"); });
    EXPECT_NE(message.find("cut.gz"), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
}

TEST(IdxReader, RejectsDataShorterThanHeader) {
    ScratchFolder folder("idx");
    std::vector<uint8_t> pixels = image_pixels(3);
    pixels.resize(pixels.size() - 10);
    write_plain(folder / "images", test::make_idx_bytes(0x00000803, {3, 28, 28}, pixels));
    const std::string message = error_message([&] { read_idx_images(folder / "images"); });
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
}

TEST(IdxReader, RejectsExtraBytes) {
    ScratchFolder folder("idx");
    write_plain(folder / "labels", test::make_idx_bytes(0x00000801, {2}, {1, 2, 3}));
    const std::string message = error_message([&] { read_idx_labels(folder / "labels"); });
    EXPECT_NE(message.find("extra bytes"), std::string::npos) << message;
}

TEST(IdxReader, RejectsTinyFile) {
    ScratchFolder folder("idx");
    write_plain(folder / "labels", {0, 0});
    const std::string message = error_message([&] { read_idx_labels(folder / "labels"); });
    EXPECT_NE(message.find("too short"), std::string::npos) << message;
}

TEST(IdxReader, MissingFileIsIoError) {
    ScratchFolder folder("idx");
    try {
        read_idx_labels(folder / "absent");
        FAIL() << "no error for a missing file";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kIo);
        EXPECT_NE(std::string(error.what()).find("not found"), std::string::npos);
    }
}

TEST(LabelledImages, RejectsCountMismatch) {
    ScratchFolder folder("idx");
    write_plain(folder / "images", test::make_idx_bytes(0x00000803, {3, 28, 28}, image_pixels(3)));
    write_plain(folder / "labels", test::make_idx_bytes(0x00000801, {2}, {1, 2}));
    const std::string message =
        error_message([&] { load_labelled_images(folder / "images", folder / "labels"); });
    EXPECT_NE(message.find("3 images"), std::string::npos) << message;
    EXPECT_NE(message.find("2 labels"), std::string::npos) << message;
}

TEST(LabelledImages, RejectsLabelAboveNine) {
    ScratchFolder folder("idx");
    write_plain(folder / "images", test::make_idx_bytes(0x00000803, {2, 28, 28}, image_pixels(2)));
    write_plain(folder / "labels", test::make_idx_bytes(0x00000801, {2}, {3, 10}));
    const std::string message =
        error_message([&] { load_labelled_images(folder / "images", folder / "labels"); });
    EXPECT_NE(message.find("label 10 at index 1"), std::string::npos) << message;
}

TEST(LabelledImages, RejectsWrongImageSize) {
    ScratchFolder folder("idx");
    write_plain(folder / "images", test::make_idx_bytes(0x00000803, {1, 32, 32}, std::vector<uint8_t>(1024)));
    write_plain(folder / "labels", test::make_idx_bytes(0x00000801, {1}, {1}));
    const std::string message =
        error_message([&] { load_labelled_images(folder / "images", folder / "labels"); });
    EXPECT_NE(message.find("32x32"), std::string::npos) << message;
}

TEST(FashionMnist, MissingFolderIsIoError) {
    try {
        load_fashion_mnist("/nonexistent/fashion-mnist");
        FAIL() << "no error for a missing folder";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kIo);
        EXPECT_NE(std::string(error.what()).find("/nonexistent/fashion-mnist"), std::string::npos);
    }
}

TEST(FashionMnist, LoadsRealData) {
    const fs::path folder = test::fashion_mnist_folder();
    if (folder.empty()) {
        GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
    }
    const FashionMnist data = load_fashion_mnist(folder);
    EXPECT_EQ(data.train.size(), 60000);
    EXPECT_EQ(data.test.size(), 10000);
    EXPECT_EQ(data.train.pixels.size(), 60000u * 784u);

    // Each class holds exactly a tenth of both sets in the official release.
    std::array<int, kFashionClassCount> train_counts{};
    for (const uint8_t label : data.train.labels) {
        train_counts[label] += 1;
    }
    for (const int count : train_counts) {
        EXPECT_EQ(count, 6000);
    }
}

TEST(GatherImages, ScalesToUnitRange) {
    LabelledImages images;
    images.pixels.assign(2 * kImageSize, 0);
    images.pixels[kImageSize] = 255;
    images.pixels[kImageSize + 1] = 51;
    images.labels = {0, 1};
    const std::vector<int64_t> second = {1};
    const std::vector<float> batch = gather_images(images, second);
    ASSERT_EQ(batch.size(), static_cast<size_t>(kImageSize));
    EXPECT_FLOAT_EQ(batch[0], 1.0f);
    EXPECT_FLOAT_EQ(batch[1], 0.2f);
    EXPECT_FLOAT_EQ(batch[2], 0.0f);
}

}  // namespace
}  // namespace edgeq
