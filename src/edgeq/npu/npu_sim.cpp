#include "edgeq/npu/npu_sim.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <variant>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "edgeq/common/error.h"
#include "edgeq/onnx/model_io.h"

namespace edgeq::npu {

// =============================================================================================
// Quantized values and requantization
// =============================================================================================

namespace {

// An activation tensor: uint8 or int8 values q, which stand for (q - zero_point) * scale.
using QuantizedData = std::variant<Tensor<uint8_t>, Tensor<int8_t>>;

const std::vector<int64_t>& shape_of(const QuantizedData& data) {
    return std::visit(
        [](const auto& tensor) -> const std::vector<int64_t>& { return tensor.shape; }, data);
}

template <typename T, typename ValueAt>
Tensor<T> make_tensor(std::vector<int64_t> shape, ValueAt& value_at) {
    Tensor<T> tensor{std::move(shape), {}};
    const int64_t count = element_count(tensor.shape);
    tensor.data.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
        tensor.data[i] = static_cast<T>(value_at(i));
    }
    return tensor;
}

// Builds an activation of `type` whose element i is value_at(i), already within the type's
// range.
template <typename ValueAt>
QuantizedData make_quantized(QuantType type, std::vector<int64_t> shape, ValueAt&& value_at) {
    if (type == QuantType::kUint8) {
        return make_tensor<uint8_t>(std::move(shape), value_at);
    }
    return make_tensor<int8_t>(std::move(shape), value_at);
}

// A scale in the form requantization uses: 2^-position when power_of_two, and its real value.
struct Scale {
    bool power_of_two = true;
    int position = 0;
    double real = 1.0;
};

Scale scale_of(const QuantParams& params) {
    return {params.power_of_two, params.position, static_cast<double>(params.scale())};
}

// The scale of a product such as input * weight (the accumulator's unit).
Scale multiply_scales(const Scale& a, const Scale& b) {
    return {a.power_of_two && b.power_of_two, a.position + b.position, a.real * b.real};
}

// Multiplication of an integer by a positive real factor with one rounding: by 2^-shift when
// both scales are powers of two, else by a fixed-point multiplier.
struct Rescale {
    bool fixed_point = false;
    int shift = 0;
    FixedPointMultiplier multiplier;

    int64_t apply(int64_t value, Rounding rounding) const {
        return fixed_point ? multiply_round(value, multiplier, rounding)
                           : shift_round(value, shift, rounding);
    }

    std::string describe() const {
        if (fixed_point) {
            return fmt::format("multiplier {} * 2^-{}", multiplier.multiplier, multiplier.shift);
        }
        return fmt::format("shift {}", shift);
    }
};

// Converts a value in units of `from` to units of `to`: v * from / to. With power-of-two scales
// that is v * 2^-(p_from - p_to), a shift by p_from - p_to.
Rescale make_rescale(const Scale& from, const Scale& to, bool fixed_point) {
    Rescale rescale;
    if (fixed_point || !from.power_of_two || !to.power_of_two) {
        rescale.fixed_point = true;
        rescale.multiplier = fixed_point_from_real(from.real / to.real);
    } else {
        rescale.shift = from.position - to.position;
    }
    return rescale;
}

// q_out = saturate(rescale(value) + z_out), with a fused Relu clamping at z_out (the quantized
// zero). Rounding is monotone and maps 0 to 0, so clamping after rounding equals rounding
// max(value, 0).
struct Requantizer {
    Rescale rescale;
    int64_t zero_point = 0;
    QuantType type = QuantType::kUint8;
    bool relu = false;

    int64_t apply(int64_t value, Rounding rounding) const {
        // The accumulator is an int32 register, so larger sums saturate there first.
        const int64_t accumulator = saturate(value, QuantType::kInt32);
        int64_t quantized = rescale.apply(accumulator, rounding) + zero_point;
        if (relu) {
            quantized = std::max(quantized, zero_point);
        }
        return saturate(quantized, type);
    }
};

Requantizer make_requantizer(const Scale& accumulator_unit, const QuantParams& output,
                             bool fixed_point, bool relu) {
    return {make_rescale(accumulator_unit, scale_of(output), fixed_point), output.zero_point,
            output.type, relu};
}

// Requantizes every element of `input` (zero point `input_zero_point`) with `requantizer`.
QuantizedData requantize_all(const QuantizedData& input, int64_t input_zero_point,
                             const Requantizer& requantizer, Rounding rounding) {
    return std::visit(
        [&](const auto& tensor) {
            return make_quantized(requantizer.type, tensor.shape, [&](int64_t i) {
                return requantizer.apply(static_cast<int64_t>(tensor.data[i]) - input_zero_point,
                                         rounding);
            });
        },
        input);
}

bool same_params(const QuantParams& a, const QuantParams& b) {
    return a.type == b.type && a.zero_point == b.zero_point && a.power_of_two == b.power_of_two &&
           (a.power_of_two ? a.position == b.position : a.float_scale == b.float_scale);
}

std::string describe_params(const QuantParams& params) {
    const std::string scale = params.power_of_two ? fmt::format("2^{}", -params.position)
                                                  : fmt::format("{:g}", params.float_scale);
    return fmt::format("{} scale {} zp {}", quant_type_name(params.type), scale, params.zero_point);
}

// Describes per-channel rescales by their range, a single one in full.
std::string describe_rescales(const std::vector<Requantizer>& requantizers) {
    if (requantizers.size() == 1 || requantizers.front().rescale.fixed_point) {
        const std::string first = requantizers.front().rescale.describe();
        return requantizers.size() == 1 ? first
                                        : fmt::format("{} per-channel multipliers, channel 0 {}",
                                                      requantizers.size(), first);
    }
    int low = requantizers.front().rescale.shift;
    int high = low;
    for (const Requantizer& requantizer : requantizers) {
        low = std::min(low, requantizer.rescale.shift);
        high = std::max(high, requantizer.rescale.shift);
    }
    return fmt::format("{} per-channel shifts {}..{}", requantizers.size(), low, high);
}

}  // namespace

// =============================================================================================
// Steps
// =============================================================================================

// The activations of one run, indexed like NpuSimModel::tensors_.
struct Workspace {
    std::vector<QuantizedData> tensors;
};

class Step {
  public:
    virtual ~Step() = default;
    virtual void run(Workspace& workspace, Rounding rounding) const = 0;
    virtual std::string describe(const std::vector<ProgramTensor>& tensors) const = 0;
};

namespace {

// The common part of every step: the node it came from and the tensors it reads and writes.
struct StepBase : Step {
    std::string node_name;
    std::string op_type;
    std::vector<int> inputs;
    int output = -1;

    std::string describe_io(const std::vector<ProgramTensor>& tensors) const {
        std::vector<std::string> input_texts;
        for (const int input : inputs) {
            input_texts.push_back(fmt::format("{} [{}]", tensors[input].name,
                                              describe_params(tensors[input].params)));
        }
        return fmt::format("{} {}: {} -> {} [{}]", op_type, node_name,
                           fmt::join(input_texts, " + "), tensors[output].name,
                           describe_params(tensors[output].params));
    }
};

// Window attributes of Conv and the pools, resolved against the input size at run time because
// auto_pad and GlobalAveragePool depend on it.
struct WindowAttributes {
    std::vector<int64_t> kernel;  // empty: the whole input (GlobalAveragePool)
    std::array<int64_t, 2> strides{1, 1};
    std::array<int64_t, 2> dilations{1, 1};
    std::array<int64_t, 4> pads{0, 0, 0, 0};
    std::string auto_pad = "NOTSET";
    bool ceil_mode = false;
    bool count_include_pad = false;

    Window2d resolve(int64_t height, int64_t width) const {
        Window2d window;
        window.kernel = kernel.empty() ? std::array<int64_t, 2>{height, width}
                                       : std::array<int64_t, 2>{kernel[0], kernel[1]};
        window.strides = strides;
        window.dilations = dilations;
        window.pads = pads;
        window.ceil_mode = ceil_mode;
        window.count_include_pad = count_include_pad;
        if (auto_pad == "VALID") {
            window.pads = {0, 0, 0, 0};
        } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
            // ONNX: output = ceil(input / stride); the total padding is split with the odd pixel
            // at the end (SAME_UPPER) or at the beginning (SAME_LOWER).
            const std::array<int64_t, 2> sizes{height, width};
            for (int axis = 0; axis < 2; ++axis) {
                const int64_t output = (sizes[axis] + strides[axis] - 1) / strides[axis];
                const int64_t span = (window.kernel[axis] - 1) * dilations[axis] + 1;
                const int64_t total =
                    std::max<int64_t>(0, (output - 1) * strides[axis] + span - sizes[axis]);
                const int64_t small = total / 2;
                const int64_t large = total - small;
                window.pads[axis] = auto_pad == "SAME_UPPER" ? small : large;
                window.pads[axis + 2] = auto_pad == "SAME_UPPER" ? large : small;
            }
        }
        return window;
    }

