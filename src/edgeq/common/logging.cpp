#include "edgeq/common/logging.h"

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <utility>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "edgeq/common/progress.h"

namespace edgeq {

namespace {

// Writes each message to stdout or stderr by level (every message to stderr in JSON mode). A
// progress bar on screen is erased first, and redraws itself on its next update.
class SplitConsoleSink : public spdlog::sinks::base_sink<std::mutex> {
  public:
    explicit SplitConsoleSink(bool all_to_stderr) : all_to_stderr_(all_to_stderr) {}

  protected:
    void sink_it_(const spdlog::details::log_msg& message) override {
        spdlog::memory_buf_t formatted;
        formatter_->format(message, formatted);
        clear_progress_line();
        FILE* stream = all_to_stderr_ || message.level >= spdlog::level::warn ? stderr : stdout;
        std::fwrite(formatted.data(), 1, formatted.size(), stream);
        std::fflush(stream);
    }
    void flush_() override {
        std::fflush(stdout);
        std::fflush(stderr);
    }

  private:
    bool all_to_stderr_;
};

}  // namespace

void setup_console_logging(const ConsoleLogOptions& options) {
    auto logger =
        std::make_shared<spdlog::logger>("edgeq", std::make_shared<SplitConsoleSink>(options.json));
    logger->set_pattern("%v");
    logger->set_level(options.level);
    spdlog::set_default_logger(logger);
    set_progress_console(options.json ? STDERR_FILENO : STDOUT_FILENO,
                         options.level <= spdlog::level::info);
}

void setup_console_logging(bool quiet, bool verbose) {
    ConsoleLogOptions options;
    options.level = quiet     ? spdlog::level::warn
                    : verbose ? spdlog::level::debug
                              : spdlog::level::info;
    setup_console_logging(options);
}

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) {
    constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
        {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
        {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
        {"error", spdlog::level::err},
    };
    for (const auto& [level_name, level] : kLevels) {
        if (name == level_name) {
            return level;
        }
    }
    return std::nullopt;
}

}  // namespace edgeq
