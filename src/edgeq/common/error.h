// Error type of the edgeq library and the process exit codes the CLI maps it to.
//
// Every error the user can cause (bad data, a bad model file, an unwritable folder) is thrown as
// edgeq::Error with a one-line message that names the file or node, what is wrong and how to fix
// it. Broken invariants of our own are asserts, not Errors.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace edgeq {

// Process exit codes of the `edgeq` CLI, documented in README.md.
enum class ExitCode : int {
    kSuccess = 0,
    kInternal = 1,      // a bug in edgeq or an unexpected failure of a library it calls
    kUsage = 2,         // invalid command line
    kInvalidInput = 3,  // corrupt, truncated or inconsistent data, model or checkpoint file
    kIo = 4,            // missing path, unwritable output folder, failed write
    kUnsupported = 5,   // valid input that edgeq cannot handle (an operator, an execution provider)
};

class Error : public std::runtime_error {
  public:
    Error(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ExitCode code() const { return code_; }

  private:
    ExitCode code_;
};

// Throws an Error with a fmt-formatted one-line message.
template <typename... Args>
[[noreturn]] void fail(ExitCode code, fmt::format_string<Args...> format, Args&&... args) {
    throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace edgeq
