#include "edgeq/report/figures.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include <fmt/format.h>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"

namespace edgeq::report {
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// Drawing helpers

struct Rgb {
    double red;
    double green;
    double blue;
};

constexpr Rgb kBlack = {0.1, 0.1, 0.1};
constexpr Rgb kGrey = {0.45, 0.45, 0.45};
constexpr Rgb kLightGrey = {0.88, 0.88, 0.88};
constexpr Rgb kWhite = {1.0, 1.0, 1.0};
constexpr Rgb kWrong = {0.84, 0.15, 0.16};
constexpr Rgb kFp32Colour = {0.12, 0.47, 0.71};
constexpr Rgb kInt8Colour = {1.0, 0.50, 0.05};
constexpr Rgb kHeldOutColour = {0.17, 0.63, 0.17};
constexpr Rgb kBiasColour = {0.58, 0.40, 0.74};

// Font sizes in pixels; the smallest still reads well in a browser at 100% zoom.
constexpr double kTitleSize = 18;
constexpr double kLabelSize = 13;
constexpr double kSmallSize = 11;

enum class Align { kLeft, kCenter, kRight };

struct TextStyle {
    double size = kLabelSize;
    bool bold = false;
    Rgb colour = kBlack;
    Align align = Align::kLeft;
};

// An RGB image surface with a white background and a cairo context on it.
class Canvas {
  public:
    Canvas(int width, int height)
        : surface_(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height)),
          cairo_(cairo_create(surface_)) {
        // Fixed font options, so that the glyphs do not depend on the desktop's settings.
        cairo_font_options_t* options = cairo_font_options_create();
        cairo_font_options_set_antialias(options, CAIRO_ANTIALIAS_GRAY);
        cairo_font_options_set_hint_style(options, CAIRO_HINT_STYLE_NONE);
        cairo_font_options_set_hint_metrics(options, CAIRO_HINT_METRICS_OFF);
        cairo_set_font_options(cairo_, options);
        cairo_font_options_destroy(options);
        set_colour(kWhite);
        cairo_paint(cairo_);
    }
    ~Canvas() {
        cairo_destroy(cairo_);
        cairo_surface_destroy(surface_);
    }
    Canvas(const Canvas&) = delete;
    Canvas& operator=(const Canvas&) = delete;

    cairo_t* context() const { return cairo_; }

    void set_colour(const Rgb& colour) const {
        cairo_set_source_rgb(cairo_, colour.red, colour.green, colour.blue);
    }

    void fill_rectangle(double x, double y, double width, double height, const Rgb& colour) const {
        set_colour(colour);
        cairo_rectangle(cairo_, x, y, width, height);
        cairo_fill(cairo_);
    }

    void stroke_rectangle(double x, double y, double width, double height, const Rgb& colour,
                          double line_width) const {
        set_colour(colour);
        cairo_set_line_width(cairo_, line_width);
        cairo_rectangle(cairo_, x, y, width, height);
        cairo_stroke(cairo_);
    }

    void line(double x0, double y0, double x1, double y1, const Rgb& colour,
              double line_width) const {
        set_colour(colour);
        cairo_set_line_width(cairo_, line_width);
        cairo_move_to(cairo_, x0, y0);
        cairo_line_to(cairo_, x1, y1);
        cairo_stroke(cairo_);
    }

    double text_width(std::string_view text, double size, bool bold) const {
        select_font(size, bold);
        const std::string owned(text);
        cairo_text_extents_t extents;
        cairo_text_extents(cairo_, owned.c_str(), &extents);
        return extents.x_advance;
    }

    // Writes `text` with its baseline at y; x is its left end, centre or right end.
    void text(double x, double y, std::string_view text, const TextStyle& style) const {
        const double width = text_width(text, style.size, style.bold);
        const double left = style.align == Align::kLeft     ? x
                            : style.align == Align::kCenter ? x - width / 2
                                                            : x - width;
        set_colour(style.colour);
        cairo_move_to(cairo_, left, y);
        const std::string owned(text);
        cairo_show_text(cairo_, owned.c_str());
    }

    // Writes `text` turned by `radians` (negative: counterclockwise) about (x, y).
    void rotated_text(double x, double y, double radians, std::string_view text,
                      const TextStyle& style) const {
        cairo_save(cairo_);
        cairo_translate(cairo_, x, y);
        cairo_rotate(cairo_, radians);
        this->text(0, 0, text, style);
        cairo_restore(cairo_);
    }

