#include "edgeq/report/html_report.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/data/dataset.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/pipeline/run.h"
#include "edgeq/pipeline/train_stage.h"
#include "edgeq/report/figures.h"

#ifndef EDGEQ_VERSION
#define EDGEQ_VERSION "unknown"
#endif

namespace edgeq::report {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

// ---------------------------------------------------------------------------------------------
// Inputs: the run's files, read and checked

// The files every report needs; `edgeq run` writes all of them.
constexpr std::array<const char*, 4> kRequiredFiles = {
    "metrics.json", "predictions.csv", "confusion_matrix_fp32.csv", "confusion_matrix_int8.csv"};

// predictions.csv: one row per test image, in test-set order from image 0.
struct Predictions {
    std::vector<uint8_t> labels;
    std::vector<uint8_t> fp32;
    std::vector<uint8_t> int8;
};

struct ReportInputs {
    json metrics;
    Predictions predictions;
    ConfusionMatrix confusion_fp32{};
    ConfusionMatrix confusion_int8{};
    LabelledImages test;  // the first predictions.labels.size() test images
    std::optional<json> quantization;
    std::optional<json> placement;  // vitisai_ep_report.json
    std::optional<json> bench;
    std::optional<json> sweep;
    std::vector<EpochStats> epochs;  // from the checkpoint's training record; empty: none
    fs::path training_record;
};

json read_json_file(const fs::path& path) {
    try {
        return json::parse(read_file(path));
    } catch (const json::exception& error) {
        fail(ExitCode::kInvalidInput,
             "'{}' is not valid JSON ({}); rerun `edgeq run` to rewrite it", path.string(),
             error.what());
    }
}

// Reads an optional file whose top level must be a JSON object (`array` false) or array.
std::optional<json> read_optional_json(const fs::path& path, bool array = false) {
    if (!fs::exists(path)) {
        return std::nullopt;
    }
    json document = read_json_file(path);
    if (array ? !document.is_array() : !document.is_object()) {
        fail(ExitCode::kInvalidInput, "'{}' is not a JSON {}; rerun the command that wrote it",
             path.string(), array ? "array" : "object");
    }
    return document;
}

// A line without the '\r' that a CRLF line ending leaves behind.
std::string without_carriage_return(std::string line) {
    if (!line.empty() && line.back() == '\r') {
        line.pop_back();
    }
    return line;
}

std::vector<std::string> split_csv_line(const std::string& line) {
    std::vector<std::string> fields;
    std::string field;
    std::istringstream stream(line);
    while (std::getline(stream, field, ',')) {
        fields.push_back(field);
    }
    if (!line.empty() && line.back() == ',') {
        fields.emplace_back();
    }
    return fields;
}

int64_t parse_integer(const std::string& text, const fs::path& path, int line_number) {
    int64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size()) {
        fail(ExitCode::kInvalidInput, "{}, line {}: '{}' is not an integer", path.string(),
             line_number, text);
    }
    return value;
}

uint8_t parse_class(const std::string& text, const fs::path& path, int line_number) {
    const int64_t value = parse_integer(text, path, line_number);
    if (value < 0 || value >= kFashionClassCount) {
        fail(ExitCode::kInvalidInput, "{}, line {}: class {} is outside 0..9", path.string(),
             line_number, value);
    }
    return static_cast<uint8_t>(value);
}

Predictions read_predictions(const fs::path& path) {
    std::istringstream stream(read_file(path));
    std::string line;
    std::getline(stream, line);
    line = without_carriage_return(line);
    if (line != "index,label,fp32,int8") {
        fail(ExitCode::kInvalidInput,
             "{}: the header is '{}', expected 'index,label,fp32,int8'; rerun `edgeq run`",
             path.string(), line);
    }
    Predictions predictions;
    int line_number = 1;
    while (std::getline(stream, line)) {
        ++line_number;
        line = without_carriage_return(line);
        if (line.empty()) {
            continue;
        }
        const std::vector<std::string> fields = split_csv_line(line);
        if (fields.size() != 4) {
            fail(ExitCode::kInvalidInput, "{}, line {}: {} fields, expected 4", path.string(),
                 line_number, fields.size());
        }
        const int64_t index = parse_integer(fields[0], path, line_number);
        if (index != static_cast<int64_t>(predictions.labels.size())) {
            fail(ExitCode::kInvalidInput,
                 "{}, line {}: image index {} out of order (expected {}); rerun `edgeq run`",
                 path.string(), line_number, index, predictions.labels.size());
        }
        predictions.labels.push_back(parse_class(fields[1], path, line_number));
        predictions.fp32.push_back(parse_class(fields[2], path, line_number));
        predictions.int8.push_back(parse_class(fields[3], path, line_number));
    }
    if (predictions.labels.empty()) {
        fail(ExitCode::kInvalidInput, "{} has no rows; rerun `edgeq run`", path.string());
    }
    return predictions;
}

