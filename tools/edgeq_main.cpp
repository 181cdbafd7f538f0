// edgeq: the command-line front end. Each subcommand parses its flags and calls the edgeq
// library; an error becomes one line on stderr and an exit code (see ExitCode in error.h).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <cmath>

#include "edgeq/common/error.h"
#include "edgeq/common/files.h"
#include "edgeq/common/logging.h"
#include "edgeq/eval/evaluate.h"
#include "edgeq/model/pytorch_state_dict.h"
#include "edgeq/onnx/export.h"
#include "edgeq/onnx/model_io.h"
#include "edgeq/pipeline/run.h"
#include "edgeq/pipeline/train_stage.h"
#include "edgeq/quant/qdq_summary.h"

namespace {

using namespace edgeq;
namespace fs = std::filesystem;

// Number checks with short messages (CLI11's own print the whole double range).
const CLI::Validator kPositive(
    [](std::string& text) {
        try {
            const double value = std::stod(text);
            return std::isfinite(value) && value > 0 ? std::string{}
                                                     : "must be a finite number greater than 0";
        } catch (const std::exception&) {
            return std::string("is not a number");
        }
    },
    "> 0", "positive");
const CLI::Validator kNonNegative(
    [](std::string& text) {
        try {
            const double value = std::stod(text);
            return std::isfinite(value) && value >= 0 ? std::string{}
                                                      : "must be a finite number, 0 or more";
        } catch (const std::exception&) {
            return std::string("is not a number");
        }
    },
    ">= 0", "non-negative");

std::string join_arguments(int argc, char** argv) {
    std::string line = "edgeq";
    for (int i = 1; i < argc; ++i) {
        line += ' ';
        line += argv[i];
    }
    return line;
}

// Options shared by the commands that read Fashion-MNIST.
struct DataOptions {
    std::string folder{kDefaultDataFolder};
    uint64_t seed = 42;
    int64_t calibration_count = 5000;
};

void add_data_options(CLI::App& command, DataOptions& options) {
    command.add_option("--data", options.folder, "Fashion-MNIST folder (IDX files, gzip or plain)")
        ->capture_default_str();
    command
        .add_option("--seed", options.seed, "seed of the train/calibration split and of training")
        ->capture_default_str()
        ->check(kNonNegative);
    command
        .add_option("--calibration-count", options.calibration_count,
                    "training images held out for calibration")
        ->capture_default_str()
        ->check(kPositive);
}

void add_train_options(CLI::App& command, TrainOptions& options) {
    command.add_option("--epochs", options.epochs, "training epochs")
        ->capture_default_str()
        ->check(kPositive);
    command.add_option("--batch-size", options.batch_size, "training batch size")
        ->capture_default_str()
        ->check(kPositive);
    command.add_option("--lr", options.learning_rate, "initial Adam learning rate")
        ->capture_default_str()
        ->check(kPositive);
    command
        .add_option("--final-lr", options.final_learning_rate,
                    "learning rate that the cosine decay reaches in the last epoch")
        ->capture_default_str()
        ->check(kNonNegative);
    command
        .add_option("--max-shift", options.max_shift,
                    "augmentation: largest random shift in pixels (0 = none)")
        ->capture_default_str()
        ->check(CLI::Range(0, 8));
    command.add_flag("--flip", options.horizontal_flip,
                     "augmentation: mirror half of the images left-right");
}

// Options of the quantizer, given as text and parsed after CLI11 is done.
struct QuantizeFlags {
    std::string method = "minmax";
    std::string bias = "int8";
    int64_t calibration_batch_size = 100;