    // Draws a 28x28 grey image, scaled up by `scale` with nearest-neighbour sampling so that each
    // pixel stays a sharp square.
    void grey_image(const uint8_t* pixels, double x, double y, int scale) const {
        const int side = static_cast<int>(kImageSide);
        cairo_surface_t* image = cairo_image_surface_create(CAIRO_FORMAT_RGB24, side, side);
        cairo_surface_flush(image);
        unsigned char* data = cairo_image_surface_get_data(image);
        const int stride = cairo_image_surface_get_stride(image);
        for (int row = 0; row < side; ++row) {
            auto* line_pixels = reinterpret_cast<uint32_t*>(data + row * stride);
            for (int column = 0; column < side; ++column) {
                const uint32_t grey = pixels[row * side + column];
                line_pixels[column] = (grey << 16) | (grey << 8) | grey;
            }
        }
        cairo_surface_mark_dirty(image);

        cairo_save(cairo_);
        cairo_translate(cairo_, x, y);
        cairo_scale(cairo_, scale, scale);
        cairo_set_source_surface(cairo_, image, 0, 0);
        cairo_pattern_set_filter(cairo_get_source(cairo_), CAIRO_FILTER_NEAREST);
        cairo_rectangle(cairo_, 0, 0, side, side);
        cairo_fill(cairo_);
        cairo_restore(cairo_);
        cairo_surface_destroy(image);
    }

    // Writes the PNG to a temporary file beside `path` and renames it into place.
    void save_png(const fs::path& path) const {
        cairo_surface_flush(surface_);
        write_via_temporary(path, [&](const fs::path& temporary) {
            const cairo_status_t status =
                cairo_surface_write_to_png(surface_, temporary.string().c_str());
            if (status != CAIRO_STATUS_SUCCESS) {
                fail(ExitCode::kIo,
                     "cannot write figure '{}': {}; check that the folder exists "
                     "and is writable",
                     path.string(), cairo_status_to_string(status));
            }
        });
    }

  private:
    void select_font(double size, bool bold) const {
        cairo_select_font_face(cairo_, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                               bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
        cairo_set_font_size(cairo_, size);
    }

    cairo_surface_t* surface_;
    cairo_t* cairo_;
};

std::string class_name(int label) {
    return std::string(kFashionClassNames.at(static_cast<size_t>(label)));
}

// Rejects a label or prediction outside 0..9, which would index past the class names.
void check_classes(const LabelledImages& images, std::span<const uint8_t> predictions,
                   std::string_view figure) {
    if (static_cast<int64_t>(predictions.size()) > images.size()) {
        fail(ExitCode::kInvalidInput, "{}: {} predictions for only {} images", figure,
             predictions.size(), images.size());
    }
    for (size_t i = 0; i < predictions.size(); ++i) {
        if (predictions[i] >= kFashionClassCount || images.labels[i] >= kFashionClassCount) {
            fail(ExitCode::kInvalidInput,
                 "{}: image {} has class {} predicted for label {}; "
                 "classes are 0..9",
                 figure, i, predictions[i], images.labels[i]);
        }
    }
}

// Tick values for an axis over [low, high]: steps of 1, 2 or 5 times a power of ten, about
// `count` of them.
// Never empty: a degenerate or non-finite range gives the single tick 0.
std::vector<double> nice_ticks(double low, double high, int count) {
    if (!std::isfinite(low) || !std::isfinite(high) || !(high > low)) {
        return {0.0};
    }
    const double raw_step = (high - low) / std::max(1, count);
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw_step)));
    double step = magnitude;
    for (const double factor : {1.0, 2.0, 5.0, 10.0}) {
        step = factor * magnitude;
        if (step >= raw_step) {
            break;
        }
    }
    std::vector<double> ticks;
    // The small epsilon keeps a tick that lands on `high` up to rounding.
    for (double tick = std::ceil(low / step) * step; tick <= high + step * 1e-9; tick += step) {
        ticks.push_back(std::abs(tick) < step * 1e-9 ? 0.0 : tick);
    }
    return ticks;
}

