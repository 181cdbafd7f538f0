// Reads state_dict files written by Python's torch.save, with a restricted pickle virtual machine.
//
// torch.save (PyTorch 1.6 and later) writes a zip archive whose entries all sit in one folder,
// named after the file at save time. The entries are stored uncompressed:
//   <archive>/data.pkl     the pickled object (protocol 2 unless pickle_protocol was given)
//   <archive>/data/<key>   the raw bytes of one storage, shared by every tensor that views it
//   <archive>/version      the archive format version ("3" from torch.save)
//   <archive>/byteorder    "little" or "big", written by newer PyTorch releases (not by 1.13).
//                          edgeq reads an archive without it as little-endian.
//
// The pickle of a state_dict at protocol 2 is, with BINPUT/BINGET memo traffic left out:
//   GLOBAL 'collections OrderedDict', EMPTY_TUPLE, REDUCE             the empty OrderedDict
//   MARK, then for each entry:
//     BINUNICODE key, GLOBAL 'torch._utils _rebuild_tensor_v2', MARK
//       MARK 'storage' GLOBAL 'torch FloatStorage' '<key>' '<location>' <numel> TUPLE BINPERSID
//       <storage_offset> (<sizes>) (<strides>) <requires_grad> <backward_hooks: OrderedDict()>
//     TUPLE, REDUCE
//   SETITEMS
//   EMPTY_DICT '_metadata' <OrderedDict of per-module {'version': n}> SETITEM, BUILD, STOP
// Protocols 4 and 5 add FRAME, SHORT_BINUNICODE, STACK_GLOBAL and MEMOIZE.
//
// The machine runs only these opcodes, plus the forms Python picks for other values of the same
// kind: BININT, BININT2 and LONG1 integers, TUPLE1 to TUPLE3, NONE and NEWTRUE. GLOBAL and
// STACK_GLOBAL resolve names against a fixed table of tensor-rebuilding functions and storage
// types, and REDUCE interprets those few in C++, so nothing in the file is ever executed.
#include "edgeq/model/pytorch_state_dict.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <variant>

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <caffe2/serialize/file_adapter.h>
#include <caffe2/serialize/inline_container.h>

#include "edgeq/common/error.h"

namespace edgeq {
namespace fs = std::filesystem;

namespace {

using caffe2::serialize::PyTorchStreamReader;

// The sentence that ends most messages: how a user gets a file that edgeq reads.
constexpr std::string_view kResaveHint = "Save it with torch.save(model.state_dict(), path)";

// NOTE: a guessed limit. A tensor whose strides repeat elements (for example an expand() view
// with stride 0) can claim far more elements than its storage contains, so a corrupt size could
// request an allocation of any size. 2^31 float32 values (8 GiB) is far above any model edgeq
// targets.
constexpr int64_t kMaxTensorElements = int64_t{1} << 31;

// The first line of a c10::Error message: libtorch appends a multi-line C++ backtrace.
std::string first_line(std::string_view text) {
    return std::string(text.substr(0, text.find('\n')));
}

// ------------------------------------------------------------------------------------------------
// Element types of tensor storages

enum class ElementType {
    kFloat64,
    kFloat32,
    kFloat16,
    kBFloat16,
    kInt64,
    kInt32,
    kInt16,
    kInt8,
    kUInt8,
    kBool
};

size_t element_size(ElementType type) {
    switch (type) {
        case ElementType::kFloat64:
        case ElementType::kInt64:
            return 8;
        case ElementType::kFloat32:
        case ElementType::kInt32:
            return 4;
        case ElementType::kFloat16:
        case ElementType::kBFloat16:
        case ElementType::kInt16:
            return 2;
        case ElementType::kInt8:
        case ElementType::kUInt8:
        case ElementType::kBool:
            return 1;
    }
    return 1;
}

// Reads one element of type T from unaligned storage bytes, reversing its bytes first when the
// file's byte order differs from the host's.
template <typename T>
T load_element(const uint8_t* bytes, bool swap_bytes) {
    std::array<uint8_t, sizeof(T)> buffer{};
    std::memcpy(buffer.data(), bytes, sizeof(T));
    if (swap_bytes) {
        std::reverse(buffer.begin(), buffer.end());
    }
    T value;
    std::memcpy(&value, buffer.data(), sizeof(T));
    return value;
}

float element_to_float(ElementType type, const uint8_t* bytes, bool swap_bytes) {
    switch (type) {
        case ElementType::kFloat64:
            return static_cast<float>(load_element<double>(bytes, swap_bytes));
        case ElementType::kFloat32:
            return load_element<float>(bytes, swap_bytes);
        case ElementType::kFloat16:
            return static_cast<float>(
                c10::Half(load_element<uint16_t>(bytes, swap_bytes), c10::Half::from_bits()));
        case ElementType::kBFloat16:
            return static_cast<float>(c10::BFloat16(load_element<uint16_t>(bytes, swap_bytes),
                                                    c10::BFloat16::from_bits()));
        case ElementType::kInt64:
            return static_cast<float>(load_element<int64_t>(bytes, swap_bytes));
        case ElementType::kInt32:
            return static_cast<float>(load_element<int32_t>(bytes, swap_bytes));
        case ElementType::kInt16:
            return static_cast<float>(load_element<int16_t>(bytes, swap_bytes));
        case ElementType::kInt8:
            return static_cast<float>(static_cast<int8_t>(bytes[0]));
        case ElementType::kUInt8:
            return static_cast<float>(bytes[0]);
        case ElementType::kBool:
            return bytes[0] != 0 ? 1.0f : 0.0f;
    }
    return 0.0f;
}

// ------------------------------------------------------------------------------------------------
// The Python objects a state_dict pickle builds

enum class GlobalKind {
    kOrderedDict,
    kRebuildTensorV2,
    kRebuildTensor,
    kRebuildParameter,
    kDevice,
    kStorageType
};

// A Python global that GLOBAL or STACK_GLOBAL may name.
struct Global {
    std::string_view module;
    std::string_view name;
    GlobalKind kind;
    ElementType element_type = ElementType::kFloat32;  // meaningful for kStorageType only
};

// Every global a state_dict needs. torch.save names a storage by its typed class, for example
// torch.FloatStorage, in the persistent id of each tensor.
constexpr std::array kAllowedGlobals = {
    Global{"collections", "OrderedDict", GlobalKind::kOrderedDict},
    Global{"torch._utils", "_rebuild_tensor_v2", GlobalKind::kRebuildTensorV2},
    Global{"torch._utils", "_rebuild_tensor", GlobalKind::kRebuildTensor},
    Global{"torch._utils", "_rebuild_parameter", GlobalKind::kRebuildParameter},
    Global{"torch", "device", GlobalKind::kDevice},
    Global{"torch", "DoubleStorage", GlobalKind::kStorageType, ElementType::kFloat64},
    Global{"torch", "FloatStorage", GlobalKind::kStorageType, ElementType::kFloat32},
    Global{"torch", "HalfStorage", GlobalKind::kStorageType, ElementType::kFloat16},
    Global{"torch", "BFloat16Storage", GlobalKind::kStorageType, ElementType::kBFloat16},
    Global{"torch", "LongStorage", GlobalKind::kStorageType, ElementType::kInt64},
    Global{"torch", "IntStorage", GlobalKind::kStorageType, ElementType::kInt32},
    Global{"torch", "ShortStorage", GlobalKind::kStorageType, ElementType::kInt16},
    Global{"torch", "CharStorage", GlobalKind::kStorageType, ElementType::kInt8},
    Global{"torch", "ByteStorage", GlobalKind::kStorageType, ElementType::kUInt8},
    Global{"torch", "BoolStorage", GlobalKind::kStorageType, ElementType::kBool},
};

struct Tuple;
struct Dict;
struct Storage;
struct Tensor;
struct Device;

// A value on the pickle stack or in the memo. std::monostate is Python's None. Objects are owned
// by the machine's arenas and referenced by pointer, so copying a value is cheap and destroying
// the machine never recurses, however deeply a corrupt pickle nests its objects.
using Value = std::variant<std::monostate, bool, int64_t, const std::string*, const Tuple*, Dict*,
                           const Global*, const Storage*, const Tensor*, const Device*>;

struct Tuple {
    std::vector<Value> items;
};

// A dict or OrderedDict with string keys, in insertion order as Python keeps it.
struct Dict {
    std::vector<std::pair<std::string, Value>> items;
    std::map<std::string, size_t> index_of_key;

