// Helpers shared by the tests: scratch folders, the real data set, and running the CLI.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace edgeq::test {

// A fresh, empty folder under the system temporary folder, removed when the object goes away.
class ScratchFolder {
  public:
    explicit ScratchFolder(const std::string& label);
    ~ScratchFolder();
    ScratchFolder(const ScratchFolder&) = delete;
    ScratchFolder& operator=(const ScratchFolder&) = delete;

    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  private:
    std::filesystem::path path_;
};

// Folder of the real Fashion-MNIST (EDGEQ_DATA or Debian's dataset-fashion-mnist), or empty
// when it is not installed.
std::filesystem::path fashion_mnist_folder();

// The repository root and the edgeq executable under test.
std::filesystem::path source_dir();
std::filesystem::path cli_path();

struct CommandResult {
    int exit_code = -1;
    std::string output;  // stdout and stderr together
};

// The bytes of an IDX file: big-endian magic number and dimensions, then `data`.
std::vector<uint8_t> make_idx_bytes(uint32_t magic, const std::vector<uint32_t>& dimensions,
                                    const std::vector<uint8_t>& data);

// Writes `bytes` gzip-compressed to `path`; returns false when zlib fails.
bool write_gzip_file(const std::filesystem::path& path, const std::vector<uint8_t>& bytes);

// Runs a shell command and captures its output (stdout and stderr together).
CommandResult run_command(const std::string& command);

// Runs a shell command, discards its stdout and captures its stderr only.
CommandResult run_command_stderr(const std::string& command);

// Runs a command that must fail cleanly: exactly one line on stderr that contains
// `must_mention`, the exit code `exit_code`, and no file left at `output`. Reports through
// GoogleTest's EXPECT macros.
void expect_clean_failure(const std::string& command, int exit_code,
                          const std::filesystem::path& output, const std::string& must_mention);

// A PNG file decoded to 8-bit RGB.
struct DecodedPng {
    uint32_t width = 0;
    uint32_t height = 0;
    std::vector<uint8_t> rgb;  // [height, width, 3]
    std::string error;         // empty when the file decoded
};

// Decodes the PNG file at `path` with libpng; `error` has libpng's message when that fails.
DecodedPng decode_png(const std::filesystem::path& path);

// Returns the share of pixels that are not white (any channel below 250), 0 for no pixels.
double ink_share(const DecodedPng& png);

// A python3 command that can import `module`: python3 on PATH, else Debian's /usr/bin/python3
// (which a pyenv or virtualenv python3 earlier on PATH hides), else empty.
std::string python_with_module(const std::string& module);

}  // namespace edgeq::test
