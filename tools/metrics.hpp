// Counters and histograms of the server and the indexer, in the Prometheus text format.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace stateroot::tools {

// A histogram with fixed bucket bounds (seconds). Thread-safe.
class Histogram {
public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double value);
    // "name_bucket{le=...} n" lines, then _sum and _count.
    void render(std::string& out, const std::string& name, const std::string& labels = "") const;

private:
    std::vector<double> bounds_;
    mutable std::mutex mu_;
    std::vector<std::uint64_t> counts_;  // per bucket, plus +Inf
    double sum_ = 0;
    std::uint64_t count_ = 0;
};

class Metrics {
public:
    Metrics();
    // A request answered; `method` is a JSON-RPC method or REST route, `ok` whether it
    // succeeded.
    void observe_request(const std::string& method, bool ok, double seconds);
    // A height committed by the indexer in this process.
    void observe_commit(std::uint64_t changed_keys, double seconds);
    // The whole exposition, with the gauges given.
    std::string render(std::optional<std::uint64_t> tip, std::uint64_t disk_bytes) const;

private:
    mutable std::mutex mu_;
    std::map<std::pair<std::string, std::string>, std::uint64_t> requests_;  // (method, outcome)
    Histogram rpc_seconds_;
    Histogram commit_seconds_;
    std::atomic<std::uint64_t> heights_{0};
    std::atomic<std::uint64_t> changed_keys_{0};
};

}  // namespace stateroot::tools
