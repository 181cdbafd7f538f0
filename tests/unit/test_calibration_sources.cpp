// Calibration data from .npy arrays, IDX files and PNG folders, on files the tests write
// themselves (with NumPy and PyTorch as oracles when Debian's python3 has them): the readers,
// the preprocessing maths, the checks against the model input, and batching.

#include <gtest/gtest.h>
#include <png.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/data/image_folder.h"
#include "edgeq/data/npy.h"
#include "edgeq/quant/calibration_sources.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

// Values that go through a division by 255 or 65535, a subtraction and a division in float
// differ from the same formula in double by a few float ulps of values near 1.
constexpr float kFloatRoundingTolerance = 1e-6F;
// PyTorch's bilinear kernel may add the four weighted taps in another order than ours.
constexpr float kTorchResizeTolerance = 1e-6F;
// Luma computed in float from 8-bit samples, against the same weights in double.
constexpr float kLumaTolerance = 1e-6F;
// Normalized values reach about 2.6 and the division by a std near 0.22 multiplies the float
// rounding of x / 255 - mean by about 4.5.
constexpr float kNormalizedTolerance = 1e-5F;

// --------------------------------------------------------------------------------------------
// Helpers: errors, files, .npy bytes, PNG files
// --------------------------------------------------------------------------------------------

// Runs `action`, expects an edgeq::Error, and returns it.
template <typename Action>
Error expect_error(Action action) {
    try {
        action();
    } catch (const Error& error) {
        return error;
    }
    ADD_FAILURE() << "no edgeq::Error was thrown";
    return Error(ExitCode::kSuccess, "");
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
    std::ofstream stream(path, std::ios::binary);
    stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const fs::path& path) {
    std::ifstream stream(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(stream), {}};
}

// The bytes of a .npy file as numpy.lib.format writes them: magic, version, little-endian header
// length, then the dict padded with spaces and ended by '\n' so that the data starts at a
// multiple of 64 bytes.
std::string npy_bytes(int major_version, const std::string& dict, const std::string& data) {
    const size_t preamble = major_version == 1 ? 10 : 12;
    std::string header = dict;
    while ((preamble + header.size() + 1) % 64 != 0) {
        header += ' ';
    }
    header += '\n';

    std::string bytes = "\x93NUMPY";
    bytes += static_cast<char>(major_version);
    bytes += '\0';
    const size_t length_bytes = major_version == 1 ? 2 : 4;
    for (size_t i = 0; i < length_bytes; ++i) {
        bytes += static_cast<char>((header.size() >> (8 * i)) & 0xff);
    }
    return bytes + header + data;
}

std::string npy_dict(const std::string& descr, const std::vector<int64_t>& shape,
                     bool fortran_order = false) {
    std::string shape_text = "(";
    for (const int64_t dimension : shape) {
        shape_text += std::to_string(dimension) + ", ";
    }
    shape_text += ")";
    return "{'descr': '" + descr + "', 'fortran_order': " + (fortran_order ? "True" : "False") +
           ", 'shape': " + shape_text + ", }";
}

std::string float32_data(const std::vector<float>& values) {
    std::string bytes;
    for (const float value : values) {
        uint32_t bits = 0;
        std::memcpy(&bits, &value, sizeof bits);
        for (int i = 0; i < 4; ++i) {
            bytes += static_cast<char>((bits >> (8 * i)) & 0xff);
        }
    }
    return bytes;
}

std::string uint8_data(const std::vector<uint8_t>& values) {
    return {values.begin(), values.end()};
}

// Deterministic test values: a float pattern with negative and fractional values, and bytes
// that cover 0..255.
std::vector<float> float_pattern(size_t count) {
    std::vector<float> values(count);
    for (size_t i = 0; i < count; ++i) {
        values[i] = static_cast<float>(i) * 0.25F - 3.0F;
    }
    return values;
}

std::vector<uint8_t> byte_pattern(size_t count, size_t seed = 0) {
    std::vector<uint8_t> values(count);
    for (size_t i = 0; i < count; ++i) {
        values[i] = static_cast<uint8_t>((i * 37 + seed * 11 + 5) % 256);
    }
    return values;
}

// A PNG file to write: samples interleaved per pixel as the colour type has them (palette
// indices for a palette image), at most 16 bits each.
struct PngSpec {
    uint32_t width = 0;
    uint32_t height = 0;
    int color_type = PNG_COLOR_TYPE_GRAY;
    int bit_depth = 8;
    bool interlaced = false;
    std::vector<uint16_t> samples;
    std::vector<png_color> palette;
    std::vector<png_byte> palette_alpha;  // tRNS entries of a palette image
};

int channels_of(int color_type) {
    switch (color_type) {
        case PNG_COLOR_TYPE_GRAY:
        case PNG_COLOR_TYPE_PALETTE:
            return 1;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
            return 2;
        case PNG_COLOR_TYPE_RGB:
            return 3;
        default:
            return 4;
    }
}

// Runs libpng's encoder. libpng's default error handler longjmps to the setjmp below, and no
// object with a destructor is created after it.
bool encode_png(FILE* file, const PngSpec& spec, png_bytepp rows) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)) != 0) {
        png_destroy_write_struct(&png, &info);
        return false;
    }
    png_init_io(png, file);
    png_set_IHDR(png, info, spec.width, spec.height, spec.bit_depth, spec.color_type,
                 spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (!spec.palette.empty()) {
        png_set_PLTE(png, info, spec.palette.data(), static_cast<int>(spec.palette.size()));
    }
    if (!spec.palette_alpha.empty()) {
        png_set_tRNS(png, info, spec.palette_alpha.data(),
                     static_cast<int>(spec.palette_alpha.size()), nullptr);
    }
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    return true;
}

void write_png(const fs::path& path, const PngSpec& spec) {
    const size_t row_samples = size_t{spec.width} * channels_of(spec.color_type);
    ASSERT_EQ(spec.samples.size(), row_samples * spec.height);
    std::vector<std::vector<png_byte>> row_bytes(spec.height);
    for (size_t y = 0; y < spec.height; ++y) {
        std::vector<png_byte>& row = row_bytes[y];
        row.assign((row_samples * spec.bit_depth + 7) / 8, 0);
        for (size_t i = 0; i < row_samples; ++i) {
            const uint16_t value = spec.samples[y * row_samples + i];
            if (spec.bit_depth == 16) {
                row[2 * i] = static_cast<png_byte>(value >> 8);
                row[2 * i + 1] = static_cast<png_byte>(value & 0xff);
            } else if (spec.bit_depth == 8) {
                row[i] = static_cast<png_byte>(value);
            } else {
                // Low bit depths pack samples from the most significant bit down.
                const size_t bit = i * spec.bit_depth;
                const int shift = 8 - spec.bit_depth - static_cast<int>(bit % 8);
                row[bit / 8] = static_cast<png_byte>(row[bit / 8] | (value << shift));
            }
        }
    }
    std::vector<png_bytep> rows;
    for (std::vector<png_byte>& row : row_bytes) {
        rows.push_back(row.data());
    }

    FILE* file = std::fopen(path.c_str(), "wb");
    ASSERT_NE(file, nullptr) << path;
    const bool encoded = encode_png(file, spec, rows.data());
    std::fclose(file);
    ASSERT_TRUE(encoded) << path;
}

