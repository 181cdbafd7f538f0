#include "edgeq/npu/kernels.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "edgeq/common/error.h"

namespace edgeq::npu {

int64_t element_count(const std::vector<int64_t>& shape) {
    int64_t count = 1;
    for (const int64_t dimension : shape) {
        count *= dimension;
    }
    return count;
}

// ---------------------------------------------------------------------------------------------
// Rounding and requantization

std::string rounding_name(Rounding rounding) {
    return rounding == Rounding::kHalfUp ? "half-up" : "half-even";
}

namespace {

// Rounds q + remainder / divisor, where q is the floor of the exact quotient and remainder is in
// [0, divisor). Comparing 2 * remainder with divisor decides below, above or exactly at the half.
int64_t round_floor_quotient(int64_t floor_quotient, int64_t remainder, int64_t divisor,
                             Rounding rounding) {
    const int64_t twice_remainder = 2 * remainder;
    if (twice_remainder < divisor) {
        return floor_quotient;
    }
    if (twice_remainder > divisor) {
        return floor_quotient + 1;
    }
    // A tie: half up takes the upper neighbour, half even the even one of the two.
    if (rounding == Rounding::kHalfUp) {
        return floor_quotient + 1;
    }
    return (floor_quotient % 2 == 0) ? floor_quotient : floor_quotient + 1;
}

// GCC's and Clang's 128-bit integer (__extension__ keeps -Wpedantic quiet).
__extension__ using Int128 = __int128;

}  // namespace

int64_t shift_round(int64_t value, int shift, Rounding rounding) {
    if (shift <= 0) {
        // value * 2^-shift is exact; multiplying (not <<) keeps negative values well defined.
        assert(shift > -63);
        return value * (int64_t{1} << -shift);
    }
    if (shift >= 63) {
        // |value| < 2^63 <= 2^shift, so the result is -1, 0 or 1; it is found exactly in 128 bits.
        if (shift >= 127) {
            return 0;
        }
        const Int128 divisor = Int128{1} << shift;
        const Int128 wide = value;
        const Int128 floor_quotient = wide >= 0 ? 0 : -1;
        const Int128 remainder = wide - floor_quotient * divisor;
        const Int128 twice_remainder = 2 * remainder;
        if (twice_remainder < divisor) {
            return static_cast<int64_t>(floor_quotient);
        }
        if (twice_remainder > divisor || rounding == Rounding::kHalfUp) {
            return static_cast<int64_t>(floor_quotient + 1);
        }
        return 0;  // a tie between -1 and 0 or between 0 and 1: 0 is the even neighbour
    }
    // value = floor_quotient * 2^shift + remainder with remainder in [0, 2^shift); >> on a
    // negative int64 is an arithmetic shift (floor) since C++20.
    const int64_t divisor = int64_t{1} << shift;
    const int64_t floor_quotient = value >> shift;
    const int64_t remainder = value - floor_quotient * divisor;
    return round_floor_quotient(floor_quotient, remainder, divisor, rounding);
}

int64_t divide_round(int64_t value, int64_t divisor, Rounding rounding) {
    assert(divisor > 0);
    // C++ division truncates toward zero; step down by one for negative non-exact quotients to get
    // the floor, so that the remainder is in [0, divisor).
    int64_t floor_quotient = value / divisor;
    int64_t remainder = value % divisor;
    if (remainder < 0) {
        floor_quotient -= 1;
        remainder += divisor;
    }
    return round_floor_quotient(floor_quotient, remainder, divisor, rounding);
}

FixedPointMultiplier fixed_point_from_real(double real) {
    if (!(real > 0) || !std::isfinite(real)) {
        fail(ExitCode::kInvalidInput,
             "requantization multiplier {} is not a positive finite number; check the scales of "
             "the model",
             real);
    }
    // real = fraction * 2^exponent with fraction in [0.5, 1), so
    // real ~ round(fraction * 2^31) * 2^-(31 - exponent) with the multiplier in [2^30, 2^31].
    int exponent = 0;
    const double fraction = std::frexp(real, &exponent);
    auto multiplier = static_cast<int64_t>(std::llround(std::ldexp(fraction, 31)));
    if (multiplier == (int64_t{1} << 31)) {
        // The fraction rounded up to 1.0: halve the multiplier and take one bit off the shift.
        multiplier /= 2;
        exponent += 1;
    }
    return FixedPointMultiplier{multiplier, 31 - exponent};
}

int64_t multiply_round(int64_t value, const FixedPointMultiplier& multiplier, Rounding rounding) {
    // |value| < 2^31 and multiplier < 2^31 keep the product below 2^62, so it is exact and the only
    // rounding is the one of the final shift.
    assert(value >= -(int64_t{1} << 31));
    assert(value < (int64_t{1} << 31));
    return shift_round(value * multiplier.multiplier, multiplier.shift, rounding);
}

int64_t saturate(int64_t value, QuantType type) {
    return std::clamp(value, quant_min(type), quant_max(type));
}

// ---------------------------------------------------------------------------------------------
// Window geometry

namespace {

// Output length along one axis, as ONNX Conv and the pools define it:
//   out = floor_or_ceil((size + pad_begin + pad_end - ((kernel - 1) * dilation + 1)) / stride) + 1
// With ceil mode, a last window that would start inside the end padding is dropped, as ONNX
// Runtime and PyTorch do.
int64_t axis_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t dilation,
                         int64_t pad_begin, int64_t pad_end, bool ceil_mode) {
    const int64_t span = (kernel - 1) * dilation + 1;
    const int64_t room = size + pad_begin + pad_end - span;
    if (room < 0) {
        return 0;
    }
    int64_t output = room / stride + 1;
    if (ceil_mode && room % stride != 0) {
        output += 1;
        if ((output - 1) * stride >= size + pad_begin) {
            output -= 1;
        }
    }
    return output;
}

}  // namespace