    std::string describe() const {
        if (kernel.empty()) {
            return "global";
        }
        return fmt::format(
            "kernel {}x{} strides {} dilations {} pads {}{}", kernel[0], kernel[1],
            fmt::join(strides, ","), fmt::join(dilations, ","),
            auto_pad == "NOTSET" ? fmt::format("{}", fmt::join(pads, ",")) : auto_pad,
            ceil_mode ? " ceil" : "");
    }
};

void check_rank4(const std::vector<int64_t>& shape, const StepBase& step) {
    if (shape.size() != 4) {
        fail(ExitCode::kInvalidInput, "node '{}' ({}) expects a 4-D NCHW input, got shape [{}]",
             step.node_name, step.op_type, fmt::join(shape, ", "));
    }
}

// Weights as stored in the model: uint8 or int8, with one zero point for all channels.
using WeightData = std::variant<Tensor<uint8_t>, Tensor<int8_t>>;

// Conv, Gemm and MatMul: integer accumulation, bias in accumulator units, requantization.
//   acc[c] = sum (q_in - z_in) * (q_w - z_w) + bias_acc[c]      (units s_in * s_w[c])
//   q_out  = saturate(rescale_c(acc[c]) + z_out)                 (Relu: at least z_out)
struct LinearStep : StepBase {
    int64_t input_zero_point = 0;
    WeightData weight;  // Conv [M, C/group, kh, kw]; Gemm and MatMul [K, N]
    std::string weight_name;
    int64_t weight_zero_point = 0;
    std::vector<int64_t> bias;  // per output channel, in accumulator units; may be empty
    std::vector<Requantizer> requantizers;  // one, or one per output channel
    std::string bias_text;                  // for the listing
    // Conv only
    bool is_conv = false;
    WindowAttributes window;
    int64_t group = 1;
    // Gemm only
    bool transpose_input = false;

    const Requantizer& requantizer_for(int64_t channel) const {
        return requantizers.size() == 1 ? requantizers.front() : requantizers[channel];
    }

    void run(Workspace& workspace, Rounding rounding) const override {
        const QuantizedData& input = workspace.tensors[inputs[0]];
        const auto input_zero = static_cast<int32_t>(input_zero_point);
        const auto weight_zero = static_cast<int32_t>(weight_zero_point);

        Tensor<int32_t> accumulator = std::visit(
            [&](const auto& in, const auto& w) {
                if (is_conv) {
                    check_rank4(in.shape, *this);
                    const int64_t expected_channels = w.shape[1] * group;
                    if (in.shape[1] != expected_channels) {
                        fail(ExitCode::kInvalidInput,
                             "node '{}' (Conv) expects {} input channels, got {}", node_name,
                             expected_channels, in.shape[1]);
                    }
                    return conv2d_accumulate<int32_t>(in, input_zero, w, weight_zero,
                                                      window.resolve(in.shape[2], in.shape[3]),
                                                      group);
                }
                return dense_accumulate(in, input_zero, w, weight_zero);
            },
            input, weight);

        // Output channels are axis 1 of a Conv output [N, M, H, W] and the last axis of a
        // Gemm/MatMul output [..., N].
        const std::vector<int64_t>& shape = accumulator.shape;
        const int64_t channels = is_conv ? shape[1] : shape.back();
        const int64_t inner = is_conv ? shape[2] * shape[3] : 1;
        const QuantType output_type = requantizers.front().type;
        workspace.tensors[output] = make_quantized(output_type, shape, [&](int64_t i) {
            const int64_t channel = (i / inner) % channels;
            const int64_t value = accumulator.data[i] + (bias.empty() ? 0 : bias[channel]);
            return requantizer_for(channel).apply(value, rounding);
        });
    }

    template <typename In, typename W>
    Tensor<int32_t> dense_accumulate(const Tensor<In>& in, int32_t input_zero, const Tensor<W>& w,
                                     int32_t weight_zero) const {
        if (transpose_input && in.shape.size() != 2) {
            fail(ExitCode::kInvalidInput, "node '{}' (Gemm) expects a 2-D input, got [{}]",
                 node_name, fmt::join(in.shape, ", "));
        }
        // Gemm's transA: the input [K, M] becomes [M, K].
        const Tensor<In> transposed = transpose_input ? transpose2d(in) : Tensor<In>{};
        const Tensor<In>& rows = transpose_input ? transposed : in;
        if (rows.shape.size() < 2 || rows.shape.back() != w.shape[0]) {
            fail(ExitCode::kInvalidInput, "node '{}' ({}) expects inputs [..., {}], got [{}]",
                 node_name, op_type, w.shape[0], fmt::join(rows.shape, ", "));
        }
        return matmul_accumulate<int32_t>(rows, input_zero, w, weight_zero);
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        std::string text = describe_io(tensors);
        text += fmt::format(", weight {} zp {}", weight_name, weight_zero_point);
        if (is_conv) {
            text += fmt::format(", {} group {}", window.describe(), group);
        }
        if (transpose_input) {
            text += ", transA";
        }
        text += fmt::format(", {}", bias_text.empty() ? "no bias" : bias_text);
        text += fmt::format(", requantize {}", describe_rescales(requantizers));
        if (requantizers.front().relu) {
            text += ", fused Relu";
        }
        return text;
    }
};

// MaxPool: the largest q in each window (max commutes with q - z), then requantization when the
// output's parameters differ from the input's.
struct MaxPoolStep : StepBase {
    WindowAttributes window;
    int64_t input_zero_point = 0;
    bool requantize = false;
    Requantizer requantizer;

    void run(Workspace& workspace, Rounding rounding) const override {
        QuantizedData pooled = std::visit(
            [&](const auto& in) -> QuantizedData {
                check_rank4(in.shape, *this);
                return max_pool2d(in, window.resolve(in.shape[2], in.shape[3]));
            },
            workspace.tensors[inputs[0]]);
        workspace.tensors[output] =
            requantize ? requantize_all(pooled, input_zero_point, requantizer, rounding)
                       : std::move(pooled);
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        return fmt::format("{}, {}, {}", describe_io(tensors), window.describe(),
                           requantize ? "requantize " + requantizer.rescale.describe()
                                      : std::string("same parameters, no requantization"));
    }
};

// AveragePool and GlobalAveragePool: window sums S of (q - z_in) over N taps, then one rounded
// division, q_out = saturate(round(S * s_in / (N * s_out)) + z_out):
//   power-of-two scales: S * 2^(p_out - p_in) / N, a shift folded into the divisor or dividend
//   fixed point:         S * M * 2^-shift / N with M, shift from s_in / s_out
// NOTE: the DPU approximates 1/N by a multiply and shift, but this step keeps the exact rounded
// division. Results can differ from the device by one step where the approximation is off.
struct AveragePoolStep : StepBase {
    WindowAttributes window;
    int64_t input_zero_point = 0;
    Rescale rescale;  // s_in / s_out
    int64_t output_zero_point = 0;
    QuantType output_type = QuantType::kUint8;

    void run(Workspace& workspace, Rounding rounding) const override {
        std::vector<int64_t> divisors;
        const Tensor<int32_t> sums = std::visit(
            [&](const auto& in) {
                check_rank4(in.shape, *this);
                return window_sums2d<int32_t>(in, static_cast<int32_t>(input_zero_point),
                                              window.resolve(in.shape[2], in.shape[3]), divisors);
            },
            workspace.tensors[inputs[0]]);

        // value * factor * 2^-shift / divisor with one rounding, as a single divide_round.
        const int64_t factor = rescale.fixed_point ? rescale.multiplier.multiplier : 1;
        const int shift = rescale.fixed_point ? rescale.multiplier.shift : rescale.shift;
        workspace.tensors[output] = make_quantized(output_type, sums.shape, [&](int64_t i) {
            int64_t dividend = sums.data[i] * factor;
            int64_t divisor = divisors[i];
            if (shift >= 0) {
                divisor <<= shift;
            } else {
                dividend *= int64_t{1} << -shift;
            }
            return saturate(divide_round(dividend, divisor, rounding) + output_zero_point,
                            output_type);
        });
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        return fmt::format("{}, {}{}, window sum then one rounded division, {}",
                           describe_io(tensors), window.describe(),
                           window.count_include_pad ? " count_include_pad" : "",
                           rescale.describe());
    }
};