    void set(const std::string& key, const Value& value) {
        const auto [found, inserted] = index_of_key.try_emplace(key, items.size());
        if (inserted) {
            items.emplace_back(key, value);
        } else {
            items[found->second].second = value;
        }
    }
};

// One storage record, as named by the persistent id ('storage', type, key, location, numel).
struct Storage {
    std::string key;  // the record is <archive>/data/<key>
    const Global* type = nullptr;
    int64_t element_count = 0;
};

// A strided view of a storage, materialised only once its state_dict key is known.
struct Tensor {
    const Storage* storage = nullptr;
    int64_t storage_offset = 0;  // in elements
    std::vector<int64_t> sizes;
    std::vector<int64_t> strides;  // in elements
};

struct Device {
    std::string name;
};

std::string_view type_name(const Value& value) {
    constexpr std::array<std::string_view, std::variant_size_v<Value>> kNames = {
        "None", "bool",   "int",     "str",    "tuple",
        "dict", "global", "storage", "tensor", "torch.device"};
    return kNames[value.index()];
}

template <typename T>
constexpr std::string_view expected_type_name() {
    if constexpr (std::is_same_v<T, bool>) {
        return "bool";
    } else if constexpr (std::is_same_v<T, int64_t>) {
        return "int";
    } else if constexpr (std::is_same_v<T, const std::string*>) {
        return "str";
    } else if constexpr (std::is_same_v<T, const Tuple*>) {
        return "tuple";
    } else if constexpr (std::is_same_v<T, Dict*>) {
        return "dict";
    } else if constexpr (std::is_same_v<T, const Global*>) {
        return "global";
    } else if constexpr (std::is_same_v<T, const Storage*>) {
        return "storage";
    } else {
        static_assert(std::is_same_v<T, const Tensor*>);
        return "tensor";
    }
}

std::string global_name(const Global& global) {
    return fmt::format("{}.{}", global.module, global.name);
}

// ------------------------------------------------------------------------------------------------
// The pickle virtual machine

// Pickle opcodes this machine executes, named as in CPython's Lib/pickle.py.
namespace opcode {
constexpr uint8_t kMark = '(';
constexpr uint8_t kStop = '.';
constexpr uint8_t kBinInt = 'J';
constexpr uint8_t kBinInt1 = 'K';
constexpr uint8_t kBinInt2 = 'M';
constexpr uint8_t kNone = 'N';
constexpr uint8_t kBinPersId = 'Q';
constexpr uint8_t kReduce = 'R';
constexpr uint8_t kBinUnicode = 'X';
constexpr uint8_t kEmptyTuple = ')';
constexpr uint8_t kEmptyDict = '}';
constexpr uint8_t kBuild = 'b';
constexpr uint8_t kGlobal = 'c';
constexpr uint8_t kBinGet = 'h';
constexpr uint8_t kLongBinGet = 'j';
constexpr uint8_t kBinPut = 'q';
constexpr uint8_t kLongBinPut = 'r';
constexpr uint8_t kSetItem = 's';
constexpr uint8_t kTuple = 't';
constexpr uint8_t kSetItems = 'u';
constexpr uint8_t kProto = 0x80;
constexpr uint8_t kTuple1 = 0x85;
constexpr uint8_t kTuple2 = 0x86;
constexpr uint8_t kTuple3 = 0x87;
constexpr uint8_t kNewTrue = 0x88;
constexpr uint8_t kNewFalse = 0x89;
constexpr uint8_t kLong1 = 0x8a;
constexpr uint8_t kShortBinUnicode = 0x8c;
constexpr uint8_t kStackGlobal = 0x93;
constexpr uint8_t kMemoize = 0x94;
constexpr uint8_t kFrame = 0x95;
}  // namespace opcode

constexpr int kMaxPickleProtocol = 5;

class PickleMachine {
  public:
    // `file` names the checkpoint in error messages.
    PickleMachine(std::string_view pickle, std::string file)
        : pickle_(pickle), file_(std::move(file)) {}

