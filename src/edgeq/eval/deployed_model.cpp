#include "edgeq/eval/deployed_model.h"

#include <fmt/format.h>

#include "edgeq/onnx/model_io.h"

namespace edgeq {

DeployedModel::DeployedModel(const std::filesystem::path& model_file, const std::string& label,
                             bool use_npu_sim, const SessionConfig& session,
                             const npu::NpuSimOptions& npu_sim_options) {
    if (use_npu_sim) {
        simulator_ =
            std::make_unique<npu::NpuSimModel>(load_onnx_model(model_file), label, npu_sim_options);
        name_ = fmt::format("npu-sim ({})", npu::rounding_name(npu_sim_options.rounding));
        return;
    }
    session_ = std::make_unique<OrtModel>(model_file, session);
    name_ = session_->execution_provider();
}

BatchRunner DeployedModel::runner() const {
    if (simulator_) {
        const npu::NpuSimModel* simulator = simulator_.get();
        return [simulator](const std::vector<float>& input, const std::vector<int64_t>& shape) {
            return simulator->run(input, shape);
        };
    }
    OrtModel* session = session_.get();
    return [session](const std::vector<float>& input, const std::vector<int64_t>& shape) {
        return session->run(input, shape);
    };
}

bool DeployedModel::on_cpu_execution_provider() const {
    return session_ && session_->execution_provider() == "CPUExecutionProvider";
}

}  // namespace edgeq