// An 8-bit RGB image whose samples follow byte_pattern.
PngSpec rgb_spec(uint32_t width, uint32_t height, size_t seed = 0) {
    PngSpec spec{width, height, PNG_COLOR_TYPE_RGB, 8, false, {}, {}, {}};
    for (const uint8_t value : byte_pattern(size_t{width} * height * 3, seed)) {
        spec.samples.push_back(value);
    }
    return spec;
}

// Interleaved sample (y, x, c) of a PngSpec as a fraction of the largest value.
float spec_sample(const PngSpec& spec, size_t y, size_t x, size_t c) {
    const size_t channels = channels_of(spec.color_type);
    const float maximum = static_cast<float>((1 << spec.bit_depth) - 1);
    return static_cast<float>(spec.samples[(y * spec.width + x) * channels + c]) / maximum;
}

struct ReadResult {
    std::vector<float> values;
    std::vector<std::vector<int64_t>> shapes;
};

// Every batch of `reader`, from the first.
ReadResult read_all(CalibrationDataReader& reader) {
    ReadResult result;
    reader.rewind();
    while (std::optional<CalibrationBatch> batch = reader.next()) {
        result.values.insert(result.values.end(), batch->values.begin(), batch->values.end());
        result.shapes.push_back(batch->shape);
    }
    return result;
}

// --------------------------------------------------------------------------------------------
// .npy reader
// --------------------------------------------------------------------------------------------

TEST(NpyFile, ReadsFloat32Version1Rows) {
    ScratchFolder folder("npy");
    const std::vector<float> values = float_pattern(4 * 2 * 3);
    write_bytes(folder / "a.npy", npy_bytes(1, npy_dict("<f4", {4, 2, 3}), float32_data(values)));

    NpyFile file(folder / "a.npy");
    EXPECT_EQ(file.shape(), (std::vector<int64_t>{4, 2, 3}));
    EXPECT_EQ(file.element_type(), NpyElementType::kFloat32);
    EXPECT_EQ(file.header().major_version, 1);
    EXPECT_EQ(file.header().data_offset % 64, 0);
    EXPECT_EQ(file.row_elements(), 6);

    std::vector<float> rows;
    file.read_rows(1, 2, rows);
    EXPECT_EQ(rows, std::vector<float>(values.begin() + 6, values.begin() + 18));
    file.read_rows(3, 1, rows);
    EXPECT_EQ(rows, std::vector<float>(values.begin() + 18, values.end()));
}

TEST(NpyFile, ReadsUint8Version2And3) {
    ScratchFolder folder("npy");
    const std::vector<uint8_t> bytes = byte_pattern(5 * 7);
    for (const int version : {2, 3}) {
        for (const std::string descr : {"|u1", "u1"}) {
            const fs::path path = folder / ("v" + std::to_string(version) + ".npy");
            write_bytes(path, npy_bytes(version, npy_dict(descr, {5, 7}), uint8_data(bytes)));

            NpyFile file(path);
            EXPECT_EQ(file.header().major_version, version);
            EXPECT_EQ(file.element_type(), NpyElementType::kUint8) << descr;
            std::vector<float> rows;
            file.read_rows(0, 5, rows);
            ASSERT_EQ(rows.size(), bytes.size());
            for (size_t i = 0; i < bytes.size(); ++i) {
                EXPECT_EQ(rows[i], static_cast<float>(bytes[i])) << "element " << i;
            }
        }
    }
}

TEST(NpyFile, ParsesHeaderSpellings) {
    // Double quotes, no trailing comma, keys in another order, Python 2 long suffixes.
    const NpyHeader header = parse_npy_header_dict(
        "{\"shape\": (3L, 1L, 2L), \"fortran_order\": False, \"descr\": \"|u1\"}", "x.npy");
    EXPECT_EQ(header.shape, (std::vector<int64_t>{3, 1, 2}));
    EXPECT_EQ(header.element_type, NpyElementType::kUint8);

    const NpyHeader one_dimension =
        parse_npy_header_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", "y");
    EXPECT_EQ(one_dimension.shape, (std::vector<int64_t>{5}));
}

TEST(NpyFile, RejectsMalformedHeaders) {
    for (const std::string dict :
         {"{'descr': '<f4', 'shape': (2,)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), "
          "'extra': 1}",
          "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}", "['descr']"}) {
        const Error error = expect_error([&] { parse_npy_header_dict(dict, "bad.npy"); });
        EXPECT_EQ(error.code(), ExitCode::kInvalidInput) << dict;
        EXPECT_TRUE(contains(error.what(), "'bad.npy' has a malformed header")) << error.what();
    }
}

TEST(NpyFile, RejectsTruncatedAndOversizedFiles) {
    ScratchFolder folder("npy");
    const std::string data = float32_data(float_pattern(2 * 3 * 4));
    const std::string dict = npy_dict("<f4", {2, 3, 4});
    write_bytes(folder / "short.npy", npy_bytes(1, dict, data.substr(0, data.size() - 3)));
    write_bytes(folder / "long.npy", npy_bytes(1, dict, data + "xyz"));

    const Error truncated = expect_error([&] { NpyFile file(folder / "short.npy"); });
    EXPECT_EQ(truncated.code(), ExitCode::kInvalidInput);
    EXPECT_TRUE(contains(truncated.what(), (folder / "short.npy").string())) << truncated.what();
    EXPECT_TRUE(contains(truncated.what(), "truncated")) << truncated.what();

    const Error oversized = expect_error([&] { NpyFile file(folder / "long.npy"); });
    EXPECT_TRUE(contains(oversized.what(), (folder / "long.npy").string())) << oversized.what();
    EXPECT_TRUE(contains(oversized.what(), "extra bytes")) << oversized.what();

    // Cut inside the header itself.
    write_bytes(folder / "header.npy", npy_bytes(2, dict, data).substr(0, 30));
    const Error header = expect_error([&] { NpyFile file(folder / "header.npy"); });
    EXPECT_TRUE(contains(header.what(), "truncated inside its header")) << header.what();
}

