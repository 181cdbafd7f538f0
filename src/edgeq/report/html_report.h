// The report of an `edgeq run` output folder: the figures (figures.h) and one self-contained
// report.html, with inline CSS, every image embedded as a data: URI, no script and no external
// reference, so that it opens from disk with no network.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace edgeq::report {

inline constexpr const char* kReportFile = "report.html";

struct ReportOptions {
    // The output folder of `edgeq run`. It must contain metrics.json, predictions.csv and
    // confusion_matrix_{fp32,int8}.csv; quantization_report.json, vitisai_ep_report.json,
    // bench.json and sweep.json add sections when present.
    std::filesystem::path out_folder;
    // The Fashion-MNIST folder with the test images; empty: the one metrics.json records.
    std::filesystem::path data_folder;
};

// Draws the figures into the output folder and writes report.html there, each file atomically.
// Returns the paths written, figures first. Throws Error(kIo) naming a missing input and
// Error(kInvalidInput) naming a malformed one.
std::vector<std::filesystem::path> write_report(const ReportOptions& options);

// Replaces &, <, >, " and ' with character references, so that `text` is safe in HTML element
// content and in quoted attribute values.
std::string escape_html(std::string_view text);

// Encodes `bytes` in standard base64 (RFC 4648, with '=' padding).
std::string encode_base64(std::string_view bytes);

}  // namespace edgeq::report
