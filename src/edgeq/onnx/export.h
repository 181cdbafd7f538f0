// ONNX exporter for FashionCNN (libtorch 1.13 has none).
//
// The graph (opset 13, IR version 7), with N the dynamic axis "batch_size":
//   input [N,1,28,28] -> Conv(pad 1) -> Relu -> MaxPool(2) -> Conv -> Relu -> MaxPool(2)
//   -> Reshape([-1, 2304]) -> Gemm(fc1) -> Gemm(fc2) -> Gemm(fc3) -> output [N,10]
// BatchNormalization is folded into the Conv before it, Dropout (identity in eval mode) is left
// out, and the flatten is one Reshape with a constant shape: 10 nodes in all.
#pragma once

#include <onnx/onnx_pb.h>

#include "edgeq/model/state_dict.h"

namespace edgeq {

inline constexpr int64_t kExportOpset = 13;
inline constexpr int64_t kExportIrVersion = 7;     // the IR version that goes with opset 13
inline constexpr float kBatchNormEpsilon = 1e-5f;  // PyTorch's BatchNorm2d default

// Builds the ONNX model from a FashionCNN state_dict. Callers check its keys and shapes first
// (check_fashion_cnn_state_dict); a missing key is still reported here by name.
onnx::ModelProto export_fashion_cnn(const StateDict& weights);

// Folds y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta into the convolution:
//   W'[o] = W[o] * gamma[o] / sqrt(var[o] + eps)
//   b'[o] = (b[o] - mean[o]) * gamma[o] / sqrt(var[o] + eps) + beta[o]
// computed in double and rounded once to float. `weight` is [O, ...], the others [O].
void fold_batch_norm(std::vector<float>& weight, std::vector<float>& bias,
                     const std::vector<float>& gamma, const std::vector<float>& beta,
                     const std::vector<float>& mean, const std::vector<float>& variance,
                     float epsilon);

}  // namespace edgeq
