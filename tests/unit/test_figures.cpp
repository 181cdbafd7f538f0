// The report's figures on small synthetic data: each is a valid PNG of a sensible size with
// something drawn in it, the same data gives the same bytes, and a failed write leaves no file.
// Also the HTML escaping and base64 encoding that report.html is built with.

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <map>
#include <set>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/report/figures.h"
#include "edgeq/report/html_report.h"
#include "support/test_support.h"

namespace edgeq::report {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

// Every figure is laid out for a browser page: narrower than ~150 px or wider than 2000 px
// would mean a broken layout computation (a zero cell size, a runaway label width).
constexpr uint32_t kMinSide = 150;
constexpr uint32_t kMaxSide = 2000;
// A figure with text and shapes compresses to at least a few KB; more than 2 MB for these
// sizes would mean noise where flat colour was meant.
constexpr uintmax_t kMinBytes = 3'000;
constexpr uintmax_t kMaxBytes = 2'000'000;
// Text, images and bars cover at least this share of the pixels; a blank (all white) or
// almost blank figure falls below it.
constexpr double kMinInkShare = 0.01;

// 100 images, ten of each class: a bright rectangle whose size depends on the class, on a
// background whose grey level is the image index, so that no two images are equal.
LabelledImages synthetic_images() {
    constexpr int kCount = 100;
    LabelledImages images;
    images.pixels.resize(kCount * kImageSize);
    for (int i = 0; i < kCount; ++i) {
        const uint8_t label = static_cast<uint8_t>((i * 3) % kFashionClassCount);
        images.labels.push_back(label);
        for (int row = 0; row < kImageSide; ++row) {
            for (int column = 0; column < kImageSide; ++column) {
                const bool inside = row > 4 && row < 8 + 2 * label && column > 6 && column < 22;
                images.pixels[i * kImageSize + row * kImageSide + column] =
                    inside ? 230 : static_cast<uint8_t>(i);
            }
        }
    }
    return images;
}

// The labels, with every seventh image predicted as the next class.
std::vector<uint8_t> synthetic_predictions(const LabelledImages& images) {
    std::vector<uint8_t> predictions(images.labels.begin(), images.labels.end());
    for (size_t i = 0; i < predictions.size(); i += 7) {
        predictions[i] = static_cast<uint8_t>((predictions[i] + 1) % kFashionClassCount);
    }
    return predictions;
}

ConfusionMatrix synthetic_confusion(int shift) {
    ConfusionMatrix confusion{};
    for (int t = 0; t < kFashionClassCount; ++t) {
        confusion[t][t] = 900 + 10 * t - shift;
        confusion[t][(t + 1) % kFashionClassCount] = 60 + shift;
        confusion[t][(t + 3) % kFashionClassCount] = 5 * t;
    }
    return confusion;
}

std::vector<EpochStats> synthetic_epochs() {
    std::vector<EpochStats> epochs;
    for (int e = 1; e <= 6; ++e) {
        EpochStats stats;
        stats.epoch = e;
        stats.train_loss = 0.6 / e;
        stats.train_accuracy = 0.80 + 0.02 * e;
        stats.held_out_accuracy = 0.82 + 0.015 * e;
        epochs.push_back(stats);
    }
    return epochs;
}

std::vector<TensorSqnr> synthetic_sqnrs() {
    return {{"input", "activation", 38.5},
            {"/layer1/layer1.0/Conv_output_0_and_a_very_long_suffix_that_must_be_cut_at_the_front",
             "activation", 27.25},
            {"layer1.0.weight", "weight", 41.0},
            {"layer1.0.bias", "bias", std::nullopt},
            {"fc3.weight", "weight", -2.5}};
}

// Each figure function bound to the synthetic data, by file name.
std::map<std::string, std::function<void(const fs::path&)>> figure_writers() {
    static const LabelledImages images = synthetic_images();
    static const std::vector<uint8_t> predictions = synthetic_predictions(images);
    static const ConfusionMatrix fp32 = synthetic_confusion(0);
    static const ConfusionMatrix int8 = synthetic_confusion(20);
    static const std::vector<EpochStats> epochs = synthetic_epochs();
    static const std::vector<TensorSqnr> sqnrs = synthetic_sqnrs();
    return {
        {kClassSamplesFigure, [](const fs::path& path) { draw_class_samples(images, path); }},
        {kPredictionsFigure,
         [](const fs::path& path) { draw_predictions(images, predictions, path); }},
        {kMisclassifiedFigure,
         [](const fs::path& path) { draw_misclassified(images, predictions, path); }},
        {kConfusionFp32Figure,
         [](const fs::path& path) { draw_confusion_matrix(fp32, "fp32 <test> & 'title'", path); }},
        {kConfusionInt8Figure,
         [](const fs::path& path) { draw_confusion_matrix(int8, "int8", path); }},
        {kPerClassAccuracyFigure,
         [](const fs::path& path) { draw_per_class_accuracy(fp32, int8, path); }},
        {kTrainingCurvesFigure, [](const fs::path& path) { draw_training_curves(epochs, path); }},
        {kLayerSqnrFigure, [](const fs::path& path) { draw_layer_sqnr(sqnrs, path); }},
    };
}

TEST(Figures, EveryFigureHasAWriter) {
    const auto writers = figure_writers();
    const std::set<std::string> listed(kFigureFiles.begin(), kFigureFiles.end());
    EXPECT_EQ(listed.size(), kFigureFiles.size()) << "a figure name is listed twice";
    for (const char* name : kFigureFiles) {
        EXPECT_TRUE(writers.contains(name)) << name << " is not covered by this test";
    }
}

TEST(Figures, WritesValidNonBlankPng) {
    const ScratchFolder folder("figures");
    for (const auto& [name, write] : figure_writers()) {
        SCOPED_TRACE(name);
        const fs::path path = folder / name;
        write(path);
        ASSERT_TRUE(fs::exists(path));
        const uintmax_t bytes = fs::file_size(path);
        EXPECT_GE(bytes, kMinBytes);
        EXPECT_LE(bytes, kMaxBytes);

        const test::DecodedPng png = test::decode_png(path);
        ASSERT_TRUE(png.error.empty()) << png.error;
        EXPECT_GE(png.width, kMinSide);
        EXPECT_LE(png.width, kMaxSide);
        EXPECT_GE(png.height, kMinSide);
        EXPECT_LE(png.height, kMaxSide);
        EXPECT_GE(test::ink_share(png), kMinInkShare);
    }
    // Only the figures themselves: no temporary file is left beside them.
    EXPECT_EQ(std::distance(fs::directory_iterator(folder.path()), fs::directory_iterator()),
              static_cast<std::ptrdiff_t>(kFigureFiles.size()));
}

TEST(Figures, SameInputGivesSameBytes) {
    const ScratchFolder folder("figures-repeat");
    for (const auto& [name, write] : figure_writers()) {
        SCOPED_TRACE(name);
        write(folder / ("first-" + name));
        write(folder / ("second-" + name));
        EXPECT_EQ(read_file(folder / ("first-" + name)), read_file(folder / ("second-" + name)));
    }
}

TEST(Figures, UnwritablePathFailsWithoutFile) {
    const ScratchFolder folder("figures-unwritable");
    const fs::path missing_folder = folder / "no-such-folder";
    for (const auto& [name, write] : figure_writers()) {
        SCOPED_TRACE(name);
        const fs::path path = missing_folder / name;
        try {
            write(path);
            ADD_FAILURE() << "writing into a missing folder succeeded";
        } catch (const Error& error) {
            EXPECT_EQ(error.code(), ExitCode::kIo);
            EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos)
                << error.what();
        }
        EXPECT_FALSE(fs::exists(path));
    }
    EXPECT_TRUE(fs::is_empty(folder.path()));
}