    QuantizeOptions parse() const {
        QuantizeOptions options;
        options.method = parse_calibration_method(method);
        options.bias = parse_bias_mode(bias);
        options.calibration_batch_size = calibration_batch_size;
        return options;
    }
};

void add_quantize_options(CLI::App& command, QuantizeFlags& flags) {
    command.add_option("--method", flags.method, "calibration method: minmax or minmse (power-of-two MSE search, as AMD Quark)")
        ->capture_default_str();
    command
        .add_option("--bias", flags.bias,
                    "bias type: int8 (power-of-two scale, as AMD Quark's XINT8) or int32 "
                    "(scale s_input * s_weight)")
        ->capture_default_str();
    command
        .add_option("--calibration-batch-size", flags.calibration_batch_size,
                    "images per calibration batch (does not change the result)")
        ->capture_default_str()
        ->check(kPositive);
}

void add_ep_option(CLI::App& command, std::string& provider) {
    command.add_option("--ep", provider, "ONNX Runtime execution provider: cpu or vitisai")
        ->capture_default_str()
        ->check(CLI::IsMember({kCpuProvider, kVitisAiProvider}));
}

// `edgeq export`: checkpoint or state_dict -> checked ONNX model.
void run_export(const std::string& checkpoint, const std::string& state_dict,
                const std::string& output) {
    check_output_file(output, "--output");
    FashionCnn model;
    if (!state_dict.empty()) {
        import_state_dict(model, read_pytorch_state_dict(state_dict), state_dict);
    } else {
        model = load_checkpoint(checkpoint);
    }
    const onnx::ModelProto exported = export_fashion_cnn(export_state_dict(model));
    check_onnx_model(exported, output);
    save_onnx_model(exported, output);
    spdlog::info("exported {} ({} nodes, opset {}, passes the ONNX checker)", output,
                 exported.graph().node_size(), kExportOpset);
}

// `edgeq quantize`: float ONNX model + calibration images -> QDQ model.
void run_quantize(const std::string& model_path, const std::string& output,
                  const DataOptions& data_options, const QuantizeFlags& flags) {
    const QuantizeOptions options = flags.parse();
    check_output_file(output, "--output");
    const onnx::ModelProto float_model = load_onnx_model(model_path);
    check_onnx_model(float_model, model_path);
    const PreparedData data =
        prepare_data(data_options.folder, data_options.calibration_count, data_options.seed);
    LabelledImagesReader reader(data.calibration, options.calibration_batch_size);
    const QdqModel qdq = quantize_to_qdq(float_model, reader, options, SessionConfig{}, model_path);
    check_onnx_model(qdq.model, output);
    save_onnx_model(qdq.model, output);
    for (const std::string& warning : qdq.warnings) {
        spdlog::warn("warning: {}", warning);
    }
    spdlog::info("quantized {} -> {} ({} nodes), calibrated on {} images in {:.1f} s:\n{}",
                 model_path, output, qdq.model.graph().node_size(), data.calibration.size(),
                 qdq.calibration_seconds, format_qdq_summary(summarize_qdq_model(qdq.model)));
}

// `edgeq eval`: accuracy and confusion matrix of an ONNX model on the test images.
void run_eval(const std::string& model_path, const std::string& data_folder,
              const SessionConfig& session, int64_t batch_size) {
    const LabelledImages test = load_fashion_mnist_test(data_folder);
    OrtModel model(model_path, session);
    const ClassificationResult result = evaluate_classifier(model, test, batch_size);
    spdlog::info("{}: accuracy {:.2f}% ({} of {} correct, {} misclassified) on {} in {:.2f} s",
                 model_path, 100.0 * result.accuracy(), result.correct, result.total,
                 result.total - result.correct, model.execution_provider(), result.seconds);
    std::string header = fmt::format("{:>12}", "true\\pred");
    for (int p = 0; p < kFashionClassCount; ++p) {
        header += fmt::format(" {:>5}", p);
    }
    spdlog::info("{}", header);
    for (int t = 0; t < kFashionClassCount; ++t) {
        std::string row = fmt::format("{:>12}", kFashionClassNames[t]);
        for (int p = 0; p < kFashionClassCount; ++p) {
            row += fmt::format(" {:>5}", result.confusion[t][p]);
        }
        spdlog::info("{}", row);
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "edgeq: train, export, quantize (int8 QDQ for an edge NPU) and evaluate an image "
        "classifier"};
    app.require_subcommand(1);
    app.fallthrough();  // -q and -v also work after the command name
    // Usage errors are one line on stderr, like every other error.
    app.failure_message([](const CLI::App*, const CLI::Error& error) {
        return fmt::format("edgeq: error: {}; run with --help for the options\n", error.what());
    });
    bool quiet = false;
    app.add_flag("-q,--quiet", quiet, "print warnings and errors only");
    bool verbose = false;
    app.add_flag("-v,--verbose", verbose, "print debug lines, ONNX Runtime's log among them");
    app.footer(
        "Run 'edgeq <command> --help' for a command's options.\n"
        "Exit codes: 0 success, 1 internal error, 2 usage, 3 invalid input, 4 I/O "
        "error, 5 unsupported.");

    DataOptions data;
    TrainOptions train_options;
    QuantizeFlags quantize_flags;
    std::string provider = kCpuProvider;

    // edgeq run
    RunOptions run_options;
    std::string run_out = "out";
    std::string run_checkpoint = kDefaultCheckpoint;
    std::string run_state_dict;
    CLI::App* run = app.add_subcommand(
        "run",
        "the whole job: data, model, ONNX export, int8 quantization, ONNX Runtime, "
        "evaluation");
    add_data_options(*run, data);
    add_train_options(*run, train_options);
    add_quantize_options(*run, quantize_flags);
    add_ep_option(*run, provider);
    run->add_option("--out", run_out, "output folder for every artifact")->capture_default_str();
    run->add_option("--checkpoint", run_checkpoint, "trained checkpoint to start from")
        ->capture_default_str();
    run->add_option("--state-dict", run_state_dict,
                    "start from a PyTorch state_dict saved in Python instead")
        ->excludes("--checkpoint");
    run->add_flag("--retrain", run_options.retrain,
                  "train a new model (saved as <out>/fashion-cnn.pt) instead of loading one")
        ->excludes("--state-dict")
        ->excludes("--checkpoint");
    run->add_option("--eval-batch-size", run_options.eval_batch_size, "images per inference batch")
        ->capture_default_str()
        ->check(kPositive);
    run->add_option("--train-subset", run_options.train_subset,
                    "with --retrain: train on only the first N training images (quick checks)")
        ->check(kNonNegative)
        ->needs("--retrain");
    run->add_option("--test-subset", run_options.test_subset,
                    "evaluate on only the first N test images (quick checks)")
        ->check(kNonNegative);
    run->footer(
        "Example: edgeq run --out out\n"
        "         edgeq run --retrain --epochs 20 --seed 7 --out out-seed7");

    // edgeq train
    std::string train_checkpoint = "out/fashion-cnn.pt";
    CLI::App* train = app.add_subcommand("train", "train FashionCNN and save a checkpoint");
    add_data_options(*train, data);
    add_train_options(*train, train_options);
    train->add_option("--checkpoint", train_checkpoint, "where to save the checkpoint")
        ->capture_default_str();
    train->footer("Example: edgeq train --epochs 20 --seed 42 --checkpoint models/fashion-cnn.pt");

    // edgeq export
    std::string export_checkpoint = kDefaultCheckpoint;
    std::string export_state_dict_path;
    std::string export_output = std::string("out/") + kFloatModelFile;
    CLI::App* export_command =
        app.add_subcommand("export", "export a checkpoint to ONNX (opset 13)");
    export_command->add_option("--checkpoint", export_checkpoint, "edgeq checkpoint")
        ->capture_default_str();
    export_command
        ->add_option("--state-dict", export_state_dict_path,
                     "PyTorch state_dict saved in Python (instead of --checkpoint)")
        ->excludes("--checkpoint");
    export_command->add_option("-o,--output", export_output, "ONNX file to write")
        ->capture_default_str();
    export_command->footer("Example: edgeq export --state-dict fashion-mnist.pt -o model.onnx");

    // edgeq quantize
    std::string quantize_model = std::string("out/") + kFloatModelFile;
    std::string quantize_output = std::string("out/") + kQdqModelFile;
    CLI::App* quantize = app.add_subcommand(
        "quantize", "quantize a float ONNX model to int8 QDQ, calibrated on held-out images");
    quantize->add_option("-m,--model", quantize_model, "float ONNX model")->capture_default_str();
    quantize->add_option("-o,--output", quantize_output, "QDQ model to write")
        ->capture_default_str();
    add_data_options(*quantize, data);
    add_quantize_options(*quantize, quantize_flags);
    quantize->footer("Example: edgeq quantize -m out/fashion-mnist.onnx --bias int32 -o q.onnx");

    // edgeq eval
    std::string eval_model = std::string("out/") + kQdqModelFile;
    int64_t eval_batch_size = 1000;
    CLI::App* eval = app.add_subcommand("eval", "accuracy and confusion matrix on the test images");
    eval->add_option("-m,--model", eval_model, "ONNX model")->capture_default_str();
    eval->add_option("--data", data.folder, "Fashion-MNIST folder")->capture_default_str();
    eval->add_option("--batch-size", eval_batch_size, "images per inference batch")
        ->capture_default_str()
        ->check(kPositive);
    add_ep_option(*eval, provider);
    eval->footer("Example: edgeq eval -m out/fashion-mnist.qdq.U8S8.onnx --ep cpu");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        // CLI11 prints help (exit 0) or the one-line usage error; its own codes become ours.
        const int code = app.exit(error);
        return code == 0 ? 0 : static_cast<int>(ExitCode::kUsage);
    }

