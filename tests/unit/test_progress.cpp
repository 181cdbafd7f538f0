// Progress output with a fake clock: plain lines at the period and at the end with no control
// characters, a throttled terminal bar redrawn in place, nothing when off, and the log sink's
// erase.

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include <unistd.h>

#include <spdlog/spdlog.h>

#include "edgeq/common/logging.h"
#include "edgeq/common/progress.h"

namespace edgeq {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kErase = "\r\x1b[K";

// A clock that moves only when the test advances it.
struct FakeClock {
    ProgressClock::time_point now{};
    std::function<ProgressClock::time_point()> function() {
        return [this] { return now; };
    }
};

ProgressOutput make_output(ProgressMode mode, std::ostream& stream, FakeClock& clock) {
    ProgressOutput output;
    output.mode = mode;
    output.stream = &stream;
    output.clock = clock.function();
    return output;
}

int count_of(const std::string& text, std::string_view piece) {
    int count = 0;
    for (size_t at = text.find(piece); at != std::string::npos;
         at = text.find(piece, at + piece.size())) {
        ++count;
    }
    return count;
}

bool has_control_characters(const std::string& text) {
    return std::any_of(text.begin(), text.end(), [](char c) {
        const auto byte = static_cast<unsigned char>(c);
        return (byte < 0x20 && c != '\n') || byte == 0x7f;
    });
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream stream(text);
    for (std::string line; std::getline(stream, line);) {
        lines.push_back(line);
    }
    return lines;
}

// --- plain mode --------------------------------------------------------------------------------

TEST(Progress, PlainWritesAtPeriodAndEnd) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("evaluate int8", 3500, "images",
                      make_output(ProgressMode::kPlain, stream, clock));
    // One update per simulated second for 35 s: lines at 10, 20 and 30 s, then the summary.
    for (int second = 1; second <= 35; ++second) {
        clock.now += 1s;
        progress.update(100 * second);
    }
    progress.finish();

    const std::string text = stream.str();
    EXPECT_FALSE(has_control_characters(text)) << text;
    const std::vector<std::string> lines = lines_of(text);
    const int periods = static_cast<int>(35s / kPlainPeriod);
    ASSERT_EQ(static_cast<int>(lines.size()), periods + 1) << text;
    EXPECT_EQ(lines[0].rfind("evaluate int8: 1000/3500 images (29%)", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find("ETA"), std::string::npos) << lines[0];
    EXPECT_EQ(lines.back().rfind("evaluate int8: 3500 images in 35 s, 100 images/s", 0), 0u)
        << lines.back();
    EXPECT_EQ(text.back(), '\n');
}

TEST(Progress, PlainSilentBeforePeriod) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("calibration", 10, "samples",
                      make_output(ProgressMode::kPlain, stream, clock));
    for (int step = 1; step <= 9; ++step) {
        clock.now = ProgressClock::time_point{} + kPlainPeriod * step / 10;
        progress.update(step);
    }
    EXPECT_EQ(stream.str(), "");
}

TEST(Progress, PlainLongGapWritesOneLine) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("sweep", 4, "configurations",
                      make_output(ProgressMode::kPlain, stream, clock));
    clock.now += kPlainPeriod * 3 + 1s;
    progress.update(1);
    EXPECT_EQ(lines_of(stream.str()).size(), 1u) << stream.str();
    // The next line comes at the next period boundary (40 s), before a whole period has passed
    // since the line at 31 s.
    clock.now += kPlainPeriod - 1s;
    progress.update(2);
    EXPECT_EQ(lines_of(stream.str()).size(), 2u) << stream.str();
}

TEST(Progress, PlainUnknownTotalHasNoPercent) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("adaround layers", 0, "layers",
                      make_output(ProgressMode::kPlain, stream, clock));
    clock.now += kPlainPeriod;
    progress.update(3);
    const std::string text = stream.str();
    EXPECT_EQ(text.rfind("adaround layers: 3 layers, ", 0), 0u) << text;
    EXPECT_EQ(text.find('%'), std::string::npos) << text;
    EXPECT_EQ(text.find("ETA"), std::string::npos) << text;
}