std::array<int64_t, 2> window_output_size(const Window2d& window, int64_t height, int64_t width) {
    return {axis_output_size(height, window.kernel[0], window.strides[0], window.dilations[0],
                             window.pads[0], window.pads[2], window.ceil_mode),
            axis_output_size(width, window.kernel[1], window.strides[1], window.dilations[1],
                             window.pads[1], window.pads[3], window.ceil_mode)};
}

namespace {

// The output positions x (in [0, output_size)) whose input coordinate x * stride - pad + offset
// lies in [0, size): first and one past the last, so that inner loops need no bounds checks.
struct ValidRange {
    int64_t begin = 0;
    int64_t end = 0;
};

ValidRange valid_outputs(int64_t size, int64_t output_size, int64_t stride, int64_t pad,
                         int64_t offset) {
    // x * stride >= pad - offset  and  x * stride <= size - 1 + pad - offset
    const int64_t low = pad - offset;
    const int64_t high = size - 1 + pad - offset;
    int64_t begin = low <= 0 ? 0 : (low + stride - 1) / stride;
    int64_t end = high < 0 ? 0 : high / stride + 1;
    begin = std::min(begin, output_size);
    end = std::clamp(end, begin, output_size);
    return {begin, end};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Kernels

template <typename Acc, typename In, typename W>
Tensor<Acc> conv2d_accumulate(const Tensor<In>& input, Acc input_zero_point,
                              const Tensor<W>& weight, Acc weight_zero_point,
                              const Window2d& window, int64_t group) {
    assert(input.shape.size() == 4);
    assert(weight.shape.size() == 4);
    assert(group > 0);
    const int64_t batch = input.shape[0];
    const int64_t in_channels = input.shape[1];
    const int64_t height = input.shape[2];
    const int64_t width = input.shape[3];
    const int64_t out_channels = weight.shape[0];
    const int64_t group_in_channels = weight.shape[1];
    const int64_t group_out_channels = out_channels / group;
    assert(group_in_channels * group == in_channels);
    assert(group_out_channels * group == out_channels);
    (void)in_channels;

    const auto [out_height, out_width] = window_output_size(window, height, width);
    Tensor<Acc> output{{batch, out_channels, out_height, out_width}, {}};
    output.data.assign(static_cast<size_t>(element_count(output.shape)), Acc{0});

    // Direct convolution: every weight tap adds one shifted input plane to the output plane, so
    // the innermost loop walks contiguous rows without bounds checks.
    const int64_t kernel_height = window.kernel[0];
    const int64_t kernel_width = window.kernel[1];
    for (int64_t n = 0; n < batch; ++n) {
        for (int64_t m = 0; m < out_channels; ++m) {
            const int64_t g = m / group_out_channels;
            Acc* out_plane = output.data.data() + ((n * out_channels + m) * out_height * out_width);
            for (int64_t c = 0; c < group_in_channels; ++c) {
                const int64_t input_channel = g * group_in_channels + c;
                const In* in_plane =
                    input.data.data() + ((n * input.shape[1] + input_channel) * height * width);
                const W* taps = weight.data.data() +
                                ((m * group_in_channels + c) * kernel_height * kernel_width);
                for (int64_t i = 0; i < kernel_height; ++i) {
                    const ValidRange rows = valid_outputs(height, out_height, window.strides[0],
                                                          window.pads[0], i * window.dilations[0]);
                    for (int64_t j = 0; j < kernel_width; ++j) {
                        const Acc tap =
                            static_cast<Acc>(taps[i * kernel_width + j]) - weight_zero_point;
                        const ValidRange columns =
                            valid_outputs(width, out_width, window.strides[1], window.pads[1],
                                          j * window.dilations[1]);
                        for (int64_t y = rows.begin; y < rows.end; ++y) {
                            const int64_t in_y =
                                y * window.strides[0] - window.pads[0] + i * window.dilations[0];
                            const In* in_row = in_plane + in_y * width;
                            Acc* out_row = out_plane + y * out_width;
                            for (int64_t x = columns.begin; x < columns.end; ++x) {
                                const int64_t in_x = x * window.strides[1] - window.pads[1] +
                                                     j * window.dilations[1];
                                out_row[x] +=
                                    (static_cast<Acc>(in_row[in_x]) - input_zero_point) * tap;
                            }
                        }
                    }
                }
            }
        }
    }
    return output;
}

template <typename Acc, typename A, typename B>
Tensor<Acc> matmul_accumulate(const Tensor<A>& a, Acc a_zero_point, const Tensor<B>& b,
                              Acc b_zero_point) {
    assert(a.shape.size() >= 2);
    assert(b.shape.size() == 2);
    const int64_t rows = a.shape[a.shape.size() - 2];
    const int64_t depth = a.shape.back();
    const int64_t columns = b.shape[1];
    assert(b.shape[0] == depth);
    const int64_t batch = element_count(a.shape) / (rows * depth);

    Tensor<Acc> output{a.shape, {}};
    output.shape.back() = columns;
    output.data.assign(static_cast<size_t>(batch * rows * columns), Acc{0});

    // i-k-j order: the inner loop runs along one row of b and one row of the output.
    for (int64_t r = 0; r < batch * rows; ++r) {
        const A* a_row = a.data.data() + r * depth;
        Acc* out_row = output.data.data() + r * columns;
        for (int64_t k = 0; k < depth; ++k) {
            const Acc a_value = static_cast<Acc>(a_row[k]) - a_zero_point;
            const B* b_row = b.data.data() + k * columns;
            for (int64_t j = 0; j < columns; ++j) {
                out_row[j] += a_value * (static_cast<Acc>(b_row[j]) - b_zero_point);
            }
        }
    }
    return output;
}

template <typename T>
Tensor<T> transpose2d(const Tensor<T>& matrix) {
    assert(matrix.shape.size() == 2);
    const int64_t rows = matrix.shape[0];
    const int64_t columns = matrix.shape[1];
    Tensor<T> result{{columns, rows}, std::vector<T>(matrix.data.size())};
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < columns; ++c) {
            result.data[c * rows + r] = matrix.data[r * columns + c];
        }
    }
    return result;
}

