// Progress of long work (training, calibration, evaluation) on the console.
//
// Three modes:
// - terminal: one bar line redrawn in place with "\r" and "ESC[K" (erase to the end of the line),
//   at most every kRedrawInterval. It shows done/total, percent, elapsed time, rate and ETA. When
//   the work ends, one plain summary line replaces the bar.
// - plain (pipes, files, CI): no control characters at all; one line every kPlainPeriod and one
//   summary line at the end, such as "evaluate int8: 10000 images in 2.1 s, 4800 images/s".
// - off (--quiet).
//
// Log lines and the bar share the console: the console log sink calls clear_progress_line()
// before it writes, and the bar is drawn again on its next update.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>

namespace edgeq {

enum class ProgressMode { kOff, kPlain, kTerminal };

using ProgressClock = std::chrono::steady_clock;

// A terminal bar is redrawn at most this often: ten redraws a second look live and cost nothing.
inline constexpr std::chrono::milliseconds kRedrawInterval{100};
// Plain mode writes one line per this period, so that a CI log shows the work is alive without
// filling up with progress lines.
inline constexpr std::chrono::seconds kPlainPeriod{10};
// Line width of a terminal whose width cannot be read.
inline constexpr int kDefaultTerminalWidth = 80;

// Output settings of a progress reporter: mode, stream, width and clock.
struct ProgressOutput {
    ProgressMode mode = ProgressMode::kOff;
    std::ostream* stream = nullptr;  // required unless mode is kOff
    int terminal_width = kDefaultTerminalWidth;
    std::function<ProgressClock::time_point()> clock;  // empty: ProgressClock::now
    // Whether finish() writes the summary line (a terminal bar is erased either way). Off where
    // the caller logs its own line at the end (training's per-epoch line), so that nothing is
    // printed twice.
    bool summary = true;
};

// Sets where reporters made with console_progress_output() write. `file_descriptor` is 1 or 2
// (stdout or stderr, the stream of the info log lines). A terminal gets a bar when
// is_control_terminal() is true, anything else gets plain lines, and `enabled` false turns
// progress off. setup_console_logging() calls this.
void set_progress_console(int file_descriptor, bool enabled);

// The console output set by set_progress_console() (off until it is called), with the terminal
// width read from the stream's file descriptor.
ProgressOutput console_progress_output();

// True when `file_descriptor` is a terminal that understands cursor control: isatty() and TERM is
// set and is not "dumb".
bool is_control_terminal(int file_descriptor);

// Erases a terminal bar that is on screen, so that a log line can be written in its place. Writes
// nothing when no bar is drawn. Thread-safe.
void clear_progress_line();

// One progress reporter for one piece of work of `total` units (0: total unknown). Not
// thread-safe: update it from one thread.
class Progress {
  public:
    Progress(std::string label, int64_t total, std::string unit,
             ProgressOutput output = console_progress_output());
    ~Progress();
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;

    // Sets the units done so far and redraws or writes a line when it is time.
    void update(int64_t done);
    // Sets the text shown after the counters, such as "loss 0.3124"; shown at the next update.
    void set_postfix(std::string postfix);
    // Ends the work: erases a terminal bar and writes the summary line unless `summary` is off.
    // Later calls do nothing. The destructor only erases a bar left on screen (the work failed), so
    // an error message is not mixed into it.
    void finish();

    // Starts the work again with a new label and total, as a new reporter would.
    void restart(std::string label, int64_t total);

    // A (done, total) callback that calls update(done), for the library functions that report
    // progress that way (evaluate_classifier, the calibration and report passes). The reporter
    // must outlive it.
    std::function<void(int64_t, int64_t)> callback();

    const std::string& label() const { return label_; }
    int64_t done() const { return done_; }
    int64_t total() const { return total_; }

  private:
    ProgressClock::time_point now() const;
    double elapsed_seconds(ProgressClock::time_point time) const;
    std::string counters(ProgressClock::time_point time) const;
    std::string bar_counters(ProgressClock::time_point time) const;
    std::string summary(ProgressClock::time_point time) const;
    void draw_bar(ProgressClock::time_point time);

    std::string label_;
    int64_t total_ = 0;
    std::string unit_;
    ProgressOutput output_;
    std::string postfix_;
    int64_t done_ = 0;
    ProgressClock::time_point start_;
    ProgressClock::time_point last_draw_;
    ProgressClock::time_point next_plain_line_;
    bool finished_ = true;  // until restart() starts the work
};

// Progress of work made of named steps, each with its own count, such as quantize_model's
// ("calibration", done, total) reports. A new step name, or a count that starts again (mixed
// precision calibrates once per attempt), ends the current step and starts a new line.
class StepProgress {
  public:
    explicit StepProgress(ProgressOutput output = console_progress_output())
        : output_(std::move(output)) {}

    // Reports `done` of `total` (0: unknown) units of `step`, counted in `unit`.
    void update(const std::string& step, int64_t done, int64_t total, const std::string& unit);
    // Ends the current step, if any, with its summary line.
    void finish();

  private:
    ProgressOutput output_;
    std::unique_ptr<Progress> current_;
    std::string step_;
};

// Formats a duration for progress lines: "0.4 s", "12 s", "3 min 05 s", "1 h 02 min".
std::string format_duration(double seconds);

}  // namespace edgeq