// Add of two activations with numpy broadcasting. Both inputs are brought to a common unit, the
// finer of the two scales (power-of-two: exact left shifts) or s_out * 2^-kAddFractionBits
// (fixed point), added, and requantized to the output.
constexpr int kAddFractionBits = 16;

struct AddStep : StepBase {
    std::array<int64_t, 2> input_zero_points{0, 0};
    std::array<Rescale, 2> to_common;
    Requantizer requantizer;

    void run(Workspace& workspace, Rounding rounding) const override {
        const QuantizedData& a = workspace.tensors[inputs[0]];
        const QuantizedData& b = workspace.tensors[inputs[1]];
        const std::vector<int64_t> shape = broadcast_shape(shape_of(a), shape_of(b));
        const std::vector<int64_t> a_strides = broadcast_strides(shape_of(a), shape);
        const std::vector<int64_t> b_strides = broadcast_strides(shape_of(b), shape);

        workspace.tensors[output] = std::visit(
            [&](const auto& x, const auto& y) {
                return make_quantized(requantizer.type, shape, [&](int64_t i) {
                    const auto [ia, ib] = source_indices(i, shape, a_strides, b_strides);
                    const int64_t sum =
                        to_common[0].apply(x.data[ia] - input_zero_points[0], rounding) +
                        to_common[1].apply(y.data[ib] - input_zero_points[1], rounding);
                    return requantizer.apply(sum, rounding);
                });
            },
            a, b);
    }

    std::vector<int64_t> broadcast_shape(const std::vector<int64_t>& a,
                                         const std::vector<int64_t>& b) const {
        const size_t rank = std::max(a.size(), b.size());
        std::vector<int64_t> shape(rank, 1);
        for (size_t d = 0; d < rank; ++d) {
            const int64_t da = d + a.size() >= rank ? a[d + a.size() - rank] : 1;
            const int64_t db = d + b.size() >= rank ? b[d + b.size() - rank] : 1;
            if (da != db && da != 1 && db != 1) {
                fail(ExitCode::kInvalidInput, "node '{}' (Add) cannot broadcast [{}] with [{}]",
                     node_name, fmt::join(a, ", "), fmt::join(b, ", "));
            }
            shape[d] = std::max(da, db);
        }
        return shape;
    }

    // Strides of `shape` aligned to the output's axes, 0 along broadcast axes.
    static std::vector<int64_t> broadcast_strides(const std::vector<int64_t>& shape,
                                                  const std::vector<int64_t>& output_shape) {
        std::vector<int64_t> strides(output_shape.size(), 0);
        int64_t stride = 1;
        for (size_t k = 0; k < shape.size(); ++k) {
            const size_t d = shape.size() - 1 - k;
            const size_t out_d = output_shape.size() - 1 - k;
            strides[out_d] = shape[d] == 1 ? 0 : stride;
            stride *= shape[d];
        }
        return strides;
    }

    static std::pair<int64_t, int64_t> source_indices(int64_t index,
                                                      const std::vector<int64_t>& shape,
                                                      const std::vector<int64_t>& a_strides,
                                                      const std::vector<int64_t>& b_strides) {
        int64_t ia = 0;
        int64_t ib = 0;
        for (size_t k = shape.size(); k-- > 0;) {
            const int64_t coordinate = index % shape[k];
            index /= shape[k];
            ia += coordinate * a_strides[k];
            ib += coordinate * b_strides[k];
        }
        return {ia, ib};
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        return fmt::format("{}, inputs to a common unit by {} and {}, requantize {}{}",
                           describe_io(tensors), to_common[0].describe(), to_common[1].describe(),
                           requantizer.rescale.describe(), requantizer.relu ? ", fused Relu" : "");
    }
};

// Concat: every input requantized to the output's parameters, then concatenated.
struct ConcatStep : StepBase {
    int64_t axis = 0;
    std::vector<int64_t> input_zero_points;
    std::vector<Requantizer> requantizers;  // one per input
    QuantType output_type = QuantType::kUint8;

    void run(Workspace& workspace, Rounding rounding) const override {
        std::vector<QuantizedData> parts;
        parts.reserve(inputs.size());
        const auto rank = static_cast<int64_t>(shape_of(workspace.tensors[inputs[0]]).size());
        const int64_t resolved_axis = axis < 0 ? axis + rank : axis;
        for (size_t k = 0; k < inputs.size(); ++k) {
            const QuantizedData& input = workspace.tensors[inputs[k]];
            const std::vector<int64_t>& shape = shape_of(input);
            if (static_cast<int64_t>(shape.size()) != rank || resolved_axis < 0 ||
                resolved_axis >= rank) {
                fail(ExitCode::kInvalidInput,
                     "node '{}' (Concat) cannot join inputs of rank {} along axis {}", node_name,
                     shape.size(), axis);
            }
            parts.push_back(requantize_all(input, input_zero_points[k], requantizers[k], rounding));
        }
        workspace.tensors[output] = std::visit(
            [&](const auto& first) -> QuantizedData {
                using TensorType = std::decay_t<decltype(first)>;
                std::vector<const TensorType*> pointers;
                for (const QuantizedData& part : parts) {
                    pointers.push_back(&std::get<TensorType>(part));
                }
                return concat(pointers, resolved_axis);
            },
            parts.front());
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        std::vector<std::string> rescales;
        for (const Requantizer& requantizer : requantizers) {
            rescales.push_back(requantizer.rescale.describe());
        }
        return fmt::format("{}, axis {}, inputs requantized by {}", describe_io(tensors), axis,
                           fmt::join(rescales, "; "));
    }
};

// Requantization of every element: a standalone Relu (clamp at z_out), and Reshape/Flatten
// (new shape, then requantization when the output's parameters differ).
struct ElementwiseStep : StepBase {
    int64_t input_zero_point = 0;
    bool requantize = false;
    Requantizer requantizer;
    // Reshape / Flatten
    enum class ShapeRule { kKeep, kReshape, kFlatten } shape_rule = ShapeRule::kKeep;
    std::vector<int64_t> requested_shape;
    bool allow_zero = false;
    int64_t flatten_axis = 1;

    void run(Workspace& workspace, Rounding rounding) const override {
        QuantizedData result = workspace.tensors[inputs[0]];
        std::visit(
            [&](auto& tensor) {
                if (shape_rule == ShapeRule::kReshape) {
                    tensor.shape = reshape_shape(tensor.shape, requested_shape, allow_zero);
                } else if (shape_rule == ShapeRule::kFlatten) {
                    tensor.shape = flatten_shape(tensor.shape, flatten_axis);
                }
            },
            result);
        workspace.tensors[output] =
            requantize ? requantize_all(result, input_zero_point, requantizer, rounding)
                       : std::move(result);
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        std::string text = describe_io(tensors);
        if (shape_rule == ShapeRule::kReshape) {
            text += fmt::format(", shape [{}]", fmt::join(requested_shape, ", "));
        } else if (shape_rule == ShapeRule::kFlatten) {
            text += fmt::format(", axis {}", flatten_axis);
        }
        text += requantize ? ", requantize " + requantizer.rescale.describe()
                           : std::string(", same parameters, data moved only");
        return text;
    }
};

// A quantized constant (an initializer read through DequantizeLinear by Add or Concat).
struct ConstantStep : StepBase {
    QuantizedData value;

    void run(Workspace& workspace, Rounding /*rounding*/) const override {
        workspace.tensors[output] = value;
    }

    std::string describe(const std::vector<ProgramTensor>& tensors) const override {
        return fmt::format("Constant {} [{}], shape [{}]", tensors[output].name,
                           describe_params(tensors[output].params),
                           fmt::join(shape_of(value), ", "));
    }
};

}  // namespace

// =============================================================================================
// Loading: from the QDQ graph to the list of steps
// =============================================================================================