    // Runs the pickle to its STOP opcode and returns the object it built. The result points into
    // this machine, so the machine must outlive every use of it.
    Value run();

  private:
    [[noreturn]] void fail_invalid(std::string_view problem) const;

    // Reading the opcode stream
    std::string_view read_bytes(size_t count);
    uint64_t read_unsigned(size_t byte_count);
    std::string_view read_line();

    // The stack and the memo
    void push(const Value& value) { stack_.push_back(value); }
    Value pop();
    std::vector<Value> pop_to_mark();
    void memo_put(uint64_t index);
    void memo_get(uint64_t index);

    template <typename T>
    T expect(const Value& value, std::string_view description) const;

    // Opcodes with more than one line of work
    void execute(uint8_t code);
    void push_global(std::string_view module, std::string_view name);
    void push_tuple(std::vector<Value> items);
    void push_string(std::string_view text);
    void push_long(size_t byte_count);
    void set_items(std::vector<Value> items);
    void persistent_load();
    void reduce();
    void build();

    // The functions REDUCE may call
    Value call_ordered_dict(const Tuple& args);
    Value call_rebuild_tensor(const Global& function, const Tuple& args);
    Value call_rebuild_parameter(const Tuple& args);
    Value call_device(const Tuple& args);
    std::vector<int64_t> expect_int_tuple(const Value& value, std::string_view description) const;

    std::string_view pickle_;
    std::string file_;
    size_t position_ = 0;         // next byte to read
    size_t opcode_position_ = 0;  // start of the opcode being executed, for error messages

    std::vector<Value> stack_;
    std::vector<size_t> marks_;  // stack sizes at each MARK
    std::unordered_map<uint64_t, Value> memo_;

    // Arenas: deque keeps the address of every element stable as it grows.
    std::deque<std::string> strings_;
    std::deque<Tuple> tuples_;
    std::deque<Dict> dicts_;
    std::deque<Storage> storages_;
    std::deque<Tensor> tensors_;
    std::deque<Device> devices_;
};

void PickleMachine::fail_invalid(std::string_view problem) const {
    fail(ExitCode::kInvalidInput,
         "'{}': data.pkl is not a valid state_dict pickle at byte {}: {}. The file is corrupt or "
         "was not written by torch.save. {}",
         file_, opcode_position_, problem, kResaveHint);
}

std::string_view PickleMachine::read_bytes(size_t count) {
    if (count > pickle_.size() - position_) {
        fail(ExitCode::kInvalidInput,
             "'{}': data.pkl ends at byte {} in the middle of the opcode at byte {}, before the "
             "pickle's STOP opcode. The file is truncated or corrupt. {}",
             file_, pickle_.size(), opcode_position_, kResaveHint);
    }
    const std::string_view bytes = pickle_.substr(position_, count);
    position_ += count;
    return bytes;
}

// Reads a little-endian unsigned integer of 1 to 8 bytes, the encoding of every length and index
// argument of the binary opcodes.
uint64_t PickleMachine::read_unsigned(size_t byte_count) {
    const std::string_view bytes = read_bytes(byte_count);
    uint64_t value = 0;
    for (size_t i = 0; i < byte_count; ++i) {
        value |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    }
    return value;
}

std::string_view PickleMachine::read_line() {
    const size_t end = pickle_.find('\n', position_);
    if (end == std::string_view::npos) {
        read_bytes(pickle_.size() - position_ + 1);  // reports the truncation
    }
    const std::string_view line = pickle_.substr(position_, end - position_);
    position_ = end + 1;
    return line;
}

Value PickleMachine::pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) {
        fail_invalid("an opcode pops more values than the stack contains");
    }
    Value value = stack_.back();
    stack_.pop_back();
    return value;
}

std::vector<Value> PickleMachine::pop_to_mark() {
    if (marks_.empty()) {
        fail_invalid("an opcode expects a MARK that was never pushed");
    }
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
}