// Decimal places that tell adjacent ticks apart.
int tick_decimals(const std::vector<double>& ticks) {
    if (ticks.size() < 2) {
        return 0;
    }
    const double step = ticks[1] - ticks[0];
    return std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
}

// Sequential white-to-blue colour for a value in [0, 1].
Rgb heat_colour(double share) {
    const double t = std::clamp(share, 0.0, 1.0);
    return {1.0 - t * (1.0 - 0.03), 1.0 - t * (1.0 - 0.19), 1.0 - t * (1.0 - 0.42)};
}

// A box with a coloured square and a name per entry, one entry per line.
void draw_legend(const Canvas& canvas, double x, double y,
                 const std::vector<std::pair<std::string, Rgb>>& entries) {
    constexpr double kLine = 20;
    double width = 0;
    for (const auto& [name, colour] : entries) {
        width = std::max(width, canvas.text_width(name, kLabelSize, false));
    }
    const double height = kLine * static_cast<double>(entries.size()) + 8;
    canvas.fill_rectangle(x, y, width + 40, height, kWhite);
    canvas.stroke_rectangle(x, y, width + 40, height, kLightGrey, 1);
    for (size_t i = 0; i < entries.size(); ++i) {
        const double top = y + 6 + kLine * static_cast<double>(i);
        canvas.fill_rectangle(x + 8, top + 2, 14, 12, entries[i].second);
        canvas.text(x + 30, top + 13, entries[i].first, {});
    }
}

// ---------------------------------------------------------------------------------------------
// Training curves: one panel of lines per epoch

struct Series {
    std::string name;
    Rgb colour;
    std::vector<double> values;  // one per epoch
};

struct Panel {
    double x;
    double y;
    double width;
    double height;
};

// Draws `series` against the epoch number in `panel`, with a y axis over [low, high].
void draw_line_panel(const Canvas& canvas, const Panel& panel, std::string_view title,
                     std::string_view y_label, const std::vector<Series>& series, double low,
                     double high, bool legend_at_bottom) {
    cairo_t* cairo = canvas.context();
    const size_t epochs = series.front().values.size();
    const double x_span = std::max<double>(1.0, static_cast<double>(epochs) - 1.0);
    auto x_of = [&](double epoch) { return panel.x + (epoch - 1.0) / x_span * panel.width; };
    auto y_of = [&](double value) {
        return panel.y + panel.height - (value - low) / (high - low) * panel.height;
    };

    canvas.text(panel.x + panel.width / 2, panel.y - 14, title,
                {.size = 15, .bold = true, .align = Align::kCenter});
    const std::vector<double> y_ticks = nice_ticks(low, high, 6);
    const int decimals = tick_decimals(y_ticks);
    for (const double tick : y_ticks) {
        canvas.line(panel.x, y_of(tick), panel.x + panel.width, y_of(tick), kLightGrey, 1);
        canvas.text(panel.x - 8, y_of(tick) + 4, fmt::format("{:.{}f}", tick, decimals),
                    {.size = kSmallSize, .align = Align::kRight});
    }
    const std::vector<double> x_ticks =
        nice_ticks(1.0, static_cast<double>(epochs), std::min<int>(10, static_cast<int>(epochs)));
    for (const double tick : x_ticks) {
        if (tick < 1.0 || std::abs(tick - std::round(tick)) > 1e-9) {
            continue;
        }
        canvas.line(x_of(tick), panel.y + panel.height, x_of(tick), panel.y + panel.height + 5,
                    kGrey, 1);
        canvas.text(x_of(tick), panel.y + panel.height + 19, fmt::format("{:.0f}", tick),
                    {.size = kSmallSize, .align = Align::kCenter});
    }
    canvas.stroke_rectangle(panel.x, panel.y, panel.width, panel.height, kGrey, 1);
    canvas.text(panel.x + panel.width / 2, panel.y + panel.height + 40, "epoch",
                {.align = Align::kCenter});
    canvas.rotated_text(panel.x - 52, panel.y + panel.height / 2, -std::numbers::pi / 2, y_label,
                        {.align = Align::kCenter});

    std::vector<std::pair<std::string, Rgb>> legend;
    for (const Series& line : series) {
        canvas.set_colour(line.colour);
        cairo_set_line_width(cairo, 2.0);
        for (size_t e = 0; e < line.values.size(); ++e) {
            const double x = x_of(static_cast<double>(e + 1));
            const double y = y_of(line.values[e]);
            if (e == 0) {
                cairo_move_to(cairo, x, y);
            } else {
                cairo_line_to(cairo, x, y);
            }
        }
        cairo_stroke(cairo);
        for (size_t e = 0; e < line.values.size(); ++e) {
            cairo_arc(cairo, x_of(static_cast<double>(e + 1)), y_of(line.values[e]), 3, 0,
                      2 * std::numbers::pi);
            cairo_fill(cairo);
        }
        legend.emplace_back(line.name, line.colour);
    }
    const double legend_height = 20.0 * static_cast<double>(legend.size()) + 8;
    draw_legend(canvas, panel.x + panel.width - 190,
                legend_at_bottom ? panel.y + panel.height - legend_height - 10 : panel.y + 10,
                legend);
}