const std::vector<std::string>& npu_sim_op_types() {
    static const std::vector<std::string> types = {
        "Conv", "Gemm",   "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
        "Add",  "Concat", "Relu",   "Reshape", "Flatten"};
    return types;
}

namespace {

// The ratio of an int32 bias's scale to s_in * s_w may differ from 1 by float rounding only: the
// quantizer stores s_in * s_w rounded to float32 (relative error 2^-24 ~ 6e-8).
constexpr double kBiasScaleRelativeTolerance = 1e-6;

QuantType quant_type_from_onnx(int32_t data_type, const std::string& tensor_name,
                               const std::string& label) {
    switch (data_type) {
        case onnx::TensorProto::UINT8:
            return QuantType::kUint8;
        case onnx::TensorProto::INT8:
            return QuantType::kInt8;
        case onnx::TensorProto::UINT16:
            return QuantType::kUint16;
        case onnx::TensorProto::INT16:
            return QuantType::kInt16;
        case onnx::TensorProto::INT32:
            return QuantType::kInt32;
        default:
            fail(ExitCode::kUnsupported,
                 "{}: quantized tensor '{}' has ONNX data type {}; npu-sim handles UINT8, INT8, "
                 "UINT16, INT16 and INT32",
                 label, tensor_name, data_type);
    }
}

// Reads an integer initializer (raw_data or the typed fields) into int64 values.
std::vector<int64_t> read_integer_tensor(const onnx::TensorProto& tensor,
                                         const std::string& label) {
    const int64_t count = edgeq::element_count(tensor.dims());
    std::vector<int64_t> values;
    values.reserve(static_cast<size_t>(count));
    const std::string& raw = tensor.raw_data();
    auto read_raw = [&](auto type_tag) {
        using T = decltype(type_tag);
        if (raw.size() != static_cast<size_t>(count) * sizeof(T)) {
            fail(ExitCode::kInvalidInput, "{}: initializer '{}' has {} bytes of data for {} values",
                 label, tensor.name(), raw.size(), count);
        }
        for (int64_t i = 0; i < count; ++i) {
            T value{};
            std::memcpy(&value, raw.data() + i * sizeof(T), sizeof(T));
            values.push_back(static_cast<int64_t>(value));
        }
    };
    const int32_t data_type = tensor.data_type();
    if (!tensor.has_raw_data()) {
        // Without raw_data, ONNX stores 8-, 16- and 32-bit integers in int32_data.
        if (data_type == onnx::TensorProto::INT64) {
            values.assign(tensor.int64_data().begin(), tensor.int64_data().end());
        } else {
            values.assign(tensor.int32_data().begin(), tensor.int32_data().end());
        }
    } else if (data_type == onnx::TensorProto::UINT8) {
        read_raw(uint8_t{});
    } else if (data_type == onnx::TensorProto::INT8) {
        read_raw(int8_t{});
    } else if (data_type == onnx::TensorProto::UINT16) {
        read_raw(uint16_t{});
    } else if (data_type == onnx::TensorProto::INT16) {
        read_raw(int16_t{});
    } else if (data_type == onnx::TensorProto::INT32) {
        read_raw(int32_t{});
    } else if (data_type == onnx::TensorProto::INT64) {
        read_raw(int64_t{});
    }
    if (data_type != onnx::TensorProto::UINT8 && data_type != onnx::TensorProto::INT8 &&
        data_type != onnx::TensorProto::UINT16 && data_type != onnx::TensorProto::INT16 &&
        data_type != onnx::TensorProto::INT32 && data_type != onnx::TensorProto::INT64) {
        fail(ExitCode::kUnsupported, "{}: initializer '{}' has ONNX data type {}, not an integer",
             label, tensor.name(), data_type);
    }
    if (static_cast<int64_t>(values.size()) != count) {
        fail(ExitCode::kInvalidInput, "{}: initializer '{}' has {} values for shape of {}", label,
             tensor.name(), values.size(), count);
    }
    return values;
}

std::vector<int64_t> dims_of(const onnx::TensorProto& tensor) {
    return {tensor.dims().begin(), tensor.dims().end()};
}

const onnx::AttributeProto* find_attribute(const onnx::NodeProto& node, const std::string& name) {
    for (const onnx::AttributeProto& attribute : node.attribute()) {
        if (attribute.name() == name) {
            return &attribute;
        }
    }
    return nullptr;
}

int64_t int_attribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    return attribute != nullptr ? attribute->i() : fallback;
}

float float_attribute(const onnx::NodeProto& node, const std::string& name, float fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    return attribute != nullptr ? attribute->f() : fallback;
}

std::vector<int64_t> ints_attribute(const onnx::NodeProto& node, const std::string& name) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    if (attribute == nullptr) {
        return {};
    }
    return {attribute->ints().begin(), attribute->ints().end()};
}

std::string string_attribute(const onnx::NodeProto& node, const std::string& name,
                             const std::string& fallback) {
    const onnx::AttributeProto* attribute = find_attribute(node, name);
    return attribute != nullptr ? attribute->s() : fallback;
}

// Quantization parameters of one Q/DQ node: one entry per tensor, or one per channel along `axis`.
struct NodeQuantization {
    std::string tensor_name;  // the scale's tensor, for messages
    std::vector<QuantParams> channels;
    int64_t axis = -1;  // -1 when per-tensor

    bool per_channel() const { return axis >= 0; }
};

// A quantized initializer read through a DequantizeLinear.
struct QuantizedConstant {
    const onnx::TensorProto* values = nullptr;
    NodeQuantization quantization;
    QuantType type = QuantType::kInt8;
};

}  // namespace

// Walks the QDQ graph in its (topological) node order and emits one step per quantized
// operator.
class ProgramBuilder {
  public:
    ProgramBuilder(NpuSimModel& model, const onnx::ModelProto& qdq_model)
        : model_(model), graph_(qdq_model.graph()) {
        index_graph();
    }

    void build() {
        find_input();
        for (const onnx::NodeProto& node : graph_.node()) {
            if (consumed_.count(&node) != 0) {
                continue;
            }
            compile_node(node);
        }
        find_outputs();
    }

  private:
    // ---- graph index --------------------------------------------------------------------

    void index_graph() {
        for (const onnx::TensorProto& tensor : graph_.initializer()) {
            initializers_[tensor.name()] = &tensor;
        }
        for (const onnx::NodeProto& node : graph_.node()) {
            for (const std::string& output : node.output()) {
                producers_[output] = &node;
            }
            for (const std::string& input : node.input()) {
                if (!input.empty()) {
                    consumers_[input].push_back(&node);
                }
            }
        }
        for (const onnx::ValueInfoProto& output : graph_.output()) {
            graph_outputs_.insert(output.name());
        }
    }

    const std::string& label() const { return model_.label_; }
    bool fixed_point() const { return model_.options_.fixed_point_multipliers; }

    [[noreturn]] void fail_unsupported(const onnx::NodeProto& node, const std::string& reason) {
        fail(ExitCode::kUnsupported,
             "{}: node '{}' ({}) {}; npu-sim runs {} between DequantizeLinear and QuantizeLinear "
             "nodes, with only the graph input's QuantizeLinear and the outputs' "
             "DequantizeLinear in float",
             label(), node.name(), node.op_type(), reason, fmt::join(npu_sim_op_types(), ", "));
    }

    // ---- quantization parameters --------------------------------------------------------

    // Checks that the model's scale can run: a power of two, unless fixed-point multipliers are
    // allowed.
    void check_scale(const std::string& tensor_name, float scale) {
        if (!(scale > 0) || !std::isfinite(scale)) {
            fail(ExitCode::kInvalidInput, "{}: scale '{}' is {}, not a positive finite number",
                 label(), tensor_name, scale);
        }
        int exponent = 0;
        const bool power_of_two = std::frexp(scale, &exponent) == 0.5f;
        if (!power_of_two && !fixed_point()) {
            fail(ExitCode::kUnsupported,
                 "{}: scale '{}' is {:g}, not a power of two, so requantization is not a shift; "
                 "quantize with the XINT8 preset (power-of-two scales) or allow fixed-point "
                 "multipliers (--fixed-point)",
                 label(), tensor_name, scale);
        }
    }

    QuantParams make_params(QuantType type, float scale, int64_t zero_point) {
        int exponent = 0;
        if (std::frexp(scale, &exponent) == 0.5f) {
            // scale = 0.5 * 2^exponent = 2^-(1 - exponent)
            return power_of_two_params(type, 1 - exponent, zero_point);
        }
        return float_scale_params(type, scale, zero_point);
    }

