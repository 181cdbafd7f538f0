// Console logging for the CLI and the tests: plain lines, info on stdout, warnings and errors
// on stderr, so that `edgeq run > log.txt` still shows problems on the terminal.
#pragma once

namespace edgeq {

// Installs the console logger as spdlog's default. `quiet` keeps warnings and errors only.
void setup_console_logging(bool quiet);

}  // namespace edgeq
