// npu-sim: runs a QDQ model the way the NPU computes it, in integers only, to predict the NPU's
// outputs without the device.
//
// Loading compiles the QDQ graph into a list of integer steps. Every float operator that reads
// DequantizeLinear outputs and writes into a QuantizeLinear becomes one step on the quantized
// values (uint8 or int8 activations, int32 accumulators). A Relu right after a
// Conv/Gemm/MatMul/Add is fused into that step. Requantization is an arithmetic shift when every
// scale is a power of two (2^-p, the XINT8 preset), or a 31-bit fixed-point multiplier when
// NpuSimOptions::fixed_point_multipliers allows other scales. Weights, biases in accumulator
// units and the shifts or multipliers are all worked out at load; running only loops.
//
// The first QuantizeLinear (graph input -> 8 bits) and the last DequantizeLinear (-> graph
// output) run in float, as ONNX defines them, because on the device the CPU runs them.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "edgeq/npu/kernels.h"
#include "edgeq/quant/quant_math.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq::npu {

struct NpuSimOptions {
    Rounding rounding = Rounding::kHalfUp;  // the DPU's rounding; kHalfEven matches ONNX Runtime
    bool fixed_point_multipliers = false;   // accept non-power-of-two scales
};

// One compiled integer step; defined in npu_sim.cpp.
class Step;

// A quantized activation tensor of the compiled program.
struct ProgramTensor {
    std::string name;  // the QuantizeLinear output (or quantized constant) in the QDQ model
    QuantParams params;
};

class NpuSimModel {
  public:
    // Compiles a QDQ model. `label` (usually the file) names the model in errors. Throws
    // edgeq::Error with ExitCode::kUnsupported for an operator, a float operator outside Q/DQ or a
    // scale npu-sim cannot run, and kInvalidInput for an inconsistent model.
    NpuSimModel(const onnx::ModelProto& qdq_model, const std::string& label,
                const NpuSimOptions& options = {});
    NpuSimModel(const std::filesystem::path& path, const NpuSimOptions& options = {});
    ~NpuSimModel();
    NpuSimModel(NpuSimModel&&) noexcept;
    NpuSimModel& operator=(NpuSimModel&&) noexcept;

    // Runs a float input of `shape` (batch first); returns the graph outputs in float, like
    // OrtModel::run.
    std::vector<FloatOutput> run(const std::vector<float>& input,
                                 const std::vector<int64_t>& shape) const;

    const std::string& input_name() const { return input_name_; }
    const std::vector<std::string>& output_names() const { return output_names_; }

    // The compiled integer program, one human-readable line per step (op, tensors, shifts,
    // rounding).
    std::vector<std::string> program_listing() const;

  private:
    friend class ProgramBuilder;

    struct GraphOutput {
        std::string name;
        std::string node_name;
        int tensor = -1;  // index into tensors_
    };

    NpuSimOptions options_;
    std::string label_;
    std::string input_name_;
    std::string input_node_name_;
    int input_tensor_ = -1;  // the first QuantizeLinear's output, index into tensors_
    std::vector<std::string> output_names_;
    std::vector<GraphOutput> outputs_;
    std::vector<ProgramTensor> tensors_;
    std::vector<std::unique_ptr<Step>> steps_;
};

// Operator types npu-sim runs between DequantizeLinear and QuantizeLinear nodes.
const std::vector<std::string>& npu_sim_op_types();

}  // namespace edgeq::npu
