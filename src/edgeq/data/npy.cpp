#include "edgeq/data/npy.h"

#include <bit>
#include <cassert>
#include <cctype>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>

#include <fmt/ranges.h>

#include "edgeq/common/error.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
// Magic, two version bytes, then the header length field (2 bytes in version 1, 4 after).
constexpr int64_t kVersion1Preamble = 10;
constexpr int64_t kVersion2Preamble = 12;
// Larger element counts only come from a corrupt header, and the cap keeps byte counts in int64.
constexpr int64_t kMaxElements = int64_t{1} << 48;

std::string shape_text(const std::vector<int64_t>& shape) {
    return fmt::format("({})", fmt::join(shape, ", "));
}

// A recursive-descent parser for the header dict. NumPy writes it with repr(), so it only ever
// contains string keys, string or bool values and a tuple of integers, but hand-written or older
// files may differ in spacing, quotes, trailing commas and Python 2's long suffix ("3L").
class HeaderDictParser {
  public:
    HeaderDictParser(const std::string& text, const fs::path& path) : text_(text), path_(path) {}

    NpyHeader parse() {
        std::optional<std::string> descr;
        std::optional<bool> fortran_order;
        std::optional<std::vector<int64_t>> shape;

        expect('{');
        while (!accept('}')) {
            const std::string key = parse_string();
            expect(':');
            if (key == "descr") {
                if (peek() != '\'' && peek() != '"') {
                    fail(ExitCode::kUnsupported,
                         ".npy file '{}' has a structured dtype; edgeq reads plain float32 ('<f4') "
                         "or uint8 ('|u1') arrays",
                         path_.string());
                }
                descr = parse_string();
            } else if (key == "fortran_order") {
                fortran_order = parse_bool();
            } else if (key == "shape") {
                shape = parse_shape();
            } else {
                fail_malformed(fmt::format("unknown key '{}'", key));
            }
            if (!accept(',')) {
                expect('}');
                break;
            }
        }
        if (!descr || !fortran_order || !shape) {
            fail_malformed("the dict must contain 'descr', 'fortran_order' and 'shape'");
        }

        if (*fortran_order) {
            fail(ExitCode::kUnsupported,
                 ".npy file '{}' is stored in Fortran order (fortran_order: True); edgeq reads C "
                 "order only, so save numpy.ascontiguousarray(array) instead",
                 path_.string());
        }
        NpyHeader header;
        header.element_type = parse_element_type(*descr);
        header.shape = std::move(*shape);
        return header;
    }

  private:
    NpyElementType parse_element_type(const std::string& descr) const {
        if (descr == "<f4") {
            return NpyElementType::kFloat32;
        }
        // A one-byte type has no byte order, which NumPy writes as '|'.
        if (descr == "|u1" || descr == "u1" || descr == "<u1" || descr == ">u1") {
            return NpyElementType::kUint8;
        }
        fail(ExitCode::kUnsupported,
             ".npy file '{}' has dtype '{}'; edgeq reads float32 ('<f4') and uint8 ('|u1') "
             "arrays, so save array.astype(numpy.float32) instead",
             path_.string(), descr);
    }

    void skip_spaces() {
        while (position_ < text_.size() &&
               std::isspace(static_cast<unsigned char>(text_[position_]))) {
            ++position_;
        }
    }

    char peek() {
        skip_spaces();
        return position_ < text_.size() ? text_[position_] : '\0';
    }

    bool accept(char expected) {
        if (peek() != expected) {
            return false;
        }
        ++position_;
        return true;
    }

    void expect(char expected) {
        if (!accept(expected)) {
            fail_malformed(fmt::format("expected '{}'", expected));
        }
    }

    std::string parse_string() {
        const char quote = peek();
        if (quote != '\'' && quote != '"') {
            fail_malformed("expected a quoted string");
        }
        const size_t end = text_.find(quote, position_ + 1);
        if (end == std::string::npos) {
            fail_malformed("unterminated string");
        }
        std::string value = text_.substr(position_ + 1, end - position_ - 1);
        position_ = end + 1;
        return value;
    }