    NodeQuantization read_quantization(const onnx::NodeProto& node, QuantType default_type) {
        if (node.input_size() < 2) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' ({}) has no scale input", label(),
                 node.name(), node.op_type());
        }
        const onnx::TensorProto& scale_tensor = initializer(node, node.input(1), "scale");
        const std::vector<float> scales = read_float_tensor(scale_tensor);
        std::vector<int64_t> zero_points(scales.size(), 0);
        QuantType type = default_type;
        if (node.input_size() >= 3 && !node.input(2).empty()) {
            const onnx::TensorProto& zero_point_tensor =
                initializer(node, node.input(2), "zero point");
            zero_points = read_integer_tensor(zero_point_tensor, label());
            type = quant_type_from_onnx(zero_point_tensor.data_type(), zero_point_tensor.name(),
                                        label());
        }
        if (scales.empty() || zero_points.size() != scales.size()) {
            fail(ExitCode::kInvalidInput,
                 "{}: node '{}' has {} scales and {} zero points; they must match", label(),
                 node.name(), scales.size(), zero_points.size());
        }

        NodeQuantization quantization;
        quantization.tensor_name = scale_tensor.name();
        if (scale_tensor.dims_size() == 1) {
            quantization.axis = int_attribute(node, "axis", 1);
        }
        for (size_t c = 0; c < scales.size(); ++c) {
            check_scale(scale_tensor.name(), scales[c]);
            quantization.channels.push_back(make_params(type, scales[c], zero_points[c]));
        }
        return quantization;
    }

    const onnx::TensorProto& initializer(const onnx::NodeProto& node, const std::string& name,
                                         const std::string& role) {
        const auto found = initializers_.find(name);
        if (found == initializers_.end()) {
            fail(ExitCode::kUnsupported,
                 "{}: node '{}' ({}) reads its {} '{}' from another node; npu-sim needs it as an "
                 "initializer",
                 label(), node.name(), node.op_type(), role, name);
        }
        return *found->second;
    }

    // Activation parameters: per-tensor and 8-bit, which is what the integer steps store.
    QuantParams activation_params(const onnx::NodeProto& node, QuantType default_type) {
        const NodeQuantization quantization = read_quantization(node, default_type);
        if (quantization.per_channel() && quantization.channels.size() > 1) {
            fail_unsupported(node, "quantizes an activation per channel");
        }
        const QuantParams& params = quantization.channels.front();
        if (params.type != QuantType::kUint8 && params.type != QuantType::kInt8) {
            fail(ExitCode::kUnsupported,
                 "{}: node '{}' quantizes to {}; npu-sim runs 8-bit activations (UINT8 or INT8): "
                 "quantize with an 8-bit preset (XINT8, A8W8, U8S8, S8S8) or use --ep cpu",
                 label(), node.name(), quant_type_name(params.type));
        }
        return params;
    }

    int add_tensor(const std::string& name, const QuantParams& params) {
        model_.tensors_.push_back({name, params});
        return static_cast<int>(model_.tensors_.size()) - 1;
    }

    const QuantParams& params_of(int tensor) const { return model_.tensors_[tensor].params; }

    // ---- graph input and outputs --------------------------------------------------------

    void find_input() {
        std::vector<std::string> inputs;
        for (const onnx::ValueInfoProto& input : graph_.input()) {
            if (initializers_.count(input.name()) == 0) {
                inputs.push_back(input.name());
            }
        }
        if (inputs.size() != 1) {
            fail(ExitCode::kUnsupported,
                 "{}: the model has {} inputs; npu-sim runs models with one", label(),
                 inputs.size());
        }
        const std::string& input = inputs.front();
        const auto found = consumers_.find(input);
        if (found == consumers_.end() || found->second.size() != 1 ||
            found->second.front()->op_type() != "QuantizeLinear") {
            fail(ExitCode::kUnsupported,
                 "{}: graph input '{}' is not read by exactly one QuantizeLinear; npu-sim needs "
                 "a QDQ model whose input is quantized first",
                 label(), input);
        }
        const onnx::NodeProto& quantize = *found->second.front();
        model_.input_name_ = input;
        model_.input_node_name_ = quantize.name();
        model_.input_tensor_ =
            add_tensor(quantize.output(0), activation_params(quantize, QuantType::kUint8));
        quantized_[quantize.output(0)] = model_.input_tensor_;
        consumed_.insert(&quantize);
    }

    void find_outputs() {
        for (const onnx::ValueInfoProto& output : graph_.output()) {
            const auto found = outputs_.find(output.name());
            if (found == outputs_.end()) {
                const auto producer = producers_.find(output.name());
                const std::string producer_text =
                    producer == producers_.end()
                        ? std::string("no node")
                        : fmt::format("node '{}' ({})", producer->second->name(),
                                      producer->second->op_type());
                fail(ExitCode::kUnsupported,
                     "{}: graph output '{}' comes from {}, not from a DequantizeLinear of a "
                     "quantized activation; npu-sim returns only dequantized outputs",
                     label(), output.name(), producer_text);
            }
            model_.outputs_.push_back(found->second);
            model_.output_names_.push_back(output.name());
        }
    }

    // ---- node dispatch ------------------------------------------------------------------

    void compile_node(const onnx::NodeProto& node) {
        const std::string& op = node.op_type();
        if (!node.domain().empty() && node.domain() != "ai.onnx") {
            fail_unsupported(node, fmt::format("is in domain '{}'", node.domain()));
        }
        if (op == "DequantizeLinear") {
            compile_dequantize(node);
        } else if (op == "QuantizeLinear") {
            fail_unsupported(node, "quantizes a tensor that no supported operator produces");
        } else if (op == "Conv") {
            compile_conv(node);
        } else if (op == "Gemm" || op == "MatMul") {
            compile_dense(node);
        } else if (op == "MaxPool") {
            compile_max_pool(node);
        } else if (op == "AveragePool" || op == "GlobalAveragePool") {
            compile_average_pool(node);
        } else if (op == "Add") {
            compile_add(node);
        } else if (op == "Concat") {
            compile_concat(node);
        } else if (op == "Relu" || op == "Reshape" || op == "Flatten") {
            compile_elementwise(node);
        } else {
            fail_unsupported(node, "is not supported");
        }
    }

    void compile_dequantize(const onnx::NodeProto& node) {
        const std::string& source = node.input(0);
        if (initializers_.count(source) != 0) {
            const onnx::TensorProto& values = *initializers_.at(source);
            const QuantType type = quant_type_from_onnx(values.data_type(), source, label());
            QuantizedConstant constant{&values, read_quantization(node, type), type};
            constants_[node.output(0)] = constant;
            return;
        }
        const auto found = quantized_.find(source);
        if (found == quantized_.end()) {
            fail_unsupported(node, fmt::format("reads '{}', which is neither an initializer nor "
                                               "the output of a QuantizeLinear npu-sim runs",
                                               source));
        }
        // The DequantizeLinear must use the parameters its QuantizeLinear wrote with.
        const QuantParams params = activation_params(node, params_of(found->second).type);
        if (!same_params(params, params_of(found->second))) {
            fail(ExitCode::kUnsupported,
                 "{}: node '{}' dequantizes '{}' with other parameters ({}) than it was quantized "
                 "with ({})",
                 label(), node.name(), source, describe_params(params),
                 describe_params(params_of(found->second)));
        }
        dequantized_[node.output(0)] = found->second;
        if (graph_outputs_.count(node.output(0)) != 0) {
            outputs_[node.output(0)] = {node.output(0), node.name(), found->second};
        }
    }

    // The activation a float input of `node` stands for: the tensor behind its DequantizeLinear,
    // or (when `allow_constant`) a quantized initializer, materialized by a ConstantStep.
    int activation_input(const onnx::NodeProto& node, int index, bool allow_constant) {
        if (index >= node.input_size() || node.input(index).empty()) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' ({}) lacks input {}", label(), node.name(),
                 node.op_type(), index);
        }
        const std::string& name = node.input(index);
        const auto found = dequantized_.find(name);
        if (found != dequantized_.end()) {
            return found->second;
        }
        const auto constant = constants_.find(name);
        if (constant != constants_.end() && allow_constant) {
            return materialize_constant(node, constant->second);
        }
        if (constant != constants_.end()) {
            fail_unsupported(node, fmt::format("reads the constant '{}' where npu-sim expects an "
                                               "activation",
                                               name));
        }
        fail_unsupported(node, fmt::format("reads the float tensor '{}', which no "
                                           "DequantizeLinear produces (an operator kept in float?)",
                                           name));
    }

    int materialize_constant(const onnx::NodeProto& node, const QuantizedConstant& constant) {
        if (constant.quantization.channels.size() != 1) {
            fail_unsupported(node, "reads a per-channel quantized constant as an activation");
        }
        const QuantParams& params = constant.quantization.channels.front();
        if (params.type != QuantType::kUint8 && params.type != QuantType::kInt8) {
            fail_unsupported(node,
                             fmt::format("reads the {} constant '{}' as an activation",
                                         quant_type_name(params.type), constant.values->name()));
        }
        const std::vector<int64_t> values = read_integer_tensor(*constant.values, label());
        auto step = std::make_unique<ConstantStep>();
        step->node_name = node.name();
        step->op_type = "Constant";
        step->value = make_quantized(params.type, dims_of(*constant.values),
                                     [&](int64_t i) { return values[i]; });
        step->output = add_tensor(constant.values->name(), params);
        const int tensor = step->output;
        model_.steps_.push_back(std::move(step));
        return tensor;
    }

    // The quantized tensor `node` writes: its output must go to exactly one QuantizeLinear,
    // or (when `allow_relu`) to one Relu that goes to one QuantizeLinear. Marks both consumed.
    struct OutputTarget {
        int tensor = -1;
        bool relu = false;
    };

    OutputTarget output_target(const onnx::NodeProto& node, bool allow_relu) {
        std::string tensor = node.output(0);
        OutputTarget target;
        const onnx::NodeProto* next = single_consumer(node, tensor);
        if (allow_relu && next->op_type() == "Relu") {
            consumed_.insert(next);
            target.relu = true;
            tensor = next->output(0);
            next = single_consumer(*next, tensor);
        }
        if (next->op_type() != "QuantizeLinear") {
            fail_unsupported(node, fmt::format("writes '{}' to '{}' ({}) instead of a "
                                               "QuantizeLinear",
                                               tensor, next->name(), next->op_type()));
        }
        consumed_.insert(next);
        target.tensor = add_tensor(next->output(0), activation_params(*next, QuantType::kUint8));
        quantized_[next->output(0)] = target.tensor;
        return target;
    }

    const onnx::NodeProto* single_consumer(const onnx::NodeProto& node, const std::string& tensor) {
        const auto found = consumers_.find(tensor);
        if (found == consumers_.end() || found->second.size() != 1 ||
            graph_outputs_.count(tensor) != 0) {
            fail_unsupported(node, fmt::format("writes '{}', which is not read by exactly one "
                                               "QuantizeLinear (a float output?)",
                                               tensor));
        }
        return found->second.front();
    }

    template <typename StepType>
    std::unique_ptr<StepType> new_step(const onnx::NodeProto& node) {
        auto step = std::make_unique<StepType>();
        step->node_name = node.name();
        step->op_type = node.op_type();
        return step;
    }

    // ---- Conv, Gemm, MatMul -------------------------------------------------------------

    const QuantizedConstant& weight_input(const onnx::NodeProto& node, int index,
                                          const std::string& role) {
        if (index >= node.input_size() || node.input(index).empty()) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' ({}) lacks its {}", label(), node.name(),
                 node.op_type(), role);
        }
        const auto found = constants_.find(node.input(index));
        if (found == constants_.end()) {
            fail_unsupported(node, fmt::format("reads its {} '{}' from an activation or a float "
                                               "tensor; npu-sim needs a quantized initializer "
                                               "read through DequantizeLinear",
                                               role, node.input(index)));
        }
        return found->second;
    }

    // Copies the weight values into the step, transposed when `transpose`, because the step
    // keeps [K, N] and Gemm with transB = 1 stores [N, K].
    void set_weight(const onnx::NodeProto& node, LinearStep& step, const QuantizedConstant& weight,
                    std::vector<int64_t> shape, bool transpose) {
        const std::vector<int64_t> values = read_integer_tensor(*weight.values, label());
        step.weight_name = weight.values->name();
        const int64_t zero_point = weight.quantization.channels.front().zero_point;
        for (const QuantParams& channel : weight.quantization.channels) {
            if (channel.zero_point != zero_point) {
                fail_unsupported(node, "has per-channel weight zero points that differ");
            }
        }
        step.weight_zero_point = zero_point;
        auto fill = [&](auto type_tag) {
            using T = decltype(type_tag);
            Tensor<T> tensor{shape, {}};
            tensor.data.reserve(values.size());
            for (const int64_t value : values) {
                tensor.data.push_back(static_cast<T>(value));
            }
            step.weight = transpose ? transpose2d(tensor) : tensor;
        };
        if (weight.type == QuantType::kUint8) {
            fill(uint8_t{});
        } else if (weight.type == QuantType::kInt8) {
            fill(int8_t{});
        } else {
            fail_unsupported(node, fmt::format("has {} weights; npu-sim runs UINT8 or INT8 weights",
                                               quant_type_name(weight.type)));
        }
    }

    // Per output channel: the accumulator unit s_in * s_w[c], the bias in that unit, and the
    // requantizer to the output.
    void set_bias_and_requantizers(const onnx::NodeProto& node, LinearStep& step,
                                   const QuantizedConstant& weight, int64_t weight_axis,
                                   int64_t channels, int bias_index, const OutputTarget& target) {
        const QuantParams& input = params_of(step.inputs[0]);
        if (weight.quantization.per_channel() && weight.quantization.channels.size() > 1) {
            if (weight.quantization.axis != weight_axis ||
                static_cast<int64_t>(weight.quantization.channels.size()) != channels) {
                fail_unsupported(
                    node, fmt::format("has per-channel weights along axis {} with {} "
                                      "scales; npu-sim needs one scale per output "
                                      "channel (axis {}, {} channels)",
                                      weight.quantization.axis, weight.quantization.channels.size(),
                                      weight_axis, channels));
            }
        }
        auto weight_params = [&](int64_t c) -> const QuantParams& {
            return weight.quantization.channels.size() == 1 ? weight.quantization.channels.front()
                                                            : weight.quantization.channels[c];
        };
        auto accumulator_unit = [&](int64_t c) {
            return multiply_scales(scale_of(input), scale_of(weight_params(c)));
        };

        // Requantizers: one when every channel shares the weight scale.
        const int64_t requantizer_count = weight.quantization.channels.size() == 1 ? 1 : channels;
        for (int64_t c = 0; c < requantizer_count; ++c) {
            step.requantizers.push_back(make_requantizer(
                accumulator_unit(c), params_of(step.output), fixed_point(), target.relu));
        }

        if (bias_index < 0 || bias_index >= node.input_size() || node.input(bias_index).empty()) {
            return;
        }
        const QuantizedConstant& bias = weight_input(node, bias_index, "bias");
        const std::vector<int64_t> values = read_integer_tensor(*bias.values, label());
        if (static_cast<int64_t>(values.size()) != channels &&
            !(values.size() == 1 && channels >= 1)) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' has a bias of {} values for {} channels",
                 label(), node.name(), values.size(), channels);
        }
        auto bias_params = [&](int64_t c) -> const QuantParams& {
            return bias.quantization.channels.size() == 1 ? bias.quantization.channels.front()
                                                          : bias.quantization.channels[c];
        };

        std::vector<int> shifts;
        for (int64_t c = 0; c < channels; ++c) {
            const int64_t value = values[values.size() == 1 ? 0 : c] - bias_params(c).zero_point;
            const Scale unit = accumulator_unit(c);
            const Scale bias_scale = scale_of(bias_params(c));
            if (bias.type == QuantType::kInt32) {
                // int32 bias: already in accumulator units, scale s_in * s_w.
                if (std::abs(bias_scale.real / unit.real - 1.0) > kBiasScaleRelativeTolerance) {
                    fail(ExitCode::kInvalidInput,
                         "{}: bias '{}' of node '{}' is INT32 with scale {:g}, but input scale "
                         "times weight scale is {:g}; re-quantize the model so that they match",
                         label(), bias.values->name(), node.name(), bias_scale.real, unit.real);
                }
                step.bias.push_back(value);
            } else {
                // Smaller bias: b * s_b / (s_in * s_w), with power-of-two scales a shift by
                // p_b - (p_in + p_w): right (rounded with the rounding option) when the bias is
                // finer than the accumulator, left (exact) otherwise.
                const Rescale to_accumulator = make_rescale(bias_scale, unit, fixed_point());
                step.bias.push_back(to_accumulator.apply(value, model_.options_.rounding));
                shifts.push_back(to_accumulator.fixed_point ? 0 : to_accumulator.shift);
            }
        }
        if (bias.type == QuantType::kInt32) {
            step.bias_text = fmt::format("bias {} INT32 added as is", bias.values->name());
        } else {
            const auto [low, high] = std::minmax_element(shifts.begin(), shifts.end());
            step.bias_text = fmt::format(
                "bias {} {} to accumulator units by {}", bias.values->name(),
                quant_type_name(bias.type),
                fixed_point() ? std::string("fixed-point multipliers")
                              : (*low == *high ? fmt::format("shift {}", *low)
                                               : fmt::format("shifts {}..{}", *low, *high)));
        }
    }

    // Checks that |sum of depth products| fits the int32 accumulator:
    // depth * max|q_in - z_in| * max|q_w - z_w| < 2^31. For XINT8 (uint8 with z = 128, int8 with
    // z = 0) each factor is at most 128, so depths up to 131,071 fit.
    void check_accumulator_bound(const onnx::NodeProto& node, int64_t depth, int input,
                                 const QuantizedConstant& weight) {
        const auto largest_centered = [](const QuantParams& params) {
            return std::max(params.zero_point - quant_min(params.type),
                            quant_max(params.type) - params.zero_point);
        };
        int64_t largest_weight = 0;
        for (const QuantParams& channel : weight.quantization.channels) {
            largest_weight = std::max(largest_weight, largest_centered(channel));
        }
        const int64_t largest_input = largest_centered(params_of(input));
        if (depth * largest_input * largest_weight >= (int64_t{1} << 31)) {
            fail_unsupported(node, fmt::format("sums {} products, which can overflow the int32 "
                                               "accumulator",
                                               depth));
        }
    }

    void compile_conv(const onnx::NodeProto& node) {
        auto step = new_step<LinearStep>(node);
        step->is_conv = true;
        step->inputs = {activation_input(node, 0, false)};
        const QuantizedConstant& weight = weight_input(node, 1, "weight");
        const std::vector<int64_t> weight_shape = dims_of(*weight.values);
        if (weight_shape.size() != 4) {
            fail_unsupported(node, fmt::format("has a weight of rank {}; npu-sim runs 2-D "
                                               "convolutions",
                                               weight_shape.size()));
        }
        step->group = int_attribute(node, "group", 1);
        if (step->group <= 0 || weight_shape[0] % step->group != 0) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' has group {} for {} output channels",
                 label(), node.name(), step->group, weight_shape[0]);
        }
        step->window = window_attributes(node, {weight_shape[2], weight_shape[3]});
        check_accumulator_bound(node, weight_shape[1] * weight_shape[2] * weight_shape[3],
                                step->inputs[0], weight);

        const OutputTarget target = output_target(node, true);
        step->output = target.tensor;
        step->input_zero_point = params_of(step->inputs[0]).zero_point;
        set_weight(node, *step, weight, weight_shape, false);
        set_bias_and_requantizers(node, *step, weight, 0, weight_shape[0], 2, target);
        model_.steps_.push_back(std::move(step));
    }

    void compile_dense(const onnx::NodeProto& node) {
        auto step = new_step<LinearStep>(node);
        const bool gemm = node.op_type() == "Gemm";
        step->inputs = {activation_input(node, 0, false)};
        const QuantizedConstant& weight = weight_input(node, 1, "weight");
        const std::vector<int64_t> weight_shape = dims_of(*weight.values);
        if (weight_shape.size() != 2) {
            fail_unsupported(node, fmt::format("has a weight of rank {}; npu-sim runs rank-2 "
                                               "weights",
                                               weight_shape.size()));
        }
        bool transpose_weight = false;
        if (gemm) {
            const float alpha = float_attribute(node, "alpha", 1.0f);
            const float beta = float_attribute(node, "beta", 1.0f);
            const bool has_bias = node.input_size() >= 3 && !node.input(2).empty();
            if (alpha != 1.0f || (has_bias && beta != 1.0f)) {
                fail_unsupported(node, fmt::format("has alpha {:g} and beta {:g}; npu-sim runs "
                                                   "Gemm with alpha = beta = 1",
                                                   alpha, beta));
            }
            step->transpose_input = int_attribute(node, "transA", 0) != 0;
            transpose_weight = int_attribute(node, "transB", 0) != 0;
        }
        // Stored as [K, N]; the output channel axis of the model's weight is N's axis.
        const int64_t channels = transpose_weight ? weight_shape[0] : weight_shape[1];
        const int64_t depth = transpose_weight ? weight_shape[1] : weight_shape[0];
        const int64_t weight_axis = transpose_weight ? 0 : 1;
        check_accumulator_bound(node, depth, step->inputs[0], weight);

        const OutputTarget target = output_target(node, true);
        step->output = target.tensor;
        step->input_zero_point = params_of(step->inputs[0]).zero_point;
        set_weight(node, *step, weight, weight_shape, transpose_weight);
        set_bias_and_requantizers(node, *step, weight, weight_axis, channels, gemm ? 2 : -1,
                                  target);
        model_.steps_.push_back(std::move(step));
    }

    // ---- pools --------------------------------------------------------------------------

    WindowAttributes window_attributes(const onnx::NodeProto& node,
                                       std::vector<int64_t> default_kernel) {
        WindowAttributes window;
        window.kernel = ints_attribute(node, "kernel_shape");
        if (window.kernel.empty()) {
            window.kernel = std::move(default_kernel);
        }
        if (!window.kernel.empty() && window.kernel.size() != 2) {
            fail_unsupported(node, fmt::format("has a {}-D window; npu-sim runs 2-D windows",
                                               window.kernel.size()));
        }
        auto copy = [&](const std::string& name, auto& target) {
            const std::vector<int64_t> values = ints_attribute(node, name);
            if (values.empty()) {
                return;
            }
            if (values.size() != target.size()) {
                fail(ExitCode::kInvalidInput, "{}: node '{}' has {} values in '{}', expected {}",
                     label(), node.name(), values.size(), name, target.size());
            }
            std::copy(values.begin(), values.end(), target.begin());
        };
        copy("strides", window.strides);
        copy("dilations", window.dilations);
        copy("pads", window.pads);
        window.auto_pad = string_attribute(node, "auto_pad", "NOTSET");
        if (window.auto_pad != "NOTSET" && window.auto_pad != "VALID" &&
            window.auto_pad != "SAME_UPPER" && window.auto_pad != "SAME_LOWER") {
            fail(ExitCode::kInvalidInput, "{}: node '{}' has unknown auto_pad '{}'", label(),
                 node.name(), window.auto_pad);
        }
        window.ceil_mode = int_attribute(node, "ceil_mode", 0) != 0;
        window.count_include_pad = int_attribute(node, "count_include_pad", 0) != 0;

        // A pool's pad as large as its window lets a window lie wholly in the padding: an average
        // over no values (a division by zero), or a max of nothing. ONNX Runtime rejects it too.
        // Conv may pad more, because padding there adds zeros to a sum.
        const bool pool = node.op_type() != "Conv";
        for (size_t d = 0; pool && d < window.kernel.size(); ++d) {
            if (window.pads[d] >= window.kernel[d] ||
                window.pads[d + window.kernel.size()] >= window.kernel[d]) {
                fail(ExitCode::kInvalidInput,
                     "{}: node '{}' ({}) pads axis {} by at least its window size {}; use pads "
                     "smaller than kernel_shape",
                     label(), node.name(), node.op_type(), d + 2, window.kernel[d]);
            }
        }
        return window;
    }

    void compile_max_pool(const onnx::NodeProto& node) {
        if (node.output_size() > 1 && !node.output(1).empty()) {
            fail_unsupported(node, "returns indices (a second output)");
        }
        auto step = new_step<MaxPoolStep>(node);
        step->inputs = {activation_input(node, 0, false)};
        step->window = window_attributes(node, {});
        step->output = output_target(node, false).tensor;
        const QuantParams& input = params_of(step->inputs[0]);
        const QuantParams& output = params_of(step->output);
        step->input_zero_point = input.zero_point;
        step->requantize = !same_params(input, output);
        step->requantizer = make_requantizer(scale_of(input), output, fixed_point(), false);
        model_.steps_.push_back(std::move(step));
    }

    void compile_average_pool(const onnx::NodeProto& node) {
        auto step = new_step<AveragePoolStep>(node);
        step->inputs = {activation_input(node, 0, false)};
        if (node.op_type() == "AveragePool") {
            step->window = window_attributes(node, {});
            if (step->window.kernel.empty()) {
                fail(ExitCode::kInvalidInput, "{}: node '{}' (AveragePool) has no kernel_shape",
                     label(), node.name());
            }
        }
        step->output = output_target(node, false).tensor;
        const QuantParams& input = params_of(step->inputs[0]);
        const QuantParams& output = params_of(step->output);
        step->input_zero_point = input.zero_point;
        step->rescale = make_rescale(scale_of(input), scale_of(output), fixed_point());
        step->output_zero_point = output.zero_point;
        step->output_type = output.type;
        model_.steps_.push_back(std::move(step));
    }

    // ---- Add, Concat, Relu, Reshape, Flatten --------------------------------------------

    void compile_add(const onnx::NodeProto& node) {
        auto step = new_step<AddStep>(node);
        step->inputs = {activation_input(node, 0, true), activation_input(node, 1, true)};
        const OutputTarget target = output_target(node, true);
        step->output = target.tensor;

        const QuantParams& a = params_of(step->inputs[0]);
        const QuantParams& b = params_of(step->inputs[1]);
        const QuantParams& output = params_of(step->output);
        step->input_zero_points = {a.zero_point, b.zero_point};
        Scale common;
        if (!fixed_point() && a.power_of_two && b.power_of_two) {
            // The finer position: both inputs get there by exact left shifts.
            common.position = std::max(a.position, b.position);
            common.real = std::ldexp(1.0, -common.position);
        } else {
            // s_out * 2^-kAddFractionBits keeps 16 bits below the output step, so the rounding
            // of each input costs at most 2^-17 of an output step.
            common = {false, 0, scale_of(output).real * std::ldexp(1.0, -kAddFractionBits)};
        }
        step->to_common = {make_rescale(scale_of(a), common, fixed_point()),
                           make_rescale(scale_of(b), common, fixed_point())};
        step->requantizer = make_requantizer(common, output, fixed_point(), target.relu);
        model_.steps_.push_back(std::move(step));
    }

    void compile_concat(const onnx::NodeProto& node) {
        auto step = new_step<ConcatStep>(node);
        for (int i = 0; i < node.input_size(); ++i) {
            step->inputs.push_back(activation_input(node, i, true));
        }
        if (step->inputs.empty()) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' (Concat) has no inputs", label(),
                 node.name());
        }
        if (find_attribute(node, "axis") == nullptr) {
            fail(ExitCode::kInvalidInput, "{}: node '{}' (Concat) has no axis", label(),
                 node.name());
        }
        step->axis = int_attribute(node, "axis", 0);
        step->output = output_target(node, false).tensor;
        const QuantParams& output = params_of(step->output);
        step->output_type = output.type;
        for (const int input : step->inputs) {
            step->input_zero_points.push_back(params_of(input).zero_point);
            step->requantizers.push_back(
                make_requantizer(scale_of(params_of(input)), output, fixed_point(), false));
        }
        model_.steps_.push_back(std::move(step));
    }

    void compile_elementwise(const onnx::NodeProto& node) {
        auto step = new_step<ElementwiseStep>(node);
        step->inputs = {activation_input(node, 0, false)};
        if (node.op_type() == "Reshape") {
            const onnx::TensorProto& shape = initializer(node, node.input(1), "shape");
            step->shape_rule = ElementwiseStep::ShapeRule::kReshape;
            step->requested_shape = read_integer_tensor(shape, label());
            step->allow_zero = int_attribute(node, "allowzero", 0) != 0;
        } else if (node.op_type() == "Flatten") {
            step->shape_rule = ElementwiseStep::ShapeRule::kFlatten;
            step->flatten_axis = int_attribute(node, "axis", 1);
        }
        step->output = output_target(node, false).tensor;
        const QuantParams& input = params_of(step->inputs[0]);
        const QuantParams& output = params_of(step->output);
        const bool relu = node.op_type() == "Relu";
        step->input_zero_point = input.zero_point;
        step->requantize = relu || !same_params(input, output);
        step->requantizer = make_requantizer(scale_of(input), output, fixed_point(), relu);
        model_.steps_.push_back(std::move(step));
    }

    NpuSimModel& model_;
    const onnx::GraphProto& graph_;
    std::map<std::string, const onnx::TensorProto*> initializers_;
    std::map<std::string, const onnx::NodeProto*> producers_;
    std::map<std::string, std::vector<const onnx::NodeProto*>> consumers_;
    std::set<std::string> graph_outputs_;
    std::set<const onnx::NodeProto*> consumed_;  // fused Relus and QuantizeLinears of steps
    std::map<std::string, int> quantized_;       // QuantizeLinear output -> tensor index
    std::map<std::string, int> dequantized_;     // DequantizeLinear output -> tensor index
    std::map<std::string, QuantizedConstant> constants_;  // DequantizeLinear output of initializers
    std::map<std::string, NpuSimModel::GraphOutput> outputs_;
};

