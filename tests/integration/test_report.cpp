// The report of a real run. Every figure is a valid PNG, and report.html is self-contained and
// embeds them all. Headless Chromium renders it from disk with no console message and no broken
// image. `edgeq report` rebuilds the same file, and fails in one line without metrics.json.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/report/figures.h"
#include "edgeq/report/html_report.h"
#include "support/test_support.h"

namespace edgeq::report {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

// The run evaluates only this many test images, which keeps the test's run short; the figures
// and the report do not depend on the count.
constexpr int kTestSubset = 1000;
// A figure outside these sides has a broken layout, because the report's figures are between
// about 600 and 1300 px on each side.
constexpr uint32_t kMinSide = 300;
constexpr uint32_t kMaxSide = 2000;
// Real figures with text and images are tens to a few hundred KB.
constexpr uintmax_t kMinFigureBytes = 5'000;
constexpr uintmax_t kMaxFigureBytes = 3'000'000;
// Share of non-white pixels below which a figure or screenshot counts as blank.
constexpr double kMinInkShare = 0.01;
// Upper bound of one Chromium call; it renders the page in a few seconds when it works.
constexpr int kChromiumTimeoutSeconds = 120;
constexpr const char* kChromiumInstallHint = "install Debian's chromium (apt-get install chromium)";

std::string cli() {
    return test::cli_path().string();
}

std::string quoted(const fs::path& path) {
    return "'" + path.string() + "'";
}

int count_lines(const std::string& text) {
    return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// One `edgeq run` on the real data, shared by the checks below. ctest starts every TEST in its
// own process, where SetUpTestSuite runs again, so the checks that read the run's folder are
// one TEST to keep the suite to one run.
class ReportRun : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        if (test::fashion_mnist_folder().empty() ||
            !fs::exists(test::source_dir() / "models/fashion-cnn.pt")) {
            return;
        }
        folder_ = std::make_unique<ScratchFolder>("report-run");
        // The run starts in the source folder, where metrics.json's relative checkpoint path
        // finds the training record models/fashion-cnn.json.
        run_ = test::run_command("cd " + quoted(test::source_dir()) + " && " + cli() +
                                 " run --out " + quoted(folder_->path()) + " --test-subset " +
                                 std::to_string(kTestSubset) + " --data " +
                                 quoted(test::fashion_mnist_folder()));
    }
    static void TearDownTestSuite() { folder_.reset(); }

    void SetUp() override {
        if (folder_ == nullptr) {
            GTEST_SKIP() << "needs Debian's dataset-fashion-mnist and models/fashion-cnn.pt";
        }
        ASSERT_EQ(run_.exit_code, 0) << run_.output;
    }

    static fs::path out() { return folder_->path(); }

    static inline std::unique_ptr<ScratchFolder> folder_;
    static inline test::CommandResult run_;
};

void check_figures_are_valid_pngs(const fs::path& out) {
    for (const char* name : kFigureFiles) {
        SCOPED_TRACE(name);
        const fs::path path = out / name;
        ASSERT_TRUE(fs::exists(path));
        EXPECT_GE(fs::file_size(path), kMinFigureBytes);
        EXPECT_LE(fs::file_size(path), kMaxFigureBytes);
        const test::DecodedPng png = test::decode_png(path);
        ASSERT_TRUE(png.error.empty()) << png.error;
        EXPECT_GE(png.width, kMinSide);
        EXPECT_LE(png.width, kMaxSide);
        EXPECT_GE(png.height, kMinSide);
        EXPECT_LE(png.height, kMaxSide);
        EXPECT_GE(test::ink_share(png), kMinInkShare);
    }
}

// The page without the base64 payloads of its data: URIs, whose alphabet contains '/'.
std::string without_base64_payloads(const std::string& html) {
    std::string text;
    size_t from = 0;
    for (size_t at = html.find("base64,"); at != std::string::npos;
         at = html.find("base64,", from)) {
        text += html.substr(from, at - from);
        from = html.find('"', at);
        if (from == std::string::npos) {
            return text;
        }
    }
    return text + html.substr(from);
}