TEST(NpyFile, RejectsFloat64NamingDtype) {
    ScratchFolder folder("npy");
    write_bytes(folder / "f8.npy", npy_bytes(1, npy_dict("<f8", {2}), std::string(16, '\0')));
    const Error error = expect_error([&] { NpyFile file(folder / "f8.npy"); });
    EXPECT_EQ(error.code(), ExitCode::kUnsupported);
    EXPECT_TRUE(contains(error.what(), "'<f8'")) << error.what();
    EXPECT_TRUE(contains(error.what(), (folder / "f8.npy").string())) << error.what();
    EXPECT_TRUE(contains(error.what(), "astype(numpy.float32)")) << error.what();
}

TEST(NpyFile, RejectsFortranOrder) {
    ScratchFolder folder("npy");
    write_bytes(folder / "f.npy",
                npy_bytes(1, npy_dict("<f4", {2, 2}, true), float32_data(float_pattern(4))));
    const Error error = expect_error([&] { NpyFile file(folder / "f.npy"); });
    EXPECT_EQ(error.code(), ExitCode::kUnsupported);
    EXPECT_TRUE(contains(error.what(), "Fortran order")) << error.what();
    EXPECT_TRUE(contains(error.what(), "ascontiguousarray")) << error.what();
}

TEST(NpyFile, RejectsWrongMagicVersionAndScalar) {
    ScratchFolder folder("npy");
    write_bytes(folder / "text.npy", "just some text, not an array");
    const Error magic = expect_error([&] { NpyFile file(folder / "text.npy"); });
    EXPECT_EQ(magic.code(), ExitCode::kInvalidInput);
    EXPECT_TRUE(contains(magic.what(), "is not a .npy file")) << magic.what();

    std::string version4 = npy_bytes(2, npy_dict("<f4", {1}), float32_data({1.0F}));
    version4[6] = 4;
    write_bytes(folder / "v4.npy", version4);
    const Error version = expect_error([&] { NpyFile file(folder / "v4.npy"); });
    EXPECT_EQ(version.code(), ExitCode::kUnsupported);
    EXPECT_TRUE(contains(version.what(), "format version 4.0")) << version.what();

    write_bytes(folder / "scalar.npy", npy_bytes(1, npy_dict("<f4", {}), float32_data({1.0F})));
    const Error scalar = expect_error([&] { NpyFile file(folder / "scalar.npy"); });
    EXPECT_TRUE(contains(scalar.what(), "scalar")) << scalar.what();

    const Error missing = expect_error([&] { NpyFile file(folder / "missing.npy"); });
    EXPECT_EQ(missing.code(), ExitCode::kIo);
}

// Files written by NumPy itself, so the header writer above is not the only oracle.
TEST(NpyFile, ReadsFilesWrittenByNumpy) {
    const std::string python = test::python_with_module("numpy");
    if (python.empty()) {
        GTEST_SKIP() << "no python3 with numpy; install python3-numpy to run this test";
    }
    ScratchFolder folder("npy");
    const std::string script = R"(import sys
import numpy as np
folder = sys.argv[1]
values = (np.arange(5 * 3 * 4 * 2) * 0.25 - 3.0).astype(np.float32).reshape(5, 3, 4, 2)
np.save(folder + '/float32.npy', values)
with open(folder + '/float32_v2.npy', 'wb') as f:
    np.lib.format.write_array(f, values, version=(2, 0))
np.save(folder + '/uint8.npy', ((np.arange(4 * 1 * 3 * 5) * 37 + 5) % 256).astype(np.uint8).reshape(4, 1, 3, 5))
np.save(folder + '/fortran.npy', np.asfortranarray(values[0]))
np.save(folder + '/float64.npy', values.astype(np.float64))
)";
    write_bytes(folder / "make.py", script);
    const test::CommandResult result = test::run_command(
        python + " " + (folder / "make.py").string() + " " + folder.path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;

    for (const std::string name : {"float32.npy", "float32_v2.npy"}) {
        NpyFile file(folder / name);
        EXPECT_EQ(file.shape(), (std::vector<int64_t>{5, 3, 4, 2})) << name;
        std::vector<float> rows;
        file.read_rows(0, 5, rows);
        EXPECT_EQ(rows, float_pattern(5 * 3 * 4 * 2)) << name;
    }
    EXPECT_EQ(NpyFile(folder / "float32_v2.npy").header().major_version, 2);

    NpyFile bytes(folder / "uint8.npy");
    EXPECT_EQ(bytes.element_type(), NpyElementType::kUint8);
    std::vector<float> rows;
    bytes.read_rows(1, 3, rows);
    const std::vector<uint8_t> expected = byte_pattern(4 * 15);
    for (size_t i = 0; i < rows.size(); ++i) {
        EXPECT_EQ(rows[i], static_cast<float>(expected[15 + i])) << "element " << i;
    }

    EXPECT_EQ(expect_error([&] { NpyFile file(folder / "fortran.npy"); }).code(),
              ExitCode::kUnsupported);
    EXPECT_TRUE(
        contains(expect_error([&] { NpyFile file(folder / "float64.npy"); }).what(), "'<f8'"));

    // The whole path through the factory: uint8 / 255 with mean and std.
    CalibrationSourceOptions options;
    options.path = folder / "uint8.npy";
    options.mean = {0.5F};
    options.std = {0.25F};
    const std::unique_ptr<CalibrationDataReader> reader =
        open_calibration_source(options, {-1, 1, 3, 5});
    const ReadResult all = read_all(*reader);
    ASSERT_EQ(all.values.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
        const float want = (static_cast<float>(expected[i]) / 255.0F - 0.5F) / 0.25F;
        EXPECT_NEAR(all.values[i], want, kFloatRoundingTolerance) << "element " << i;
    }
}

// --------------------------------------------------------------------------------------------
// PNG decoding and the image folder
// --------------------------------------------------------------------------------------------

