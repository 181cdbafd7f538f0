#include "edgeq/quant/calibration_sources.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cmath>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"
#include "edgeq/data/image_folder.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kIdxImagesMagic = 0x00000803;
constexpr std::string_view kNpyMagic = "\x93NUMPY";
// uint8 samples become x / 255 in [0, 1], the range torchvision's ToTensor gives.
constexpr float kUint8Divisor = 255.0F;

bool ends_with(const std::string& text, std::string_view suffix) {
    return text.size() >= suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lower_case(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text;
}

// The first four bytes of a file, after gunzip when it is gzip-compressed (zlib's gzread passes
// plain files through unchanged). Fewer bytes when the file is shorter.
std::string read_leading_bytes(const fs::path& path) {
    gzFile file = gzopen(path.c_str(), "rb");
    if (file == nullptr) {
        fail(ExitCode::kIo, "cannot open calibration data file '{}'", path.string());
    }
    std::array<char, 4> bytes{};
    const int read = gzread(file, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(file);
    return {bytes.data(), static_cast<size_t>(std::max(read, 0))};
}

// Formats a shape as "[?, 3, 224, 224]", with dynamic dimensions (<= 0) as "?".
std::string shape_text(const std::vector<int64_t>& shape) {
    std::vector<std::string> parts;
    for (const int64_t dimension : shape) {
        parts.push_back(dimension > 0 ? std::to_string(dimension) : "?");
    }
    return fmt::format("[{}]", fmt::join(parts, ", "));
}

// Everything open_calibration_source learns about the data before it builds the reader.
struct SourceLayout {
    int64_t sample_count = 0;  // N, before the limit
    int64_t channels = 0;
    int64_t raw_height = 0;  // H and W as stored (first image for a PNG folder)
    int64_t raw_width = 0;
};

void check_options(const CalibrationSourceOptions& options) {
    if (options.batch_size <= 0) {
        fail(ExitCode::kUsage, "calibration batch size {} must be positive", options.batch_size);
    }
    if (options.limit < 0) {
        fail(ExitCode::kUsage, "calibration sample limit {} must be 0 (all) or positive",
             options.limit);
    }
    if (options.channels < 0) {
        fail(ExitCode::kUsage, "calibration channel count {} must be 0 (the model's) or positive",
             options.channels);
    }
    if (options.size && (options.size->first <= 0 || options.size->second <= 0)) {
        fail(ExitCode::kUsage, "--size {} {} must be two positive numbers, height then width",
             options.size->first, options.size->second);
    }
}

// The model's channel count when its input is 4-D and fixes it, else 0.
int64_t model_channels(const std::vector<int64_t>& model_input_shape) {
    return model_input_shape.size() == 4 && model_input_shape[1] > 0 ? model_input_shape[1] : 0;
}

// Channel count for PNG images: the option, else the model's, else the first image's.
int64_t png_channels(const CalibrationSourceOptions& options,
                     const std::vector<int64_t>& model_input_shape, const PngInfo& first_image) {
    int64_t channels = options.channels;
    if (channels == 0) {
        channels = model_channels(model_input_shape);
    }
    if (channels == 0) {
        channels = first_image.channels;
    }
    if (channels != 1 && channels != 3) {
        fail(ExitCode::kUnsupported,
             "PNG images in '{}' can be read with 1 (grey) or 3 (RGB) channels, but {} are "
             "requested; give the data as a .npy array [N, {}, H, W] instead",
             options.path.string(), channels, channels);
    }
    return channels;
}

SourceLayout inspect_npy(const NpyFile& file) {
    const std::vector<int64_t>& shape = file.shape();
    if (shape.size() != 4) {
        fail(ExitCode::kInvalidInput,
             ".npy file '{}' has shape {}; calibration arrays are 4-D [N, C, H, W], so reshape "
             "it (for grey images [N, H, W]: array[:, None])",
             file.path().string(), shape_text(shape));
    }
    if (shape[1] == 0 || shape[2] == 0 || shape[3] == 0) {
        fail(ExitCode::kInvalidInput, ".npy file '{}' has shape {} with an empty sample",
             file.path().string(), shape_text(shape));
    }
    return {shape[0], shape[1], shape[2], shape[3]};
}

// Checks the sample shape [C, H, W] against the model input [N, C, H, W] where the model fixes
// a dimension.
void check_model_input(const fs::path& path, const std::vector<int64_t>& sample_shape,
                       const std::vector<int64_t>& model_input_shape) {
    if (model_input_shape.empty()) {
        return;
    }
    if (model_input_shape.size() != 4) {
        fail(ExitCode::kUnsupported,
             "the model input has shape {}, but calibration data '{}' gives images [N, C, H, W]; "
             "edgeq calibrates models whose input is one 4-D image batch",
             shape_text(model_input_shape), path.string());
    }

    std::vector<std::string> fixes;
    const int64_t expected_channels = model_input_shape[1];
    if (expected_channels > 0 && expected_channels != sample_shape[0]) {
        fixes.push_back(fmt::format("give data with {} channels", expected_channels));
    }
    const int64_t expected_height = model_input_shape[2];
    const int64_t expected_width = model_input_shape[3];
    if ((expected_height > 0 && expected_height != sample_shape[1]) ||
        (expected_width > 0 && expected_width != sample_shape[2])) {
        const int64_t height = expected_height > 0 ? expected_height : sample_shape[1];
        const int64_t width = expected_width > 0 ? expected_width : sample_shape[2];
        fixes.push_back(fmt::format("use --size {} {}", height, width));
    }
    if (!fixes.empty()) {
        fail(ExitCode::kInvalidInput,
             "calibration data '{}' gives samples [C, H, W] = {} but the model input is {}; {}",
             path.string(), shape_text(sample_shape), shape_text(model_input_shape),
             fmt::join(fixes, " and "));
    }
}

void check_normalization(const std::vector<float>& values, const std::string& option_name,
                         int64_t channels, bool must_be_positive) {
    if (values.empty()) {
        return;
    }
    if (values.size() != 1 && static_cast<int64_t>(values.size()) != channels) {
        fail(ExitCode::kUsage,
             "{} has {} values but the calibration data has {} {}; give 1 value{}", option_name,
             values.size(), channels, channels == 1 ? "channel" : "channels",
             channels == 1 ? "" : fmt::format(" or {}", channels));
    }
    for (size_t c = 0; c < values.size(); ++c) {
        if (!std::isfinite(values[c]) || (must_be_positive && values[c] <= 0)) {
            fail(ExitCode::kUsage, "{} value {} (position {}) must be {}", option_name, values[c],
                 c + 1, must_be_positive ? "positive" : "finite");
        }
    }
}

// The batch size to use: the model's when its input fixes N (ONNX Runtime rejects other
// batch sizes then), else the requested one.
int64_t effective_batch_size(const CalibrationSourceOptions& options,
                             const std::vector<int64_t>& model_input_shape, int64_t sample_count) {
    if (model_input_shape.empty() || model_input_shape[0] <= 0) {
        return options.batch_size;
    }
    const int64_t model_batch = model_input_shape[0];
    if (sample_count % model_batch != 0) {
        fail(ExitCode::kInvalidInput,
             "the model input has a fixed batch size of {}, but calibration data '{}' gives {} "
             "samples; use a sample limit that is a multiple of {} or export the model with a "
             "dynamic batch dimension",
             model_batch, options.path.string(), sample_count, model_batch);
    }
    if (model_batch != options.batch_size) {
        spdlog::info("calibration batch size set to {}, the batch size the model input fixes",
                     model_batch);
    }
    return model_batch;
}

}  // namespace

CalibrationSourceKind detect_calibration_source(const fs::path& path) {
    std::error_code error;
    if (!fs::exists(path, error)) {
        fail(ExitCode::kIo,
             "calibration data '{}' not found; pass a folder of PNG images, a .npy file or an "
             "IDX image file",
             path.string());
    }
    if (fs::is_directory(path, error)) {
        return CalibrationSourceKind::kPngFolder;
    }

    const std::string name = lower_case(path.filename().string());
    if (ends_with(name, ".png")) {
        fail(ExitCode::kUsage,
             "calibration data '{}' is a single PNG image; put the images in a folder and pass "
             "the folder",
             path.string());
    }
    const std::string leading = read_leading_bytes(path);
    if (ends_with(name, ".npy") || (leading.size() == 4 && leading == kNpyMagic.substr(0, 4))) {
        return CalibrationSourceKind::kNpy;
    }
    const bool idx_magic = leading.size() == 4 && static_cast<uint8_t>(leading[0]) == 0 &&
                           static_cast<uint8_t>(leading[1]) == 0 &&
                           static_cast<uint8_t>(leading[2]) == ((kIdxImagesMagic >> 8) & 0xff) &&
                           static_cast<uint8_t>(leading[3]) == (kIdxImagesMagic & 0xff);
    if (idx_magic || ends_with(name, "-idx3-ubyte") || ends_with(name, "-idx3-ubyte.gz")) {
        return CalibrationSourceKind::kIdx;
    }
    fail(ExitCode::kInvalidInput,
         "calibration data '{}' is not a folder of PNG images, a .npy file or an IDX image file "
         "(neither its name nor its first bytes match one); convert it to one of these",
         path.string());
}

std::string calibration_source_kind_name(CalibrationSourceKind kind) {
    switch (kind) {
        case CalibrationSourceKind::kNpy:
            return ".npy array";
        case CalibrationSourceKind::kIdx:
            return "IDX image file";
        case CalibrationSourceKind::kPngFolder:
            return "PNG folder";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------
// Batching and preprocessing shared by the readers
// ---------------------------------------------------------------------------------------------

SampleBatchReader::SampleBatchReader(SamplePreprocessing preprocessing, int64_t batch_size,
                                     int64_t sample_count)
    : preprocessing_(std::move(preprocessing)),
      batch_size_(batch_size),
      sample_count_(sample_count) {
    assert(batch_size > 0);
    assert(sample_count >= 0);
    assert(preprocessing_.channels > 0);
    assert(preprocessing_.height > 0);
    assert(preprocessing_.width > 0);
}

int64_t SampleBatchReader::sample_size() const {
    return preprocessing_.channels * preprocessing_.height * preprocessing_.width;
}

std::optional<CalibrationBatch> SampleBatchReader::next() {
    if (position_ >= sample_count_) {
        return std::nullopt;
    }
    const int64_t count = std::min(batch_size_, sample_count_ - position_);
    CalibrationBatch batch;
    batch.shape = {count, preprocessing_.channels, preprocessing_.height, preprocessing_.width};
    batch.values.resize(static_cast<size_t>(count * sample_size()));
    read_samples(position_, count, batch.values);
    position_ += count;
    return batch;
}

void SampleBatchReader::preprocess_sample(std::span<const float> raw, int64_t raw_height,
                                          int64_t raw_width, std::span<float> output) const {
    const SamplePreprocessing& p = preprocessing_;
    assert(raw.size() == static_cast<size_t>(p.channels * raw_height * raw_width));
    assert(output.size() == static_cast<size_t>(sample_size()));

    if (raw_height == p.height && raw_width == p.width) {
        std::transform(raw.begin(), raw.end(), output.begin(),
                       [&](float value) { return value / p.input_divisor; });
    } else {
        PlanarImage image{p.channels, raw_height, raw_width, {}};
        image.values.reserve(raw.size());
        for (const float value : raw) {
            image.values.push_back(value / p.input_divisor);
        }
        const PlanarImage resized = resize_bilinear(image, p.height, p.width);
        std::copy(resized.values.begin(), resized.values.end(), output.begin());
    }
    normalize_channels(output, p.channels, p.mean, p.std);
}

// ---------------------------------------------------------------------------------------------
// .npy arrays
// ---------------------------------------------------------------------------------------------

NpyCalibrationReader::NpyCalibrationReader(NpyFile file, SamplePreprocessing preprocessing,
                                           int64_t batch_size, int64_t sample_count)
    : SampleBatchReader(std::move(preprocessing), batch_size, sample_count),
      file_(std::move(file)) {
    assert(file_.shape().size() == 4);
    assert(file_.shape()[1] == this->preprocessing().channels);
    assert(sample_count <= file_.row_count());
}

void NpyCalibrationReader::read_samples(int64_t first, int64_t count, std::span<float> output) {
    file_.read_rows(first, count, raw_);
    const int64_t raw_height = file_.shape()[2];
    const int64_t raw_width = file_.shape()[3];
    const auto raw_size = static_cast<size_t>(file_.row_elements());
    const auto output_size = static_cast<size_t>(sample_size());

    for (int64_t i = 0; i < count; ++i) {
        const std::span<const float> raw(raw_.data() + i * raw_size, raw_size);
        const auto bad =
            std::find_if(raw.begin(), raw.end(), [](float value) { return !std::isfinite(value); });
        if (bad != raw.end()) {
            fail(ExitCode::kInvalidInput,
                 ".npy file '{}' contains the non-finite value {} in sample {}; remove or fix "
                 "that sample",
                 file_.path().string(), *bad, first + i);
        }
        preprocess_sample(raw, raw_height, raw_width, output.subspan(i * output_size, output_size));
    }
}

// ---------------------------------------------------------------------------------------------
// IDX image files
// ---------------------------------------------------------------------------------------------

IdxCalibrationReader::IdxCalibrationReader(IdxImages images, SamplePreprocessing preprocessing,
                                           int64_t batch_size, int64_t sample_count)
    : SampleBatchReader(std::move(preprocessing), batch_size, sample_count),
      images_(std::move(images)) {
    assert(this->preprocessing().channels == 1);
    assert(sample_count <= images_.count);
}

void IdxCalibrationReader::read_samples(int64_t first, int64_t count, std::span<float> output) {
    const auto raw_size = static_cast<size_t>(images_.rows * images_.columns);
    const auto output_size = static_cast<size_t>(sample_size());
    std::vector<float> raw(raw_size);
    for (int64_t i = 0; i < count; ++i) {
        const uint8_t* pixels = images_.pixels.data() + (first + i) * raw_size;
        std::copy(pixels, pixels + raw_size, raw.begin());
        preprocess_sample(raw, images_.rows, images_.columns,
                          output.subspan(i * output_size, output_size));
    }
}

// ---------------------------------------------------------------------------------------------
// PNG folders
// ---------------------------------------------------------------------------------------------

PngFolderCalibrationReader::PngFolderCalibrationReader(std::vector<fs::path> files,
                                                       SamplePreprocessing preprocessing,
                                                       bool resize, int64_t batch_size)
    : SampleBatchReader(std::move(preprocessing), batch_size, static_cast<int64_t>(files.size())),
      files_(std::move(files)),
      resize_(resize) {
    // decode_png already scales samples to [0, 1].
    assert(this->preprocessing().input_divisor == 1.0F);
}

void PngFolderCalibrationReader::read_samples(int64_t first, int64_t count,
                                              std::span<float> output) {
    const SamplePreprocessing& p = preprocessing();
    const auto output_size = static_cast<size_t>(sample_size());
    for (int64_t i = 0; i < count; ++i) {
        const fs::path& file = files_[static_cast<size_t>(first + i)];
        const PlanarImage image = decode_png(file, p.channels);
        if (!resize_ && (image.height != p.height || image.width != p.width)) {
            fail(ExitCode::kInvalidInput,
                 "PNG image '{}' is {}x{} (height x width) but the first image is {}x{}; use "
                 "--size H W to resize every image",
                 file.string(), image.height, image.width, p.height, p.width);
        }
        preprocess_sample(image.values, image.height, image.width,
                          output.subspan(i * output_size, output_size));
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing and checking a source
// ---------------------------------------------------------------------------------------------

std::unique_ptr<CalibrationDataReader> open_calibration_source(
    const CalibrationSourceOptions& options, const std::vector<int64_t>& model_input_shape) {
    check_options(options);
    const CalibrationSourceKind kind = detect_calibration_source(options.path);

    // Open the data and learn its layout.
    std::optional<NpyFile> npy;
    std::optional<IdxImages> idx;
    std::vector<fs::path> png_files;
    SourceLayout layout;
    float input_divisor = kUint8Divisor;
    switch (kind) {
        case CalibrationSourceKind::kNpy:
            npy.emplace(options.path);
            layout = inspect_npy(*npy);
            if (npy->element_type() == NpyElementType::kFloat32) {
                input_divisor = 1.0F;
            }
            break;
        case CalibrationSourceKind::kIdx:
            idx = read_idx_images(options.path);
            layout = {idx->count, 1, idx->rows, idx->columns};
            break;
        case CalibrationSourceKind::kPngFolder: {
            png_files = list_png_files(options.path);
            const PngInfo first_image = read_png_info(png_files.front());
            layout = {static_cast<int64_t>(png_files.size()),
                      png_channels(options, model_input_shape, first_image), first_image.height,
                      first_image.width};
            input_divisor = 1.0F;
            break;
        }
    }
    if (layout.sample_count == 0) {
        fail(ExitCode::kInvalidInput, "calibration data '{}' contains no images",
             options.path.string());
    }
    if (options.channels > 0 && options.channels != layout.channels) {
        fail(ExitCode::kInvalidInput,
             "calibration data '{}' has {} channels but {} are requested; give data with {} "
             "channels",
             options.path.string(), layout.channels, options.channels, options.channels);
    }

    // Check the sample shape and the normalization.
    SamplePreprocessing preprocessing{input_divisor,
                                      layout.channels,
                                      options.size ? options.size->first : layout.raw_height,
                                      options.size ? options.size->second : layout.raw_width,
                                      options.mean,
                                      options.std};
    check_model_input(options.path,
                      {preprocessing.channels, preprocessing.height, preprocessing.width},
                      model_input_shape);
    check_normalization(options.mean, "--mean", layout.channels, false);
    check_normalization(options.std, "--std", layout.channels, true);

    const int64_t sample_count =
        options.limit > 0 ? std::min(options.limit, layout.sample_count) : layout.sample_count;
    const int64_t batch_size = effective_batch_size(options, model_input_shape, sample_count);
    spdlog::info("calibration data: {} '{}', {} of {} samples, [C, H, W] = {}, batches of {}",
                 calibration_source_kind_name(kind), options.path.string(), sample_count,
                 layout.sample_count,
                 shape_text({preprocessing.channels, preprocessing.height, preprocessing.width}),
                 batch_size);

    switch (kind) {
        case CalibrationSourceKind::kNpy:
            return std::make_unique<NpyCalibrationReader>(std::move(*npy), preprocessing,
                                                          batch_size, sample_count);
        case CalibrationSourceKind::kIdx:
            return std::make_unique<IdxCalibrationReader>(std::move(*idx), preprocessing,
                                                          batch_size, sample_count);
        case CalibrationSourceKind::kPngFolder:
            png_files.resize(static_cast<size_t>(sample_count));
            return std::make_unique<PngFolderCalibrationReader>(
                std::move(png_files), preprocessing, options.size.has_value(), batch_size);
    }
    return nullptr;
}

std::vector<float> parse_float_list(const std::string& text, const std::string& option_name) {
    std::vector<float> values;
    size_t start = 0;
    while (true) {
        const size_t comma = text.find(',', start);
        const size_t end = comma == std::string::npos ? text.size() : comma;
        std::string_view item(text.data() + start, end - start);
        while (!item.empty() && std::isspace(static_cast<unsigned char>(item.front()))) {
            item.remove_prefix(1);
        }
        while (!item.empty() && std::isspace(static_cast<unsigned char>(item.back()))) {
            item.remove_suffix(1);
        }
        if (item.empty()) {
            fail(ExitCode::kUsage,
                 "{} '{}': value {} is empty; give comma-separated numbers such as "
                 "0.485,0.456,0.406",
                 option_name, text, values.size() + 1);
        }

        // std::from_chars takes no leading '+', which users may still write.
        const std::string_view digits = item.front() == '+' ? item.substr(1) : item;
        float value = 0;
        const auto [rest, status] =
            std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (status != std::errc() || rest != digits.data() + digits.size()) {
            fail(ExitCode::kUsage,
                 "{} '{}': '{}' is not a number; give comma-separated numbers such as "
                 "0.485,0.456,0.406",
                 option_name, text, item);
        }
        if (!std::isfinite(value)) {
            fail(ExitCode::kUsage, "{} '{}': '{}' is not a finite number; give finite values",
                 option_name, text, item);
        }
        values.push_back(value);

        if (comma == std::string::npos) {
            return values;
        }
        start = comma + 1;
    }
}

}  // namespace edgeq