TEST(Progress, SummaryOffWritesNothingPlain) {
    FakeClock clock;
    std::ostringstream stream;
    ProgressOutput output = make_output(ProgressMode::kPlain, stream, clock);
    output.summary = false;
    Progress progress("epoch 1/3", 100, "images", output);
    clock.now += 1s;
    progress.update(100);
    progress.finish();
    EXPECT_EQ(stream.str(), "");
}

TEST(Progress, PostfixShownInLines) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("epoch 2/5", 1000, "images",
                      make_output(ProgressMode::kPlain, stream, clock));
    progress.set_postfix("loss 0.4321");
    clock.now += kPlainPeriod;
    progress.update(500);
    progress.finish();
    for (const std::string& line : lines_of(stream.str())) {
        EXPECT_NE(line.find("loss 0.4321"), std::string::npos) << line;
    }
}

// --- terminal mode -----------------------------------------------------------------------------

TEST(Progress, TerminalRedrawsInPlace) {
    FakeClock clock;
    std::ostringstream stream;
    {
        Progress progress("evaluate fp32", 1000, "images",
                          make_output(ProgressMode::kTerminal, stream, clock));
        EXPECT_EQ(stream.str().rfind(kErase, 0), 0u) << "the bar is drawn at once";
        progress.update(500);
        progress.finish();
    }
    const std::string text = stream.str();
    EXPECT_GE(count_of(text, kErase), 2) << text;
    EXPECT_NE(text.find("evaluate fp32 ["), std::string::npos) << text;
    EXPECT_EQ(count_of(text, "\n"), 1) << "only the summary line ends with a newline: " << text;
    EXPECT_EQ(text.back(), '\n');
    // After the last erase comes the plain summary line.
    const std::string last = text.substr(text.rfind(kErase) + kErase.size());
    EXPECT_EQ(last.rfind("evaluate fp32: 500 images in", 0), 0u) << last;
}

TEST(Progress, TerminalThrottlesRedraws) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("calibration", 1000, "samples",
                      make_output(ProgressMode::kTerminal, stream, clock));
    // 1000 updates, 1 ms apart: one second of work.
    constexpr auto kStep = 1ms;
    constexpr int kUpdates = 1000;
    for (int i = 1; i <= kUpdates; ++i) {
        clock.now += kStep;
        progress.update(i);
    }
    const int draws = count_of(stream.str(), kErase);
    const int allowed = static_cast<int>(kStep * kUpdates / kRedrawInterval);
    // The first draw at the start, then one per redraw interval.
    EXPECT_LE(draws, 1 + allowed);
    EXPECT_GE(draws, allowed);
}

TEST(Progress, TerminalLineFitsWidth) {
    FakeClock clock;
    std::ostringstream stream;
    ProgressOutput output = make_output(ProgressMode::kTerminal, stream, clock);
    constexpr int kWidth = 40;
    output.terminal_width = kWidth;
    Progress progress("a rather long label for a narrow terminal", 100000, "images", output);
    progress.set_postfix("loss 1.2345");
    clock.now += 1s;
    progress.update(12345);
    const std::string text = stream.str();
    for (size_t at = text.find(kErase); at != std::string::npos; at = text.find(kErase, at + 1)) {
        const size_t start = at + kErase.size();
        const size_t end = std::min(text.find('\r', start), text.size());
        EXPECT_LT(static_cast<int>(end - start), kWidth) << text.substr(start, end - start);
    }
}

TEST(Progress, ClearedBarRedrawsOnNextUpdate) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("evaluate int8", 100, "images",
                      make_output(ProgressMode::kTerminal, stream, clock));
    clear_progress_line();
    const int before = count_of(stream.str(), kErase);
    EXPECT_EQ(before, 2) << "drawn once, then erased: " << stream.str();
    // Within the redraw interval, but the bar is off screen, so it comes back at once.
    clock.now += kRedrawInterval / 10;
    progress.update(10);
    EXPECT_EQ(count_of(stream.str(), kErase), before + 1) << stream.str();
    clear_progress_line();
    clear_progress_line();
    EXPECT_EQ(count_of(stream.str(), kErase), before + 2) << "a second clear writes nothing";
}