// Reads the CSV that write_confusion_csv writes: a header row, then one row per true class.
ConfusionMatrix read_confusion(const fs::path& path) {
    std::istringstream stream(read_file(path));
    std::string line;
    std::getline(stream, line);
    ConfusionMatrix confusion{};
    for (int t = 0; t < kFashionClassCount; ++t) {
        const int line_number = t + 2;
        if (!std::getline(stream, line)) {
            fail(ExitCode::kInvalidInput, "{}: {} class rows, expected {}; rerun `edgeq run`",
                 path.string(), t, kFashionClassCount);
        }
        line = without_carriage_return(line);
        const std::vector<std::string> fields = split_csv_line(line);
        if (fields.size() != kFashionClassCount + 1 || fields[0] != kFashionClassNames[t]) {
            fail(ExitCode::kInvalidInput,
                 "{}, line {}: expected the class '{}' and {} counts; rerun `edgeq run`",
                 path.string(), line_number, kFashionClassNames[t], kFashionClassCount);
        }
        for (int p = 0; p < kFashionClassCount; ++p) {
            confusion[t][p] = parse_integer(fields[p + 1], path, line_number);
        }
    }
    return confusion;
}

// A value at a chain of object keys, or null when any key is missing.
json lookup(const json& document, std::initializer_list<const char*> keys) {
    const json* node = &document;
    for (const char* key : keys) {
        if (!node->is_object() || !node->contains(key)) {
            return nullptr;
        }
        node = &(*node)[key];
    }
    return *node;
}

// The test images the predictions refer to, from --data or the folder metrics.json records.
LabelledImages load_test_images(const ReportOptions& options, const json& metrics,
                                const Predictions& predictions) {
    fs::path folder = options.data_folder;
    if (folder.empty()) {
        const json recorded = lookup(metrics, {"dataset", "folder"});
        if (!recorded.is_string()) {
            fail(ExitCode::kInvalidInput,
                 "{} does not record the data folder; pass the Fashion-MNIST folder with --data",
                 (options.out_folder / "metrics.json").string());
        }
        folder = recorded.get<std::string>();
    }
    if (!fs::is_directory(folder)) {
        fail(ExitCode::kIo,
             "Fashion-MNIST folder '{}' not found; pass the run's folder with --data",
             folder.string());
    }
    const LabelledImages test = load_fashion_mnist_test(folder);
    const auto count = static_cast<int64_t>(predictions.labels.size());
    if (count > test.size()) {
        fail(ExitCode::kInvalidInput,
             "predictions.csv has {} rows, but '{}' has only {} test images", count,
             folder.string(), test.size());
    }
    LabelledImages first = first_images(test, count);
    for (int64_t i = 0; i < count; ++i) {
        if (first.labels[i] != predictions.labels[i]) {
            fail(ExitCode::kInvalidInput,
                 "test image {} of '{}' has label {}, but predictions.csv says {}; pass the "
                 "run's data folder with --data",
                 i, folder.string(), first.labels[i], predictions.labels[i]);
        }
    }
    return first;
}

// The training record beside the checkpoint that the run started from (models/fashion-cnn.json
// for the shipped checkpoint), or an empty path when the run did not start from one. Runs record
// its absolute path. Older metrics.json files only have the checkpoint path as given to `edgeq
// run`, which is relative to the folder the run started in.
fs::path find_training_record(const json& metrics, const fs::path& out_folder) {
    const json recorded = lookup(metrics, {"model", "training_record"});
    if (recorded.is_string() && fs::exists(recorded.get<std::string>())) {
        return recorded.get<std::string>();
    }
    const json source = lookup(metrics, {"model", "source"});
    const json checkpoint = lookup(metrics, {"model", "path"});
    if (!source.is_string() || !checkpoint.is_string() || source == "state_dict") {
        return {};
    }
    const fs::path record = checkpoint_metadata_path(checkpoint.get<std::string>());
    if (fs::exists(record)) {
        return record;
    }
    if (source == "retrain" && fs::exists(out_folder / record.filename())) {
        return out_folder / record.filename();
    }
    return {};
}

