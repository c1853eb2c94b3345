#include "metrics.hpp"

#include <fmt/format.h>

#include <optional>

namespace stateroot::tools {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}

void Histogram::observe(double value) {
    std::size_t i = 0;
    while (i < bounds_.size() && value > bounds_[i]) ++i;
    std::lock_guard lock(mu_);
    ++counts_[i];
    sum_ += value;
    ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
    std::lock_guard lock(mu_);
    const std::string sep = labels.empty() ? "" : labels + ",";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < bounds_.size(); ++i) {
        cumulative += counts_[i];
        out += fmt::format("{}_bucket{{{}le=\"{}\"}} {}\n", name, sep, bounds_[i], cumulative);
    }
    cumulative += counts_.back();
    out += fmt::format("{}_bucket{{{}le=\"+Inf\"}} {}\n", name, sep, cumulative);
    const std::string braces = labels.empty() ? "" : "{" + labels + "}";
    out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", name, braces, sum_, name, braces, count_);
}

Metrics::Metrics()
    : rpc_seconds_({0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}),
      commit_seconds_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}) {}

void Metrics::observe_request(const std::string& method, bool ok, double seconds) {
    {
        std::lock_guard lock(mu_);
        ++requests_[{method, ok ? "ok" : "error"}];
    }
    rpc_seconds_.observe(seconds);
}

void Metrics::observe_commit(std::uint64_t changed_keys, double seconds) {
    heights_ += 1;
    changed_keys_ += changed_keys;
    commit_seconds_.observe(seconds);
}

std::string Metrics::render(std::optional<std::uint64_t> tip, std::uint64_t disk_bytes) const {
    std::string out;
    out += "# HELP stateroot_tip_height The highest committed height.\n# TYPE stateroot_tip_height gauge\n";
    out += tip ? fmt::format("stateroot_tip_height {}\n", *tip) : "stateroot_tip_height NaN\n";
    out += "# HELP stateroot_heights_committed_total Heights committed by this process.\n";
    out += fmt::format("# TYPE stateroot_heights_committed_total counter\nstateroot_heights_committed_total {}\n",
                       heights_.load());
    out += "# HELP stateroot_changed_keys_committed_total Changed keys committed by this process.\n";
    out += fmt::format("# TYPE stateroot_changed_keys_committed_total counter\nstateroot_changed_keys_committed_total {}\n",
                       changed_keys_.load());
    out += "# HELP stateroot_commit_seconds Time to commit one height.\n# TYPE stateroot_commit_seconds histogram\n";
    commit_seconds_.render(out, "stateroot_commit_seconds");
    out += "# HELP stateroot_rpc_requests_total Requests answered, by method and outcome.\n";
    out += "# TYPE stateroot_rpc_requests_total counter\n";
    {
        std::lock_guard lock(mu_);
        for (const auto& [key, n] : requests_) {
            out += fmt::format("stateroot_rpc_requests_total{{method=\"{}\",outcome=\"{}\"}} {}\n", key.first, key.second, n);
        }
    }
    out += "# HELP stateroot_rpc_seconds Time to answer one request.\n# TYPE stateroot_rpc_seconds histogram\n";
    rpc_seconds_.render(out, "stateroot_rpc_seconds");
    out += "# HELP stateroot_disk_bytes Bytes of the database on disk.\n# TYPE stateroot_disk_bytes gauge\n";
    out += fmt::format("stateroot_disk_bytes {}\n", disk_bytes);
    return out;
}

}  // namespace stateroot::tools