void check_html_is_self_contained(const fs::path& out) {
    const std::string html = read_file(out / kReportFile);
    const std::string markup = without_base64_payloads(html);
    // Any of these would load something from outside the file (or run code); "//" also
    // catches protocol-relative URLs.
    for (const char* external : {"http:", "https:", "ftp:", "file:", "//", "<script", "<link",
                                 "<iframe", "<object", "<embed", "@import", "url("}) {
        EXPECT_EQ(markup.find(external), std::string::npos) << "report.html contains " << external;
    }
    // Every image source is an embedded PNG.
    size_t sources = 0;
    for (size_t at = html.find("src="); at != std::string::npos; at = html.find("src=", at + 1)) {
        ++sources;
        EXPECT_EQ(html.compare(at, 27, "src=\"data:image/png;base64,"), 0) << html.substr(at, 60);
    }
    EXPECT_EQ(sources, kFigureFiles.size());
    for (const char* name : kFigureFiles) {
        EXPECT_NE(html.find(encode_base64(read_file(out / name))), std::string::npos)
            << name << " is not embedded";
    }
    for (const char* section : {"Configuration", "Data split", "fp32 against int8",
                                "Confusion matrices", "Operator placement", "Quantized tensors",
                                "Time per stage", "88.83%", "npu-sim, half up"}) {
        EXPECT_NE(html.find(section), std::string::npos) << "no '" << section << "'";
    }
}

// Loads report.html from a folder of its own (so nothing else is reachable) in headless
// Chromium, with every host name unresolvable. A test-only script records in the DOM how many
// images loaded; the product's page has no script.
void check_chromium_renders_the_report(const fs::path& out) {
    if (test::run_command("command -v chromium").exit_code != 0) {
        if (std::getenv("CI") != nullptr) {
            FAIL() << "chromium is missing on CI; " << kChromiumInstallHint;
        }
        GTEST_SKIP() << "chromium is not installed; " << kChromiumInstallHint;
    }
    const ScratchFolder page_folder("report-chromium");
    std::string html = read_file(out / kReportFile);
    const size_t body_end = html.rfind("</body>");
    ASSERT_NE(body_end, std::string::npos);
    html.insert(body_end,
                "<script>window.addEventListener('load', function () {"
                " var images = Array.from(document.images);"
                " var broken = images.filter(function (image) {"
                " return !(image.complete && image.naturalWidth > 0); }).length;"
                " document.body.setAttribute('data-images', String(images.length));"
                " document.body.setAttribute('data-broken-images', String(broken)); });"
                "</script>\n");
    const fs::path page = page_folder / "report.html";
    write_file_atomic(page, html);

    // The screenshot stays in gtest's temporary folder after the test, for a person to look at.
    const fs::path screenshot = fs::path(::testing::TempDir()) / "edgeq-report-screenshot.png";
    fs::remove(screenshot);
    // --virtual-time-budget lets the page finish loading, and the load handler run, before
    // Chromium dumps the DOM or takes the screenshot.
    const std::string chromium = fmt::format(
        "timeout {} chromium --headless --no-sandbox --disable-gpu "
        "--enable-logging=stderr --v=0 --host-resolver-rules='MAP * ~NOTFOUND' "
        "--user-data-dir={} --virtual-time-budget=10000 ",
        kChromiumTimeoutSeconds, quoted(page_folder / "profile"));
    const std::string url = "file://" + page.string();

    const test::CommandResult shot = test::run_command_stderr(
        chromium + "--screenshot=" + quoted(screenshot) + " --window-size=1280,3000 " + url);
    std::cout << "report screenshot: " << screenshot.string() << std::endl;
    EXPECT_EQ(shot.exit_code, 0) << shot.output;
    EXPECT_EQ(shot.output.find("CONSOLE"), std::string::npos) << shot.output;
    ASSERT_TRUE(fs::exists(screenshot)) << shot.output;
    const test::DecodedPng png = test::decode_png(screenshot);
    ASSERT_TRUE(png.error.empty()) << png.error;
    EXPECT_EQ(png.width, 1280u);
    EXPECT_GE(test::ink_share(png), kMinInkShare);

    const test::CommandResult dom =
        test::run_command(chromium + "--dump-dom " + url + " 2>" + quoted(page_folder / "log"));
    const std::string dom_log = read_file(page_folder / "log");
    EXPECT_EQ(dom.exit_code, 0) << dom_log;
    EXPECT_EQ(dom_log.find("CONSOLE"), std::string::npos) << dom_log;
    EXPECT_NE(dom.output.find(fmt::format("data-images=\"{}\"", kFigureFiles.size())),
              std::string::npos)
        << "the load handler did not record every image";
    EXPECT_NE(dom.output.find("data-broken-images=\"0\""), std::string::npos)
        << "an image did not load";
}

