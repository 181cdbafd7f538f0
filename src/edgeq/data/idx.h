// Reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or plain.
//
// Layout (all integers big-endian):
//   magic: 0x00 0x00 <type> <number of dimensions>, type 0x08 = unsigned byte
//   one uint32 per dimension
//   the data, row-major
// Images are 3-D (count, rows, columns), labels 1-D (count).
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace edgeq {

struct IdxImages {
    int64_t count = 0;
    int64_t rows = 0;
    int64_t columns = 0;
    std::vector<uint8_t> pixels;  // [count, rows, columns], row-major, 0 = background
};

// Reads an IDX3 unsigned-byte image file. Throws Error naming the file for a wrong magic number,
// a truncated or corrupt file, or a size that does not match the header.
IdxImages read_idx_images(const std::filesystem::path& path);

// Reads an IDX1 unsigned-byte label file, with the same checks.
std::vector<uint8_t> read_idx_labels(const std::filesystem::path& path);

}  // namespace edgeq