// =============================================================================================
// NpuSimModel
// =============================================================================================

NpuSimModel::NpuSimModel(const onnx::ModelProto& qdq_model, const std::string& label,
                         const NpuSimOptions& options)
    : options_(options), label_(label) {
    ProgramBuilder builder(*this, qdq_model);
    builder.build();
}

NpuSimModel::NpuSimModel(const std::filesystem::path& path, const NpuSimOptions& options)
    : NpuSimModel(load_onnx_model(path), path.string(), options) {}

NpuSimModel::~NpuSimModel() = default;
NpuSimModel::NpuSimModel(NpuSimModel&&) noexcept = default;
NpuSimModel& NpuSimModel::operator=(NpuSimModel&&) noexcept = default;

std::vector<FloatOutput> NpuSimModel::run(const std::vector<float>& input,
                                          const std::vector<int64_t>& shape) const {
    if (element_count(shape) != static_cast<int64_t>(input.size())) {
        fail(ExitCode::kInvalidInput, "{}: input of shape [{}] needs {} values, got {}", label_,
             fmt::join(shape, ", "), element_count(shape), input.size());
    }
    Workspace workspace;
    workspace.tensors.resize(tensors_.size());

    // The graph input's QuantizeLinear, in float as ONNX defines it (round half to even).
    const QuantParams& input_params = tensors_[input_tensor_].params;
    workspace.tensors[input_tensor_] = make_quantized(input_params.type, shape, [&](int64_t i) {
        return quantize_value(input[i], input_params);
    });

    for (const std::unique_ptr<Step>& step : steps_) {
        step->run(workspace, options_.rounding);
    }

    // The outputs' DequantizeLinear, in float: (q - z) * s.
    std::vector<FloatOutput> results;
    for (const GraphOutput& output : outputs_) {
        const QuantParams& params = tensors_[output.tensor].params;
        std::visit(
            [&](const auto& tensor) {
                FloatOutput result{tensor.shape, {}};
                result.values.reserve(tensor.data.size());
                for (const auto value : tensor.data) {
                    result.values.push_back(dequantize_value(value, params));
                }
                results.push_back(std::move(result));
            },
            workspace.tensors[output.tensor]);
    }
    return results;
}

std::vector<std::string> NpuSimModel::program_listing() const {
    std::vector<std::string> lines;
    const ProgramTensor& input = tensors_[input_tensor_];
    lines.push_back(fmt::format("QuantizeLinear {} (CPU, float): {} -> {} [{}], round half to even",
                                input_node_name_, input_name_, input.name,
                                describe_params(input.params)));
    for (const std::unique_ptr<Step>& step : steps_) {
        lines.push_back(step->describe(tensors_) + ", rounding " +
                        rounding_name(options_.rounding));
    }
    for (const GraphOutput& output : outputs_) {
        const ProgramTensor& tensor = tensors_[output.tensor];
        lines.push_back(fmt::format("DequantizeLinear {} (CPU, float): {} [{}] -> {}",
                                    output.node_name, tensor.name, describe_params(tensor.params),
                                    output.name));
    }
    return lines;
}

}  // namespace edgeq::npu