void check_report_command_rebuilds_the_same_file(const fs::path& out) {
    const std::string before = read_file(out / kReportFile);
    const test::CommandResult result = test::run_command(
        "cd " + quoted(test::source_dir()) + " && " + cli() + " report --out " + quoted(out));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_EQ(read_file(out / kReportFile), before);
}

// Copies the run's input files (not its figures or report) into `folder`, for a broken copy.
void copy_report_inputs(const fs::path& out, const fs::path& folder) {
    for (const char* name : {"metrics.json", "predictions.csv", "confusion_matrix_fp32.csv",
                             "confusion_matrix_int8.csv", "quantization_report.json"}) {
        fs::copy_file(out / name, folder / name);
    }
}

// Runs `edgeq report` on a copy of the run broken by `breaks` and expects exit code 3 (invalid
// input), one line that mentions `must_mention`, and no figure or report.html.
void expect_rejected_copy(const fs::path& out, const std::string& case_name,
                          const std::function<void(const fs::path&)>& breaks,
                          const std::string& must_mention) {
    SCOPED_TRACE(case_name);
    const ScratchFolder folder("report-" + case_name);
    copy_report_inputs(out, folder.path());
    breaks(folder.path());
    const test::CommandResult result =
        test::run_command_stderr(cli() + " report --out " + quoted(folder.path()));
    EXPECT_EQ(result.exit_code, static_cast<int>(ExitCode::kInvalidInput)) << result.output;
    EXPECT_EQ(count_lines(result.output), 1) << "not one line: " << result.output;
    EXPECT_NE(result.output.find(must_mention), std::string::npos) << result.output;
    for (const char* name : kFigureFiles) {
        EXPECT_FALSE(fs::exists(folder / name)) << name;
    }
    EXPECT_FALSE(fs::exists(folder / kReportFile));
}

void check_broken_copies_are_rejected(const fs::path& out) {
    // predictions.csv cut at a line end still parses, so only the count against the confusion
    // matrices shows that rows are missing.
    expect_rejected_copy(
        out, "cut-predictions",
        [](const fs::path& folder) {
            const std::string csv = read_file(folder / "predictions.csv");
            const size_t half_line_end = csv.rfind('\n', csv.size() / 2);
            write_file_atomic(folder / "predictions.csv", csv.substr(0, half_line_end + 1));
        },
        "predictions.csv");
    expect_rejected_copy(
        out, "array-quantization-report",
        [](const fs::path& folder) {
            write_file_atomic(folder / "quantization_report.json", "[1]");
        },
        "quantization_report.json");
    expect_rejected_copy(
        out, "cut-metrics",
        [](const fs::path& folder) {
            const std::string metrics = read_file(folder / "metrics.json");
            write_file_atomic(folder / "metrics.json", metrics.substr(0, metrics.size() / 2));
        },
        "metrics.json");
}

TEST_F(ReportRun, FiguresAndSelfContainedHtml) {
    EXPECT_NE(run_.output.find("report.html"), std::string::npos)
        << "the run does not log the report's files";
    {
        SCOPED_TRACE("check_figures_are_valid_pngs");
        check_figures_are_valid_pngs(out());
    }
    {
        SCOPED_TRACE("check_html_is_self_contained");
        check_html_is_self_contained(out());
    }
    {
        SCOPED_TRACE("check_report_command_rebuilds_the_same_file");
        check_report_command_rebuilds_the_same_file(out());
    }
    {
        SCOPED_TRACE("check_broken_copies_are_rejected");
        check_broken_copies_are_rejected(out());
    }
    {
        SCOPED_TRACE("check_chromium_renders_the_report");
        check_chromium_renders_the_report(out());
    }
}

TEST(ReportCli, MissingMetricsIsOneLineError) {
    const ScratchFolder folder("report-empty");
    const test::CommandResult result =
        test::run_command_stderr(cli() + " report --out " + quoted(folder.path()));
    EXPECT_EQ(result.exit_code, static_cast<int>(ExitCode::kIo)) << result.output;
    EXPECT_EQ(count_lines(result.output), 1) << "not one line: " << result.output;
    EXPECT_NE(result.output.find("metrics.json"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("edgeq run"), std::string::npos) << result.output;
    EXPECT_FALSE(fs::exists(folder / kReportFile));
    EXPECT_TRUE(fs::is_empty(folder.path()));
}

}  // namespace
}  // namespace edgeq::report