namespace {

// Calls visit(output_index, input_index), both within one plane, for every tap of every window
// whose input position lies inside the input.
template <typename Visit>
void for_each_window_tap(const Window2d& window, int64_t height, int64_t width, int64_t out_height,
                         int64_t out_width, Visit&& visit) {
    for (int64_t y = 0; y < out_height; ++y) {
        for (int64_t x = 0; x < out_width; ++x) {
            for (int64_t i = 0; i < window.kernel[0]; ++i) {
                const int64_t in_y =
                    y * window.strides[0] - window.pads[0] + i * window.dilations[0];
                if (in_y < 0 || in_y >= height) {
                    continue;
                }
                for (int64_t j = 0; j < window.kernel[1]; ++j) {
                    const int64_t in_x =
                        x * window.strides[1] - window.pads[1] + j * window.dilations[1];
                    if (in_x >= 0 && in_x < width) {
                        visit(y * out_width + x, in_y * width + in_x);
                    }
                }
            }
        }
    }
}

// Number of taps of window `index` along one axis whose coordinate is in [low, high).
int64_t taps_inside(int64_t index, int64_t kernel, int64_t stride, int64_t dilation, int64_t pad,
                    int64_t low, int64_t high) {
    int64_t count = 0;
    for (int64_t i = 0; i < kernel; ++i) {
        const int64_t coordinate = index * stride - pad + i * dilation;
        if (coordinate >= low && coordinate < high) {
            ++count;
        }
    }
    return count;
}

}  // namespace