std::vector<EpochStats> read_epochs(const fs::path& record) {
    const json metadata = read_json_file(record);
    const json epochs = lookup(metadata, {"metrics", "epochs"});
    std::vector<EpochStats> stats;
    if (!epochs.is_array()) {
        return stats;
    }
    for (const json& epoch : epochs) {
        EpochStats row;
        try {
            row.epoch = epoch.at("epoch").get<int>();
            row.learning_rate = epoch.value("learning_rate", 0.0);
            row.train_loss = epoch.at("train_loss").get<double>();
            row.train_accuracy = epoch.at("train_accuracy").get<double>();
            row.held_out_accuracy = epoch.at("held_out_accuracy").get<double>();
            row.seconds = epoch.value("seconds", 0.0);
        } catch (const json::exception& error) {
            fail(ExitCode::kInvalidInput, "{}: epoch {} is incomplete ({})", record.string(),
                 stats.size() + 1, error.what());
        }
        stats.push_back(row);
    }
    return stats;
}

int64_t confusion_total(const ConfusionMatrix& confusion) {
    int64_t total = 0;
    for (const auto& row : confusion) {
        for (const int64_t count : row) {
            total += count;
        }
    }
    return total;
}

// The run writes predictions.csv, both confusion matrices and the totals in metrics.json from one
// evaluation, so differing image counts mean that a file was cut short or comes from another run.
void check_image_counts(const ReportInputs& inputs, const fs::path& out) {
    const auto rows = static_cast<int64_t>(inputs.predictions.labels.size());
    // metrics.json's total, or the row count when it records none.
    auto recorded_total = [&](const char* model) {
        const json total = lookup(inputs.metrics, {model, "total"});
        return total.is_number() ? total.get<int64_t>() : rows;
    };
    const std::array<std::pair<const char*, int64_t>, 4> counts = {{
        {"confusion_matrix_fp32.csv", confusion_total(inputs.confusion_fp32)},
        {"confusion_matrix_int8.csv", confusion_total(inputs.confusion_int8)},
        {"metrics.json (fp32.total)", recorded_total("fp32")},
        {"metrics.json (int8.total)", recorded_total("int8")},
    }};
    for (const auto& [source, count] : counts) {
        if (count != rows) {
            fail(ExitCode::kInvalidInput,
                 "{} has {} rows, but {} counts {} images; rerun `edgeq run --out {}`",
                 (out / "predictions.csv").string(), rows, source, count, out.string());
        }
    }
}

ReportInputs read_inputs(const ReportOptions& options) {
    const fs::path& out = options.out_folder;
    for (const char* name : kRequiredFiles) {
        if (!fs::exists(out / name)) {
            fail(ExitCode::kIo, "'{}' not found; run `edgeq run --out {}` first",
                 (out / name).string(), out.string());
        }
    }
    ReportInputs inputs;
    inputs.metrics = read_json_file(out / "metrics.json");
    for (const char* model : {"fp32", "int8"}) {
        if (!lookup(inputs.metrics, {model, "accuracy"}).is_number()) {
            fail(ExitCode::kInvalidInput, "{} has no {}.accuracy; rerun `edgeq run --out {}`",
                 (out / "metrics.json").string(), model, out.string());
        }
    }
    inputs.predictions = read_predictions(out / "predictions.csv");
    inputs.confusion_fp32 = read_confusion(out / "confusion_matrix_fp32.csv");
    inputs.confusion_int8 = read_confusion(out / "confusion_matrix_int8.csv");
    check_image_counts(inputs, out);
    inputs.test = load_test_images(options, inputs.metrics, inputs.predictions);
    inputs.quantization = read_optional_json(out / "quantization_report.json");
    inputs.placement = read_optional_json(out / kEpReportFile);
    inputs.bench = read_optional_json(out / "bench.json");
    inputs.sweep = read_optional_json(out / "sweep.json", true);
    inputs.training_record = find_training_record(inputs.metrics, out);
    if (!inputs.training_record.empty()) {
        inputs.epochs = read_epochs(inputs.training_record);
    }
    return inputs;
}

// ---------------------------------------------------------------------------------------------
// Figures

std::vector<TensorSqnr> tensor_sqnrs(const std::optional<json>& quantization) {
    std::vector<TensorSqnr> tensors;
    if (!quantization || !quantization->contains("tensors")) {
        return tensors;
    }
    for (const json& tensor : (*quantization)["tensors"]) {
        // A tensor without the key was not measured; null is an exact (infinite-SQNR) tensor.
        if (!tensor.contains("sqnr_db")) {
            continue;
        }
        const json name = lookup(tensor, {"tensor"});
        const json role = lookup(tensor, {"role"});
        TensorSqnr row{name.is_string() ? name.get<std::string>() : "?",
                       role.is_string() ? role.get<std::string>() : "?", std::nullopt};
        if (tensor["sqnr_db"].is_number()) {
            row.sqnr_db = tensor["sqnr_db"].get<double>();
        }
        tensors.push_back(std::move(row));
    }
    return tensors;
}

std::string engine_label(const json& metrics, const char* model) {
    const json engine = lookup(metrics, {model, "execution_provider"});
    return engine.is_string() ? engine.get<std::string>() : std::string("unknown EP");
}

