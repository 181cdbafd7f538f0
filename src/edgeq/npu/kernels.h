// Scalar reference kernels of npu-sim, the integer emulator of the NPU's arithmetic.
//
// Each kernel is written once as a template over its element and accumulator types. npu-sim runs
// them on integers (uint8/int8 in, int32 accumulators). The ONNX node tests also run them on
// float. So ONNX's own expected outputs check the window geometry (pads, strides, dilations,
// groups, ceil mode) of the same code the emulator uses.
//
// Layout is NCHW for activations and OIHW for Conv weights, row-major everywhere. These are
// readable loops, not fast ones; a fast path will sit beside them and be tested against them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "edgeq/quant/quant_math.h"

namespace edgeq::npu {

// A dense row-major tensor.
template <typename T>
struct Tensor {
    std::vector<int64_t> shape;
    std::vector<T> data;
};

int64_t element_count(const std::vector<int64_t>& shape);

// ---------------------------------------------------------------------------------------------
// Rounding and requantization
//
// The NPU requantizes an int32 accumulator to 8 bits by an arithmetic right shift with rounding.
// How it breaks ties is the one place where the NPU and ONNX Runtime's CPU execution differ.

enum class Rounding {
    kHalfUp,    // floor(x + 0.5): -1.5 -> -1, 2.5 -> 3 (the Vitis AI DPU)
    kHalfEven,  // ties to the even neighbour: -1.5 -> -2, 2.5 -> 2 (ONNX QuantizeLinear)
};

std::string rounding_name(Rounding rounding);  // "half-up", "half-even", as --rounding spells them

// value * 2^-shift, rounded. A negative shift is an exact left shift.
int64_t shift_round(int64_t value, int shift, Rounding rounding);

// value / divisor (divisor > 0), rounded. Average pools divide by their window size.
int64_t divide_round(int64_t value, int64_t divisor, Rounding rounding);

// A positive real multiplier m written as multiplier * 2^-shift, with multiplier in
// [2^30, 2^31) (31 significant bits), as integer-only runtimes requantize with non-power-of-two
// scales.
struct FixedPointMultiplier {
    int64_t multiplier = 0;
    int shift = 0;
};

FixedPointMultiplier fixed_point_from_real(double real);

// value * multiplier * 2^-shift, rounded; exact in 64-bit integers for |value| < 2^31.
int64_t multiply_round(int64_t value, const FixedPointMultiplier& multiplier, Rounding rounding);

// Clamps to the range of `type` (saturation, never wrap-around).
int64_t saturate(int64_t value, QuantType type);

// ---------------------------------------------------------------------------------------------
// Window geometry, resolved from ONNX attributes for 2-D spatial inputs.

struct Window2d {
    std::array<int64_t, 2> kernel{1, 1};
    std::array<int64_t, 2> strides{1, 1};
    std::array<int64_t, 2> dilations{1, 1};
    std::array<int64_t, 4> pads{0, 0, 0, 0};  // top, left, bottom, right
    bool ceil_mode = false;                   // pools only
    bool count_include_pad = false;           // AveragePool only
};

// Output height and width of a window sliding over an input of `height` x `width`.
std::array<int64_t, 2> window_output_size(const Window2d& window, int64_t height, int64_t width);

// ---------------------------------------------------------------------------------------------
// Kernels. Zero points are subtracted before multiplying, so padding contributes zero.

// out[n, m, y, x] = sum over c, i, j of
//     (input[n, g*C/G + c, y*sy - pt + i*dy, x*sx - pl + j*dx] - input_zero_point)
//   * (weight[m, c, i, j] - weight_zero_point)
// with G = group, input [N, C, H, W], weight [M, C/G, kh, kw].
template <typename Acc, typename In, typename W>
Tensor<Acc> conv2d_accumulate(const Tensor<In>& input, Acc input_zero_point,
                              const Tensor<W>& weight, Acc weight_zero_point,
                              const Window2d& window, int64_t group);

// out[b, i, j] = sum over k of (a[b, i, k] - a_zero_point) * (b[k, j] - b_zero_point), for a of
// rank >= 2 (leading axes are batch axes) and b of rank 2 [K, N].
template <typename Acc, typename A, typename B>
Tensor<Acc> matmul_accumulate(const Tensor<A>& a, Acc a_zero_point, const Tensor<B>& b,
                              Acc b_zero_point);

// Transposes a rank-2 tensor (Gemm's transA / transB).
template <typename T>
Tensor<T> transpose2d(const Tensor<T>& matrix);

// Largest value of each window; padded positions are ignored.
template <typename T>
Tensor<T> max_pool2d(const Tensor<T>& input, const Window2d& window);

// Sum of (input - zero_point) over each window, and the divisor ONNX AveragePool uses for it:
// the window size when count_include_pad, else the number of positions inside the input.
template <typename Acc, typename T>
Tensor<Acc> window_sums2d(const Tensor<T>& input, Acc zero_point, const Window2d& window,
                          std::vector<int64_t>& divisors);

// Concatenates along `axis` (already normalised to [0, rank)).
template <typename T>
Tensor<T> concat(const std::vector<const Tensor<T>*>& inputs, int64_t axis);

// ---------------------------------------------------------------------------------------------
// Shapes of the operators that only move data.

// ONNX Reshape: 0 copies the input's dimension (unless allow_zero), -1 is inferred.
std::vector<int64_t> reshape_shape(const std::vector<int64_t>& input_shape,
                                   const std::vector<int64_t>& requested, bool allow_zero);

// ONNX Flatten: [prod(shape[:axis]), prod(shape[axis:])], axis may be negative.
std::vector<int64_t> flatten_shape(const std::vector<int64_t>& input_shape, int64_t axis);

}  // namespace edgeq::npu