    bool parse_bool() {
        skip_spaces();
        for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
            const std::string_view keyword = word;
            if (text_.compare(position_, keyword.size(), keyword) == 0) {
                position_ += keyword.size();
                return value;
            }
        }
        fail_malformed("expected True or False");
    }

    // A tuple of non-negative integers: "()", "(5,)", "(2, 3)", "(2, 3,)".
    std::vector<int64_t> parse_shape() {
        std::vector<int64_t> shape;
        expect('(');
        while (!accept(')')) {
            shape.push_back(parse_dimension());
            if (!accept(',')) {
                expect(')');
                break;
            }
        }
        return shape;
    }

    int64_t parse_dimension() {
        skip_spaces();
        const size_t start = position_;
        int64_t value = 0;
        while (position_ < text_.size() &&
               std::isdigit(static_cast<unsigned char>(text_[position_]))) {
            const int digit = text_[position_] - '0';
            if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) {
                fail_malformed("a dimension does not fit in 64 bits");
            }
            value = value * 10 + digit;
            ++position_;
        }
        if (position_ == start) {
            fail_malformed("expected a non-negative integer dimension");
        }
        if (position_ < text_.size() && text_[position_] == 'L') {
            ++position_;
        }
        return value;
    }

    [[noreturn]] void fail_malformed(const std::string& problem) const {
        fail(ExitCode::kInvalidInput,
             ".npy file '{}' has a malformed header at character {}: {}; save the array again "
             "with numpy.save",
             path_.string(), position_, problem);
    }

    const std::string& text_;
    const fs::path& path_;
    size_t position_ = 0;
};

int64_t item_size(NpyElementType type) {
    return type == NpyElementType::kFloat32 ? 4 : 1;
}

uint32_t read_little_endian_u32(const char* bytes) {
    uint32_t value = 0;
    for (int i = 3; i >= 0; --i) {
        value = (value << 8) | static_cast<unsigned char>(bytes[i]);
    }
    return value;
}

// Reads the magic, version and header, and returns the header with its data offset.
NpyHeader read_header(std::ifstream& stream, const fs::path& path) {
    char preamble[kVersion2Preamble] = {};
    stream.read(preamble, kVersion1Preamble);
    if (stream.gcount() < kVersion1Preamble ||
        std::string_view(preamble, kMagic.size()) != kMagic) {
        fail(ExitCode::kInvalidInput,
             "file '{}' is not a .npy file (it does not start with \\x93NUMPY); write it with "
             "numpy.save",
             path.string());
    }

    const int major = static_cast<unsigned char>(preamble[6]);
    const int minor = static_cast<unsigned char>(preamble[7]);
    if (major < 1 || major > 3 || minor != 0) {
        fail(ExitCode::kUnsupported,
             ".npy file '{}' has format version {}.{}; edgeq reads versions 1.0, 2.0 and 3.0",
             path.string(), major, minor);
    }

    int64_t header_length = 0;
    int64_t preamble_size = kVersion1Preamble;
    if (major == 1) {
        header_length = static_cast<unsigned char>(preamble[8]) |
                        (static_cast<unsigned char>(preamble[9]) << 8);
    } else {
        stream.read(preamble + kVersion1Preamble, kVersion2Preamble - kVersion1Preamble);
        if (stream.gcount() < kVersion2Preamble - kVersion1Preamble) {
            fail(ExitCode::kInvalidInput, ".npy file '{}' is truncated inside its header",
                 path.string());
        }
        header_length = read_little_endian_u32(preamble + 8);
        preamble_size = kVersion2Preamble;
    }

    std::string text(static_cast<size_t>(header_length), '\0');
    stream.read(text.data(), header_length);
    if (stream.gcount() < header_length) {
        fail(ExitCode::kInvalidInput, ".npy file '{}' is truncated inside its header",
             path.string());
    }

    NpyHeader header = parse_npy_header_dict(text, path);
    header.major_version = major;
    header.data_offset = preamble_size + header_length;
    return header;
}

