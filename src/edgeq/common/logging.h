// Console logging for the CLI and the tests: plain lines, info on stdout, warnings and errors
// on stderr, so that `edgeq run > log.txt` still shows problems on the terminal.
#pragma once

namespace edgeq {

// Installs the console logger as spdlog's default. `quiet` keeps warnings and errors only;
// `verbose` adds debug lines (ONNX Runtime's own log among them). `quiet` wins over `verbose`.
void setup_console_logging(bool quiet, bool verbose = false);

}  // namespace edgeq