void PickleMachine::memo_put(uint64_t index) {
    if (stack_.empty()) {
        fail_invalid("a memo store with an empty stack");
    }
    memo_[index] = stack_.back();
}

void PickleMachine::memo_get(uint64_t index) {
    const auto found = memo_.find(index);
    if (found == memo_.end()) {
        fail_invalid(fmt::format("memo index {} is read before it is stored", index));
    }
    push(found->second);
}

template <typename T>
T PickleMachine::expect(const Value& value, std::string_view description) const {
    if (const T* typed = std::get_if<T>(&value)) {
        return *typed;
    }
    fail_invalid(fmt::format("{} is a {}, expected a {}", description, type_name(value),
                             expected_type_name<T>()));
}

Value PickleMachine::run() {
    while (true) {
        opcode_position_ = position_;
        if (position_ >= pickle_.size()) {
            read_bytes(1);  // reports the truncation
        }
        const auto code = static_cast<uint8_t>(pickle_[position_++]);
        if (code == opcode::kStop) {
            return pop();
        }
        execute(code);
    }
}

void PickleMachine::execute(uint8_t code) {
    switch (code) {
        case opcode::kProto: {
            const uint64_t protocol = read_unsigned(1);
            if (protocol > kMaxPickleProtocol) {
                fail_invalid(
                    fmt::format("pickle protocol {} is newer than {}, the highest that "
                                "edgeq reads",
                                protocol, kMaxPickleProtocol));
            }
            break;
        }
        case opcode::kFrame:
            // Framing (protocol 4+) only groups opcodes for buffered reading. The whole pickle is
            // in memory, so the frame length is skipped.
            read_unsigned(8);
            break;

        case opcode::kMark:
            marks_.push_back(stack_.size());
            break;
        case opcode::kNone:
            push(std::monostate{});
            break;
        case opcode::kNewTrue:
            push(true);
            break;
        case opcode::kNewFalse:
            push(false);
            break;
        case opcode::kBinInt:
            push(int64_t{static_cast<int32_t>(static_cast<uint32_t>(read_unsigned(4)))});
            break;
        case opcode::kBinInt1:
            push(static_cast<int64_t>(read_unsigned(1)));
            break;
        case opcode::kBinInt2:
            push(static_cast<int64_t>(read_unsigned(2)));
            break;
        case opcode::kLong1:
            push_long(read_unsigned(1));
            break;
        case opcode::kBinUnicode:
            push_string(read_bytes(read_unsigned(4)));
            break;
        case opcode::kShortBinUnicode:
            push_string(read_bytes(read_unsigned(1)));
            break;

        case opcode::kEmptyTuple:
            push_tuple({});
            break;
        case opcode::kTuple:
            push_tuple(pop_to_mark());
            break;
        case opcode::kTuple1: {
            const Value first = pop();
            push_tuple({first});
            break;
        }
        case opcode::kTuple2: {
            const Value second = pop();
            const Value first = pop();
            push_tuple({first, second});
            break;
        }
        case opcode::kTuple3: {
            const Value third = pop();
            const Value second = pop();
            const Value first = pop();
            push_tuple({first, second, third});
            break;
        }
        case opcode::kEmptyDict:
            push(&dicts_.emplace_back());
            break;
        case opcode::kSetItem: {
            const Value value = pop();
            const Value key = pop();
            set_items({key, value});
            break;
        }
        case opcode::kSetItems:
            set_items(pop_to_mark());
            break;

        case opcode::kGlobal: {
            const std::string_view module = read_line();
            const std::string_view name = read_line();
            push_global(module, name);
            break;
        }
        case opcode::kStackGlobal: {
            const std::string* name = expect<const std::string*>(pop(), "STACK_GLOBAL's name");
            const std::string* module = expect<const std::string*>(pop(), "STACK_GLOBAL's module");
            push_global(*module, *name);
            break;
        }
        case opcode::kBinPersId:
            persistent_load();
            break;
        case opcode::kReduce:
            reduce();
            break;
        case opcode::kBuild:
            build();
            break;

        case opcode::kBinPut:
            memo_put(read_unsigned(1));
            break;
        case opcode::kLongBinPut:
            memo_put(read_unsigned(4));
            break;
        case opcode::kMemoize:
            memo_put(memo_.size());
            break;
        case opcode::kBinGet:
            memo_get(read_unsigned(1));
            break;
        case opcode::kLongBinGet:
            memo_get(read_unsigned(4));
            break;

        default:
            fail_invalid(
                fmt::format("opcode 0x{:02x} is unknown or not one that a state_dict "
                            "uses",
                            code));
    }
}

void PickleMachine::push_string(std::string_view text) {
    push(&strings_.emplace_back(text));
}

void PickleMachine::push_tuple(std::vector<Value> items) {
    push(&tuples_.emplace_back(Tuple{std::move(items)}));
}

// LONG1: a little-endian two's-complement integer of `byte_count` bytes. Python writes ints that do
// not fit BININT's 32 bits this way. Anything wider than 64 bits is rejected.
void PickleMachine::push_long(size_t byte_count) {
    if (byte_count > 8) {
        fail_invalid(fmt::format("a {}-byte integer does not fit in 64 bits", byte_count));
    }
    uint64_t bits = read_unsigned(byte_count);
    const bool negative = byte_count > 0 && (bits >> (8 * byte_count - 1)) & 1;
    if (negative && byte_count < 8) {
        bits |= ~uint64_t{0} << (8 * byte_count);  // sign-extend
    }
    push(static_cast<int64_t>(bits));
}