// Product of the dimensions in `shape` from index `first` on, failing when it exceeds
// kMaxElements.
int64_t checked_element_count(const std::vector<int64_t>& shape, size_t first,
                              const fs::path& path) {
    int64_t count = 1;
    for (size_t d = first; d < shape.size(); ++d) {
        if (shape[d] != 0 && count > kMaxElements / shape[d]) {
            fail(ExitCode::kInvalidInput,
                 ".npy file '{}' declares shape {}, more than 2^48 elements; the header is "
                 "corrupt",
                 path.string(), shape_text(shape));
        }
        count *= shape[d];
    }
    return count;
}

}  // namespace

std::string npy_element_type_name(NpyElementType type) {
    switch (type) {
        case NpyElementType::kFloat32:
            return "float32";
        case NpyElementType::kUint8:
            return "uint8";
    }
    return "?";
}

NpyHeader parse_npy_header_dict(const std::string& text, const fs::path& path) {
    return HeaderDictParser(text, path).parse();
}

NpyFile::NpyFile(const fs::path& path) : path_(path) {
    std::error_code error;
    if (!fs::is_regular_file(path, error)) {
        fail(ExitCode::kIo, ".npy file '{}' not found or not a regular file", path.string());
    }
    stream_.open(path, std::ios::binary);
    if (!stream_) {
        fail(ExitCode::kIo, "cannot open .npy file '{}'", path.string());
    }

    header_ = read_header(stream_, path);
    if (header_.shape.empty()) {
        fail(ExitCode::kInvalidInput,
             ".npy file '{}' contains a scalar (shape ()); calibration arrays need a leading "
             "sample dimension",
             path.string());
    }

    const int64_t element_count = checked_element_count(header_.shape, 0, path);
    row_elements_ = checked_element_count(header_.shape, 1, path);
    const int64_t expected_data_size = element_count * item_size(header_.element_type);
    const auto file_size = static_cast<int64_t>(fs::file_size(path));
    const int64_t data_size = file_size - header_.data_offset;
    if (data_size != expected_data_size) {
        fail(ExitCode::kInvalidInput,
             ".npy file '{}' contains {} data bytes but its header declares shape {} of {} "
             "({} bytes); the file is {}",
             path.string(), data_size, shape_text(header_.shape),
             npy_element_type_name(header_.element_type), expected_data_size,
             data_size < expected_data_size ? "truncated" : "followed by extra bytes");
    }
}

void NpyFile::read_rows(int64_t first, int64_t count, std::vector<float>& values) {
    assert(first >= 0);
    assert(count >= 0);
    assert(first + count <= row_count());
    const int64_t element_size = item_size(header_.element_type);
    const int64_t element_count = count * row_elements_;
    raw_.resize(static_cast<size_t>(element_count * element_size));

    stream_.clear();
    stream_.seekg(header_.data_offset + first * row_elements_ * element_size);
    stream_.read(raw_.data(), static_cast<std::streamsize>(raw_.size()));
    if (!stream_) {
        fail(ExitCode::kIo,
             "reading rows {} to {} of .npy file '{}' failed; the file was changed or removed "
             "during the run",
             first, first + count - 1, path_.string());
    }

    values.resize(static_cast<size_t>(element_count));
    if (header_.element_type == NpyElementType::kUint8) {
        for (size_t i = 0; i < values.size(); ++i) {
            values[i] = static_cast<unsigned char>(raw_[i]);
        }
        return;
    }
    // '<f4' is little-endian whatever the host, so the bits are assembled byte by byte.
    for (size_t i = 0; i < values.size(); ++i) {
        values[i] = std::bit_cast<float>(read_little_endian_u32(raw_.data() + 4 * i));
    }
}

}  // namespace edgeq