TEST(PngImage, DecodesGreyAndRgb8Bit) {
    ScratchFolder folder("png");
    PngSpec grey{3, 2, PNG_COLOR_TYPE_GRAY, 8, false, {0, 51, 255, 128, 7, 200}, {}, {}};
    write_png(folder / "grey.png", grey);
    const PngSpec rgb = rgb_spec(4, 3);
    write_png(folder / "rgb.png", rgb);

    const PngInfo grey_info = read_png_info(folder / "grey.png");
    EXPECT_EQ(grey_info.width, 3);
    EXPECT_EQ(grey_info.height, 2);
    EXPECT_EQ(grey_info.channels, 1);
    EXPECT_EQ(read_png_info(folder / "rgb.png").channels, 3);

    // Grey as 1 channel, and replicated into 3.
    const PlanarImage grey1 = decode_png(folder / "grey.png", 1);
    const PlanarImage grey3 = decode_png(folder / "grey.png", 3);
    ASSERT_EQ(grey1.values.size(), 6U);
    ASSERT_EQ(grey3.values.size(), 18U);
    for (size_t y = 0; y < 2; ++y) {
        for (size_t x = 0; x < 3; ++x) {
            const float want = spec_sample(grey, y, x, 0);
            EXPECT_FLOAT_EQ(grey1.values[y * 3 + x], want);
            for (size_t c = 0; c < 3; ++c) {
                EXPECT_FLOAT_EQ(grey3.values[c * 6 + y * 3 + x], want) << "channel " << c;
            }
        }
    }

    // RGB as planar channels, and as BT.601 luma.
    const PlanarImage rgb3 = decode_png(folder / "rgb.png", 3);
    const PlanarImage rgb1 = decode_png(folder / "rgb.png", 1);
    EXPECT_EQ(rgb3.channels, 3);
    EXPECT_EQ(rgb3.height, 3);
    EXPECT_EQ(rgb3.width, 4);
    for (size_t y = 0; y < 3; ++y) {
        for (size_t x = 0; x < 4; ++x) {
            for (size_t c = 0; c < 3; ++c) {
                EXPECT_FLOAT_EQ(rgb3.values[c * 12 + y * 4 + x], spec_sample(rgb, y, x, c));
            }
            const double luma = 0.299 * spec_sample(rgb, y, x, 0) +
                                0.587 * spec_sample(rgb, y, x, 1) +
                                0.114 * spec_sample(rgb, y, x, 2);
            EXPECT_NEAR(rgb1.values[y * 4 + x], luma, kLumaTolerance);
        }
    }
}

TEST(PngImage, Decodes16BitGreyAndRgb) {
    ScratchFolder folder("png");
    PngSpec grey{2, 2, PNG_COLOR_TYPE_GRAY, 16, false, {0, 1, 40000, 65535}, {}, {}};
    write_png(folder / "grey16.png", grey);
    PngSpec rgb{2, 1, PNG_COLOR_TYPE_RGB, 16, false, {65535, 0, 257, 12345, 54321, 1}, {}, {}};
    write_png(folder / "rgb16.png", rgb);

    const PlanarImage grey_image = decode_png(folder / "grey16.png", 1);
    for (size_t i = 0; i < 4; ++i) {
        EXPECT_FLOAT_EQ(grey_image.values[i], spec_sample(grey, i / 2, i % 2, 0));
    }
    const PlanarImage rgb_image = decode_png(folder / "rgb16.png", 3);
    for (size_t x = 0; x < 2; ++x) {
        for (size_t c = 0; c < 3; ++c) {
            EXPECT_FLOAT_EQ(rgb_image.values[c * 2 + x], spec_sample(rgb, 0, x, c));
        }
    }
}

TEST(PngImage, DecodesLowBitDepthGrey) {
    ScratchFolder folder("png");
    for (const int bits : {1, 2, 4}) {
        PngSpec spec{5, 2, PNG_COLOR_TYPE_GRAY, bits, false, {}, {}, {}};
        for (uint16_t i = 0; i < 10; ++i) {
            spec.samples.push_back(static_cast<uint16_t>(i % (1 << bits)));
        }
        const fs::path path = folder / ("grey" + std::to_string(bits) + ".png");
        write_png(path, spec);
        const PlanarImage image = decode_png(path, 1);
        for (size_t i = 0; i < 10; ++i) {
            EXPECT_FLOAT_EQ(image.values[i], spec_sample(spec, i / 5, i % 5, 0))
                << bits << " bits, pixel " << i;
        }
    }
}

TEST(PngImage, DropsAlphaAndExpandsPalette) {
    ScratchFolder folder("png");
    PngSpec rgba{2,  1, PNG_COLOR_TYPE_RGB_ALPHA, 8, false, {10, 20, 30, 0, 40, 50, 60, 255},
                 {}, {}};
    write_png(folder / "rgba.png", rgba);
    PngSpec grey_alpha{2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, false, {100, 0, 200, 128}, {}, {}};
    write_png(folder / "ga.png", grey_alpha);
    PngSpec palette{3,
                    1,
                    PNG_COLOR_TYPE_PALETTE,
                    8,
                    false,
                    {2, 0, 1},
                    {{255, 0, 0}, {0, 128, 0}, {1, 2, 3}},
                    {0, 255}};  // transparency, which is dropped like alpha
    write_png(folder / "palette.png", palette);

    const PlanarImage rgba_image = decode_png(folder / "rgba.png", 3);
    ASSERT_EQ(rgba_image.values.size(), 6U);
    for (size_t x = 0; x < 2; ++x) {
        for (size_t c = 0; c < 3; ++c) {
            EXPECT_FLOAT_EQ(rgba_image.values[c * 2 + x], spec_sample(rgba, 0, x, c));
        }
    }

    const PlanarImage ga_image = decode_png(folder / "ga.png", 3);
    ASSERT_EQ(ga_image.values.size(), 6U);
    for (size_t c = 0; c < 3; ++c) {
        EXPECT_FLOAT_EQ(ga_image.values[c * 2 + 0], 100.0F / 255.0F);
        EXPECT_FLOAT_EQ(ga_image.values[c * 2 + 1], 200.0F / 255.0F);
    }
    EXPECT_EQ(read_png_info(folder / "ga.png").channels, 1);

    EXPECT_EQ(read_png_info(folder / "palette.png").channels, 3);
    const PlanarImage palette_image = decode_png(folder / "palette.png", 3);
    ASSERT_EQ(palette_image.values.size(), 9U);
    for (size_t x = 0; x < 3; ++x) {
        const png_color colour = palette.palette[palette.samples[x]];
        EXPECT_FLOAT_EQ(palette_image.values[0 * 3 + x], colour.red / 255.0F);
        EXPECT_FLOAT_EQ(palette_image.values[1 * 3 + x], colour.green / 255.0F);
        EXPECT_FLOAT_EQ(palette_image.values[2 * 3 + x], colour.blue / 255.0F);
    }
}

TEST(PngImage, InterlacedMatchesPlain) {
    ScratchFolder folder("png");
    PngSpec plain = rgb_spec(9, 7, 3);
    write_png(folder / "plain.png", plain);
    plain.interlaced = true;
    write_png(folder / "adam7.png", plain);
    EXPECT_EQ(decode_png(folder / "adam7.png", 3).values,
              decode_png(folder / "plain.png", 3).values);
}

