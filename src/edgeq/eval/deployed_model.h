// A model opened where the deployment runs it: an ONNX Runtime session on the chosen execution
// provider, or npu-sim for a QDQ model. `edgeq run` (its int8 model) and `edgeq eval` both open
// models here, so that the choice and the engine's name are the same in both.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "edgeq/eval/evaluate.h"
#include "edgeq/npu/npu_sim.h"
#include "edgeq/runtime/ort_session.h"

namespace edgeq {

class DeployedModel {
  public:
    // Opens `model_file` in npu-sim when `use_npu_sim` is set, else in ONNX Runtime with
    // `session`. `label` names the model in npu-sim's errors (a run's staged file has a
    // temporary path). Throws edgeq::Error as OrtModel and NpuSimModel do.
    DeployedModel(const std::filesystem::path& model_file, const std::string& label,
                  bool use_npu_sim, const SessionConfig& session,
                  const npu::NpuSimOptions& npu_sim_options);

    // Returns a function that runs one batch. It is valid while this object lives.
    BatchRunner runner() const;

    // The execution provider ONNX Runtime chose, or "npu-sim (half-up)" and the like.
    const std::string& name() const { return name_; }

    // Whether ONNX Runtime's CPU execution provider runs the model.
    bool on_cpu_execution_provider() const;

  private:
    std::unique_ptr<OrtModel> session_;
    std::unique_ptr<npu::NpuSimModel> simulator_;
    std::string name_;
};

}  // namespace edgeq
