// Reader for NumPy's .npy array files that reads rows on demand, so a calibration pass keeps one
// batch in memory however large the file is.
//
// Layout (format versions 1.0, 2.0 and 3.0, as numpy.lib.format writes them):
//   magic "\x93NUMPY", major version byte, minor version byte (always 0)
//   header length: uint16 little-endian in version 1, uint32 little-endian in versions 2 and 3
//   header: a Python dict literal such as {'descr': '<f4', 'fortran_order': False,
//           'shape': (10, 3, 32, 32), } padded with spaces and ended by '\n'
//           (ASCII in versions 1 and 2, UTF-8 in version 3)
//   the data, product(shape) * itemsize bytes, nothing after it
// Supported element types: '<f4' (float32, little-endian) and '|u1' (uint8), in C order.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace edgeq {

enum class NpyElementType {
    kFloat32,  // descr '<f4'
    kUint8,    // descr '|u1' (also written 'u1' or '<u1')
};

// The parsed header of a .npy file.
struct NpyHeader {
    int major_version = 0;
    NpyElementType element_type = NpyElementType::kFloat32;
    std::vector<int64_t> shape;  // C order, first dimension = rows
    int64_t data_offset = 0;     // bytes from the start of the file to the first element
};

// Parses the header dict text (the part between the length field and the data). Throws Error
// naming `path` for a malformed dict, missing or unknown keys, an unsupported dtype or
// fortran_order True.
NpyHeader parse_npy_header_dict(const std::string& text, const std::filesystem::path& path);

// An open .npy file whose header has been checked against the file size.
class NpyFile {
  public:
    // Opens `path` and checks the magic, version, header and that the file contains exactly
    // product(shape) * itemsize data bytes. Throws Error naming the file otherwise.
    explicit NpyFile(const std::filesystem::path& path);

    const std::filesystem::path& path() const { return path_; }
    const NpyHeader& header() const { return header_; }
    const std::vector<int64_t>& shape() const { return header_.shape; }
    NpyElementType element_type() const { return header_.element_type; }

    int64_t row_count() const { return header_.shape.front(); }
    // Elements in one row: the product of every dimension after the first.
    int64_t row_elements() const { return row_elements_; }

    // Reads rows [first, first + count) into `values` (resized to count * row_elements()), as
    // stored: float32 values unchanged, uint8 values as 0..255. Seeks, so no other row is read.
    void read_rows(int64_t first, int64_t count, std::vector<float>& values);

  private:
    std::filesystem::path path_;
    NpyHeader header_;
    int64_t row_elements_ = 0;
    std::ifstream stream_;
    std::vector<char> raw_;  // the bytes of the last read_rows call, reused between calls
};

// The element type as NumPy spells it, for messages.
std::string npy_element_type_name(NpyElementType type);

}  // namespace edgeq