void PickleMachine::set_items(std::vector<Value> items) {
    Dict* dict = expect<Dict*>(pop(), "the target of SETITEM(S)");
    if (items.size() % 2 != 0) {
        fail_invalid("SETITEMS has a key without a value");
    }
    for (size_t i = 0; i < items.size(); i += 2) {
        const std::string* key = expect<const std::string*>(items[i], "a dict key");
        dict->set(*key, items[i + 1]);
    }
    push(dict);
}

// Resolves a global against kAllowedGlobals. Anything else is rejected here, before REDUCE could
// call it: the name is only ever compared, never imported.
void PickleMachine::push_global(std::string_view module, std::string_view name) {
    for (const Global& global : kAllowedGlobals) {
        if (global.module == module && global.name == name) {
            push(&global);
            return;
        }
    }

    if (module == "torch" && name.ends_with("Storage")) {
        fail(ExitCode::kUnsupported,
             "'{}': storage type 'torch.{}' is not supported, because edgeq converts only float, "
             "integer "
             "and bool tensors to float32. Convert the tensors with .float() in Python and save "
             "them again",
             file_, name);
    }
    fail(ExitCode::kInvalidInput,
         "'{}' is not a state_dict: data.pkl references the Python global '{}.{}', and loading it "
         "would execute code, which edgeq never does. If the file came from torch.save(model), "
         "save model.state_dict() instead",
         file_, module, name);
}

// BINPERSID pops the persistent id that torch.save writes for each storage:
// ('storage', <storage type global>, <record key>, <location such as 'cpu'>, <element count>).
void PickleMachine::persistent_load() {
    const Tuple* id = expect<const Tuple*>(pop(), "the persistent id");
    if (id->items.size() != 5) {
        fail_invalid(fmt::format("the persistent id has {} items, expected 5", id->items.size()));
    }
    const std::string* tag = expect<const std::string*>(id->items[0], "the persistent id tag");
    if (*tag != "storage") {
        fail_invalid(fmt::format("the persistent id tag is '{}', expected 'storage'", *tag));
    }

    const Global* type = expect<const Global*>(id->items[1], "the storage type");
    if (type->kind != GlobalKind::kStorageType) {
        fail_invalid(
            fmt::format("the storage type is '{}', not a torch storage class", global_name(*type)));
    }
    const std::string* key = expect<const std::string*>(id->items[2], "the storage key");
    expect<const std::string*>(id->items[3], "the storage location");
    const int64_t element_count = expect<int64_t>(id->items[4], "the storage element count");
    if (element_count < 0) {
        fail_invalid(fmt::format("storage '{}' has a negative element count", *key));
    }

    push(&storages_.emplace_back(Storage{*key, type, element_count}));
}

void PickleMachine::reduce() {
    const Tuple* args = expect<const Tuple*>(pop(), "REDUCE's argument tuple");
    const Global* function = expect<const Global*>(pop(), "REDUCE's callable");

    switch (function->kind) {
        case GlobalKind::kOrderedDict:
            push(call_ordered_dict(*args));
            return;
        case GlobalKind::kRebuildTensorV2:
        case GlobalKind::kRebuildTensor:
            push(call_rebuild_tensor(*function, *args));
            return;
        case GlobalKind::kRebuildParameter:
            push(call_rebuild_parameter(*args));
            return;
        case GlobalKind::kDevice:
            push(call_device(*args));
            return;
        case GlobalKind::kStorageType:
            break;
    }
    fail_invalid(
        fmt::format("REDUCE calls '{}', which a state_dict never calls", global_name(*function)));
}

// BUILD sets the state of the object below it. torch.save uses it only to attach `_metadata`
// (per-module version numbers) to the state_dict's OrderedDict, which edgeq does not need.
void PickleMachine::build() {
    pop();  // the state
    const Value target = pop();
    if (!std::holds_alternative<Dict*>(target)) {
        fail_invalid(
            fmt::format("BUILD sets the state of a {}, but a state_dict sets it only on its "
                        "OrderedDict",
                        type_name(target)));
    }
    push(target);
}