template <typename T>
Tensor<T> max_pool2d(const Tensor<T>& input, const Window2d& window) {
    assert(input.shape.size() == 4);
    const int64_t planes = input.shape[0] * input.shape[1];
    const int64_t height = input.shape[2];
    const int64_t width = input.shape[3];
    const auto [out_height, out_width] = window_output_size(window, height, width);

    Tensor<T> output{{input.shape[0], input.shape[1], out_height, out_width}, {}};
    output.data.assign(static_cast<size_t>(planes * out_height * out_width),
                       std::numeric_limits<T>::lowest());
    for (int64_t p = 0; p < planes; ++p) {
        const T* in_plane = input.data.data() + p * height * width;
        T* out_plane = output.data.data() + p * out_height * out_width;
        for_each_window_tap(
            window, height, width, out_height, out_width, [&](int64_t out_index, int64_t in_index) {
                out_plane[out_index] = std::max(out_plane[out_index], in_plane[in_index]);
            });
    }
    return output;
}

template <typename Acc, typename T>
Tensor<Acc> window_sums2d(const Tensor<T>& input, Acc zero_point, const Window2d& window,
                          std::vector<int64_t>& divisors) {
    assert(input.shape.size() == 4);
    const int64_t planes = input.shape[0] * input.shape[1];
    const int64_t height = input.shape[2];
    const int64_t width = input.shape[3];
    const auto [out_height, out_width] = window_output_size(window, height, width);

    Tensor<Acc> output{{input.shape[0], input.shape[1], out_height, out_width}, {}};
    output.data.assign(static_cast<size_t>(planes * out_height * out_width), Acc{0});
    for (int64_t p = 0; p < planes; ++p) {
        const T* in_plane = input.data.data() + p * height * width;
        Acc* out_plane = output.data.data() + p * out_height * out_width;
        for_each_window_tap(
            window, height, width, out_height, out_width, [&](int64_t out_index, int64_t in_index) {
                out_plane[out_index] += static_cast<Acc>(in_plane[in_index]) - zero_point;
            });
    }

    // One divisor per output element (divisors[i] goes with output.data[i]). With
    // count_include_pad the taps in the padding count, but not those of a ceil-mode window that
    // reaches past the padding, as in ONNX Runtime.
    const int64_t low_y = window.count_include_pad ? -window.pads[0] : 0;
    const int64_t high_y = window.count_include_pad ? height + window.pads[2] : height;
    const int64_t low_x = window.count_include_pad ? -window.pads[1] : 0;
    const int64_t high_x = window.count_include_pad ? width + window.pads[3] : width;
    std::vector<int64_t> plane_divisors(static_cast<size_t>(out_height * out_width));
    for (int64_t y = 0; y < out_height; ++y) {
        const int64_t rows = taps_inside(y, window.kernel[0], window.strides[0],
                                         window.dilations[0], window.pads[0], low_y, high_y);
        for (int64_t x = 0; x < out_width; ++x) {
            const int64_t columns = taps_inside(x, window.kernel[1], window.strides[1],
                                                window.dilations[1], window.pads[1], low_x, high_x);
            plane_divisors[y * out_width + x] = rows * columns;
        }
    }
    divisors.clear();
    divisors.reserve(output.data.size());
    for (int64_t p = 0; p < planes; ++p) {
        divisors.insert(divisors.end(), plane_divisors.begin(), plane_divisors.end());
    }
    return output;
}

template <typename T>
Tensor<T> concat(const std::vector<const Tensor<T>*>& inputs, int64_t axis) {
    assert(!inputs.empty());
    const std::vector<int64_t>& first_shape = inputs.front()->shape;
    assert(axis >= 0);
    assert(axis < static_cast<int64_t>(first_shape.size()));

    // Every input is [outer, its own axis length * inner] when viewed as a matrix; the output
    // interleaves their rows.
    int64_t outer = 1;
    for (int64_t d = 0; d < axis; ++d) {
        outer *= first_shape[d];
    }
    Tensor<T> output{first_shape, {}};
    output.shape[axis] = 0;
    for (const Tensor<T>* input : inputs) {
        output.shape[axis] += input->shape[axis];
    }
    output.data.reserve(static_cast<size_t>(element_count(output.shape)));
    // An empty outer extent (a zero-sized leading axis) leaves the output empty.
    for (int64_t o = 0; o < outer; ++o) {
        for (const Tensor<T>* input : inputs) {
            const int64_t row = static_cast<int64_t>(input->data.size()) / outer;
            const auto begin = input->data.begin() + o * row;
            output.data.insert(output.data.end(), begin, begin + row);
        }
    }
    return output;
}