TEST(PngImage, RejectsCorruptFiles) {
    ScratchFolder folder("png");
    write_png(folder / "good.png", rgb_spec(16, 16));
    const std::string good = read_bytes(folder / "good.png");

    write_bytes(folder / "cut.png", good.substr(0, good.size() / 2));
    std::string flipped = good;
    flipped[good.size() / 2] = static_cast<char>(flipped[good.size() / 2] ^ 0x5a);
    write_bytes(folder / "flipped.png", flipped);
    write_bytes(folder / "text.png", "this is not an image");

    for (const std::string name : {"cut.png", "flipped.png"}) {
        const Error error = expect_error([&] { decode_png(folder / name, 3); });
        EXPECT_EQ(error.code(), ExitCode::kInvalidInput) << name;
        EXPECT_TRUE(contains(error.what(), (folder / name).string())) << error.what();
        EXPECT_TRUE(contains(error.what(), "corrupt or truncated")) << error.what();
    }
    const Error text = expect_error([&] { decode_png(folder / "text.png", 3); });
    EXPECT_TRUE(contains(text.what(), "is not a PNG file")) << text.what();
}

TEST(ImageFolder, ListsPngFilesInByteOrder) {
    ScratchFolder folder("png");
    for (const std::string name : {"b.png", "a.PNG", "B.png", "a0.png"}) {
        write_png(folder / name, rgb_spec(2, 2));
    }
    write_bytes(folder / "notes.txt", "not an image");
    fs::create_directories(folder / "sub.png");  // a folder, whatever its name

    std::vector<std::string> names;
    for (const fs::path& path : list_png_files(folder.path())) {
        names.push_back(path.filename().string());
    }
    EXPECT_EQ(names, (std::vector<std::string>{"B.png", "a.PNG", "a0.png", "b.png"}));
}

TEST(ImageFolder, RejectsEmptyAndMissingFolders) {
    ScratchFolder folder("png");
    write_bytes(folder / "readme.txt", "no images here");
    const Error empty = expect_error([&] { list_png_files(folder.path()); });
    EXPECT_EQ(empty.code(), ExitCode::kInvalidInput);
    EXPECT_TRUE(contains(empty.what(), "contains no PNG images")) << empty.what();
    EXPECT_TRUE(contains(empty.what(), folder.path().string())) << empty.what();

    EXPECT_EQ(expect_error([&] { list_png_files(folder / "missing"); }).code(), ExitCode::kIo);
}

// --------------------------------------------------------------------------------------------
// Resize and normalization maths
// --------------------------------------------------------------------------------------------

TEST(ResizeBilinear, MatchesHandComputedUpscale) {
    // 2x2 -> 4x4. With half-pixel centers the ratio is 0.5 and output x reads the input at
    // u = 0.5 (x + 0.5) - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (x1 clamped to 1), so the
    // weights of in[1] along a row are 0, 0.25, 0.75, 1. The columns get the same weights.
    const PlanarImage input{1, 2, 2, {0, 1, 2, 3}};
    const PlanarImage output = resize_bilinear(input, 4, 4);
    const std::vector<float> row_weight = {0.0F, 0.25F, 0.75F, 1.0F};
    ASSERT_EQ(output.values.size(), 16U);
    for (size_t y = 0; y < 4; ++y) {
        for (size_t x = 0; x < 4; ++x) {
            // in[y][x] = 2y + x, so the interpolation is 2 * wy + wx.
            EXPECT_FLOAT_EQ(output.values[y * 4 + x], 2 * row_weight[y] + row_weight[x])
                << y << "," << x;
        }
    }
}

TEST(ResizeBilinear, MatchesHandComputedDownscale) {
    // 1x4 -> 1x2: ratio 2, u = 2 (x + 0.5) - 0.5 = 0.5 and 2.5, the midpoints of the pairs.
    const PlanarImage halves = resize_bilinear({1, 1, 4, {0, 1, 2, 3}}, 1, 2);
    EXPECT_EQ(halves.values, (std::vector<float>{0.5F, 2.5F}));

    // 1x3 -> 1x2: ratio 1.5, u = 0.25 and 1.75, so 0.75 in[0] + 0.25 in[1] and
    // 0.25 in[1] + 0.75 in[2].
    const PlanarImage thirds = resize_bilinear({1, 1, 3, {0, 4, 8}}, 1, 2);
    EXPECT_EQ(thirds.values, (std::vector<float>{1.0F, 7.0F}));

    // The same size is a copy, channel by channel.
    const PlanarImage same{2, 2, 3, float_pattern(12)};
    EXPECT_EQ(resize_bilinear(same, 2, 3).values, same.values);
}

// PyTorch's F.interpolate(mode="bilinear", align_corners=False) as the oracle.
TEST(ResizeBilinear, MatchesPyTorch) {
    const std::string python = test::python_with_module("torch");
    if (python.empty()) {
        GTEST_SKIP() << "no python3 with torch; install python3-torch to run this test";
    }
    ScratchFolder folder("resize");
    const std::string script = R"(import sys
import numpy as np
import torch
folder = sys.argv[1]
x = torch.sin(torch.arange(3 * 5 * 7, dtype=torch.float32) * 0.37).reshape(1, 3, 5, 7)
np.save(folder + '/input.npy', x.numpy())
for h, w in [(9, 4), (2, 3), (11, 16)]:
    y = torch.nn.functional.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)
    np.save(folder + f'/out_{h}x{w}.npy', y.numpy())
)";
    write_bytes(folder / "make.py", script);
    const test::CommandResult result = test::run_command(
        python + " " + (folder / "make.py").string() + " " + folder.path().string());
    ASSERT_EQ(result.exit_code, 0) << result.output;

    NpyFile input_file(folder / "input.npy");
    PlanarImage input{3, 5, 7, {}};
    input_file.read_rows(0, 1, input.values);
    for (const auto& [height, width] : {std::pair{9, 4}, std::pair{2, 3}, std::pair{11, 16}}) {
        NpyFile expected_file(
            folder / ("out_" + std::to_string(height) + "x" + std::to_string(width) + ".npy"));
        std::vector<float> expected;
        expected_file.read_rows(0, 1, expected);
        const PlanarImage output = resize_bilinear(input, height, width);
        ASSERT_EQ(output.values.size(), expected.size());
        float max_difference = 0;
        for (size_t i = 0; i < expected.size(); ++i) {
            max_difference = std::max(max_difference, std::abs(output.values[i] - expected[i]));
        }
        EXPECT_LE(max_difference, kTorchResizeTolerance) << height << "x" << width;
    }
}

