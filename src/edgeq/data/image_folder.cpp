#include "edgeq/data/image_folder.h"

#include <png.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <csetjmp>
#include <cstdio>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "edgeq/common/error.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

constexpr size_t kPngSignatureSize = 8;

// ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses (299, 587 and 114 per mille in
// src/libImaging/Convert.c). libpng's own rgb_to_gray transform is not used because the libpng
// 1.6 manual gives it Rec. 709 weights (or the file's cHRM chunk) and linear light when the
// gamma is known, which grey models trained on Pillow images never saw.
constexpr float kLumaRed = 0.299F;
constexpr float kLumaGreen = 0.587F;
constexpr float kLumaBlue = 0.114F;

// Stores libpng's error message and jumps back to the setjmp in run_libpng, because libpng
// requires an error handler that does not return.
struct PngErrorMessage {
    std::string text;
};

void on_png_error(png_structp png, png_const_charp message) {
    static_cast<PngErrorMessage*>(png_get_error_ptr(png))->text = message;
    png_longjmp(png, 1);
}

void on_png_warning(png_structp /*png*/, png_const_charp message) {
    spdlog::debug("libpng warning: {}", message);
}

// Pixels as libpng delivers them after the transforms: interleaved, 8 or 16 bits per sample,
// 16-bit samples big-endian.
struct PngPixels {
    uint32_t width = 0;
    uint32_t height = 0;
    int color_type = 0;  // of the file, before transforms
    int bit_depth = 0;   // after transforms: 8 or 16
    int channels = 0;    // after transforms: 1 or 3
    std::vector<png_byte> bytes;
    std::vector<png_bytep> rows;
};

bool is_colour(int color_type) {
    return (color_type & PNG_COLOR_MASK_COLOR) != 0;
}

// Runs every libpng call of one decode. libpng reports errors by longjmp back to the setjmp
// below, so that call must be active whenever libpng runs. Only objects of the caller live
// across it, so the jump skips no destructor. With `channels` 0 only the header is read. With 1
// or 3 the pixels are decoded too: palettes and low bit depths are expanded, alpha is dropped,
// and grey becomes RGB when 3 channels are requested. Returns false when libpng reported an
// error.
bool run_libpng(png_structp png, png_infop info, int64_t channels, PngPixels& pixels) {
    if (setjmp(png_jmpbuf(png)) != 0) {
        return false;
    }
    png_read_info(png, info);
    pixels.width = png_get_image_width(png, info);
    pixels.height = png_get_image_height(png, info);
    pixels.color_type = png_get_color_type(png, info);
    if (channels == 0) {
        return true;
    }

    if (pixels.color_type == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
    }
    if (pixels.color_type == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) {
        png_set_expand_gray_1_2_4_to_8(png);
    }
    // Drops an alpha channel, including the one that palette expansion makes from a tRNS
    // chunk. A tRNS colour key of a grey or RGB image is ignored.
    png_set_strip_alpha(png);
    if (channels == 3 && !is_colour(pixels.color_type)) {
        png_set_gray_to_rgb(png);
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    pixels.bit_depth = png_get_bit_depth(png, info);
    pixels.channels = png_get_channels(png, info);
    const size_t row_bytes = png_get_rowbytes(png, info);
    pixels.bytes.resize(row_bytes * pixels.height);
    pixels.rows.resize(pixels.height);
    for (size_t y = 0; y < pixels.height; ++y) {
        pixels.rows[y] = pixels.bytes.data() + y * row_bytes;
    }
    png_read_image(png, pixels.rows.data());
    // Reads up to IEND, so a file cut after its image data is reported too.
    png_read_end(png, nullptr);
    return true;
}

// Owner of libpng's read and info structs. png_destroy_read_struct accepts null ones.
struct PngDecoder {
    png_structp png = nullptr;
    png_infop info = nullptr;

    PngDecoder() = default;
    PngDecoder(const PngDecoder&) = delete;
    PngDecoder& operator=(const PngDecoder&) = delete;
    ~PngDecoder() { png_destroy_read_struct(&png, &info, nullptr); }
};

struct FileCloser {
    void operator()(FILE* file) const { std::fclose(file); }
};

// Opens `path`, checks the PNG signature and runs libpng over it (see run_libpng).
PngPixels read_png(const fs::path& path, int64_t channels) {
    std::unique_ptr<FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
    if (!file) {
        fail(ExitCode::kIo, "cannot open PNG image '{}'", path.string());
    }
    png_byte signature[kPngSignatureSize] = {};
    const size_t signature_read = std::fread(signature, 1, kPngSignatureSize, file.get());
    if (signature_read != kPngSignatureSize || png_sig_cmp(signature, 0, kPngSignatureSize) != 0) {
        fail(ExitCode::kInvalidInput,
             "image '{}' is not a PNG file (its signature is wrong); convert it to PNG or "
             "remove it from the folder",
             path.string());
    }

    PngErrorMessage error;
    PngDecoder decoder;
    decoder.png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, on_png_error, on_png_warning);
    decoder.info = decoder.png == nullptr ? nullptr : png_create_info_struct(decoder.png);
    if (decoder.info == nullptr) {
        fail(ExitCode::kInternal, "libpng could not allocate a decoder for '{}'", path.string());
    }
    png_init_io(decoder.png, file.get());
    png_set_sig_bytes(decoder.png, static_cast<int>(kPngSignatureSize));

    PngPixels pixels;
    if (!run_libpng(decoder.png, decoder.info, channels, pixels)) {
        fail(ExitCode::kInvalidInput,
             "PNG image '{}' is corrupt or truncated ({}); export it again or remove it from "
             "the folder",
             path.string(), error.text);
    }
    return pixels;
}

}  // namespace

