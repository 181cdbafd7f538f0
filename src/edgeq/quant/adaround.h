// AdaRound: learned rounding of quantized weights on calibration data, a post-pass over a QDQ
// model (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020,
// arXiv:2004.10568).
//
// Rounding every weight to the nearest step minimizes the error of each weight on its own, not the
// error of the layer's output. AdaRound chooses, per weight, floor or ceil of W/s so that the
// layer's output on real inputs stays close to the float layer's. Per layer it learns a continuous
// variable V per weight with Adam:
//
//   h(V)     = clamp(sigmoid(V) * 1.2 - 0.1, 0, 1)                  rectified sigmoid in [0, 1]
//   W~       = s * (clamp(floor(W / s) + h(V) + z, q_min, q_max) - z)  soft-quantized weight
//   loss     = ||layer(x~, W~) - layer_float(x, W)||^2                 reconstruction
//            + lambda * sum(1 - |2 h(V) - 1|^beta)                    pushes h(V) to 0 or 1
//
// where x~ is the layer's input in the QDQ model, so upstream quantization error is compensated.
// The squared error is summed over output channels and averaged over samples and positions, and
// beta is annealed from 20 to 2 after a warm-up without the regularizer. The final weight is
// clamp(floor(W / s) + (h(V) >= 0.5) + z, q_min, q_max): the floor or the ceil of W / s, or the
// range limit for a weight beyond the range.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/quant/calibration.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

struct AdaRoundOptions {
    // Adam steps per layer. The paper and AMD Quark use 10,000, but the time grows with the
    // count. On FashionCNN (1024 samples, 2 AMD EPYC cores) 500 steps took 23 s of CPU time and
    // cut the test-set logit MSE against fp32 from 0.32 to 0.106; 1000 steps reached 0.101 in
    // 49 s and 2000 steps 0.098.
    int64_t iterations = 500;
    int64_t batch_size = 32;  // samples per Adam step
    // Calibration samples used per layer. The layer's input and float output on all of them are
    // kept in memory: max_samples * (input + output elements per sample) * 4 bytes, one layer at
    // a time (FashionCNN's first Conv: 1024 * (784 + 25088) * 4 bytes = 106 MB).
    int64_t max_samples = 1024;
    double regularization = 0.01;  // lambda, the weight of the rounding regularizer
    double beta_start = 20;        // beta of the regularizer right after the warm-up
    double beta_end = 2;           // beta at the last iteration
    double warm_up = 0.2;          // fraction of the iterations without the regularizer
    double learning_rate = 1e-3;   // Adam
    uint64_t seed = 42;            // torch's seed and the batch order
};

// Result of AdaRound on one Conv, Gemm or MatMul node.
struct AdaRoundLayerReport {
    std::string node;      // node name in the QDQ model
    std::string op_type;   // Conv, Gemm or MatMul
    std::string weight;    // the quantized weight initializer, e.g. "fc1.weight_quantized"
    bool rounded = false;  // false: the layer was skipped and keeps its weights (see `note`)
    std::string note;
    int64_t samples = 0;          // calibration samples the layer was optimized on
    int64_t iterations = 0;       // Adam steps taken
    int64_t weight_count = 0;     // elements of the weight
    int64_t flipped_weights = 0;  // weights rounded the other way than round-to-nearest
    // Mean squared error of the layer's output (before any Relu) against the float layer's
    // output, over all collected samples and elements, with the QDQ model's input to the layer.
    double nearest_mse = 0;   // weights rounded to nearest, ties to even
    double adaround_mse = 0;  // weights as AdaRound rounded them
    double seconds = 0;       // data collection and optimization of this layer
};

struct AdaRoundReport {
    std::vector<AdaRoundLayerReport> layers;  // every Conv, Gemm and MatMul node, in graph order
    double seconds = 0;
};

// Rewrites the quantized weights of every Conv, Gemm and MatMul node of `qdq_model` with
// AdaRound, in graph order, on the first `options.max_samples` samples of `reader`. Each layer's
// input is read from `qdq_model` after the layers before it were rounded. Its target output and
// float weight come from `float_model`, the model `qdq_model` was quantized from, matched by node
// name. Only the `<weight>_quantized` initializers change, keeping their type and shape; scales,
// zero points and biases stay. Layers AdaRound cannot handle are skipped with a note (see
// AdaRoundLayerReport). Calls `on_layer` after each layer when set. The result is deterministic
// for a given seed and number of torch threads.
AdaRoundReport adaround_weights(
    const onnx::ModelProto& float_model, onnx::ModelProto& qdq_model, CalibrationDataReader& reader,
    const SessionConfig& session, const AdaRoundOptions& options = {},
    const std::function<void(const AdaRoundLayerReport&)>& on_layer = {});

}  // namespace edgeq