TEST(NormalizeChannels, AppliesPerChannelAndBroadcast) {
    std::vector<float> values = {0.0F, 1.0F, 0.5F, 0.25F, 1.0F, 0.0F};  // [3 channels, 2]
    const std::vector<float> original = values;
    const std::vector<float> mean = {0.5F, 0.25F, 0.0F};
    const std::vector<float> std = {0.5F, 2.0F, 4.0F};
    normalize_channels(values, 3, mean, std);
    for (size_t i = 0; i < values.size(); ++i) {
        EXPECT_FLOAT_EQ(values[i], (original[i] - mean[i / 2]) / std[i / 2]) << i;
    }

    std::vector<float> broadcast = original;
    normalize_channels(broadcast, 3, {0.5F}, {});
    for (size_t i = 0; i < broadcast.size(); ++i) {
        EXPECT_FLOAT_EQ(broadcast[i], original[i] - 0.5F) << i;
    }
}

// --------------------------------------------------------------------------------------------
// Calibration sources
// --------------------------------------------------------------------------------------------

constexpr int64_t kSamples = 23;  // not a multiple of 7, so one batch size leaves a short batch

// One folder with the same 23 samples as uint8 .npy [23, 3, 5, 4], as an IDX file [23, 5, 4]
// (the first channel) and as 23 RGB PNG images 4 wide and 5 high.
struct SampleFiles {
    ScratchFolder folder{"sources"};
    std::vector<uint8_t> pixels = byte_pattern(kSamples * 3 * 5 * 4);  // [N, C, H, W]

    fs::path npy() const { return folder / "samples.npy"; }
    fs::path idx() const { return folder / "samples-idx3-ubyte"; }
    fs::path png_folder() const { return folder / "png"; }

    SampleFiles() {
        write_bytes(npy(), npy_bytes(1, npy_dict("|u1", {kSamples, 3, 5, 4}), uint8_data(pixels)));

        std::vector<uint8_t> first_channel;
        for (int64_t n = 0; n < kSamples; ++n) {
            const auto sample = pixels.begin() + n * 60;
            first_channel.insert(first_channel.end(), sample, sample + 20);
        }
        const std::vector<uint8_t> idx_bytes =
            test::make_idx_bytes(0x00000803, {23, 5, 4}, first_channel);
        write_bytes(idx(), std::string(idx_bytes.begin(), idx_bytes.end()));

        fs::create_directories(png_folder());
        for (int64_t n = 0; n < kSamples; ++n) {
            PngSpec spec{4, 5, PNG_COLOR_TYPE_RGB, 8, false, {}, {}, {}};
            for (size_t y = 0; y < 5; ++y) {
                for (size_t x = 0; x < 4; ++x) {
                    for (size_t c = 0; c < 3; ++c) {
                        spec.samples.push_back(pixels[n * 60 + c * 20 + y * 4 + x]);
                    }
                }
            }
            write_png(png_folder() / fmt::format("image_{:02}.png", n), spec);
        }
    }
};

TEST(CalibrationSource, BatchSizesGiveSameValues) {
    const SampleFiles files;
    for (const fs::path& path : {files.npy(), files.idx(), files.png_folder()}) {
        const int64_t channels = path == files.idx() ? 1 : 3;
        std::vector<float> reference;
        for (const int64_t batch_size : {1, 7, 100}) {
            CalibrationSourceOptions options;
            options.path = path;
            options.batch_size = batch_size;
            const std::unique_ptr<CalibrationDataReader> reader =
                open_calibration_source(options, {-1, channels, 5, 4});
            EXPECT_EQ(reader->sample_count(), kSamples);

            const ReadResult all = read_all(*reader);
            const int64_t batches = (kSamples + batch_size - 1) / batch_size;
            ASSERT_EQ(static_cast<int64_t>(all.shapes.size()), batches) << path;
            EXPECT_EQ(all.shapes.back(),
                      (std::vector<int64_t>{kSamples - (batches - 1) * batch_size, channels, 5, 4}))
                << path << ", batch size " << batch_size;
            ASSERT_EQ(static_cast<int64_t>(all.values.size()), kSamples * channels * 20) << path;
            if (reference.empty()) {
                reference = all.values;
            }
            EXPECT_EQ(all.values, reference) << path << ", batch size " << batch_size;
        }

        // Every sample is the stored byte / 255, in file order.
        for (int64_t n = 0; n < kSamples; ++n) {
            for (int64_t i = 0; i < channels * 20; ++i) {
                EXPECT_FLOAT_EQ(reference[n * channels * 20 + i],
                                static_cast<float>(files.pixels[n * 60 + i]) / 255.0F)
                    << path << " sample " << n << " element " << i;
            }
        }
    }
}

TEST(CalibrationSource, RewindAndLimit) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.png_folder();
    options.batch_size = 4;
    options.limit = 6;
    const std::unique_ptr<CalibrationDataReader> reader = open_calibration_source(options, {});
    EXPECT_EQ(reader->sample_count(), 6);
    const ReadResult first = read_all(*reader);
    const ReadResult second = read_all(*reader);
    EXPECT_EQ(first.values, second.values);
    ASSERT_EQ(first.shapes.size(), 2U);
    EXPECT_EQ(first.shapes[1][0], 2);
    for (size_t i = 0; i < first.values.size(); ++i) {
        EXPECT_FLOAT_EQ(first.values[i], static_cast<float>(files.pixels[i]) / 255.0F) << i;
    }
}

TEST(CalibrationSource, Uint8NpyScaledThenNormalized) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.npy();
    options.mean = {0.485F, 0.456F, 0.406F};
    options.std = {0.229F, 0.224F, 0.225F};
    const ReadResult all = read_all(*open_calibration_source(options, {-1, 3, 5, 4}));
    ASSERT_EQ(all.values.size(), files.pixels.size());
    for (size_t i = 0; i < all.values.size(); ++i) {
        const size_t channel = (i / 20) % 3;
        const double want =
            (files.pixels[i] / 255.0 - options.mean[channel]) / options.std[channel];
        EXPECT_NEAR(all.values[i], want, kNormalizedTolerance) << i;
    }
}

TEST(CalibrationSource, Float32NpyKeptUnlessNormalized) {
    ScratchFolder folder("sources");
    const std::vector<float> values = float_pattern(3 * 2 * 2 * 2);
    write_bytes(folder / "f.npy",
                npy_bytes(1, npy_dict("<f4", {3, 2, 2, 2}), float32_data(values)));

    CalibrationSourceOptions options;
    options.path = folder / "f.npy";
    EXPECT_EQ(read_all(*open_calibration_source(options, {-1, 2, 2, 2})).values, values);

    options.mean = {1.0F, -1.0F};
    options.std = {2.0F};
    const ReadResult normalized = read_all(*open_calibration_source(options, {-1, 2, 2, 2}));
    for (size_t i = 0; i < values.size(); ++i) {
        const float mean = options.mean[(i / 4) % 2];
        EXPECT_FLOAT_EQ(normalized.values[i], (values[i] - mean) / 2.0F) << i;
    }
}