// ---------------------------------------------------------------------------------------------
// Shapes

std::vector<int64_t> reshape_shape(const std::vector<int64_t>& input_shape,
                                   const std::vector<int64_t>& requested, bool allow_zero) {
    std::vector<int64_t> shape = requested;
    int64_t inferred_axis = -1;
    int64_t known = 1;
    for (size_t d = 0; d < shape.size(); ++d) {
        if (shape[d] == 0 && !allow_zero) {
            if (d >= input_shape.size()) {
                fail(ExitCode::kInvalidInput,
                     "Reshape: 0 at axis {} copies an input axis, but the input has rank {}", d,
                     input_shape.size());
            }
            shape[d] = input_shape[d];
        }
        if (shape[d] == -1) {
            if (inferred_axis >= 0) {
                fail(ExitCode::kInvalidInput, "Reshape: more than one -1 in the requested shape");
            }
            inferred_axis = static_cast<int64_t>(d);
        } else {
            known *= shape[d];
        }
    }
    const int64_t total = element_count(input_shape);
    if (inferred_axis >= 0) {
        if (known == 0 || total % known != 0) {
            fail(ExitCode::kInvalidInput, "Reshape: cannot infer -1 for {} elements", total);
        }
        shape[inferred_axis] = total / known;
    } else if (known != total) {
        fail(ExitCode::kInvalidInput, "Reshape: requested shape has {} elements, the input {}",
             known, total);
    }
    return shape;
}

std::vector<int64_t> flatten_shape(const std::vector<int64_t>& input_shape, int64_t axis) {
    const auto rank = static_cast<int64_t>(input_shape.size());
    if (axis < 0) {
        axis += rank;
    }
    if (axis < 0 || axis > rank) {
        fail(ExitCode::kInvalidInput, "Flatten: axis {} is out of range for rank {}", axis, rank);
    }
    // Both products are taken directly, so a zero-sized axis on one side keeps the other's size:
    // [0, 3, 4] with axis 1 is [0, 12].
    int64_t outer = 1;
    int64_t inner = 1;
    for (int64_t d = 0; d < rank; ++d) {
        (d < axis ? outer : inner) *= input_shape[static_cast<size_t>(d)];
    }
    return {outer, inner};
}

// ---------------------------------------------------------------------------------------------
// Explicit instantiations: integer kernels for npu-sim, float ones for the ONNX node tests.

#define EDGEQ_NPU_ACCUMULATE(ACC, IN, W)                                                         \
    template Tensor<ACC> conv2d_accumulate<ACC, IN, W>(const Tensor<IN>&, ACC, const Tensor<W>&, \
                                                       ACC, const Window2d&, int64_t);           \
    template Tensor<ACC> matmul_accumulate<ACC, IN, W>(const Tensor<IN>&, ACC, const Tensor<W>&, \
                                                       ACC);

EDGEQ_NPU_ACCUMULATE(int32_t, uint8_t, uint8_t)
EDGEQ_NPU_ACCUMULATE(int32_t, uint8_t, int8_t)
EDGEQ_NPU_ACCUMULATE(int32_t, int8_t, uint8_t)
EDGEQ_NPU_ACCUMULATE(int32_t, int8_t, int8_t)
EDGEQ_NPU_ACCUMULATE(float, float, float)
#undef EDGEQ_NPU_ACCUMULATE

#define EDGEQ_NPU_MOVE(T)                                                \
    template Tensor<T> transpose2d<T>(const Tensor<T>&);                 \
    template Tensor<T> max_pool2d<T>(const Tensor<T>&, const Window2d&); \
    template Tensor<T> concat<T>(const std::vector<const Tensor<T>*>&, int64_t);

EDGEQ_NPU_MOVE(uint8_t)
EDGEQ_NPU_MOVE(int8_t)
EDGEQ_NPU_MOVE(int32_t)
EDGEQ_NPU_MOVE(int64_t)
EDGEQ_NPU_MOVE(float)
#undef EDGEQ_NPU_MOVE

template Tensor<int32_t> window_sums2d<int32_t, uint8_t>(const Tensor<uint8_t>&, int32_t,
                                                         const Window2d&, std::vector<int64_t>&);
template Tensor<int32_t> window_sums2d<int32_t, int8_t>(const Tensor<int8_t>&, int32_t,
                                                        const Window2d&, std::vector<int64_t>&);
template Tensor<float> window_sums2d<float, float>(const Tensor<float>&, float, const Window2d&,
                                                   std::vector<int64_t>&);

}  // namespace edgeq::npu