Value PickleMachine::call_ordered_dict(const Tuple& args) {
    if (!args.items.empty()) {
        fail_invalid("OrderedDict is called with arguments, but torch.save calls it with none");
    }
    return &dicts_.emplace_back();
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
// [, metadata]) and the older _rebuild_tensor(storage, storage_offset, size, stride). The
// arguments after stride do not change the values, so they are not checked.
Value PickleMachine::call_rebuild_tensor(const Global& function, const Tuple& args) {
    const bool version_2 = function.kind == GlobalKind::kRebuildTensorV2;
    const size_t min_count = version_2 ? 6 : 4;
    const size_t max_count = version_2 ? 7 : 4;
    if (args.items.size() < min_count || args.items.size() > max_count) {
        fail_invalid(fmt::format("{} has {} arguments, expected {}", function.name,
                                 args.items.size(), min_count));
    }

    Tensor tensor;
    tensor.storage = expect<const Storage*>(args.items[0], "the tensor's storage");
    tensor.storage_offset = expect<int64_t>(args.items[1], "the tensor's storage offset");
    tensor.sizes = expect_int_tuple(args.items[2], "the tensor's size");
    tensor.strides = expect_int_tuple(args.items[3], "the tensor's stride");
    return &tensors_.emplace_back(std::move(tensor));
}

// _rebuild_parameter(data, requires_grad, backward_hooks) wraps a tensor in nn.Parameter, which
// only state_dict(keep_vars=True) saves. The values are those of `data`.
Value PickleMachine::call_rebuild_parameter(const Tuple& args) {
    if (args.items.size() != 3) {
        fail_invalid(
            fmt::format("_rebuild_parameter has {} arguments, expected 3", args.items.size()));
    }
    return expect<const Tensor*>(args.items[0], "the parameter's data");
}

// torch.device('cpu') or torch.device('cuda', 0).
Value PickleMachine::call_device(const Tuple& args) {
    if (args.items.empty() || args.items.size() > 2) {
        fail_invalid(
            fmt::format("torch.device has {} arguments, expected 1 or 2", args.items.size()));
    }
    std::string name = *expect<const std::string*>(args.items[0], "the device type");
    if (args.items.size() == 2) {
        name += fmt::format(":{}", expect<int64_t>(args.items[1], "the device index"));
    }
    return &devices_.emplace_back(Device{std::move(name)});
}

std::vector<int64_t> PickleMachine::expect_int_tuple(const Value& value,
                                                     std::string_view description) const {
    const Tuple* tuple = expect<const Tuple*>(value, description);
    std::vector<int64_t> numbers;
    numbers.reserve(tuple->items.size());
    for (const Value& item : tuple->items) {
        numbers.push_back(expect<int64_t>(item, fmt::format("an item of {}", description)));
    }
    return numbers;
}

// ------------------------------------------------------------------------------------------------
// The zip archive

// A record read from the archive. `data` owns the bytes.
struct Record {
    at::DataPtr data;
    size_t size = 0;

    std::string_view bytes() const { return {static_cast<const char*>(data.get()), size}; }
};

// Every file torch.save has written since PyTorch 1.6 starts with a zip local file header.
constexpr std::string_view kZipSignature = "PK\x03\x04";

// The legacy format (before 1.6, or _use_new_zipfile_serialization=False) starts with a protocol
// 2 pickle of torch.serialization.MAGIC_NUMBER 0x1950a86a20f9469cfc6c: PROTO 2, LONG1 of 10 bytes.
constexpr std::string_view kLegacyMagic =
    "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

// Checks the first bytes of `path`, so that the two formats users most often have instead of a
// zip archive get a message that names the format and how to convert it.
void check_zip_signature(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file.is_open()) {
        fail(ExitCode::kIo, "cannot open state_dict file '{}' for reading", path.string());
    }
    std::string start(kLegacyMagic.size(), '\0');
    file.read(start.data(), static_cast<std::streamsize>(start.size()));
    if (file.bad()) {
        fail(ExitCode::kIo, "reading state_dict file '{}' failed", path.string());
    }
    start.resize(static_cast<size_t>(file.gcount()));

    if (start.starts_with(kZipSignature)) {
        return;
    }
    if (start == kLegacyMagic) {
        fail(ExitCode::kInvalidInput,
             "'{}' uses the legacy torch.save format (PyTorch before 1.6), which edgeq does not "
             "read. Re-save it with a current PyTorch: torch.save(torch.load(path), path, "
             "_use_new_zipfile_serialization=True)",
             path.string());
    }
    if (start.empty()) {
        fail(ExitCode::kInvalidInput, "state_dict file '{}' is empty. {}", path.string(),
             kResaveHint);
    }
    if (static_cast<uint8_t>(start[0]) == opcode::kProto) {
        fail(ExitCode::kInvalidInput, "'{}' is a plain pickle, not a torch.save zip archive. {}",
             path.string(), kResaveHint);
    }
    fail(ExitCode::kInvalidInput,
         "'{}' is not a torch.save zip archive: it does not start with a zip header. The file is "
         "corrupt or of another format. {}",
         path.string(), kResaveHint);
}

// Serves the file to PyTorchStreamReader and counts its reads. libtorch 1.13's zip code (miniz)
// returns a record as read, without reading the file or writing the buffer, when a corrupt central
// directory marks the entry as a folder or gives it a compressed size of 0. Archive::read_record
// detects that case because the read count stays the same.
class CountingFileAdapter final : public caffe2::serialize::ReadAdapterInterface {
  public:
    explicit CountingFileAdapter(const std::string& path) : file_(path) {}

    size_t size() const override { return file_.size(); }

    size_t read(uint64_t position, void* buffer, size_t count, const char* what) const override {
        ++read_count_;
        return file_.read(position, buffer, count, what);
    }

    size_t read_count() const { return read_count_; }

  private:
    caffe2::serialize::FileAdapter file_;
    mutable size_t read_count_ = 0;
};

// A torch.save zip archive, read with libtorch's PyTorchStreamReader. Every c10::Error it throws
// is turned into a one-line edgeq::Error that names the file.
class Archive {
  public:
    explicit Archive(const fs::path& path) : path_(path) {
        try {
            adapter_ = std::make_shared<CountingFileAdapter>(path.string());
            reader_ = std::make_unique<PyTorchStreamReader>(adapter_);
        } catch (const c10::Error& error) {
            fail(ExitCode::kInvalidInput,
                 "'{}' is not a readable torch.save zip archive ({}). The file is truncated or "
                 "corrupt. {}",
                 path.string(), first_line(error.what_without_backtrace()), kResaveHint);
        }
    }