// Draws every figure the inputs allow; returns the names drawn. A figure the inputs do not allow
// (no training record, no SQNR) is removed, so that the folder matches the report.
std::vector<std::string> draw_figures(const ReportInputs& inputs, const fs::path& out) {
    std::vector<std::string> drawn;
    draw_class_samples(inputs.test, out / kClassSamplesFigure);
    draw_predictions(inputs.test, inputs.predictions.int8, out / kPredictionsFigure);
    draw_misclassified(inputs.test, inputs.predictions.int8, out / kMisclassifiedFigure);
    draw_confusion_matrix(inputs.confusion_fp32,
                          fmt::format("fp32 on {}", engine_label(inputs.metrics, "fp32")),
                          out / kConfusionFp32Figure);
    draw_confusion_matrix(inputs.confusion_int8,
                          fmt::format("int8 on {}", engine_label(inputs.metrics, "int8")),
                          out / kConfusionInt8Figure);
    draw_per_class_accuracy(inputs.confusion_fp32, inputs.confusion_int8,
                            out / kPerClassAccuracyFigure);
    drawn = {kClassSamplesFigure,  kPredictionsFigure,   kMisclassifiedFigure,
             kConfusionFp32Figure, kConfusionInt8Figure, kPerClassAccuracyFigure};

    std::error_code ignored;
    if (!inputs.epochs.empty()) {
        draw_training_curves(inputs.epochs, out / kTrainingCurvesFigure);
        drawn.emplace_back(kTrainingCurvesFigure);
    } else {
        fs::remove(out / kTrainingCurvesFigure, ignored);
    }
    const std::vector<TensorSqnr> sqnrs = tensor_sqnrs(inputs.quantization);
    if (!sqnrs.empty()) {
        draw_layer_sqnr(sqnrs, out / kLayerSqnrFigure);
        drawn.emplace_back(kLayerSqnrFigure);
    } else {
        fs::remove(out / kLayerSqnrFigure, ignored);
    }
    return drawn;
}

// ---------------------------------------------------------------------------------------------
// HTML building blocks

constexpr std::string_view kStyle = R"css(
body { font-family: "DejaVu Sans", Verdana, sans-serif; font-size: 15px; color: #1a1a1a;
       max-width: 1240px; margin: 24px auto; padding: 0 20px; line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 20px; margin-top: 36px; border-bottom: 2px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin-top: 22px; }
p.note { color: #555; font-size: 14px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.reference td { color: #555; font-style: italic; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; background: #f3f5f7;
       padding: 1px 4px; word-break: break-all; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #555; font-size: 14px; }
)css";

class Html {
  public:
    void raw(std::string_view text) { text_ += text; }
    void heading(int level, std::string_view title) {
        text_ += fmt::format("<h{0}>{1}</h{0}>\n", level, escape_html(title));
    }
    void paragraph(std::string_view text, bool note = false) {
        text_ += fmt::format("<p{}>{}</p>\n", note ? " class=\"note\"" : "", escape_html(text));
    }
    // A table of plain-text cells. With `align_numbers`, a cell whose text starts with a digit,
    // a sign or a dot is right-aligned as a number.
    void table(const std::vector<std::string>& header,
               const std::vector<std::vector<std::string>>& rows,
               const std::vector<bool>& reference_rows = {}, bool align_numbers = true) {
        text_ += "<table>\n<tr>";
        for (const std::string& cell : header) {
            text_ += fmt::format("<th>{}</th>", escape_html(cell));
        }
        text_ += "</tr>\n";
        for (size_t r = 0; r < rows.size(); ++r) {
            const bool reference = r < reference_rows.size() && reference_rows[r];
            text_ += reference ? "<tr class=\"reference\">" : "<tr>";
            for (const std::string& cell : rows[r]) {
                const bool number = align_numbers && !cell.empty() &&
                                    (std::isdigit(static_cast<unsigned char>(cell[0])) ||
                                     cell[0] == '-' || cell[0] == '+' || cell[0] == '.');
                text_ +=
                    fmt::format("<td{}>{}</td>", number ? " class=\"num\"" : "", escape_html(cell));
            }
            text_ += "</tr>\n";
        }
        text_ += "</table>\n";
    }
    // Embeds a PNG as a data: URI, so that the page needs no other file.
    void figure(const fs::path& png, std::string_view caption) {
        text_ += fmt::format(
            "<figure><img src=\"data:image/png;base64,{}\" alt=\"{}\"><figcaption>{}</figcaption>"
            "</figure>\n",
            encode_base64(read_file(png)), escape_html(caption), escape_html(caption));
    }
    const std::string& text() const { return text_; }

  private:
    std::string text_;
};

