// Predicts where ONNX Runtime's Vitis AI execution provider places each node of a QDQ model, from
// a target description, and writes the operator report the EP itself writes when
// XLNX_ONNX_EP_REPORT_FILE=vitisai_ep_report.json is set.
//
// Placement rules (the comments in partition.cpp give the reason each mirrors the EP):
//   - A node whose op type the target lacks, or whose conditions fail, runs on the CPU.
//   - QuantizeLinear and DequantizeLinear follow their neighbours. A QuantizeLinear fed by a
//     graph input or a CPU node is the CPU's. A DequantizeLinear that writes a graph output or
//     feeds only CPU nodes is the CPU's. A DequantizeLinear of an initializer goes with its
//     consumers.
//   - A device subgraph of QuantizeLinear / DequantizeLinear nodes alone goes to the CPU.
//   - The target's whole-model rule (min_conv_layers) moves every node to the CPU when the device
//     would get too few Conv nodes.
//   - A subgraph is a maximal connected group of nodes on one device.
//
// NOTE: this is a model of the EP's partitioner, not the EP: a node the real compiler rejects
// (an unsupported kernel size, a tensor too large for the device's memory) is placed here.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include "edgeq/npu/target.h"

namespace edgeq::npu {

inline constexpr const char* kCpuDevice = "CPU";

struct NodePlacement {
    std::string node_name;
    std::string op_type;
    std::string domain;  // "" for the standard ONNX domain
    std::string device;  // kCpuDevice or the target's device
    std::string reason;  // why the node runs on the CPU; empty on the target's device
};

struct PartitionReport {
    std::string target_name;
    std::string device;                // the target's device ("NPU")
    std::vector<NodePlacement> nodes;  // in graph order
    int cpu_nodes = 0;
    int npu_nodes = 0;  // on the target's device
    int cpu_subgraphs = 0;
    int npu_subgraphs = 0;
    std::string model_rule;  // why the whole model went to the CPU, empty when it did not

    int node_count() const { return static_cast<int>(nodes.size()); }
    // Share of the nodes on the target's device, in percent (0 for an empty graph).
    double npu_percent() const;
};

// Places every node of `qdq_model` on the CPU or on the target's device.
PartitionReport partition_model(const onnx::ModelProto& qdq_model, const TargetDescription& target);

// The EP's report: deviceStat (all, CPU, device: node counts and "domain::OpType" lists),
// nodeStat (one entry per node), shapeInfo (one entry per tensor, from ONNX shape inference on a
// copy of `model`) and subgraphStat (subgraphs per device).
nlohmann::ordered_json vitisai_ep_report_json(const onnx::ModelProto& model,
                                              const PartitionReport& report);

// Writes vitisai_ep_report_json as indented JSON, atomically.
void write_vitisai_ep_report(const std::filesystem::path& path, const onnx::ModelProto& model,
                             const PartitionReport& report);

// The EP's console summary, e.g.
//   "[Vitis AI EP model] operators: 38, on CPU: 2, on NPU: 36 (94.7%)"
std::string partition_summary_line(const PartitionReport& report);

// {"all": 38, "CPU": 2, "NPU": 36}
nlohmann::ordered_json partition_counts_json(const PartitionReport& report);

// One line per CPU node with the reason, e.g.
//   "QuantizeLinear 'input_QuantizeLinear': reads graph input 'input' ..."
std::vector<std::string> cpu_placement_lines(const PartitionReport& report);

}  // namespace edgeq::npu