TEST(Progress, DestructorErasesUnfinishedBar) {
    FakeClock clock;
    std::ostringstream stream;
    {
        Progress progress("evaluate int8", 100, "images",
                          make_output(ProgressMode::kTerminal, stream, clock));
        progress.update(10);
    }
    const std::string text = stream.str();
    EXPECT_EQ(text.substr(text.size() - kErase.size()), kErase) << text;
    EXPECT_EQ(text.find('\n'), std::string::npos) << text;
}

// --- off -----------------------------------------------------------------------------------------

TEST(Progress, OffWritesNothing) {
    FakeClock clock;
    std::ostringstream stream;
    Progress progress("evaluate int8", 100, "images",
                      make_output(ProgressMode::kOff, stream, clock));
    for (int i = 1; i <= 100; ++i) {
        clock.now += 1s;
        progress.update(i);
    }
    progress.finish();
    EXPECT_EQ(stream.str(), "");
}

TEST(Progress, QuietConsoleIsOff) {
    const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
    setup_console_logging(/*quiet=*/true);
    EXPECT_EQ(console_progress_output().mode, ProgressMode::kOff);
    ConsoleLogOptions options;
    options.level = spdlog::level::warn;
    setup_console_logging(options);
    EXPECT_EQ(console_progress_output().mode, ProgressMode::kOff);
    options.level = spdlog::level::info;
    setup_console_logging(options);
    EXPECT_NE(console_progress_output().mode, ProgressMode::kOff);

    // The other tests keep the logger they had, and no console progress.
    spdlog::set_default_logger(previous);
    set_progress_console(STDOUT_FILENO, false);
}

// --- steps, durations and log levels -----------------------------------------------------------

TEST(StepProgress, NewStepOrRestartStartsLine) {
    FakeClock clock;
    std::ostringstream stream;
    {
        StepProgress steps(make_output(ProgressMode::kPlain, stream, clock));
        steps.update("calibration", 50, 100, "samples");
        steps.update("calibration", 100, 100, "samples");
        steps.update("calibration", 100, 100, "samples");
        steps.update("calibration", 50, 100, "samples");  // mixed precision calibrates again
        steps.update("adaround layers", 1, 0, "layers");
        steps.finish();
    }
    const std::vector<std::string> lines = lines_of(stream.str());
    ASSERT_EQ(lines.size(), 3u) << stream.str();
    EXPECT_EQ(lines[0].rfind("calibration: 100 samples in", 0), 0u) << lines[0];
    EXPECT_EQ(lines[1].rfind("calibration: 50 samples in", 0), 0u) << lines[1];
    EXPECT_EQ(lines[2].rfind("adaround layers: 1 layers in", 0), 0u) << lines[2];
}

TEST(FormatDuration, Ranges) {
    EXPECT_EQ(format_duration(0.44), "0.4 s");
    EXPECT_EQ(format_duration(12.4), "12 s");
    EXPECT_EQ(format_duration(185), "3 min 05 s");
    EXPECT_EQ(format_duration(3720), "1 h 02 min");
    EXPECT_EQ(format_duration(-1), "?");
}

TEST(ParseLogLevel, NamesAndRejects) {
    EXPECT_EQ(parse_log_level("trace"), spdlog::level::trace);
    EXPECT_EQ(parse_log_level("debug"), spdlog::level::debug);
    EXPECT_EQ(parse_log_level("info"), spdlog::level::info);
    EXPECT_EQ(parse_log_level("warn"), spdlog::level::warn);
    EXPECT_EQ(parse_log_level("error"), spdlog::level::err);
    EXPECT_FALSE(parse_log_level("err").has_value());
    EXPECT_FALSE(parse_log_level("INFO").has_value());
}

}  // namespace
}  // namespace edgeq
