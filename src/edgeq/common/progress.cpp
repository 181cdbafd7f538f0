#include "edgeq/common/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string_view>

#include <fmt/format.h>

namespace edgeq {

namespace {

// "\r" returns to the start of the line and "ESC[K" erases from the cursor to the line's end.
constexpr std::string_view kEraseLine = "\r\x1b[K";

// Bounds of the bar itself, in characters, inside the terminal line.
constexpr int kMinBarWidth = 5;
constexpr int kMaxBarWidth = 30;
// Room kept for the counters beside the bar: "4000/10000  40% 1.2 s<1.8 s, 3300 images/s" is 42
// characters long.
constexpr size_t kCounterReserve = 44;

// The console and the bar now on screen, shared by every reporter and the log sink.
struct ConsoleState {
    std::mutex mutex;
    int file_descriptor = STDOUT_FILENO;
    bool enabled = false;
    std::ostream* drawn_stream = nullptr;  // the stream of the bar on screen; null: none drawn
    const Progress* drawn_owner = nullptr;
};

ConsoleState& console_state() {
    static ConsoleState state;
    return state;
}

// Erases the bar on screen. The caller holds the console mutex.
void erase_drawn_bar(ConsoleState& state) {
    if (state.drawn_stream != nullptr) {
        *state.drawn_stream << kEraseLine;
        state.drawn_stream->flush();
        state.drawn_stream = nullptr;
        state.drawn_owner = nullptr;
    }
}

int read_terminal_width(int file_descriptor) {
    winsize size{};
    if (::ioctl(file_descriptor, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) {
        return size.ws_col;
    }
    return kDefaultTerminalWidth;
}

std::string format_rate(double per_second) {
    if (per_second >= 100) {
        return fmt::format("{:.0f}", per_second);
    }
    return per_second >= 10 ? fmt::format("{:.1f}", per_second) : fmt::format("{:.2f}", per_second);
}

}  // namespace

std::string format_duration(double seconds) {
    if (!(seconds >= 0)) {
        return "?";
    }
    if (seconds < 10) {
        return fmt::format("{:.1f} s", seconds);
    }
    const auto whole = static_cast<int64_t>(seconds + 0.5);
    if (whole < 60) {
        return fmt::format("{} s", whole);
    }
    if (whole < 3600) {
        return fmt::format("{} min {:02} s", whole / 60, whole % 60);
    }
    return fmt::format("{} h {:02} min", whole / 3600, whole % 3600 / 60);
}

bool is_control_terminal(int file_descriptor) {
    if (::isatty(file_descriptor) == 0) {
        return false;
    }
    const char* term = std::getenv("TERM");
    return term != nullptr && *term != '\0' && std::string_view(term) != "dumb";
}

void set_progress_console(int file_descriptor, bool enabled) {
    assert(file_descriptor == STDOUT_FILENO || file_descriptor == STDERR_FILENO);
    ConsoleState& state = console_state();
    const std::lock_guard lock(state.mutex);
    erase_drawn_bar(state);
    state.file_descriptor = file_descriptor;
    state.enabled = enabled;
}

ProgressOutput console_progress_output() {
    ConsoleState& state = console_state();
    int file_descriptor = STDOUT_FILENO;
    bool enabled = false;
    {
        const std::lock_guard lock(state.mutex);
        file_descriptor = state.file_descriptor;
        enabled = state.enabled;
    }
    ProgressOutput output;
    if (!enabled) {
        return output;
    }
    output.stream = file_descriptor == STDERR_FILENO ? &std::cerr : &std::cout;
    if (is_control_terminal(file_descriptor)) {
        output.mode = ProgressMode::kTerminal;
        output.terminal_width = read_terminal_width(file_descriptor);
    } else {
        output.mode = ProgressMode::kPlain;
    }
    return output;
}

void clear_progress_line() {
    ConsoleState& state = console_state();
    const std::lock_guard lock(state.mutex);
    erase_drawn_bar(state);
}

// --- Progress ----------------------------------------------------------------------------------

Progress::Progress(std::string label, int64_t total, std::string unit, ProgressOutput output)
    : unit_(std::move(unit)), output_(std::move(output)) {
    if (output_.stream == nullptr) {
        output_.mode = ProgressMode::kOff;
    }
    restart(std::move(label), total);
}

Progress::~Progress() {
    ConsoleState& state = console_state();
    const std::lock_guard lock(state.mutex);
    if (state.drawn_owner == this) {
        erase_drawn_bar(state);
    }
}

void Progress::restart(std::string label, int64_t total) {
    finish();
    label_ = std::move(label);
    total_ = std::max<int64_t>(total, 0);
    postfix_.clear();
    done_ = 0;
    start_ = now();
    last_draw_ = start_;
    next_plain_line_ = start_ + kPlainPeriod;
    finished_ = false;
    if (output_.mode == ProgressMode::kTerminal) {
        draw_bar(start_);  // the label shows at once, even when the first unit is slow
    }
}

std::function<void(int64_t, int64_t)> Progress::callback() {
    return [this](int64_t done, int64_t total) {
        if (total > 0) {
            total_ = total;  // some passes learn their total only when they start
        }
        update(done);
    };
}

void Progress::update(int64_t done) {
    if (finished_ || output_.mode == ProgressMode::kOff) {
        return;
    }
    done_ = done;
    const ProgressClock::time_point time = now();
    if (output_.mode == ProgressMode::kTerminal) {
        bool on_screen = false;
        {
            ConsoleState& state = console_state();
            const std::lock_guard lock(state.mutex);
            on_screen = state.drawn_owner == this;
        }
        // A bar that a log line erased is drawn again at once; one on screen waits for its turn.
        if (!on_screen || time - last_draw_ >= kRedrawInterval) {
            draw_bar(time);
        }
        return;
    }
    if (time >= next_plain_line_) {
        *output_.stream << label_ << ": " << counters(time) << '\n';
        output_.stream->flush();
        // One line per period, however long the gap between updates was.
        while (next_plain_line_ <= time) {
            next_plain_line_ += kPlainPeriod;
        }
    }
}

void Progress::set_postfix(std::string postfix) {
    postfix_ = std::move(postfix);
}

void Progress::finish() {
    if (finished_ || output_.mode == ProgressMode::kOff) {
        finished_ = true;
        return;
    }
    finished_ = true;
    const ProgressClock::time_point time = now();
    ConsoleState& state = console_state();
    const std::lock_guard lock(state.mutex);
    if (output_.mode == ProgressMode::kTerminal) {
        erase_drawn_bar(state);
    }
    if (!output_.summary) {
        return;
    }
    *output_.stream << summary(time) << '\n';
    output_.stream->flush();
}

ProgressClock::time_point Progress::now() const {
    return output_.clock ? output_.clock() : ProgressClock::now();
}

double Progress::elapsed_seconds(ProgressClock::time_point time) const {
    return std::chrono::duration<double>(time - start_).count();
}

// "4000/10000 images (40%), 1.2 s, 3300 images/s, ETA 1.8 s, loss 0.31"; without a total, the
// count, time and rate only.
std::string Progress::counters(ProgressClock::time_point time) const {
    const double elapsed = elapsed_seconds(time);
    std::string text;
    if (total_ > 0) {
        const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
        text = fmt::format("{}/{} {} ({:.0f}%), {}", done_, total_, unit_, 100.0 * fraction,
                           format_duration(elapsed));
    } else {
        text = fmt::format("{} {}, {}", done_, unit_, format_duration(elapsed));
    }
    if (done_ > 0 && elapsed > 0) {
        text += fmt::format(", {} {}/s", format_rate(static_cast<double>(done_) / elapsed), unit_);
        if (total_ > 0) {
            const double remaining =
                elapsed * static_cast<double>(total_ - done_) / static_cast<double>(done_);
            text += fmt::format(", ETA {}", format_duration(remaining));
        }
    }
    if (!postfix_.empty()) {
        text += ", " + postfix_;
    }
    return text;
}

// "evaluate int8: 10000 images in 2.1 s, 4800 images/s".
std::string Progress::summary(ProgressClock::time_point time) const {
    const double elapsed = elapsed_seconds(time);
    std::string text =
        fmt::format("{}: {} {} in {}", label_, done_, unit_, format_duration(elapsed));
    if (done_ > 0 && elapsed > 0) {
        text += fmt::format(", {} {}/s", format_rate(static_cast<double>(done_) / elapsed), unit_);
    }
    if (!postfix_.empty()) {
        text += ", " + postfix_;
    }
    return text;
}

// The counters of the terminal bar, short so that the bar fits an 80-column line:
// "4000/10000  40% 1.2 s<1.8 s, 3300 images/s, loss 0.31", with the time as elapsed<remaining.
std::string Progress::bar_counters(ProgressClock::time_point time) const {
    const double elapsed = elapsed_seconds(time);
    std::string text;
    if (total_ > 0) {
        const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
        text = fmt::format("{}/{} {:3.0f}% {}", done_, total_, 100.0 * fraction,
                           format_duration(elapsed));
    } else {
        text = fmt::format("{} {} {}", done_, unit_, format_duration(elapsed));
    }
    if (done_ > 0 && elapsed > 0) {
        if (total_ > 0) {
            const double remaining =
                elapsed * static_cast<double>(total_ - done_) / static_cast<double>(done_);
            text += "<" + format_duration(remaining);
        }
        text += fmt::format(", {} {}/s", format_rate(static_cast<double>(done_) / elapsed), unit_);
    }
    if (!postfix_.empty()) {
        text += ", " + postfix_;
    }
    return text;
}

// Draws "label [#####     ] counters" over the current line. The line is cut to one character
// less than the terminal width: a line that fills the width makes some terminals wrap, and "\r"
// then returns to the wrapped part only.
void Progress::draw_bar(ProgressClock::time_point time) {
    const std::string details = bar_counters(time);
    const int width = std::max(output_.terminal_width, 1) - 1;
    // The bar keeps its width while the counters grow, unless they outgrow kCounterReserve.
    constexpr int kBracketsWidth = 4;  // " [" and "] "
    const auto counters_width = static_cast<int>(std::max(details.size(), kCounterReserve));
    const int bar_width = std::min(
        kMaxBarWidth, width - static_cast<int>(label_.size()) - counters_width - kBracketsWidth);
    std::string line = label_;
    if (bar_width >= kMinBarWidth) {
        const double fraction =
            total_ > 0
                ? std::clamp(static_cast<double>(done_) / static_cast<double>(total_), 0.0, 1.0)
                : 0.0;
        const int filled = static_cast<int>(fraction * bar_width);
        line += " [" + std::string(filled, '#') + std::string(bar_width - filled, ' ') + "] ";
    } else {
        line += ": ";
    }
    line += details;
    if (static_cast<int>(line.size()) > width) {
        line.resize(static_cast<size_t>(width));
    }

    ConsoleState& state = console_state();
    const std::lock_guard lock(state.mutex);
    if (state.drawn_stream != nullptr && state.drawn_stream != output_.stream) {
        erase_drawn_bar(state);  // another reporter's bar on the other stream
    }
    *output_.stream << kEraseLine << line;
    output_.stream->flush();
    state.drawn_stream = output_.stream;
    state.drawn_owner = this;
    last_draw_ = time;
}

// --- StepProgress ------------------------------------------------------------------------------

void StepProgress::update(const std::string& step, int64_t done, int64_t total,
                          const std::string& unit) {
    if (current_ == nullptr || step != step_ || done < current_->done()) {
        finish();
        step_ = step;
        current_ = std::make_unique<Progress>(step, total, unit, output_);
    }
    current_->update(done);
}

void StepProgress::finish() {
    if (current_ != nullptr) {
        current_->finish();
        current_.reset();
    }
}

}  // namespace edgeq
