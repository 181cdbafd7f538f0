// Float-graph preparation that runs before quantization: it rewrites an exported ONNX CNN into
// the plain form the QDQ quantizer expects, without changing what the model computes (up to float
// rounding where BatchNormalization is folded).
//
// The steps, in order:
//   1. check that the model has exactly one graph input that is not an initializer, a float one;
//   2. upgrade models below opset 10 to kExportOpset (13, the opset edgeq's own exporter and
//      torch 1.13 write) with ONNX's version converter, because QuantizeLinear and
//      DequantizeLinear need opset 10;
//   3. turn Constant nodes into initializers and drop initializers from the graph inputs;
//   4. name unnamed nodes, so that messages and the quantizer's tensor names can refer to them;
//   5. remove Identity nodes and inference-mode Dropout nodes;
//   6. replace the Reshape shapes that torch computes for x.view(x.size(0), -1) with a dynamic
//      batch (Shape -> Gather -> Unsqueeze -> Concat) by constants, 0 keeping the batch dynamic;
//   7. fold each BatchNormalization into the Conv before it, when nothing else reads the Conv;
//   8. replace Clip with min 0 and no max by Relu (Clip(0, 6), ReLU6, stays a Clip);
//   9. remove initializers that no node reads any more, and raise an IR version below 4 to 4 when
//      initializers remain that are not graph inputs;
//  10. run ONNX's strict shape inference and keep the inferred value_info.
// Shapes stay as the model declares them: a fixed batch dimension stays fixed. Constant, Identity,
// Dropout and BatchNormalization nodes and computed Reshape shapes that cannot be rewritten stay
// as they are, each with a warning.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

namespace edgeq {

struct PreparedModel {
    onnx::ModelProto model;  // the rewritten model, with ONNX's inferred value_info
    std::string input_name;
    std::vector<int64_t> input_shape;   // as declared; -1 for a symbolic or missing dimension
    std::string input_shape_text;       // for example "[N,3,224,224]", with the dimension names
    std::vector<std::string> changes;   // one line per rewrite, in the order they were made
    std::vector<std::string> warnings;  // what could not be rewritten and stays as it was
};

// Runs the preparation steps above on a copy of `model`. Throws Error naming `label` when the
// model has no float input or more than one input, when its opset cannot be upgraded, when it has
// control-flow subgraphs, or when ONNX's shape inference rejects the result. The same model gives
// the same PreparedModel (and the same bytes through save_onnx_model).
PreparedModel prepare_for_quantization(const onnx::ModelProto& model, const std::string& label);

}  // namespace edgeq
