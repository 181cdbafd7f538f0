// Console logging for the CLI and the tests: plain lines, info on stdout, warnings and errors
// on stderr, so that `edgeq run > log.txt` still shows problems on the terminal. In JSON mode
// every line goes to stderr, because stdout carries the command's JSON summary alone.
#pragma once

#include <optional>
#include <string_view>

#include <spdlog/common.h>

namespace edgeq {

struct ConsoleLogOptions {
    // Lines below this level are dropped. debug adds ONNX Runtime's own log.
    spdlog::level::level_enum level = spdlog::level::info;
    // Info and lower lines, and progress output, go to stderr instead of stdout.
    bool json = false;
};

// Installs the console logger as spdlog's default and points progress output at the stream of
// the info lines. Progress output is on while info lines are shown (level info or lower).
void setup_console_logging(const ConsoleLogOptions& options);

// The same with the level chosen by --quiet (warnings and errors only) and --verbose (debug
// lines); `quiet` wins over `verbose`.
void setup_console_logging(bool quiet, bool verbose = false);

// The level of a --log-level name: trace, debug, info, warn or error; nullopt for anything else.
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);

}  // namespace edgeq