    setup_console_logging(quiet, verbose);

    try {
        SessionConfig session;
        session.execution_provider = provider;
        if (run->parsed()) {
            run_options.data_folder = data.folder;
            run_options.out_folder = run_out;
            run_options.checkpoint = run_checkpoint;
            if (!run_state_dict.empty()) {
                run_options.state_dict = run_state_dict;
            }
            run_options.seed = data.seed;
            run_options.calibration_count = data.calibration_count;
            run_options.train = train_options;
            run_options.train.seed = data.seed;
            run_options.quantize = quantize_flags.parse();
            run_options.session = session;
            run_options.command_line = join_arguments(argc, argv);
            run_pipeline(run_options);
        } else if (train->parsed()) {
            train_options.seed = data.seed;
            const PreparedData prepared =
                prepare_data(data.folder, data.calibration_count, data.seed);
            train_and_save(prepared, train_options, train_checkpoint, join_arguments(argc, argv));
        } else if (export_command->parsed()) {
            run_export(export_checkpoint, export_state_dict_path, export_output);
        } else if (quantize->parsed()) {
            run_quantize(quantize_model, quantize_output, data, quantize_flags);
        } else if (eval->parsed()) {
            run_eval(eval_model, data.folder, session, eval_batch_size);
        }
    } catch (const Error& error) {
        spdlog::error("edgeq: error: {}", error.what());
        return static_cast<int>(error.code());
    } catch (const std::exception& error) {
        // libtorch appends a multi-line C++ backtrace to its messages; the first line is the error.
        const std::string message = error.what();
        spdlog::error("edgeq: internal error: {}", message.substr(0, message.find('\n')));
        return static_cast<int>(ExitCode::kInternal);
    }
    return 0;
}