TEST(Figures, EmptyTrainingRecordIsRejected) {
    const ScratchFolder folder("figures-empty");
    try {
        draw_training_curves({}, folder / kTrainingCurvesFigure);
        ADD_FAILURE() << "an empty training record was drawn";
    } catch (const Error& error) {
        EXPECT_EQ(error.code(), ExitCode::kInvalidInput);
    }
    EXPECT_FALSE(fs::exists(folder / kTrainingCurvesFigure));
}

TEST(Figures, NoMisclassifiedImagesStillDraws) {
    const ScratchFolder folder("figures-none-wrong");
    const LabelledImages images = synthetic_images();
    draw_misclassified(images, images.labels, folder / kMisclassifiedFigure);
    const test::DecodedPng png = test::decode_png(folder / kMisclassifiedFigure);
    ASSERT_TRUE(png.error.empty()) << png.error;
    EXPECT_GE(test::ink_share(png), kMinInkShare);
}

TEST(Figures, NonFiniteSqnrStillDraws) {
    const ScratchFolder folder("figures-non-finite");
    const std::vector<TensorSqnr> sqnrs = {
        {"input", "activation", std::numeric_limits<double>::quiet_NaN()},
        {"conv.weight", "weight", std::numeric_limits<double>::infinity()},
        {"conv.bias", "bias", std::nullopt}};
    draw_layer_sqnr(sqnrs, folder / kLayerSqnrFigure);
    const test::DecodedPng png = test::decode_png(folder / kLayerSqnrFigure);
    ASSERT_TRUE(png.error.empty()) << png.error;
    EXPECT_GE(test::ink_share(png), kMinInkShare);
}

TEST(Figures, PredictionOutsideClassesIsRejected) {
    const ScratchFolder folder("figures-bad-class");
    const LabelledImages images = synthetic_images();
    std::vector<uint8_t> predictions(images.labels.begin(), images.labels.end());
    predictions[3] = kFashionClassCount;
    EXPECT_THROW(draw_predictions(images, predictions, folder / kPredictionsFigure), Error);
    EXPECT_FALSE(fs::exists(folder / kPredictionsFigure));
}

TEST(HtmlReport, EscapesMarkupCharacters) {
    EXPECT_EQ(escape_html("a<b>&\"c\"'d'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
    EXPECT_EQ(escape_html("plain text"), "plain text");
}

TEST(HtmlReport, Base64EncodesPaddingCases) {
    // Inputs of 0 to 6 bytes cover every padding case: none, one '=' and two.
    const std::vector<std::pair<std::string, std::string>> vectors = {{"", ""},
                                                                      {"f", "Zg=="},
                                                                      {"fo", "Zm8="},
                                                                      {"foo", "Zm9v"},
                                                                      {"foob", "Zm9vYg=="},
                                                                      {"fooba", "Zm9vYmE="},
                                                                      {"foobar", "Zm9vYmFy"}};
    for (const auto& [input, expected] : vectors) {
        EXPECT_EQ(encode_base64(input), expected) << "input '" << input << "'";
    }
    EXPECT_EQ(encode_base64(std::string("\xff\x00\x80", 3)), "/wCA");
}

}  // namespace
}  // namespace edgeq::report