std::string text_of(const json& value, std::string_view missing = "not recorded") {
    if (value.is_null()) {
        return std::string(missing);
    }
    if (value.is_string()) {
        return value.get<std::string>();
    }
    if (value.is_array()) {
        std::string joined;
        for (const json& item : value) {
            joined += (joined.empty() ? "" : ", ") + text_of(item);
        }
        return joined.empty() ? "none" : joined;
    }
    return value.dump();
}

std::string percent(const json& share) {
    return share.is_number() ? fmt::format("{:.2f}%", 100 * share.get<double>()) : "-";
}

std::string integer(const json& value) {
    return value.is_number() ? fmt::format("{}", value.get<int64_t>()) : "-";
}

std::string fixed(const json& value, int decimals) {
    return value.is_number() ? fmt::format("{:.{}f}", value.get<double>(), decimals) : "-";
}

// A scale as the quantizer stores it: exact powers of two are common, so 2^-k is shown with it.
std::string scale_text(const json& value) {
    if (!value.is_number()) {
        return text_of(value, "-");
    }
    const double scale = value.get<double>();
    int exponent = 0;
    const double mantissa = std::frexp(scale, &exponent);
    if (scale > 0 && mantissa == 0.5) {
        return fmt::format("{:.6g} (2^{})", scale, exponent - 1);
    }
    return fmt::format("{:.6g}", scale);
}

// ---------------------------------------------------------------------------------------------
// Report sections

void configuration_section(Html& html, const ReportInputs& inputs) {
    const json& metrics = inputs.metrics;
    html.heading(2, "Configuration");
    std::string scheme = inputs.quantization ? text_of(lookup(*inputs.quantization, {"scheme"}))
                                             : std::string("not recorded");
    if (scheme == "not recorded") {
        scheme = fmt::format("{}, {} calibration, {} bias",
                             text_of(lookup(metrics, {"qdq_model", "preset"})),
                             text_of(lookup(metrics, {"qdq_model", "calibration_method"})),
                             text_of(lookup(metrics, {"qdq_model", "bias"})));
    }
    std::vector<std::vector<std::string>> rows = {
        {"command line", text_of(lookup(metrics, {"command"}))},
        {"model source", fmt::format("{} ({})", text_of(lookup(metrics, {"model", "source"})),
                                     text_of(lookup(metrics, {"model", "path"})))},
        {"quantization scheme", scheme},
        {"algorithms", text_of(lookup(metrics, {"qdq_model", "algorithms"}))},
        {"execution provider (requested)", text_of(lookup(metrics, {"deployment", "requested"}))},
        {"fp32 model runs on", engine_label(metrics, "fp32")},
        {"int8 model runs on", engine_label(metrics, "int8")},
        {"ONNX Runtime version", text_of(lookup(metrics, {"onnxruntime_version"}))},
        {"edgeq version", EDGEQ_VERSION},
    };
    const json fallback = lookup(metrics, {"deployment", "fallback"});
    if (fallback.is_string()) {
        rows.push_back({"execution provider fallback", fallback.get<std::string>()});
    }
    html.table({"setting", "value"}, rows, {}, false);
}

void data_section(Html& html, const ReportInputs& inputs, const fs::path& out) {
    const json dataset = lookup(inputs.metrics, {"dataset"});
    html.heading(2, "Data split");
    std::vector<std::vector<std::string>> rows = {
        {"training images", integer(lookup(dataset, {"train"}))},
        {"calibration images (held out of training)", integer(lookup(dataset, {"calibration"}))},
        {"test images evaluated", integer(lookup(dataset, {"test"}))},
        {"split seed", integer(lookup(dataset, {"seed"}))},
        {"data folder", text_of(lookup(dataset, {"folder"}))},
    };
    if (dataset.contains("trained_on")) {
        rows.push_back({"images the model was trained on", integer(dataset["trained_on"])});
    }
    html.table({"images and split", "value"}, rows, {}, false);
    html.figure(out / kClassSamplesFigure, "Sample test images of each class");
}

