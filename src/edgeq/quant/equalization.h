// Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and
// Bias Correction", ICCV 2019): rescales the output channels of one layer and the matching input
// channels of the next so that per-tensor weight quantization wastes less of its range on channels
// with small weights.
//
// For a pair y = W2 f(W1 x + b1) with f positively homogeneous per channel (Relu, max or average
// pooling, identity), f(c / s) = f(c) / s for s > 0, so dividing output channel i of layer 1 by s_i
// and multiplying input channel i of layer 2 by s_i computes the same function. With r1_i the range
// max |w| of output channel i of W1 and r2_i that of input channel i of W2,
//   s_i = sqrt(r1_i / r2_i)   gives   r1_i / s_i = r2_i * s_i = sqrt(r1_i * r2_i),
// the same range on both sides.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

namespace edgeq {

// Spread of a layer's per-channel weight ranges (max |w| of each channel).
struct ChannelRangeSpread {
    float tensor_range = 0;         // max |w| over the whole weight tensor
    float smallest_to_largest = 0;  // min over channels / max over channels, 1 = even
};

// One equalized pair: the first layer's output channels against the second's input channels.
struct EqualizedPair {
    std::string first_layer;   // node name of the Conv or Gemm whose output channels are divided
    std::string second_layer;  // node name of the Conv or Gemm whose input channels are multiplied
    std::string between;       // op types between the two, e.g. "Relu, MaxPool, Reshape"
    int64_t channels = 0;
    int64_t unscaled_channels = 0;    // channels left as they were because one side is all zero
    ChannelRangeSpread first_before;  // over the first layer's output channels
    ChannelRangeSpread first_after;
    ChannelRangeSpread second_before;  // over the second layer's input channels
    ChannelRangeSpread second_after;
};

// A Conv or Gemm whose output was not equalized with a following layer, and why.
struct UnequalizedLayer {
    std::string layer;  // node name
    std::string reason;
};

struct EqualizationReport {
    int iterations = 0;  // sweeps run: at most the requested number, fewer once converged
    std::vector<EqualizedPair> pairs;           // in graph order of the first layer
    std::vector<UnequalizedLayer> unequalized;  // in graph order
    // max |s_i - 1| over all channels of all pairs in the last iteration: how far the pairs still
    // were from balanced when the iterations stopped (0 when there is no pair).
    double last_iteration_max_scale_change = 0;
};

// Maximum number of sweeps of equalize_cross_layer by default. A lone pair is balanced by one step.
// A layer in the middle of a chain belongs to two pairs, though, and each step on one pair
// unbalances the other, so the sweeps converge only geometrically. On the FashionCNN that
// `edgeq run` exports from models/fashion-cnn.pt (four pairs in one chain), max |s_i - 1| was
// 2.5e-4 after 20 sweeps and 7e-10 after 50.
inline constexpr int kDefaultEqualizationIterations = 50;

// Equalizes every supported pair of `float_model` in place. Run it on the float model before
// quantization, after BatchNormalization is folded. A pair is:
//   - a Conv or Gemm with a float weight initializer and an optional bias initializer,
//   - any number (zero included) of Relu, MaxPool, AveragePool and GlobalAveragePool nodes,
//   - when the second layer is a Gemm, optionally one Flatten (axis 1) or Reshape to [batch, K],
//   - a Conv (any group count) or a Gemm (transA 0) that reads the chain as its input 0.
// Every tensor from the first layer's output to the second layer's input must have exactly one
// consumer and must not be a graph output. Every weight and bias must belong to one node only.
// Each sweep visits the pairs in graph order. The sweeps stop after `iterations`, or earlier once
// no scale differs from 1 by more than float32's relative precision. Scales are worked out in
// double and each weight is rounded to float once, at the end.
EqualizationReport equalize_cross_layer(onnx::ModelProto& float_model,
                                        int iterations = kDefaultEqualizationIterations);

// A text table of `report`, one row per pair, then the layers left alone with their reasons.
std::string format_equalization_report(const EqualizationReport& report);

}  // namespace edgeq