    bool has_record(const std::string& name) {
        try {
            return reader_->hasRecord(name);
        } catch (const c10::Error& error) {
            fail_record(name, error);
        }
    }

    Record read_record(const std::string& name) {
        if (!has_record(name)) {
            fail(ExitCode::kInvalidInput,
                 "'{}' has no record '{}', so it is not a complete torch.save archive. {}",
                 path_.string(), name, kResaveHint);
        }

        Record record;
        const size_t reads_before = adapter_->read_count();
        try {
            std::tie(record.data, record.size) = reader_->getRecord(name);
        } catch (const c10::Error& error) {
            fail_record(name, error);
        }
        if (record.size > 0 && adapter_->read_count() == reads_before) {
            fail(ExitCode::kInvalidInput,
                 "reading record '{}' of '{}' failed (its zip entry is marked as a folder or has "
                 "no data). The file is corrupt. {}",
                 name, path_.string(), kResaveHint);
        }
        return record;
    }

  private:
    [[noreturn]] void fail_record(const std::string& name, const c10::Error& error) const {
        fail(ExitCode::kInvalidInput,
             "reading record '{}' of '{}' failed ({}). The file is truncated or corrupt. {}", name,
             path_.string(), first_line(error.what_without_backtrace()), kResaveHint);
    }

    fs::path path_;
    std::shared_ptr<CountingFileAdapter> adapter_;
    std::unique_ptr<PyTorchStreamReader> reader_;
};

// TorchScript archives (torch.jit.save, and libtorch's torch::save that edgeq checkpoints use)
// are zip archives too, with a data.pkl that references TorchScript classes.
void reject_torchscript(Archive& archive, const fs::path& path) {
    if (archive.has_record("constants.pkl")) {
        fail(ExitCode::kInvalidInput,
             "'{}' is a TorchScript archive (from torch.jit.save or libtorch's torch::save, as "
             "edgeq checkpoints are), not a state_dict from Python's torch.save. Load it as an "
             "edgeq checkpoint instead, or save model.state_dict() with torch.save in Python",
             path.string());
    }
}

// Returns whether storage bytes need swapping on this host, from the optional byteorder record.
bool storage_needs_byte_swap(Archive& archive, const fs::path& path) {
    std::endian file_order = std::endian::little;
    if (archive.has_record("byteorder")) {
        const Record record = archive.read_record("byteorder");
        if (record.bytes() == "big") {
            file_order = std::endian::big;
        } else if (record.bytes() != "little") {
            fail(ExitCode::kInvalidInput,
                 "'{}' has a byteorder record of '{}', expected 'little' or 'big'. {}",
                 path.string(), record.bytes(), kResaveHint);
        }
    }
    return file_order != std::endian::native;
}

// ------------------------------------------------------------------------------------------------
// From pickled tensors to HostTensors

// Reads each storage record once, however many tensors view it.
class StorageRecords {
  public:
    StorageRecords(Archive& archive, const fs::path& path) : archive_(archive), path_(path) {}

    // Returns the bytes of `storage`, checked to hold its declared element count.
    std::string_view bytes_of(const Storage& storage, const std::string& tensor_key) {
        auto found = records_.find(storage.key);
        if (found == records_.end()) {
            Record record = archive_.read_record("data/" + storage.key);
            found = records_.emplace(storage.key, std::move(record)).first;
        }

        const std::string_view bytes = found->second.bytes();
        const size_t item_size = element_size(storage.type->element_type);
        const auto element_count = static_cast<uint64_t>(storage.element_count);
        if (element_count > bytes.size() / item_size) {
            fail(ExitCode::kInvalidInput,
                 "'{}': record 'data/{}' of tensor '{}' has {} bytes, but its storage of {} {} "
                 "elements needs {}. The file is truncated or corrupt. {}",
                 path_.string(), storage.key, tensor_key, bytes.size(), storage.element_count,
                 global_name(*storage.type), element_count * item_size, kResaveHint);
        }
        return bytes;
    }

  private:
    Archive& archive_;
    const fs::path& path_;
    std::map<std::string, Record> records_;
};

// Checks the view's geometry against its storage and returns its element count.
int64_t check_view(const Tensor& tensor, const std::string& key, const fs::path& path) {
    auto reject = [&](std::string_view problem) {
        fail(ExitCode::kInvalidInput, "'{}': tensor '{}' {}. The file is corrupt. {}",
             path.string(), key, problem, kResaveHint);
    };

    if (tensor.sizes.size() != tensor.strides.size()) {
        reject(
            fmt::format("has {} sizes but {} strides", tensor.sizes.size(), tensor.strides.size()));
    }
    if (tensor.storage_offset < 0) {
        reject("has a negative storage offset");
    }

    // Element count and the highest storage index the view reads, with overflow checks.
    int64_t element_count = 1;
    int64_t last_index = tensor.storage_offset;
    for (size_t d = 0; d < tensor.sizes.size(); ++d) {
        const int64_t size = tensor.sizes[d];
        const int64_t stride = tensor.strides[d];
        if (size < 0 || stride < 0) {
            reject(fmt::format("has a negative size or stride in dimension {}", d));
        }
        if (__builtin_mul_overflow(element_count, size, &element_count) ||
            element_count > kMaxTensorElements) {
            reject(fmt::format("has more than {} elements, the most edgeq reads into one tensor",
                               kMaxTensorElements));
        }
        int64_t reach = 0;
        if ((size > 0 && __builtin_mul_overflow(size - 1, stride, &reach)) ||
            __builtin_add_overflow(last_index, reach, &last_index)) {
            reject(fmt::format("has a stride of {} in dimension {} that overflows 64 bits", stride,
                               d));
        }
    }
    if (element_count > 0 && last_index >= tensor.storage->element_count) {
        reject(fmt::format("reads storage element {}, but its storage 'data/{}' has {}", last_index,
                           tensor.storage->key, tensor.storage->element_count));
    }
    return element_count;
}