void metrics_section(Html& html, const ReportInputs& inputs) {
    const json& metrics = inputs.metrics;
    html.heading(2, "Accuracy: fp32 against int8");
    const double fp32_accuracy = lookup(metrics, {"fp32", "accuracy"}).get<double>();

    auto delta = [&](const json& accuracy) {
        return accuracy.is_number()
                   ? fmt::format("{:+.2f}", 100 * (accuracy.get<double>() - fp32_accuracy))
                   : std::string("-");
    };
    std::vector<std::vector<std::string>> rows;
    std::vector<bool> reference;
    // The tutorial's fp32 model is not this one, so its row gets no difference to this fp32.
    auto add = [&](std::string name, std::string engine, const json& accuracy, const json& correct,
                   const json& total, bool is_reference = false) {
        rows.push_back({std::move(name), std::move(engine), percent(accuracy), integer(correct),
                        integer(total), is_reference ? std::string("-") : delta(accuracy)});
        reference.push_back(is_reference);
    };

    add("fp32", engine_label(metrics, "fp32"), lookup(metrics, {"fp32", "accuracy"}),
        lookup(metrics, {"fp32", "correct"}), lookup(metrics, {"fp32", "total"}));
    add("int8 QDQ", engine_label(metrics, "int8"), lookup(metrics, {"int8", "accuracy"}),
        lookup(metrics, {"int8", "correct"}), lookup(metrics, {"int8", "total"}));

    const json simulated = lookup(metrics, {"npu_sim"});
    if (simulated.is_object() && simulated.contains("accuracy")) {
        if (engine_label(metrics, "int8") != "CPUExecutionProvider") {
            add("int8 QDQ", "CPUExecutionProvider", lookup(simulated, {"cpu_ep", "accuracy"}),
                lookup(simulated, {"cpu_ep", "correct"}), simulated["total"]);
        }
        add("int8 QDQ", "npu-sim, half up (the DPU's rounding)",
            lookup(simulated, {"accuracy", "half_up"}), lookup(simulated, {"correct", "half_up"}),
            simulated["total"]);
        add("int8 QDQ", "npu-sim, half to even (ONNX's rounding)",
            lookup(simulated, {"accuracy", "half_even"}),
            lookup(simulated, {"correct", "half_even"}), simulated["total"]);
    }
    add("int8, Ryzen AI tutorial report", "reference", json(kReportInt8Accuracy), nullptr, nullptr,
        true);
    html.table({"model", "engine", "accuracy", "correct", "total", "vs fp32 (points)"}, rows,
               reference);
    if (simulated.is_object() && simulated.contains("top1_agreement_with_cpu_ep")) {
        html.paragraph(fmt::format(
            "npu-sim's top-1 class matches the CPU EP's on {} of the test images with half to "
            "even rounding and on {} with half up.",
            percent(simulated["top1_agreement_with_cpu_ep"]),
            percent(lookup(simulated, {"top1_agreement_with_cpu_ep_half_up"}))));
    } else if (simulated.is_object() && simulated.contains("skipped")) {
        html.paragraph(fmt::format("npu-sim was skipped: {}", text_of(simulated["skipped"])), true);
    }
}

void placement_section(Html& html, const ReportInputs& inputs) {
    html.heading(2, "Operator placement (Vitis AI EP model)");
    if (!inputs.placement) {
        html.paragraph(fmt::format("{} not found; edgeq run writes it.", kEpReportFile), true);
        return;
    }
    std::vector<std::vector<std::string>> rows;
    for (const json& device : lookup(*inputs.placement, {"deviceStat"})) {
        // vitisai_ep_report.json lists each operator type as "domain::type", and the standard
        // ONNX domain is the empty string, which leaves a bare "::" in front.
        std::string op_types;
        for (const json& op_type : lookup(device, {"supportedOpType"})) {
            std::string name = text_of(op_type);
            if (name.starts_with("::")) {
                name.erase(0, 2);
            }
            op_types += (op_types.empty() ? "" : ", ") + name;
        }
        rows.push_back(
            {text_of(lookup(device, {"name"})), integer(lookup(device, {"nodeNum"})), op_types});
    }
    html.table({"device", "nodes", "operator types"}, rows);

    // The reasons come from metrics.json; vitisai_ep_report.json only lists each node's device.
    std::vector<std::vector<std::string>> cpu_rows;
    const json reasons = lookup(inputs.metrics, {"cpu_placement"});
    if (reasons.is_array()) {
        for (const json& node : reasons) {
            cpu_rows.push_back({text_of(lookup(node, {"node"}), "(unnamed)"),
                                text_of(lookup(node, {"op_type"})),
                                text_of(lookup(node, {"reason"}))});
        }
    } else {
        for (const json& node : lookup(*inputs.placement, {"nodeStat"})) {
            if (lookup(node, {"device"}) == "CPU") {
                cpu_rows.push_back({text_of(lookup(node, {"comment"})),
                                    text_of(lookup(node, {"opType"})), "not recorded"});
            }
        }
    }
    html.heading(3, "Nodes on the CPU");
    if (cpu_rows.empty()) {
        html.paragraph("Every node runs on the NPU.", true);
    } else {
        html.table({"node", "operator", "reason"}, cpu_rows);
    }
}