TEST(CalibrationSource, NpyNonFiniteValueNamed) {
    ScratchFolder folder("sources");
    std::vector<float> values = float_pattern(4 * 1 * 2 * 2);
    values[9] = std::nanf("");
    write_bytes(folder / "nan.npy",
                npy_bytes(1, npy_dict("<f4", {4, 1, 2, 2}), float32_data(values)));
    CalibrationSourceOptions options;
    options.path = folder / "nan.npy";
    const std::unique_ptr<CalibrationDataReader> reader = open_calibration_source(options, {});
    const Error error = expect_error([&] { read_all(*reader); });
    EXPECT_TRUE(contains(error.what(), "sample 2")) << error.what();
    EXPECT_TRUE(contains(error.what(), "nan.npy")) << error.what();
}

TEST(CalibrationSource, PngFolderResizedAndNormalized) {
    ScratchFolder folder("sources");
    // Images of three sizes: a grey one (converted to RGB) and two RGB ones.
    PngSpec grey{3, 2, PNG_COLOR_TYPE_GRAY, 8, false, {0, 50, 100, 150, 200, 250}, {}, {}};
    write_png(folder / "0_grey.png", grey);
    const PngSpec small = rgb_spec(2, 2, 1);
    write_png(folder / "1_small.png", small);
    const PngSpec wide = rgb_spec(8, 3, 2);
    write_png(folder / "2_wide.png", wide);

    CalibrationSourceOptions options;
    options.path = folder.path();
    options.size = std::pair<int64_t, int64_t>{4, 6};
    options.mean = {0.5F, 0.4F, 0.3F};
    options.std = {0.2F, 0.25F, 0.5F};
    const ReadResult all = read_all(*open_calibration_source(options, {-1, 3, 4, 6}));
    ASSERT_EQ(all.shapes.size(), 1U);
    EXPECT_EQ(all.shapes[0], (std::vector<int64_t>{3, 3, 4, 6}));

    // Each sample is decode -> resize -> normalize. resize_bilinear has its own tests above.
    size_t offset = 0;
    for (const std::string name : {"0_grey.png", "1_small.png", "2_wide.png"}) {
        PlanarImage expected = resize_bilinear(decode_png(folder / name, 3), 4, 6);
        for (size_t i = 0; i < expected.values.size(); ++i) {
            const size_t channel = i / 24;
            const float want = (expected.values[i] - options.mean[channel]) / options.std[channel];
            EXPECT_NEAR(all.values[offset + i], want, kNormalizedTolerance) << name << " " << i;
        }
        offset += expected.values.size();
    }

    // Without --size the images must share the first image's size.
    options.size.reset();
    const std::unique_ptr<CalibrationDataReader> reader =
        open_calibration_source(options, {-1, 3, -1, -1});
    const Error error = expect_error([&] { read_all(*reader); });
    EXPECT_TRUE(contains(error.what(), "1_small.png")) << error.what();
    EXPECT_TRUE(contains(error.what(), "--size")) << error.what();
}

TEST(CalibrationSource, PngChannelsFollowTheModel) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.png_folder();
    options.limit = 1;
    // A grey model turns the RGB images into BT.601 luma.
    const ReadResult grey = read_all(*open_calibration_source(options, {-1, 1, 5, 4}));
    ASSERT_EQ(grey.shapes[0], (std::vector<int64_t>{1, 1, 5, 4}));
    for (size_t i = 0; i < 20; ++i) {
        const double luma = (0.299 * files.pixels[i] + 0.587 * files.pixels[20 + i] +
                             0.114 * files.pixels[40 + i]) /
                            255.0;
        EXPECT_NEAR(grey.values[i], luma, kLumaTolerance) << i;
    }
    // With a dynamic channel count the first image decides: RGB here.
    EXPECT_EQ(read_all(*open_calibration_source(options, {-1, -1, 5, 4})).shapes[0][1], 3);
    // An explicit channel count wins.
    options.channels = 1;
    EXPECT_EQ(read_all(*open_calibration_source(options, {})).shapes[0][1], 1);
}

TEST(CalibrationSource, SizeOptionResizesNpyAndIdx) {
    const SampleFiles files;
    for (const fs::path& path : {files.npy(), files.idx()}) {
        const int64_t channels = path == files.idx() ? 1 : 3;
        CalibrationSourceOptions options;
        options.path = path;
        options.size = std::pair<int64_t, int64_t>{10, 8};
        options.limit = 2;
        const ReadResult all = read_all(*open_calibration_source(options, {-1, channels, 10, 8}));
        EXPECT_EQ(all.shapes[0], (std::vector<int64_t>{2, channels, 10, 8})) << path;

        PlanarImage first{channels, 5, 4, {}};
        for (int64_t i = 0; i < channels * 20; ++i) {
            first.values.push_back(static_cast<float>(files.pixels[i]) / 255.0F);
        }
        const PlanarImage expected = resize_bilinear(first, 10, 8);
        EXPECT_EQ(
            std::vector<float>(all.values.begin(),
                               all.values.begin() + static_cast<long>(expected.values.size())),
            expected.values)
            << path;
    }
}

TEST(CalibrationSource, ShapeMismatchNamesFix) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.npy();
    const Error size = expect_error([&] { open_calibration_source(options, {-1, 3, 224, 224}); });
    EXPECT_EQ(size.code(), ExitCode::kInvalidInput);
    const std::string message = size.what();
    EXPECT_TRUE(contains(message, files.npy().string())) << message;
    EXPECT_TRUE(contains(message, "[3, 5, 4]")) << message;
    EXPECT_TRUE(contains(message, "[?, 3, 224, 224]")) << message;
    EXPECT_TRUE(contains(message, "use --size 224 224")) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;

    options.path = files.idx();
    const Error channels = expect_error([&] { open_calibration_source(options, {-1, 3, 5, 4}); });
    EXPECT_TRUE(contains(channels.what(), "give data with 3 channels")) << channels.what();

    const Error rank = expect_error([&] { open_calibration_source(options, {-1, 20}); });
    EXPECT_EQ(rank.code(), ExitCode::kUnsupported);

    // A dynamic height or width accepts any size.
    EXPECT_NO_THROW(open_calibration_source(options, {-1, 1, -1, 0}));
}

