#include "edgeq/common/files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "edgeq/common/error.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

// A name beside the target, unique per process, so two runs never share a temporary file.
fs::path temporary_path_for(const fs::path& path) {
    return path.parent_path() / fmt::format(".{}.tmp.{}", path.filename().string(), ::getpid());
}

}  // namespace

std::string read_file(const fs::path& path) {
    std::ifstream stream(path, std::ios::binary);
    if (!stream) {
        fail(ExitCode::kIo, "cannot open '{}': {}; check the path", path.string(),
             std::strerror(errno));
    }
    std::ostringstream contents;
    contents << stream.rdbuf();
    if (stream.bad()) {
        fail(ExitCode::kIo, "reading '{}' failed", path.string());
    }
    return std::move(contents).str();
}

void write_via_temporary(const fs::path& path,
                         const std::function<void(const fs::path&)>& write_to) {
    const fs::path temporary = temporary_path_for(path);
    try {
        write_to(temporary);
        std::error_code error;
        fs::rename(temporary, path, error);
        if (error) {
            fail(ExitCode::kIo, "cannot move '{}' into place as '{}': {}", temporary.string(),
                 path.string(), error.message());
        }
    } catch (...) {
        std::error_code ignored;
        fs::remove(temporary, ignored);
        throw;
    }
}

void write_file_atomic(const fs::path& path, std::string_view contents) {
    write_via_temporary(path, [&](const fs::path& temporary) {
        std::ofstream stream(temporary, std::ios::binary | std::ios::trunc);
        if (!stream) {
            fail(ExitCode::kIo, "cannot create '{}': {}; check that the folder is writable",
                 temporary.string(), std::strerror(errno));
        }
        stream.write(contents.data(), static_cast<std::streamsize>(contents.size()));
        stream.close();
        if (!stream) {
            fail(ExitCode::kIo, "writing '{}' failed (disk full?)", temporary.string());
        }
    });
}

void check_output_file(const fs::path& path, std::string_view option) {
    if (path.empty() || !path.has_filename()) {
        fail(ExitCode::kIo, "output path '{}' does not name a file; give a file name with {}",
             path.string(), option);
    }
    if (fs::is_directory(path)) {
        fail(ExitCode::kIo, "output path '{}' is a folder; give a file name with {}", path.string(),
             option);
    }
    ensure_writable_folder(path.has_parent_path() ? path.parent_path() : fs::path("."), option);
}

void ensure_writable_folder(const fs::path& folder, std::string_view option) {
    std::error_code error;
    fs::create_directories(folder, error);
    if (error) {
        fail(ExitCode::kIo, "cannot create output folder '{}': {}; choose another with {}",
             folder.string(), error.message(), option);
    }
    if (!fs::is_directory(folder)) {
        fail(ExitCode::kIo, "output path '{}' is not a folder; choose another with {}",
             folder.string(), option);
    }
    // Probe with a real file: permission bits alone do not tell, because root ignores them.
    const fs::path probe = temporary_path_for(folder / "write-probe");
    {
        std::ofstream stream(probe);
        if (!stream) {
            fail(ExitCode::kIo, "output folder '{}' is not writable; choose another with {}",
                 folder.string(), option);
        }
    }
    fs::remove(probe, error);
}

}  // namespace edgeq