void quantization_section(Html& html, const ReportInputs& inputs, bool has_sqnr_figure,
                          const fs::path& out) {
    html.heading(2, "Quantization");
    if (!inputs.quantization) {
        html.paragraph("quantization_report.json not found; edgeq run writes it.", true);
        return;
    }
    const json& report = *inputs.quantization;
    html.paragraph(fmt::format("Scheme: {}. Calibration took {} s.",
                               text_of(report.value("scheme", json())),
                               fixed(lookup(report, {"calibration_seconds"}), 1)));
    for (const json& warning : lookup(report, {"warnings"})) {
        html.paragraph(fmt::format("Warning: {}", text_of(warning)), true);
    }
    std::vector<std::vector<std::string>> float_rows;
    for (const json& node : lookup(report, {"float_nodes"})) {
        float_rows.push_back({text_of(lookup(node, {"node"})), text_of(lookup(node, {"op_type"})),
                              text_of(lookup(node, {"reason"}))});
    }
    if (!float_rows.empty()) {
        html.heading(3, "Nodes kept in float");
        html.table({"node", "operator", "reason"}, float_rows);
    }
    std::vector<std::vector<std::string>> rows;
    for (const json& tensor : lookup(report, {"tensors"})) {
        const json sqnr = lookup(tensor, {"sqnr_db"});
        const json clipped = lookup(tensor, {"clipped_share"});
        rows.push_back(
            {text_of(lookup(tensor, {"tensor"})), text_of(lookup(tensor, {"role"})),
             text_of(lookup(tensor, {"type"})), scale_text(lookup(tensor, {"scale"})),
             text_of(lookup(tensor, {"zero_point"}), "-"),
             sqnr.is_number()             ? fixed(sqnr, 1)
             : tensor.contains("sqnr_db") ? "exact"
                                          : "-",
             clipped.is_number() ? fmt::format("{:.4f}%", 100 * clipped.get<double>()) : "-"});
    }
    html.heading(3, "Quantized tensors");
    html.table({"tensor", "role", "type", "scale", "zero point", "SQNR (dB)", "clipped"}, rows);
    html.paragraph(
        "SQNR: 10 log10(sum x^2 / sum (x - q)^2) of the int8 model's tensor q against the fp32 "
        "model's x on the calibration images. Clipped: share of the values outside the "
        "quantized range.",
        true);
    if (has_sqnr_figure) {
        html.figure(out / kLayerSqnrFigure, "SQNR per quantized tensor");
    }
}

void stage_section(Html& html, const ReportInputs& inputs) {
    html.heading(2, "Time per stage");
    std::vector<std::vector<std::string>> rows;
    const json stages = lookup(inputs.metrics, {"stage_seconds"});
    if (stages.is_object()) {
        for (const auto& [stage, seconds] : stages.items()) {
            rows.push_back({stage, fixed(seconds, 2)});
        }
    }
    rows.push_back({"total", fixed(lookup(inputs.metrics, {"total_seconds"}), 2)});
    html.table({"stage", "seconds"}, rows);
    html.paragraph(
        "Wall time of each stage of edgeq run, on the machine that ran it. Drawing this "
        "report comes after the run and is not counted.",
        true);
}

void bench_section(Html& html, const json& bench) {
    html.heading(2, "Throughput (edgeq bench)");
    std::vector<std::vector<std::string>> rows;
    for (const json& row : lookup(bench, {"rows"})) {
        rows.push_back({text_of(lookup(row, {"engine"})), integer(lookup(row, {"batch_size"})),
                        integer(lookup(row, {"images"})), fixed(lookup(row, {"seconds"}), 3),
                        fixed(lookup(row, {"images_per_second"}), 1),
                        fixed(lookup(row, {"ratio_to_onnxruntime_fp32"}), 3)});
    }
    html.table({"engine", "batch size", "images", "seconds", "images/s", "vs ONNX Runtime fp32"},
               rows);
    html.paragraph(fmt::format("ONNX Runtime {} on {}; npu-sim rounding {}.",
                               text_of(lookup(bench, {"onnxruntime_version"})),
                               text_of(lookup(bench, {"execution_provider"})),
                               text_of(lookup(bench, {"npu_sim_rounding"}))),
                   true);
}

void sweep_section(Html& html, const json& sweep) {
    html.heading(2, "Quantization sweep (edgeq sweep)");
    std::vector<std::vector<std::string>> rows;
    for (const json& row : sweep) {
        rows.push_back({text_of(lookup(row, {"preset"})), text_of(lookup(row, {"method"})),
                        text_of(lookup(row, {"algorithms"})), percent(lookup(row, {"accuracy"})),
                        lookup(row, {"delta_vs_fp32"}).is_number()
                            ? fmt::format("{:+.2f}", 100 * row["delta_vs_fp32"].get<double>())
                            : "-",
                        text_of(lookup(row, {"bias"})),
                        fixed(lookup(row, {"quantize_seconds"}), 1)});
    }
    html.table(
        {"preset", "method", "algorithms", "accuracy", "vs fp32 (points)", "bias", "quantize (s)"},
        rows);
}