// [low, high] around every value, widened by a margin and never empty.
std::pair<double, double> value_range(const std::vector<Series>& series) {
    double low = series.front().values.front();
    double high = low;
    for (const Series& line : series) {
        for (const double value : line.values) {
            low = std::min(low, value);
            high = std::max(high, value);
        }
    }
    const double margin = std::max(0.05 * (high - low), 1e-3);
    return {low - margin, high + margin};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Image grids

void draw_class_samples(const LabelledImages& images, const fs::path& path) {
    constexpr int kScale = 2;
    constexpr double kCell = 28 * kScale;
    constexpr double kGap = 6;
    constexpr double kLabelWidth = 120;
    constexpr double kMargin = 20;
    constexpr double kTop = 60;
    const int width =
        static_cast<int>(kMargin * 2 + kLabelWidth + kClassSampleColumns * (kCell + kGap) - kGap);
    const int height =
        static_cast<int>(kTop + kFashionClassCount * (kCell + kGap) - kGap + kMargin);
    check_classes(images, images.labels, "class samples");

    Canvas canvas(width, height);
    canvas.text(
        kMargin, 34,
        fmt::format("Test images of each class (the first {} of each)", kClassSampleColumns),
        {.size = kTitleSize, .bold = true});
    std::array<int, kFashionClassCount> drawn_per_class{};
    for (int64_t i = 0; i < images.size(); ++i) {
        const int label = images.labels[i];
        if (drawn_per_class[label] >= kClassSampleColumns) {
            continue;
        }
        const double x = kMargin + kLabelWidth + drawn_per_class[label] * (kCell + kGap);
        const double y = kTop + label * (kCell + kGap);
        canvas.grey_image(images.image(i), x, y, kScale);
        ++drawn_per_class[label];
    }
    for (int label = 0; label < kFashionClassCount; ++label) {
        const double y = kTop + label * (kCell + kGap);
        canvas.text(kMargin, y + kCell / 2 + 5, class_name(label), {.bold = true});
        canvas.text(kMargin, y + kCell / 2 + 21, fmt::format("class {}", label),
                    {.size = kSmallSize, .colour = kGrey});
        for (int column = drawn_per_class[label]; column < kClassSampleColumns; ++column) {
            const double x = kMargin + kLabelWidth + column * (kCell + kGap);
            canvas.stroke_rectangle(x + 0.5, y + 0.5, kCell - 1, kCell - 1, kLightGrey, 1);
        }
    }
    canvas.save_png(path);
}

namespace {

// One labelled image cell of the prediction pages: the image, then the predicted and the true
// class. A wrong prediction gets a red frame and red text.
struct CellLayout {
    int scale;
    double width;
    double height;
    double text_size;
};

void draw_labelled_cell(const Canvas& canvas, const CellLayout& layout, double x, double y,
                        const uint8_t* pixels, int label, int predicted) {
    const double image_side = 28.0 * layout.scale;
    const double image_x = x + (layout.width - image_side) / 2;
    const bool wrong = label != predicted;
    canvas.grey_image(pixels, image_x, y, layout.scale);
    if (wrong) {
        canvas.stroke_rectangle(image_x - 2, y - 2, image_side + 4, image_side + 4, kWrong, 3);
    }
    const double line = layout.text_size + 4;
    const Rgb colour = wrong ? kWrong : kBlack;
    canvas.text(
        x + layout.width / 2, y + image_side + line + 2,
        fmt::format("int8: {}", class_name(predicted)),
        {.size = layout.text_size, .bold = wrong, .colour = colour, .align = Align::kCenter});
    canvas.text(
        x + layout.width / 2, y + image_side + 2 * line + 2,
        fmt::format("true: {}", class_name(label)),
        {.size = layout.text_size, .colour = wrong ? kWrong : kGrey, .align = Align::kCenter});
}

}  // namespace

void draw_predictions(const LabelledImages& images, std::span<const uint8_t> predictions,
                      const fs::path& path) {
    constexpr int kColumns = 5;
    constexpr CellLayout kLayout = {3, 150, 84 + 2 * (kLabelSize + 4) + 18, kLabelSize};
    constexpr double kMargin = 20;
    constexpr double kTop = 76;
    check_classes(images, predictions, "predictions");
    const int count = std::min<int>(kPredictionCount, static_cast<int>(predictions.size()));
    const int rows = std::max(1, (count + kColumns - 1) / kColumns);
    const int width = static_cast<int>(2 * kMargin + kColumns * kLayout.width);
    const int height = static_cast<int>(kTop + rows * kLayout.height + kMargin);

    Canvas canvas(width, height);
    int wrong = 0;
    for (int i = 0; i < count; ++i) {
        wrong += predictions[i] != images.labels[i] ? 1 : 0;
    }
    canvas.text(kMargin, 34, fmt::format("The first {} test images: int8 prediction", count),
                {.size = kTitleSize, .bold = true});
    canvas.text(kMargin, 56, fmt::format("{} of {} wrong, framed and written in red", wrong, count),
                {.colour = kGrey});
    for (int i = 0; i < count; ++i) {
        const double x = kMargin + (i % kColumns) * kLayout.width;
        const double y = kTop + (i / kColumns) * kLayout.height;
        draw_labelled_cell(canvas, kLayout, x, y, images.image(i), images.labels[i],
                           predictions[i]);
    }
    canvas.save_png(path);
}

void draw_misclassified(const LabelledImages& images, std::span<const uint8_t> predictions,
                        const fs::path& path) {
    constexpr int kColumns = 10;
    constexpr CellLayout kLayout = {2, 118, 56 + 2 * (kSmallSize + 4) + 16, kSmallSize};
    constexpr double kMargin = 20;
    constexpr double kTop = 76;
    check_classes(images, predictions, "misclassified");
    std::vector<int64_t> wrong;
    for (size_t i = 0; i < predictions.size(); ++i) {
        if (predictions[i] != images.labels[i]) {
            wrong.push_back(static_cast<int64_t>(i));
        }
    }
    const int drawn = std::min<int>(kMaxMisclassified, static_cast<int>(wrong.size()));
    const int rows = std::max(1, (drawn + kColumns - 1) / kColumns);
    const int width = static_cast<int>(2 * kMargin + kColumns * kLayout.width);
    const int height = static_cast<int>(kTop + rows * kLayout.height + kMargin);

    Canvas canvas(width, height);
    canvas.text(
        kMargin, 34,
        fmt::format("int8 misclassified: {} of {} test images", wrong.size(), predictions.size()),
        {.size = kTitleSize, .bold = true});
    canvas.text(kMargin, 56,
                drawn < static_cast<int>(wrong.size())
                    ? fmt::format("the first {} of them, in test-set order", drawn)
                    : std::string("all of them, in test-set order"),
                {.colour = kGrey});
    if (wrong.empty()) {
        canvas.text(kMargin, kTop + 30, "No test image is misclassified.", {});
    }
    for (int i = 0; i < drawn; ++i) {
        const int64_t index = wrong[static_cast<size_t>(i)];
        const double x = kMargin + (i % kColumns) * kLayout.width;
        const double y = kTop + (i / kColumns) * kLayout.height;
        draw_labelled_cell(canvas, kLayout, x, y, images.image(index), images.labels[index],
                           predictions[static_cast<size_t>(index)]);
    }
    canvas.save_png(path);
}

// ---------------------------------------------------------------------------------------------
// Confusion matrix and per-class accuracy

void draw_confusion_matrix(const ConfusionMatrix& confusion, std::string_view title,
                           const fs::path& path) {
    constexpr double kCell = 64;
    constexpr double kLeft = 150;  // true-class names and the axis title
    constexpr double kTop = 70;
    constexpr double kBottom = 120;  // rotated predicted-class names and the axis title
    constexpr double kRight = 30;
    const double grid = kCell * kFashionClassCount;
    const int width = static_cast<int>(kLeft + grid + kRight);
    const int height = static_cast<int>(kTop + grid + kBottom);

    Canvas canvas(width, height);
    canvas.text(width / 2.0, 32, title,
                {.size = kTitleSize, .bold = true, .align = Align::kCenter});
    canvas.text(width / 2.0, 54,
                "percentage: share of the true class's row; colour: its square root, so that "
                "small confusions show",
                {.size = kSmallSize, .colour = kGrey, .align = Align::kCenter});
    for (int t = 0; t < kFashionClassCount; ++t) {
        int64_t row_total = 0;
        for (int p = 0; p < kFashionClassCount; ++p) {
            row_total += confusion[t][p];
        }
        for (int p = 0; p < kFashionClassCount; ++p) {
            const int64_t count = confusion[t][p];
            const double share =
                row_total > 0 ? static_cast<double>(count) / static_cast<double>(row_total) : 0.0;
            const double x = kLeft + p * kCell;
            const double y = kTop + t * kCell;
            // The square root stretches small shares: a 2% confusion gets 14% of the colour
            // range instead of 2%.
            const double shade = std::sqrt(share);
            canvas.fill_rectangle(x, y, kCell, kCell, heat_colour(shade));
            const Rgb ink = shade > 0.6 ? kWhite : kBlack;
            canvas.text(x + kCell / 2, y + kCell / 2 - 1, fmt::format("{}", count),
                        {.size = kLabelSize, .bold = true, .colour = ink, .align = Align::kCenter});
            if (count > 0) {
                canvas.text(x + kCell / 2, y + kCell / 2 + 15, fmt::format("{:.1f}%", 100 * share),
                            {.size = kSmallSize, .colour = ink, .align = Align::kCenter});
            }
        }
    }
    for (int i = 0; i <= kFashionClassCount; ++i) {
        canvas.line(kLeft, kTop + i * kCell, kLeft + grid, kTop + i * kCell, kWhite, 1);
        canvas.line(kLeft + i * kCell, kTop, kLeft + i * kCell, kTop + grid, kWhite, 1);
    }
    canvas.stroke_rectangle(kLeft, kTop, grid, grid, kGrey, 1);
    for (int c = 0; c < kFashionClassCount; ++c) {
        canvas.text(kLeft - 8, kTop + c * kCell + kCell / 2 + 5, class_name(c),
                    {.align = Align::kRight});
        // Predicted-class names run down and to the left at 45 degrees below their column.
        canvas.rotated_text(kLeft + c * kCell + kCell / 2 + 4, kTop + grid + 10,
                            -std::numbers::pi / 4, class_name(c), {.align = Align::kRight});
    }
    canvas.rotated_text(22, kTop + grid / 2, -std::numbers::pi / 2, "true class",
                        {.bold = true, .align = Align::kCenter});
    canvas.text(kLeft + grid / 2, height - 14.0, "predicted class",
                {.bold = true, .align = Align::kCenter});
    canvas.save_png(path);
}

void draw_per_class_accuracy(const ConfusionMatrix& fp32, const ConfusionMatrix& int8,
                             const fs::path& path) {
    constexpr double kLeft = 130;
    constexpr double kTop = 90;
    constexpr double kBarHeight = 16;
    constexpr double kGroupGap = 14;
    constexpr double kPlotWidth = 620;
    constexpr double kRight = 80;  // the value written after the longest bar
    constexpr double kGroup = 2 * kBarHeight + kGroupGap;
    const int width = static_cast<int>(kLeft + kPlotWidth + kRight);
    const int height = static_cast<int>(kTop + kFashionClassCount * kGroup + 50);

    auto accuracy = [](const ConfusionMatrix& confusion, int label) {
        int64_t total = 0;
        for (const int64_t count : confusion[label]) {
            total += count;
        }
        return total > 0 ? static_cast<double>(confusion[label][label]) / static_cast<double>(total)
                         : 0.0;
    };

    Canvas canvas(width, height);
    canvas.text(20, 32, "Accuracy per class on the test images, fp32 beside int8",
                {.size = kTitleSize, .bold = true});
    canvas.fill_rectangle(kLeft, 48, 14, 12, kFp32Colour);
    canvas.text(kLeft + 20, 59, "fp32", {});
    canvas.fill_rectangle(kLeft + 80, 48, 14, 12, kInt8Colour);
    canvas.text(kLeft + 100, 59, "int8", {});

    const double plot_bottom = kTop + kFashionClassCount * kGroup - kGroupGap / 2;
    for (int tick = 0; tick <= 100; tick += 10) {
        const double x = kLeft + kPlotWidth * tick / 100.0;
        canvas.line(x, kTop - 6, x, plot_bottom, kLightGrey, 1);
        canvas.text(x, plot_bottom + 18, fmt::format("{}%", tick),
                    {.size = kSmallSize, .align = Align::kCenter});
    }
    for (int label = 0; label < kFashionClassCount; ++label) {
        const double y = kTop + label * kGroup;
        canvas.text(kLeft - 10, y + kBarHeight + 5, class_name(label), {.align = Align::kRight});
        const std::array<std::pair<double, Rgb>, 2> bars = {
            std::pair{accuracy(fp32, label), kFp32Colour},
            std::pair{accuracy(int8, label), kInt8Colour}};
        for (size_t b = 0; b < bars.size(); ++b) {
            const double top = y + static_cast<double>(b) * kBarHeight;
            const double length = kPlotWidth * bars[b].first;
            canvas.fill_rectangle(kLeft, top, length, kBarHeight - 2, bars[b].second);
            canvas.text(kLeft + length + 5, top + kBarHeight - 4,
                        fmt::format("{:.1f}%", 100 * bars[b].first), {.size = kSmallSize});
        }
    }
    canvas.line(kLeft, kTop - 6, kLeft, plot_bottom, kGrey, 1);
    canvas.text(kLeft + kPlotWidth / 2, plot_bottom + 40, "share of the class's test images",
                {.align = Align::kCenter});
    canvas.save_png(path);
}

// ---------------------------------------------------------------------------------------------
// Training curves and per-tensor SQNR

void draw_training_curves(std::span<const EpochStats> epochs, const fs::path& path) {
    if (epochs.empty()) {
        fail(ExitCode::kInvalidInput, "training curves: the training record has no epochs");
    }
    constexpr double kPanelWidth = 440;
    constexpr double kPanelHeight = 300;
    constexpr double kLeft = 90;
    constexpr double kPanelGap = 110;
    constexpr double kTop = 90;
    const int width = static_cast<int>(kLeft + 2 * kPanelWidth + kPanelGap + 30);
    const int height = static_cast<int>(kTop + kPanelHeight + 70);

    Series loss{"train loss", kFp32Colour, {}};
    Series train_accuracy{"train accuracy", kFp32Colour, {}};
    Series held_out_accuracy{"held-out accuracy", kHeldOutColour, {}};
    for (const EpochStats& epoch : epochs) {
        loss.values.push_back(epoch.train_loss);
        train_accuracy.values.push_back(100 * epoch.train_accuracy);
        held_out_accuracy.values.push_back(100 * epoch.held_out_accuracy);
    }

    Canvas canvas(width, height);
    canvas.text(20, 32, fmt::format("Training: {} epochs", epochs.size()),
                {.size = kTitleSize, .bold = true});
    const std::vector<Series> loss_series = {loss};
    const auto [loss_low, loss_high] = value_range(loss_series);
    draw_line_panel(canvas, {kLeft, kTop, kPanelWidth, kPanelHeight}, "Loss", "mean cross-entropy",
                    loss_series, std::max(0.0, loss_low), loss_high, false);
    const std::vector<Series> accuracy_series = {train_accuracy, held_out_accuracy};
    const auto [accuracy_low, accuracy_high] = value_range(accuracy_series);
    draw_line_panel(canvas, {kLeft + kPanelWidth + kPanelGap, kTop, kPanelWidth, kPanelHeight},
                    "Accuracy", "accuracy (%)", accuracy_series, accuracy_low,
                    std::min(100.0, accuracy_high), true);
    canvas.save_png(path);
}

void draw_layer_sqnr(std::span<const TensorSqnr> tensors, const fs::path& path) {
    if (tensors.empty()) {
        fail(ExitCode::kInvalidInput, "layer SQNR: no tensor has an SQNR measurement");
    }
    constexpr double kMaxNameWidth = 360;
    constexpr double kRowHeight = 22;
    constexpr double kTop = 100;
    constexpr double kPlotWidth = 520;
    constexpr double kRight = 110;  // the value written after the longest bar
    constexpr double kMargin = 20;

    // Names longer than the column are cut at the front, where the ONNX paths repeat.
    const Canvas measure(1, 1);
    std::vector<std::string> names;
    double name_width = 0;
    for (const TensorSqnr& tensor : tensors) {
        std::string name = tensor.tensor;
        while (name.size() > 4 && measure.text_width(name, kLabelSize, false) > kMaxNameWidth) {
            name = "..." + name.substr(4);
        }
        name_width = std::max(name_width, measure.text_width(name, kLabelSize, false));
        names.push_back(std::move(name));
    }
    const double left = kMargin + name_width + 12;
    const int width = static_cast<int>(left + kPlotWidth + kRight);
    const int height =
        static_cast<int>(kTop + kRowHeight * static_cast<double>(tensors.size()) + 60);

    double high = 0;
    double low = 0;
    for (const TensorSqnr& tensor : tensors) {
        if (tensor.sqnr_db && std::isfinite(*tensor.sqnr_db)) {
            high = std::max(high, *tensor.sqnr_db);
            low = std::min(low, *tensor.sqnr_db);
        }
    }
    high = high <= low ? low + 10 : high * 1.05;
    const std::vector<double> ticks = nice_ticks(low, high, 8);
    high = std::max(high, ticks.back());
    auto x_of = [&](double value) { return left + (value - low) / (high - low) * kPlotWidth; };

    Canvas canvas(width, height);
    canvas.text(kMargin, 32, "Quantization error per tensor: SQNR of int8 against fp32",
                {.size = kTitleSize, .bold = true});
    canvas.text(kMargin, 54, "higher is better; each additional 6 dB halves the error's amplitude",
                {.colour = kGrey});
    const std::vector<std::pair<std::string, Rgb>> roles = {
        {"activation", kFp32Colour}, {"weight", kInt8Colour}, {"bias", kBiasColour}};
    double legend_x = left;
    for (const auto& [role, colour] : roles) {
        canvas.fill_rectangle(legend_x, 66, 14, 12, colour);
        canvas.text(legend_x + 20, 77, role, {});
        legend_x += 40 + canvas.text_width(role, kLabelSize, false);
    }

    const double plot_bottom = kTop + kRowHeight * static_cast<double>(tensors.size());
    for (const double tick : ticks) {
        canvas.line(x_of(tick), kTop - 4, x_of(tick), plot_bottom, kLightGrey, 1);
        canvas.text(x_of(tick), plot_bottom + 18, fmt::format("{:.0f}", tick),
                    {.size = kSmallSize, .align = Align::kCenter});
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
        const TensorSqnr& tensor = tensors[i];
        const double y = kTop + kRowHeight * static_cast<double>(i);
        canvas.text(left - 10, y + kRowHeight - 7, names[i], {.align = Align::kRight});
        const Rgb colour = tensor.role == "weight" ? kInt8Colour
                           : tensor.role == "bias" ? kBiasColour
                                                   : kFp32Colour;
        if (!tensor.sqnr_db) {
            canvas.text(x_of(0) + 5, y + kRowHeight - 7, "no error (exact)",
                        {.size = kSmallSize, .colour = kGrey});
            continue;
        }
        const double value = *tensor.sqnr_db;
        if (!std::isfinite(value)) {
            canvas.text(x_of(0) + 5, y + kRowHeight - 7, fmt::format("{} dB", value),
                        {.size = kSmallSize, .colour = kGrey});
            continue;
        }
        const double start = x_of(std::min(0.0, value));
        const double end = x_of(std::max(0.0, value));
        canvas.fill_rectangle(start, y + 3, end - start, kRowHeight - 6, colour);
        canvas.text(end + 5, y + kRowHeight - 7, fmt::format("{:.1f} dB", value),
                    {.size = kSmallSize});
    }
    canvas.line(x_of(0), kTop - 4, x_of(0), plot_bottom, kGrey, 1);
    canvas.text(left + kPlotWidth / 2, plot_bottom + 40, "SQNR (dB)", {.align = Align::kCenter});
    canvas.save_png(path);
}

}  // namespace edgeq::report
