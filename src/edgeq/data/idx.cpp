#include "edgeq/data/idx.h"

#include <zlib.h>

#include <array>
#include <limits>
#include <string>

#include "edgeq/common/error.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

constexpr uint8_t kUnsignedByteType = 0x08;
constexpr int64_t kMaxElements = int64_t{1} << 40;

// Reads a whole gzip or plain file: zlib's gzread passes plain files through unchanged.
// A truncated gzip stream shows up as an error from gzread or gzclose.
std::vector<uint8_t> read_maybe_gzip(const fs::path& path) {
    std::error_code error;
    if (!fs::exists(path, error)) {
        fail(ExitCode::kIo, "data file '{}' not found; pass the Fashion-MNIST folder with --data",
             path.string());
    }

    if (!fs::is_regular_file(path, error)) {
        fail(ExitCode::kIo,
             "data path '{}' is not a regular file; pass the folder that contains "
             "the IDX files with --data",
             path.string());
    }

    gzFile file = gzopen(path.c_str(), "rb");
    if (file == nullptr) {
        fail(ExitCode::kIo, "cannot open data file '{}'", path.string());
    }

    std::vector<uint8_t> bytes;
    std::array<uint8_t, 1 << 16> chunk{};
    while (true) {
        const int read = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
        if (read < 0) {
            int code = 0;
            const std::string reason = gzerror(file, &code);
            gzclose(file);
            fail(ExitCode::kInvalidInput,
                 "data file '{}' is corrupt: {}; reinstall or re-download it", path.string(),
                 reason);
        }
        if (read == 0) {
            break;
        }
        bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + read);
    }

    // gzclose reports Z_BUF_ERROR when the gzip stream ended before its trailer.
    const int close_status = gzclose(file);
    if (close_status != Z_OK) {
        fail(
            ExitCode::kInvalidInput,
            "data file '{}' is truncated (the gzip stream ends early); reinstall or re-download it",
            path.string());
    }
    return bytes;
}

uint32_t read_big_endian_u32(const std::vector<uint8_t>& bytes, size_t offset) {
    return (uint32_t{bytes[offset]} << 24) | (uint32_t{bytes[offset + 1]} << 16) |
           (uint32_t{bytes[offset + 2]} << 8) | uint32_t{bytes[offset + 3]};
}

// Checks the magic number and header of an IDX file with `expected_dimensions` unsigned-byte
// dimensions; returns the dimensions and leaves the data after them.
std::vector<int64_t> parse_header(const std::vector<uint8_t>& bytes, const fs::path& path,
                                  uint8_t expected_dimensions) {
    const size_t header_size = 4 + 4 * size_t{expected_dimensions};
    if (bytes.size() < 4) {
        fail(ExitCode::kInvalidInput, "data file '{}' is too short ({} bytes) to be an IDX file",
             path.string(), bytes.size());
    }
    const uint32_t magic = read_big_endian_u32(bytes, 0);
    const uint32_t expected_magic = (uint32_t{kUnsignedByteType} << 8) | expected_dimensions;
    if (magic != expected_magic) {
        fail(ExitCode::kInvalidInput,
             "data file '{}' has magic number 0x{:08x}, expected 0x{:08x} (IDX{} unsigned byte); "
             "is it the right file?",
             path.string(), magic, expected_magic, expected_dimensions);
    }
    if (bytes.size() < header_size) {
        fail(ExitCode::kInvalidInput, "data file '{}' is truncated inside its header",
             path.string());
    }

    std::vector<int64_t> dimensions;
    int64_t element_count = 1;
    for (uint8_t d = 0; d < expected_dimensions; ++d) {
        const int64_t size = read_big_endian_u32(bytes, 4 + 4 * size_t{d});
        if (size == 0 || size > std::numeric_limits<int32_t>::max()) {
            fail(ExitCode::kInvalidInput, "data file '{}' has an invalid dimension {} of size {}",
                 path.string(), d, size);
        }
        dimensions.push_back(size);
        // Three dimensions below 2^31 could overflow int64; no real IDX file comes near 2^40.
        if (element_count > kMaxElements / size) {
            fail(ExitCode::kInvalidInput,
                 "data file '{}' declares more than 2^40 elements; the "
                 "header is corrupt",
                 path.string());
        }
        element_count *= size;
    }

    const auto data_size = static_cast<int64_t>(bytes.size() - header_size);
    if (data_size != element_count) {
        fail(ExitCode::kInvalidInput,
             "data file '{}' holds {} data bytes but its header declares {}; the file is {}",
             path.string(), data_size, element_count,
             data_size < element_count ? "truncated" : "followed by extra bytes");
    }
    return dimensions;
}

}  // namespace

IdxImages read_idx_images(const fs::path& path) {
    const std::vector<uint8_t> bytes = read_maybe_gzip(path);
    const std::vector<int64_t> dimensions = parse_header(bytes, path, 3);

    IdxImages images;
    images.count = dimensions[0];
    images.rows = dimensions[1];
    images.columns = dimensions[2];
    images.pixels.assign(bytes.begin() + 16, bytes.end());
    return images;
}

std::vector<uint8_t> read_idx_labels(const fs::path& path) {
    const std::vector<uint8_t> bytes = read_maybe_gzip(path);
    parse_header(bytes, path, 1);
    return {bytes.begin() + 8, bytes.end()};
}

}  // namespace edgeq