std::vector<fs::path> list_png_files(const fs::path& folder) {
    std::error_code error;
    if (!fs::is_directory(folder, error)) {
        fail(ExitCode::kIo, "image folder '{}' not found or not a folder", folder.string());
    }

    std::vector<fs::path> files;
    int64_t skipped = 0;
    fs::directory_iterator entries(folder, error);
    if (error) {
        fail(ExitCode::kIo, "cannot list image folder '{}': {}", folder.string(), error.message());
    }
    for (const fs::directory_entry& entry : entries) {
        std::string extension = entry.path().extension().string();
        std::transform(extension.begin(), extension.end(), extension.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (entry.is_regular_file() && extension == ".png") {
            files.push_back(entry.path());
        } else {
            ++skipped;
        }
    }
    if (skipped > 0) {
        spdlog::debug("image folder '{}': skipped {} entries that are not .png files",
                      folder.string(), skipped);
    }
    if (files.empty()) {
        fail(ExitCode::kInvalidInput,
             "image folder '{}' contains no PNG images (*.png; subfolders are not searched)",
             folder.string());
    }

    // std::string compares as unsigned char, which is byte order.
    std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
        return a.filename().string() < b.filename().string();
    });
    return files;
}

PngInfo read_png_info(const fs::path& path) {
    const PngPixels pixels = read_png(path, 0);
    return {pixels.width, pixels.height, is_colour(pixels.color_type) ? 3 : 1};
}

PlanarImage decode_png(const fs::path& path, int64_t channels) {
    assert(channels == 1 || channels == 3);
    const PngPixels pixels = read_png(path, channels);
    const int expected_channels = channels == 3 || is_colour(pixels.color_type) ? 3 : 1;
    if (pixels.channels != expected_channels || (pixels.bit_depth != 8 && pixels.bit_depth != 16)) {
        fail(ExitCode::kInternal,
             "libpng decoded '{}' to {} channels of {} bits, expected {} channels of 8 or 16 bits",
             path.string(), pixels.channels, pixels.bit_depth, expected_channels);
    }

    // Samples as fractions of the largest value: 2^bit_depth - 1. Low bit depths were expanded
    // to 8 bits by libpng, which scales them so that this still holds.
    const float sample_max = pixels.bit_depth == 16 ? 65535.0F : 255.0F;
    const int sample_bytes = pixels.bit_depth / 8;
    auto sample = [&](uint32_t y, uint32_t x, int c) {
        const png_byte* bytes = pixels.rows[y] + (size_t{x} * pixels.channels + c) * sample_bytes;
        const unsigned value = sample_bytes == 2 ? (unsigned{bytes[0]} << 8) | bytes[1] : bytes[0];
        return static_cast<float>(value) / sample_max;
    };

    PlanarImage image{channels, pixels.height, pixels.width, {}};
    const size_t plane = size_t{pixels.height} * pixels.width;
    image.values.resize(plane * static_cast<size_t>(channels));
    for (uint32_t y = 0; y < pixels.height; ++y) {
        for (uint32_t x = 0; x < pixels.width; ++x) {
            const size_t offset = size_t{y} * pixels.width + x;
            if (channels == 1 && pixels.channels == 3) {
                image.values[offset] = kLumaRed * sample(y, x, 0) + kLumaGreen * sample(y, x, 1) +
                                       kLumaBlue * sample(y, x, 2);
                continue;
            }
            for (int c = 0; c < channels; ++c) {
                image.values[c * plane + offset] = sample(y, x, c);
            }
        }
    }
    return image;
}