std::string build_html(const ReportInputs& inputs, const fs::path& out,
                       const std::vector<std::string>& figures) {
    auto has = [&](const char* name) {
        return std::find(figures.begin(), figures.end(), name) != figures.end();
    };
    Html html;
    html.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.raw("<title>edgeq report</title>\n<style>");
    html.raw(kStyle);
    html.raw("</style>\n</head>\n<body>\n");
    html.heading(1, "edgeq report: FashionCNN, fp32 and int8");
    html.paragraph(fmt::format("Output folder {}.", out.string()), true);

    // The results first, then how they were made.
    metrics_section(html, inputs);
    configuration_section(html, inputs);
    data_section(html, inputs, out);

    html.heading(2, "Confusion matrices");
    html.figure(out / kConfusionFp32Figure, "fp32: rows are true classes, columns predictions");
    html.figure(out / kConfusionInt8Figure, "int8: rows are true classes, columns predictions");

    html.heading(2, "Accuracy per class");
    html.figure(out / kPerClassAccuracyFigure, "Accuracy per class, fp32 beside int8");

    html.heading(2, "Predictions");
    html.figure(out / kPredictionsFigure, "The first test images with the int8 prediction");
    html.figure(out / kMisclassifiedFigure, "Test images the int8 model misclassifies");

    if (has(kTrainingCurvesFigure)) {
        html.heading(2, "Training");
        html.figure(out / kTrainingCurvesFigure,
                    fmt::format("Per-epoch record from {}", inputs.training_record.string()));
    }

    placement_section(html, inputs);
    quantization_section(html, inputs, has(kLayerSqnrFigure), out);
    stage_section(html, inputs);
    if (inputs.bench) {
        bench_section(html, *inputs.bench);
    }
    if (inputs.sweep && inputs.sweep->is_array()) {
        sweep_section(html, *inputs.sweep);
    }
    html.raw("</body>\n</html>\n");
    return html.text();
}

}  // namespace

std::string escape_html(std::string_view text) {
    std::string escaped;
    escaped.reserve(text.size());
    for (const char c : text) {
        switch (c) {
            case '&':
                escaped += "&amp;";
                break;
            case '<':
                escaped += "&lt;";
                break;
            case '>':
                escaped += "&gt;";
                break;
            case '"':
                escaped += "&quot;";
                break;
            case '\'':
                escaped += "&#39;";
                break;
            default:
                escaped += c;
        }
    }
    return escaped;
}

std::string encode_base64(std::string_view bytes) {
    constexpr std::string_view kAlphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string encoded;
    encoded.reserve((bytes.size() + 2) / 3 * 4);
    // Each 3 bytes (24 bits) become 4 characters of 6 bits; a short last group is padded with '='.
    for (size_t i = 0; i < bytes.size(); i += 3) {
        const size_t count = std::min<size_t>(3, bytes.size() - i);
        uint32_t group = 0;
        for (size_t b = 0; b < 3; ++b) {
            group = (group << 8) | (b < count ? static_cast<uint8_t>(bytes[i + b]) : 0u);
        }
        for (size_t c = 0; c < 4; ++c) {
            encoded += c <= count ? kAlphabet[(group >> (18 - 6 * c)) & 0x3f] : '=';
        }
    }
    return encoded;
}

namespace {

// Checks that every file of the report can be written before any is, so that the common failures
// (a read-only folder, a folder in place of a file) leave the old report and figures untouched.
// NOTE: a write that fails later, on a full disk, still leaves the figures written before it.
void check_report_outputs(const fs::path& out) {
    std::vector<const char*> names(kFigureFiles.begin(), kFigureFiles.end());
    names.push_back(kReportFile);
    for (const char* name : names) {
        if (fs::is_directory(out / name)) {
            fail(ExitCode::kIo, "'{}' is a folder; remove it so that the report can be written",
                 (out / name).string());
        }
    }
    ensure_writable_folder(out, "--out");
}

}  // namespace

std::vector<fs::path> write_report(const ReportOptions& options) {
    const ReportInputs inputs = read_inputs(options);
    check_report_outputs(options.out_folder);
    const std::vector<std::string> figures = draw_figures(inputs, options.out_folder);
    const std::string html = build_html(inputs, options.out_folder, figures);
    write_file_atomic(options.out_folder / kReportFile, html);

    std::vector<fs::path> written;
    for (const std::string& name : figures) {
        written.push_back(options.out_folder / name);
    }
    written.push_back(options.out_folder / kReportFile);
    return written;
}

}  // namespace edgeq::report