// Copies the strided view `tensor` into a contiguous float32 HostTensor. Strides and offset are in
// elements, as in torch.Tensor.as_strided.
HostTensor materialise(const Tensor& tensor, const std::string& key, StorageRecords& records,
                       bool swap_bytes, const fs::path& path) {
    const int64_t element_count = check_view(tensor, key, path);

    HostTensor host;
    host.shape = tensor.sizes;
    if (element_count == 0) {
        return host;
    }
    host.values.resize(static_cast<size_t>(element_count));

    const ElementType type = tensor.storage->type->element_type;
    const size_t item_size = element_size(type);
    const auto* bytes =
        reinterpret_cast<const uint8_t*>(records.bytes_of(*tensor.storage, key).data());

    // Walk the output in row-major order like an odometer: `index` is the position in each
    // dimension and `storage_index` the matching element of the storage.
    const size_t rank = tensor.sizes.size();
    std::vector<int64_t> index(rank, 0);
    int64_t storage_index = tensor.storage_offset;
    for (float& value : host.values) {
        value = element_to_float(type, bytes + static_cast<size_t>(storage_index) * item_size,
                                 swap_bytes);
        for (size_t d = rank; d-- > 0;) {
            if (++index[d] < tensor.sizes[d]) {
                storage_index += tensor.strides[d];
                break;
            }
            storage_index -= (tensor.sizes[d] - 1) * tensor.strides[d];
            index[d] = 0;
        }
    }
    return host;
}

// Returns the key of the first dict value whose values are all tensors: in a training checkpoint
// such as {'epoch': 3, 'model': model.state_dict()} that is the model's state_dict.
std::string find_nested_state_dict(const Dict& top) {
    for (const auto& [key, value] : top.items) {
        const auto* nested = std::get_if<Dict*>(&value);
        if (nested == nullptr || (*nested)->items.empty()) {
            continue;
        }
        const bool all_tensors = std::all_of(
            (*nested)->items.begin(), (*nested)->items.end(),
            [](const auto& item) { return std::holds_alternative<const Tensor*>(item.second); });
        if (all_tensors) {
            return key;
        }
    }
    return {};
}

StateDict to_state_dict(const Value& top, StorageRecords& records, bool swap_bytes,
                        const fs::path& path) {
    const auto* dict = std::get_if<Dict*>(&top);
    if (dict == nullptr) {
        fail(ExitCode::kInvalidInput,
             "'{}' is not a state_dict: its top-level object is a {}, not a dict of tensors. {}",
             path.string(), type_name(top), kResaveHint);
    }

    StateDict weights;
    for (const auto& [key, value] : (*dict)->items) {
        const auto* tensor = std::get_if<const Tensor*>(&value);
        if (tensor != nullptr) {
            weights[key] = materialise(**tensor, key, records, swap_bytes, path);
            continue;
        }

        const std::string nested = find_nested_state_dict(**dict);
        if (!nested.empty()) {
            fail(ExitCode::kInvalidInput,
                 "'{}' is not a state_dict: key '{}' is a {}, not a tensor. It looks like a "
                 "training checkpoint, so save its entry alone with torch.save(checkpoint['{}'], "
                 "path)",
                 path.string(), key, type_name(value), nested);
        }
        fail(ExitCode::kInvalidInput,
             "'{}' is not a state_dict: key '{}' is a {}, not a tensor. {}", path.string(), key,
             type_name(value), kResaveHint);
    }
    return weights;
}

// Reads `path` as read_pytorch_state_dict does, but with messages that may contain control
// characters from the file.
StateDict read_state_dict_file(const fs::path& path) {
    std::error_code status_error;
    const fs::file_status status = fs::status(path, status_error);
    if (!fs::exists(status)) {
        fail(ExitCode::kIo, "state_dict file '{}' not found", path.string());
    }
    if (fs::is_directory(status)) {
        fail(ExitCode::kIo, "state_dict path '{}' is a folder, expected a file from torch.save",
             path.string());
    }

    check_zip_signature(path);
    Archive archive(path);
    reject_torchscript(archive, path);
    const bool swap_bytes = storage_needs_byte_swap(archive, path);

    const Record pickle = archive.read_record("data.pkl");
    PickleMachine machine(pickle.bytes(), path.string());
    const Value top = machine.run();

    StorageRecords records(archive, path);
    return to_state_dict(top, records, swap_bytes, path);
}

// Replaces control characters with '?'. Keys, global names and libtorch's messages come from the
// file and may contain any byte, including line breaks.
std::string replace_control_characters(std::string text) {
    std::replace_if(
        text.begin(), text.end(),
        [](char character) {
            const auto code = static_cast<unsigned char>(character);
            return code < 0x20 || code == 0x7f;
        },
        '?');
    return text;
}

}  // namespace

StateDict read_pytorch_state_dict(const fs::path& path) {
    try {
        return read_state_dict_file(path);
    } catch (const Error& error) {
        throw Error(error.code(), replace_control_characters(error.what()));
    }
}

}  // namespace edgeq
