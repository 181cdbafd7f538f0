// File helpers that keep outputs whole: each output file is written to a temporary file in the
// target folder and renamed into place, so an error never leaves a half-written file behind.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace edgeq {

// Reads a whole file. Throws Error(kIo) naming the path when it is missing or unreadable.
std::string read_file(const std::filesystem::path& path);

// Writes `contents` to `path` atomically (temporary file, then rename).
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

// Calls `write_to(temporary_path)` and renames the result to `path`. The temporary file is removed
// when `write_to` throws. For writers that only take a path (libtorch's archives).
void write_via_temporary(const std::filesystem::path& path,
                         const std::function<void(const std::filesystem::path&)>& write_to);

// Checks that `path` names a file that can be written: a file name (not a folder, not empty) in
// a folder that exists or can be created and is writable. Throws Error(kIo) with a hint naming
// `option`.
void check_output_file(const std::filesystem::path& path, std::string_view option);

// Creates `folder` when missing and checks that a file can be created in it. Throws Error(kIo)
// with a hint naming `option` (for example "--out") when it cannot.
void ensure_writable_folder(const std::filesystem::path& folder, std::string_view option);

}  // namespace edgeq