TEST(CalibrationSource, MeanStdChecked) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.npy();
    options.mean = {0.5F, 0.5F};
    const Error length = expect_error([&] { open_calibration_source(options, {}); });
    EXPECT_EQ(length.code(), ExitCode::kUsage);
    EXPECT_TRUE(contains(length.what(), "--mean has 2 values")) << length.what();
    EXPECT_TRUE(contains(length.what(), "3 channels")) << length.what();

    options.mean = {0.5F};
    options.std = {0.2F, 0.0F, 0.2F};
    const Error zero = expect_error([&] { open_calibration_source(options, {}); });
    EXPECT_TRUE(contains(zero.what(), "--std value 0 (position 2) must be positive"))
        << zero.what();
}

TEST(CalibrationSource, EmptySourcesRejected) {
    ScratchFolder folder("sources");
    write_bytes(folder / "empty.npy", npy_bytes(1, npy_dict("|u1", {0, 3, 4, 4}), ""));
    CalibrationSourceOptions options;
    options.path = folder / "empty.npy";
    const Error npy = expect_error([&] { open_calibration_source(options, {}); });
    EXPECT_TRUE(contains(npy.what(), "contains no images")) << npy.what();

    fs::create_directories(folder / "images");
    options.path = folder / "images";
    const Error png = expect_error([&] { open_calibration_source(options, {}); });
    EXPECT_TRUE(contains(png.what(), "contains no PNG images")) << png.what();
}

TEST(CalibrationSource, FixedModelBatchSize) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.npy();
    const std::unique_ptr<CalibrationDataReader> reader =
        open_calibration_source(options, {1, 3, 5, 4});
    const ReadResult all = read_all(*reader);
    EXPECT_EQ(static_cast<int64_t>(all.shapes.size()), kSamples);

    const Error uneven = expect_error([&] { open_calibration_source(options, {4, 3, 5, 4}); });
    EXPECT_TRUE(contains(uneven.what(), "fixed batch size of 4")) << uneven.what();
    options.limit = 8;
    EXPECT_EQ(read_all(*open_calibration_source(options, {4, 3, 5, 4})).shapes.size(), 2U);
}

TEST(CalibrationSource, FactoryPicksEachKind) {
    const SampleFiles files;
    EXPECT_EQ(detect_calibration_source(files.npy()), CalibrationSourceKind::kNpy);
    EXPECT_EQ(detect_calibration_source(files.idx()), CalibrationSourceKind::kIdx);
    EXPECT_EQ(detect_calibration_source(files.png_folder()), CalibrationSourceKind::kPngFolder);

    // By magic number, whatever the name: a .npy, a plain IDX and a gzip-compressed IDX.
    fs::copy_file(files.npy(), files.folder / "array.bin");
    fs::copy_file(files.idx(), files.folder / "images.bin");
    const std::string idx_bytes = read_bytes(files.idx());
    ASSERT_TRUE(test::write_gzip_file(files.folder / "images.gz",
                                      std::vector<uint8_t>(idx_bytes.begin(), idx_bytes.end())));
    EXPECT_EQ(detect_calibration_source(files.folder / "array.bin"), CalibrationSourceKind::kNpy);
    EXPECT_EQ(detect_calibration_source(files.folder / "images.bin"), CalibrationSourceKind::kIdx);
    EXPECT_EQ(detect_calibration_source(files.folder / "images.gz"), CalibrationSourceKind::kIdx);

    // The factory builds the matching reader.
    const std::vector<std::pair<fs::path, int64_t>> sources = {
        {files.folder / "array.bin", 3}, {files.folder / "images.gz", 1}, {files.png_folder(), 3}};
    for (const auto& [path, channels] : sources) {
        CalibrationSourceOptions options;
        options.path = path;
        const std::unique_ptr<CalibrationDataReader> reader =
            open_calibration_source(options, {-1, channels, 5, 4});
        const CalibrationDataReader* raw = reader.get();
        if (path.extension() == ".bin") {
            EXPECT_NE(dynamic_cast<const NpyCalibrationReader*>(raw), nullptr) << path;
        } else if (path.extension() == ".gz") {
            EXPECT_NE(dynamic_cast<const IdxCalibrationReader*>(raw), nullptr) << path;
        } else {
            EXPECT_NE(dynamic_cast<const PngFolderCalibrationReader*>(raw), nullptr) << path;
        }
        EXPECT_EQ(reader->sample_count(), kSamples) << path;
    }

    write_bytes(files.folder / "data.csv", "1,2,3\n");
    const Error unknown =
        expect_error([&] { detect_calibration_source(files.folder / "data.csv"); });
    EXPECT_EQ(unknown.code(), ExitCode::kInvalidInput);
    EXPECT_TRUE(contains(unknown.what(), "data.csv")) << unknown.what();

    const Error single =
        expect_error([&] { detect_calibration_source(files.png_folder() / "image_00.png"); });
    EXPECT_TRUE(contains(single.what(), "pass the folder")) << single.what();

    EXPECT_EQ(expect_error([&] { detect_calibration_source(files.folder / "missing"); }).code(),
              ExitCode::kIo);
}

TEST(CalibrationSource, RejectsInvalidOptions) {
    const SampleFiles files;
    CalibrationSourceOptions options;
    options.path = files.npy();
    options.batch_size = 0;
    EXPECT_EQ(expect_error([&] { open_calibration_source(options, {}); }).code(), ExitCode::kUsage);
    options.batch_size = 10;
    options.size = std::pair<int64_t, int64_t>{0, 4};
    EXPECT_EQ(expect_error([&] { open_calibration_source(options, {}); }).code(), ExitCode::kUsage);
    options.size.reset();
    options.channels = 1;  // the array has 3
    const Error channels = expect_error([&] { open_calibration_source(options, {}); });
    EXPECT_TRUE(contains(channels.what(), "has 3 channels but 1 are requested")) << channels.what();
}

// --------------------------------------------------------------------------------------------
// Option parsing
// --------------------------------------------------------------------------------------------

TEST(ParseFloatList, ParsesCommaSeparatedValues) {
    EXPECT_EQ(parse_float_list("0.485,0.456,0.406", "--mean"),
              (std::vector<float>{0.485F, 0.456F, 0.406F}));
    EXPECT_EQ(parse_float_list(" 0.5 , +2, -1e-3", "--std"),
              (std::vector<float>{0.5F, 2.0F, -1e-3F}));
    EXPECT_EQ(parse_float_list("127", "--mean"), (std::vector<float>{127.0F}));
}

TEST(ParseFloatList, RejectsBadValues) {
    for (const std::string text : {"", "0.5,", "0.5,,0.2", "abc", "0.5x", "inf", "1e999"}) {
        const Error error = expect_error([&] { parse_float_list(text, "--mean"); });
        EXPECT_EQ(error.code(), ExitCode::kUsage) << text;
        EXPECT_TRUE(contains(error.what(), "--mean '" + text + "'")) << error.what();
    }
}

}  // namespace
}  // namespace edgeq
