// read_pytorch_state_dict on files that Python's torch.save wrote (tests/fixtures/
// make_state_dict.py, skipped without python3-torch) and on archives built here opcode by opcode
// with libtorch's PyTorchStreamWriter, for damage that torch.save never produces.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>

#include "edgeq/common/error.h"
#include "edgeq/model/fashion_cnn.h"
#include "edgeq/model/pytorch_state_dict.h"
#include "support/test_support.h"

namespace edgeq {
namespace {

namespace fs = std::filesystem;
using test::ScratchFolder;

static_assert(std::endian::native == std::endian::little,
              "the hand-made storage records below are written in host byte order");

// Python and C++ run the same libtorch 1.13 kernels on the same weights, so the logits usually
// match exactly (the test prints the largest difference). The tolerance allows for another thread
// count or CPU code path reordering float32 sums, which moves logits of order 1 to 10 by a few
// units in the last place (about 1e-6 each).
constexpr float kLogitTolerance = 1e-4f;

struct Failure {
    ExitCode code = ExitCode::kSuccess;
    std::string message;
};

// Runs `action`, expects an edgeq::Error, and returns its code and message.
template <typename Action>
Failure expect_failure(Action action) {
    try {
        action();
    } catch (const Error& error) {
        return {error.code(), error.what()};
    }
    ADD_FAILURE() << "no edgeq::Error was thrown";
    return {};
}

Failure read_failure(const fs::path& path) {
    return expect_failure([&] { read_pytorch_state_dict(path); });
}

void write_bytes(const fs::path& path, std::string_view bytes) {
    std::ofstream stream(path, std::ios::binary);
    stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const fs::path& path) {
    std::ifstream stream(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>()};
}

nlohmann::json read_json(const fs::path& path) {
    return nlohmann::json::parse(read_bytes(path));
}

// Compares every key of `expected` ({key: {"shape": [...], "values": [...]}}) exactly: each value
// was converted to float32 by torch in Python and by the reader here, both rounding to nearest.
void expect_matches(const StateDict& weights, const nlohmann::json& expected) {
    EXPECT_EQ(weights.size(), expected.size());
    for (const auto& [key, tensor] : expected.items()) {
        SCOPED_TRACE("key " + key);
        const auto found = weights.find(key);
        ASSERT_NE(found, weights.end());
        EXPECT_EQ(found->second.shape, tensor["shape"].get<std::vector<int64_t>>());
        const auto values = tensor["values"].get<std::vector<float>>();
        ASSERT_EQ(found->second.values.size(), values.size());
        for (size_t i = 0; i < values.size(); ++i) {
            EXPECT_EQ(found->second.values[i], values[i]) << "at flat index " << i;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Files written by Python's torch.save

// Runs make_state_dict.py once for every test of the suite.
class PytorchStateDict : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        python_ = test::python_with_module("torch");
        if (python_.empty()) {
            return;
        }
        folder_ = std::make_unique<ScratchFolder>("pytorch-state-dict");
        const fs::path script = test::source_dir() / "tests/fixtures/make_state_dict.py";
        fixture_run_ = test::run_command(python_ + " '" + script.string() + "' '" +
                                         folder_->path().string() + "'");
    }

    static void TearDownTestSuite() { folder_.reset(); }

    void SetUp() override {
        if (python_.empty()) {
            GTEST_SKIP() << "python3-torch is missing (no python3 imports torch); install "
                            "Debian's python3-torch to write the torch.save fixtures";
        }
        ASSERT_EQ(fixture_run_.exit_code, 0) << "make_state_dict.py failed:\n"
                                             << fixture_run_.output;
    }

    static fs::path fixture(const std::string& name) { return folder_->path() / name; }

    static inline std::string python_;
    static inline std::unique_ptr<ScratchFolder> folder_;
    static inline test::CommandResult fixture_run_;
};

TEST_F(PytorchStateDict, FashionCnnValuesMatch) {
    const StateDict weights = read_pytorch_state_dict(fixture("fashion_cnn.pth"));
    const nlohmann::json manifest = read_json(fixture("fashion_cnn.json"));
    const std::string values_bytes = read_bytes(fixture("fashion_cnn_values.bin"));
    std::vector<float> expected_values(values_bytes.size() / sizeof(float));
    std::memcpy(expected_values.data(), values_bytes.data(), values_bytes.size());

    // fashion_cnn_values.bin contains every tensor in the manifest's key order, back to back.
    ASSERT_EQ(weights.size(), manifest["keys"].size());
    size_t offset = 0;
    for (const auto& entry : manifest["keys"]) {
        const auto key = entry["key"].get<std::string>();
        SCOPED_TRACE("key " + key);
        const auto found = weights.find(key);
        ASSERT_NE(found, weights.end());
        EXPECT_EQ(found->second.shape, entry["shape"].get<std::vector<int64_t>>());

        const std::vector<float>& values = found->second.values;
        ASSERT_LE(offset + values.size(), expected_values.size());
        size_t mismatches = 0;
        for (size_t i = 0; i < values.size(); ++i) {
            mismatches += values[i] != expected_values[offset + i] ? 1 : 0;
        }
        EXPECT_EQ(mismatches, 0u);
        offset += values.size();
    }
    EXPECT_EQ(offset, expected_values.size());

    // num_batches_tracked is an int64 tensor in the file, counting three train-mode passes.
    EXPECT_EQ(weights.at("layer1.1.num_batches_tracked").values, std::vector<float>{3.0f});
}

TEST_F(PytorchStateDict, FashionCnnLogitsMatch) {
    const fs::path path = fixture("fashion_cnn.pth");
    FashionCnn model;
    import_state_dict(model, read_pytorch_state_dict(path), path.string());
    model->eval();

    torch::NoGradGuard no_grad;
    const torch::Tensor input =
        torch::arange(2 * 28 * 28, torch::kFloat32).remainder(97).div(96).reshape({2, 1, 28, 28});
    const torch::Tensor logits = model->forward(input).contiguous();

    const auto expected = read_json(fixture("fashion_cnn.json"))["logits"];
    ASSERT_EQ(logits.size(0), static_cast<int64_t>(expected.size()));
    float max_difference = 0.0f;
    for (int64_t row = 0; row < logits.size(0); ++row) {
        for (int64_t column = 0; column < logits.size(1); ++column) {
            const float python = expected[row][column].get<float>();
            const float cpp = logits[row][column].item<float>();
            max_difference = std::max(max_difference, std::abs(python - cpp));
            EXPECT_NEAR(cpp, python, kLogitTolerance) << "logit [" << row << "][" << column << "]";
        }
    }
    std::cout << "largest logit difference from Python: " << max_difference << "\n";
}

TEST_F(PytorchStateDict, ViewsAndDtypesMatch) {
    expect_matches(read_pytorch_state_dict(fixture("views.pth")), read_json(fixture("views.json")));
}

TEST_F(PytorchStateDict, Protocol5Matches) {
    expect_matches(read_pytorch_state_dict(fixture("views_protocol5.pth")),
                   read_json(fixture("views.json")));
}

TEST_F(PytorchStateDict, BigEndianMatches) {
    const nlohmann::json all = read_json(fixture("views.json"));
    nlohmann::json expected;
    for (const std::string key : {"base", "transposed", "column_slice"}) {
        expected[key] = all[key];
    }
    expect_matches(read_pytorch_state_dict(fixture("views_big_endian.pth")), expected);
}

TEST_F(PytorchStateDict, WrongShapeNamesKey) {
    const fs::path path = fixture("wrong_shape.pth");
    const StateDict weights = read_pytorch_state_dict(path);
    FashionCnn model;
    const Failure failure = expect_failure([&] { import_state_dict(model, weights, "wrong"); });
    EXPECT_NE(failure.message.find("'fc3.weight'"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("[10, 100]"), std::string::npos) << failure.message;
}

TEST_F(PytorchStateDict, MissingKeyNamed) {
    const StateDict weights = read_pytorch_state_dict(fixture("missing_key.pth"));
    FashionCnn model;
    const Failure failure = expect_failure([&] { import_state_dict(model, weights, "missing"); });
    EXPECT_NE(failure.message.find("'layer2.1.running_var'"), std::string::npos) << failure.message;
}

TEST_F(PytorchStateDict, ExtraKeyNamed) {
    const StateDict weights = read_pytorch_state_dict(fixture("extra_key.pth"));
    FashionCnn model;
    const Failure failure = expect_failure([&] { import_state_dict(model, weights, "extra"); });
    EXPECT_NE(failure.message.find("'fc4.weight'"), std::string::npos) << failure.message;
}

TEST_F(PytorchStateDict, TruncatedFileRejected) {
    // Every prefix of a small archive, then a few cuts of the FashionCNN one: each is one error
    // line naming the file, whichever part of the zip the cut lands in.
    const std::string views = read_bytes(fixture("float32_views.pth"));
    const fs::path truncated = fixture("truncated.pth");
    for (size_t length = 0; length < views.size(); ++length) {
        write_bytes(truncated, std::string_view(views).substr(0, length));
        const Failure failure = read_failure(truncated);
        ASSERT_EQ(failure.code, ExitCode::kInvalidInput) << "length " << length;
        ASSERT_NE(failure.message.find(truncated.string()), std::string::npos) << failure.message;
        ASSERT_EQ(failure.message.find('\n'), std::string::npos) << failure.message;
    }

    const std::string model = read_bytes(fixture("fashion_cnn.pth"));
    for (const size_t length : {size_t{100}, model.size() / 2, model.size() - 1}) {
        write_bytes(truncated, std::string_view(model).substr(0, length));
        const Failure failure = read_failure(truncated);
        EXPECT_EQ(failure.code, ExitCode::kInvalidInput) << "length " << length;
        EXPECT_NE(failure.message.find("truncated"), std::string::npos) << failure.message;
    }
}

TEST_F(PytorchStateDict, LegacyFormatRejected) {
    const Failure failure = read_failure(fixture("legacy.pth"));
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("legacy"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("_use_new_zipfile_serialization=True"), std::string::npos)
        << failure.message;
}

TEST_F(PytorchStateDict, PayloadNotExecuted) {
    // torch.save pickled an object whose __reduce__ calls os.system (posix.system on Linux).
    const Failure failure = read_failure(fixture("payload.pth"));
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("'posix.system'"), std::string::npos) << failure.message;
    EXPECT_FALSE(fs::exists(fixture("payload_ran")));
}

TEST_F(PytorchStateDict, WholeModelRejected) {
    const Failure failure = read_failure(fixture("whole_model.pth"));
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("'__main__.FashionCNN'"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("execute code"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("model.state_dict()"), std::string::npos) << failure.message;
}

TEST_F(PytorchStateDict, TensorOnlyRejected) {
    const Failure failure = read_failure(fixture("tensor_only.pth"));
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("not a state_dict"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("is a tensor"), std::string::npos) << failure.message;
}

TEST_F(PytorchStateDict, TrainingCheckpointRejected) {
    const Failure failure = read_failure(fixture("training_checkpoint.pth"));
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("key 'epoch' is a int"), std::string::npos) << failure.message;
    EXPECT_NE(failure.message.find("torch.save(checkpoint['model'], path)"), std::string::npos)
        << failure.message;
}

// ------------------------------------------------------------------------------------------------
// Hand-made archives

// Appends pickle opcodes with their arguments. The opcode bytes are those of CPython's
// Lib/pickle.py, and all integers are little-endian.
class PickleBuilder {
  public:
    PickleBuilder& op(char code) {
        bytes_ += code;
        return *this;
    }
    PickleBuilder& proto(uint8_t version) {
        bytes_ += '\x80';
        bytes_ += static_cast<char>(version);
        return *this;
    }
    PickleBuilder& global(std::string_view module, std::string_view name) {
        bytes_ += 'c';
        bytes_ += std::string(module) + '\n' + std::string(name) + '\n';
        return *this;
    }
    PickleBuilder& stack_global(std::string_view module, std::string_view name) {
        unicode(module);
        unicode(name);
        return op('\x93');
    }
    PickleBuilder& unicode(std::string_view text) {  // BINUNICODE
        op('X');
        append_u32(static_cast<uint32_t>(text.size()));
        bytes_ += text;
        return *this;
    }
    PickleBuilder& integer(int64_t value) {  // LONG1 with 8 bytes takes any int64
        op('\x8a');
        bytes_ += '\x08';
        for (int i = 0; i < 8; ++i) {
            bytes_ += static_cast<char>(static_cast<uint64_t>(value) >> (8 * i));
        }
        return *this;
    }
    PickleBuilder& int_tuple(const std::vector<int64_t>& values) {
        op('(');
        for (const int64_t value : values) {
            integer(value);
        }
        return op('t');
    }
    PickleBuilder& empty_ordered_dict() {
        return global("collections", "OrderedDict").op(')').op('R');
    }

    const std::string& bytes() const { return bytes_; }

  private:
    void append_u32(uint32_t value) {
        for (int i = 0; i < 4; ++i) {
            bytes_ += static_cast<char>(value >> (8 * i));
        }
    }

    std::string bytes_;
};

// One tensor view of storage '0', as _rebuild_tensor_v2 receives it.
struct View {
    int64_t storage_elements = 6;
    int64_t storage_offset = 0;
    std::vector<int64_t> sizes{6};
    std::vector<int64_t> strides{1};
    std::string storage_type = "FloatStorage";
};

// {'w': <view>} laid out as torch.save writes it at protocol 2, without the memo opcodes.
std::string state_dict_pickle(const View& view) {
    PickleBuilder pickle;
    pickle.proto(2).empty_ordered_dict();
    pickle.op('(').unicode("w").global("torch._utils", "_rebuild_tensor_v2").op('(');

    // The persistent id ('storage', type, key, location, numel), then the view's geometry,
    // requires_grad=False and empty backward hooks.
    pickle.op('(').unicode("storage").global("torch", view.storage_type).unicode("0");
    pickle.unicode("cpu").integer(view.storage_elements).op('t').op('Q');
    pickle.integer(view.storage_offset).int_tuple(view.sizes).int_tuple(view.strides);
    pickle.op('\x89').empty_ordered_dict();
    pickle.op('t').op('R').op('u');

    // BUILD with the _metadata attribute of the OrderedDict.
    pickle.op('}').unicode("_metadata").empty_ordered_dict().op('s').op('b').op('.');
    return pickle.bytes();
}

std::string float_bytes(const std::vector<float>& values) {
    std::string bytes(values.size() * sizeof(float), '\0');
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
}

// Writes a torch.save-style archive: data.pkl, the given data/<key> records and version.
void write_archive(const fs::path& path, const std::string& pickle,
                   const std::vector<std::pair<std::string, std::string>>& records = {
                       {"0", float_bytes({0, 1, 2, 3, 4, 5})}}) {
    caffe2::serialize::PyTorchStreamWriter writer(path.string());
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    for (const auto& [key, bytes] : records) {
        writer.writeRecord("data/" + key, bytes.data(), bytes.size());
    }
    writer.writeEndOfFile();
}

TEST(PytorchStateDictArchive, StridedViewReads) {
    ScratchFolder folder("state-dict-view");
    const fs::path path = folder / "view.pth";
    // Storage [0 1 2 3 4 5] seen from offset 1 as 2x2 with strides (1, 3): [[1, 4], [2, 5]].
    write_archive(path, state_dict_pickle({6, 1, {2, 2}, {1, 3}}));

    const StateDict weights = read_pytorch_state_dict(path);
    ASSERT_EQ(weights.size(), 1u);
    EXPECT_EQ(weights.at("w").shape, (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(weights.at("w").values, (std::vector<float>{1, 4, 2, 5}));
}

TEST(PytorchStateDictArchive, MissingFileIsIoError) {
    ScratchFolder folder("state-dict-missing");
    const Failure failure = read_failure(folder / "absent.pth");
    EXPECT_EQ(failure.code, ExitCode::kIo);
    EXPECT_NE(failure.message.find("absent.pth' not found"), std::string::npos) << failure.message;
}

TEST(PytorchStateDictArchive, NotZipRejected) {
    ScratchFolder folder("state-dict-not-zip");
    const fs::path path = folder / "notes.pth";
    write_bytes(path, "these are not weights\n");
    const Failure failure = read_failure(path);
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("not a torch.save zip archive"), std::string::npos)
        << failure.message;

    write_bytes(path, "");
    EXPECT_NE(read_failure(path).message.find("is empty"), std::string::npos);
}

TEST(PytorchStateDictArchive, PicklePrefixesRejected) {
    ScratchFolder folder("state-dict-prefix");
    const fs::path path = folder / "prefix.pth";
    const std::string pickle = state_dict_pickle({});
    for (size_t length = 0; length < pickle.size(); ++length) {
        write_archive(path, pickle.substr(0, length));
        const Failure failure = read_failure(path);
        ASSERT_EQ(failure.code, ExitCode::kInvalidInput) << "length " << length;
        ASSERT_EQ(failure.message.find('\n'), std::string::npos) << failure.message;
    }

    write_archive(path, pickle.substr(0, pickle.size() - 1));
    EXPECT_NE(read_failure(path).message.find("before the pickle's STOP opcode"),
              std::string::npos);
}

TEST(PytorchStateDictArchive, CorruptBytesNeverCrash) {
    // Flips each byte of a whole archive in turn. The zip CRCs catch most flips, and the rest must
    // either still read or fail with an edgeq::Error, never crash or throw anything else.
    ScratchFolder folder("state-dict-corrupt");
    const fs::path good = folder / "good.pth";
    write_archive(good, state_dict_pickle({}));
    const std::string archive = read_bytes(good);

    const fs::path corrupt = folder / "corrupt.pth";
    for (size_t position = 0; position < archive.size(); ++position) {
        std::string bytes = archive;
        bytes[position] = static_cast<char>(bytes[position] ^ 0x5a);
        write_bytes(corrupt, bytes);
        try {
            read_pytorch_state_dict(corrupt);
        } catch (const Error& error) {
            ASSERT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
        } catch (const std::exception& error) {
            FAIL() << "byte " << position << ": " << error.what();
        }
    }
}

TEST(PytorchStateDictArchive, FolderEntryRejected) {
    // Sets the MS-DOS folder attribute (0x10) in the external attributes of data.pkl's central
    // directory header (signature PK\1\2, attributes at byte 38, file name at byte 46). libtorch
    // 1.13 then returns the record without reading it, so its bytes are uninitialised.
    ScratchFolder folder("state-dict-folder-entry");
    const fs::path path = folder / "folder.pth";
    write_archive(path, state_dict_pickle({}));
    std::string archive = read_bytes(path);

    const std::string name = "folder/data.pkl";
    size_t header = archive.find("PK\x01\x02");
    while (header != std::string::npos && archive.compare(header + 46, name.size(), name) != 0) {
        header = archive.find("PK\x01\x02", header + 1);
    }
    ASSERT_NE(header, std::string::npos);
    archive[header + 38] = static_cast<char>(archive[header + 38] | 0x10);
    write_bytes(path, archive);

    const Failure failure = read_failure(path);
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("reading record 'data.pkl'"), std::string::npos)
        << failure.message;
    EXPECT_NE(failure.message.find("marked as a folder"), std::string::npos) << failure.message;
}

TEST(PytorchStateDictArchive, ForbiddenGlobalsRejected) {
    ScratchFolder folder("state-dict-global");
    const fs::path path = folder / "global.pth";
    const fs::path marker = folder / "ran";
    const std::string command = "touch '" + marker.string() + "'";

    struct Case {
        std::string module;
        std::string name;
        bool stack_global;  // protocol 4 names globals with STACK_GLOBAL instead of GLOBAL
    };
    const std::vector<Case> cases = {{"os", "system", false},       {"posix", "system", true},
                                     {"builtins", "eval", false},   {"__builtin__", "eval", false},
                                     {"subprocess", "Popen", true}, {"torch", "load", false}};
    for (const Case& forbidden : cases) {
        PickleBuilder pickle;
        pickle.proto(forbidden.stack_global ? 4 : 2);
        if (forbidden.stack_global) {
            pickle.stack_global(forbidden.module, forbidden.name);
        } else {
            pickle.global(forbidden.module, forbidden.name);
        }
        pickle.unicode(command).op('\x85').op('R').op('.');
        write_archive(path, pickle.bytes());

        const Failure failure = read_failure(path);
        const std::string qualified = "'" + forbidden.module + "." + forbidden.name + "'";
        EXPECT_EQ(failure.code, ExitCode::kInvalidInput) << qualified;
        EXPECT_NE(failure.message.find(qualified), std::string::npos) << failure.message;
        EXPECT_FALSE(fs::exists(marker)) << qualified;
    }
}

TEST(PytorchStateDictArchive, ControlCharactersReplaced) {
    // Keys and global names come from the file, so a line break in one must not split the message.
    ScratchFolder folder("state-dict-control");
    const fs::path path = folder / "control.pth";

    write_archive(
        path, PickleBuilder().proto(2).op('}').unicode("bad\nkey").op('N').op('s').op('.').bytes());
    const Failure key_failure = read_failure(path);
    EXPECT_NE(key_failure.message.find("key 'bad?key' is a None"), std::string::npos)
        << key_failure.message;

    write_archive(path, PickleBuilder().proto(4).stack_global("os\r\n", "system").op('.').bytes());
    const Failure global_failure = read_failure(path);
    EXPECT_NE(global_failure.message.find("'os??.system'"), std::string::npos)
        << global_failure.message;
}

TEST(PytorchStateDictArchive, UnknownOpcodeRejected) {
    ScratchFolder folder("state-dict-opcode");
    const fs::path path = folder / "opcode.pth";
    // 0xff is no opcode at all, and ']' (EMPTY_LIST) is a real opcode that a state_dict never uses.
    for (const char code : {'\xff', ']'}) {
        write_archive(path, PickleBuilder().proto(2).op(code).op('.').bytes());
        const Failure failure = read_failure(path);
        EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
        EXPECT_NE(failure.message.find(fmt::format("opcode 0x{:02x}", static_cast<uint8_t>(code))),
                  std::string::npos)
            << failure.message;
        EXPECT_NE(failure.message.find("at byte 2"), std::string::npos) << failure.message;
    }
}

TEST(PytorchStateDictArchive, MemoMisuseRejected) {
    ScratchFolder folder("state-dict-memo");
    const fs::path path = folder / "memo.pth";
    write_archive(path, PickleBuilder().proto(2).op('h').op('\x07').op('.').bytes());
    EXPECT_NE(read_failure(path).message.find("memo index 7"), std::string::npos);

    // BINPUT with nothing on the stack.
    write_archive(path, PickleBuilder().proto(2).op('q').op('\x00').op('.').bytes());
    EXPECT_NE(read_failure(path).message.find("empty stack"), std::string::npos);
}

TEST(PytorchStateDictArchive, ShortRecordRejected) {
    ScratchFolder folder("state-dict-short");
    const fs::path path = folder / "short.pth";
    write_archive(path, state_dict_pickle({}), {{"0", float_bytes({0, 1})}});
    const Failure failure = read_failure(path);
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("record 'data/0' of tensor 'w' has 8 bytes"), std::string::npos)
        << failure.message;

    write_archive(path, state_dict_pickle({}), {});
    EXPECT_NE(read_failure(path).message.find("has no record 'data/0'"), std::string::npos);
}

TEST(PytorchStateDictArchive, BadViewsRejected) {
    ScratchFolder folder("state-dict-bad-view");
    const fs::path path = folder / "view.pth";
    constexpr int64_t kHuge = int64_t{1} << 40;

    struct Case {
        View view;
        std::string expected;
    };
    const std::vector<Case> cases = {
        {{6, 0, {7}, {1}}, "reads storage element 6"},
        {{6, 5, {2}, {1}}, "reads storage element 6"},
        {{6, 0, {3, 2}, {2}}, "has 2 sizes but 1 strides"},
        {{6, -1, {2}, {1}}, "has a negative storage offset"},
        {{6, 0, {2}, {-1}}, "has a negative size or stride"},
        {{6, 0, {kHuge, kHuge}, {0, 0}}, "has more than 2147483648 elements"},
        {{6, 0, {3}, {std::numeric_limits<int64_t>::max()}}, "has a stride of"},
    };
    for (const Case& bad : cases) {
        write_archive(path, state_dict_pickle(bad.view));
        const Failure failure = read_failure(path);
        EXPECT_EQ(failure.code, ExitCode::kInvalidInput) << bad.expected;
        EXPECT_NE(failure.message.find("tensor 'w' " + bad.expected), std::string::npos)
            << failure.message;
    }

    // A zero-stride view may have more elements than its storage: expand() saves this way.
    write_archive(path, state_dict_pickle({6, 2, {2, 3}, {0, 1}}));
    EXPECT_EQ(read_pytorch_state_dict(path).at("w").values, (std::vector<float>{2, 3, 4, 2, 3, 4}));
}

TEST(PytorchStateDictArchive, ComplexStorageUnsupported) {
    ScratchFolder folder("state-dict-complex");
    const fs::path path = folder / "complex.pth";
    View view;
    view.storage_type = "ComplexFloatStorage";
    write_archive(path, state_dict_pickle(view));
    const Failure failure = read_failure(path);
    EXPECT_EQ(failure.code, ExitCode::kUnsupported);
    EXPECT_NE(failure.message.find("'torch.ComplexFloatStorage'"), std::string::npos)
        << failure.message;
}

TEST(PytorchStateDictArchive, DeepNestingRejected) {
    // A million nested 1-tuples: neither building nor freeing them may recurse.
    ScratchFolder folder("state-dict-deep");
    const fs::path path = folder / "deep.pth";
    PickleBuilder pickle;
    pickle.proto(2).op('N');
    for (int depth = 0; depth < 1'000'000; ++depth) {
        pickle.op('\x85');
    }
    write_archive(path, pickle.op('.').bytes());
    EXPECT_NE(read_failure(path).message.find("top-level object is a tuple"), std::string::npos);
}

TEST(PytorchStateDictArchive, LibtorchCheckpointRejected) {
    ScratchFolder folder("state-dict-libtorch");
    const fs::path path = folder / "checkpoint.pt";
    FashionCnn model;
    save_checkpoint(model, path);
    const Failure failure = read_failure(path);
    EXPECT_EQ(failure.code, ExitCode::kInvalidInput);
    EXPECT_NE(failure.message.find("TorchScript archive"), std::string::npos) << failure.message;
}

}  // namespace
}  // namespace edgeq