namespace {

// Source indices and weights of bilinear interpolation along one axis, computed in float like
// PyTorch's CPU kernel. The ResizeBilinear.MatchesPyTorch test compares the two.
struct AxisWeights {
    std::vector<int64_t> index0;
    std::vector<int64_t> index1;
    std::vector<float> weight0;
    std::vector<float> weight1;
};

AxisWeights compute_axis_weights(int64_t input_size, int64_t output_size) {
    AxisWeights axis;
    const float ratio = static_cast<float>(input_size) / static_cast<float>(output_size);
    for (int64_t out = 0; out < output_size; ++out) {
        if (input_size == output_size) {
            axis.index0.push_back(out);
            axis.index1.push_back(out);
            axis.weight0.push_back(1.0F);
            axis.weight1.push_back(0.0F);
            continue;
        }
        const float source = std::max(ratio * (static_cast<float>(out) + 0.5F) - 0.5F, 0.0F);
        const int64_t index0 = std::min(static_cast<int64_t>(source), input_size - 1);
        const float weight1 = std::clamp(source - static_cast<float>(index0), 0.0F, 1.0F);
        axis.index0.push_back(index0);
        axis.index1.push_back(index0 < input_size - 1 ? index0 + 1 : index0);
        axis.weight0.push_back(1.0F - weight1);
        axis.weight1.push_back(weight1);
    }
    return axis;
}

}  // namespace

PlanarImage resize_bilinear(const PlanarImage& image, int64_t height, int64_t width) {
    assert(height > 0);
    assert(width > 0);
    assert(image.height > 0);
    assert(image.width > 0);
    const AxisWeights rows = compute_axis_weights(image.height, height);
    const AxisWeights columns = compute_axis_weights(image.width, width);

    PlanarImage resized{image.channels, height, width, {}};
    resized.values.resize(static_cast<size_t>(image.channels * height * width));
    for (int64_t c = 0; c < image.channels; ++c) {
        const float* input = image.values.data() + c * image.height * image.width;
        float* output = resized.values.data() + c * height * width;
        for (int64_t y = 0; y < height; ++y) {
            const float* row0 = input + rows.index0[y] * image.width;
            const float* row1 = input + rows.index1[y] * image.width;
            for (int64_t x = 0; x < width; ++x) {
                const int64_t x0 = columns.index0[x];
                const int64_t x1 = columns.index1[x];
                const float top = columns.weight0[x] * row0[x0] + columns.weight1[x] * row0[x1];
                const float bottom = columns.weight0[x] * row1[x0] + columns.weight1[x] * row1[x1];
                output[y * width + x] = rows.weight0[y] * top + rows.weight1[y] * bottom;
            }
        }
    }
    return resized;
}

void normalize_channels(std::span<float> values, int64_t channels, const std::vector<float>& mean,
                        const std::vector<float>& std) {
    if (mean.empty() && std.empty()) {
        return;
    }
    assert(channels > 0);
    assert(values.size() % static_cast<size_t>(channels) == 0);
    const size_t plane = values.size() / static_cast<size_t>(channels);
    for (int64_t c = 0; c < channels; ++c) {
        const float channel_mean = mean.empty() ? 0.0F : mean[mean.size() == 1 ? 0 : c];
        const float channel_std = std.empty() ? 1.0F : std[std.size() == 1 ? 0 : c];
        for (float& value : values.subspan(c * plane, plane)) {
            value = (value - channel_mean) / channel_std;
        }
    }
}

}  // namespace edgeq
