#include "edgeq/common/logging.h"

#include <cstdio>
#include <memory>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

namespace edgeq {

namespace {

// Writes each message to stdout or stderr by level.
class SplitConsoleSink : public spdlog::sinks::base_sink<std::mutex> {
  protected:
    void sink_it_(const spdlog::details::log_msg& message) override {
        spdlog::memory_buf_t formatted;
        formatter_->format(message, formatted);
        FILE* stream = message.level >= spdlog::level::warn ? stderr : stdout;
        std::fwrite(formatted.data(), 1, formatted.size(), stream);
        std::fflush(stream);
    }
    void flush_() override {
        std::fflush(stdout);
        std::fflush(stderr);
    }
};

}  // namespace

void setup_console_logging(bool quiet, bool verbose) {
    auto logger = std::make_shared<spdlog::logger>("edgeq", std::make_shared<SplitConsoleSink>());
    logger->set_pattern("%v");
    logger->set_level(quiet     ? spdlog::level::warn
                      : verbose ? spdlog::level::debug
                                : spdlog::level::info);
    spdlog::set_default_logger(logger);
}

}  // namespace edgeq
