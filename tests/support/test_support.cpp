#include "support/test_support.h"

#include <png.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include <gtest/gtest.h>

namespace edgeq::test {
namespace fs = std::filesystem;

ScratchFolder::ScratchFolder(const std::string& label) {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("edgeq-test-" + label + "-" + std::to_string(::getpid()) +
                                         "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
}

ScratchFolder::~ScratchFolder() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
}

fs::path fashion_mnist_folder() {
    if (const char* configured = std::getenv("EDGEQ_DATA")) {
        return configured;
    }
    const fs::path debian = "/usr/share/datasets/fashion-mnist";
    return fs::exists(debian / "t10k-images-idx3-ubyte.gz") ? debian : fs::path{};
}

std::vector<uint8_t> make_idx_bytes(uint32_t magic, const std::vector<uint32_t>& dimensions,
                                    const std::vector<uint8_t>& data) {
    std::vector<uint8_t> bytes;
    auto put_u32 = [&](uint32_t value) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            bytes.push_back(static_cast<uint8_t>(value >> shift));
        }
    };
    put_u32(magic);
    for (const uint32_t size : dimensions) {
        put_u32(size);
    }
    bytes.insert(bytes.end(), data.begin(), data.end());
    return bytes;
}

bool write_gzip_file(const fs::path& path, const std::vector<uint8_t>& bytes) {
    gzFile file = gzopen(path.c_str(), "wb");
    if (file == nullptr) {
        return false;
    }
    const int written = gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
    return gzclose(file) == Z_OK && written == static_cast<int>(bytes.size());
}

fs::path source_dir() {
    return EDGEQ_SOURCE_DIR;
}
fs::path cli_path() {
    return EDGEQ_CLI_PATH;
}

namespace {

CommandResult capture(const std::string& shell_command) {
    CommandResult result;
    FILE* pipe = ::popen(shell_command.c_str(), "r");
    if (pipe == nullptr) {
        return result;
    }
    std::array<char, 4096> buffer{};
    size_t read = 0;
    while ((read = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
        result.output.append(buffer.data(), read);
    }
    const int status = ::pclose(pipe);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

}  // namespace

CommandResult run_command(const std::string& command) {
    return capture("{ " + command + "; } 2>&1");
}

CommandResult run_command_stderr(const std::string& command) {
    return capture("{ " + command + "; } 2>&1 >/dev/null");
}

std::string python_with_module(const std::string& module) {
    for (const std::string python : {"python3", "/usr/bin/python3"}) {
        if (run_command(python + " -c 'import " + module + "'").exit_code == 0) {
            return python;
        }
    }
    return {};
}

void expect_clean_failure(const std::string& command, int exit_code, const fs::path& output,
                          const std::string& must_mention) {
    const CommandResult result = run_command_stderr(command);
    EXPECT_EQ(result.exit_code, exit_code) << command << "\n" << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1)
        << "not one line: " << result.output;
    EXPECT_NE(result.output.find(must_mention), std::string::npos) << result.output;
    EXPECT_FALSE(fs::exists(output)) << "partial output left: " << output;
}

DecodedPng decode_png(const fs::path& path) {
    DecodedPng decoded;
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    if (png_image_begin_read_from_file(&image, path.string().c_str()) == 0) {
        decoded.error = image.message;
        return decoded;
    }
    image.format = PNG_FORMAT_RGB;
    decoded.rgb.resize(PNG_IMAGE_SIZE(image));
    if (png_image_finish_read(&image, nullptr, decoded.rgb.data(), 0, nullptr) == 0) {
        decoded.error = image.message;
        png_image_free(&image);
        return decoded;
    }
    decoded.width = image.width;
    decoded.height = image.height;
    return decoded;
}

double ink_share(const DecodedPng& png) {
    size_t ink = 0;
    for (size_t i = 0; i + 2 < png.rgb.size(); i += 3) {
        ink += png.rgb[i] < 250 || png.rgb[i + 1] < 250 || png.rgb[i + 2] < 250 ? 1 : 0;
    }
    return static_cast<double>(ink) / static_cast<double>(png.rgb.size() / 3);
}

}  // namespace edgeq::test
