// The query API: JSON-RPC 2.0 methods and their REST mirrors, independent of HTTP.
//
// Every request reads one committed height through one lease of the state (a snapshot
// view, held against a replica's catch-up), so no answer mixes two heights or sees a
// half-applied one.
#pragma once

#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "metrics.hpp"
#include "stateroot/engine/engine.hpp"

namespace stateroot::tools {

// A reader-writer lock that lets a waiting writer in before new readers. glibc's
// default prefers readers: requests whose leases overlap, one always held, would keep a
// replica's catch-up out for as long as they come.
class WriterFirstLock {
public:
    WriterFirstLock();
    ~WriterFirstLock();
    WriterFirstLock(const WriterFirstLock&) = delete;
    WriterFirstLock& operator=(const WriterFirstLock&) = delete;
    void lock() { pthread_rwlock_wrlock(&lock_); }
    void unlock() { pthread_rwlock_unlock(&lock_); }
    // Not recursive: a thread holding a lease must not take another while a writer waits.
    void lock_shared() { pthread_rwlock_rdlock(&lock_); }
    void unlock_shared() { pthread_rwlock_unlock(&lock_); }

private:
    pthread_rwlock_t lock_;
};

// Where requests read from. Thread-safe.
class StateSource {
public:
    virtual ~StateSource() = default;
    // A view of the committed state, valid while the lease lives.
    struct Lease {
        // Declared first so it is released last: the view (its snapshot and node reader)
        // is gone before a replica's catch-up, which needs no view in use, may run.
        std::shared_lock<WriterFirstLock> hold;
        engine::View view;
    };
    virtual Result<Lease> lease() = 0;
    virtual std::uint64_t disk_bytes() = 0;
};

// The engine of this process (the writer's, or a read-only one): views are snapshots.
class EngineSource final : public StateSource {
public:
    explicit EngineSource(engine::Engine& engine) : engine_(engine) {}
    Result<Lease> lease() override;
    std::uint64_t disk_bytes() override { return engine_.store().disk_bytes(); }

private:
    engine::Engine& engine_;
};

// A RocksDB secondary instance following a primary in another process. A snapshot of a
// secondary does not hold back its catch-up, so requests share a lock that catch-up
// takes exclusively, every `interval`.
class ReplicaSource final : public StateSource {
public:
    ReplicaSource(engine::Engine& engine, std::chrono::milliseconds interval);
    ~ReplicaSource() override;
    Result<Lease> lease() override;
    std::uint64_t disk_bytes() override { return engine_.store().disk_bytes(); }

private:
    engine::Engine& engine_;
    WriterFirstLock mu_;
    std::mutex stop_mu_;
    std::condition_variable stop_cv_;
    bool stopping_ = false;
    std::thread thread_;
};

// What /status reports about an indexer running in this process.
struct IndexerStatus {
    std::string state = "none";  // none, indexing, done
    std::uint64_t height = 0;
    std::uint64_t target = 0;
};

// A URL's query parameters, decoded, in the order given (repeats kept).
using QueryParams = std::vector<std::pair<std::string, std::string>>;

struct HttpAnswer {
    int status = 200;
    std::string body;  // empty with status 204
    std::string content_type = "application/json";
    std::string allow;  // with status 405: the methods the path takes
};

class Rpc {
public:
    // `indexer` (optional) is called for /status.
    Rpc(StateSource& source, Metrics& metrics, std::function<IndexerStatus()> indexer = nullptr);

    // A JSON-RPC POST body (one request or a batch). The answers to one body (a batch's
    // together) take at most `max_answer` bytes: a call whose answer would not fit in
    // what is left gets error -32000 "answer too large" instead, built at no more cost
    // than the answer's size would have. Never throws for a bad body: it is answered
    // with its JSON-RPC error.
    HttpAnswer post(std::string_view body, std::size_t max_answer = kMaxAnswer);
    // A REST GET: `path` without the query, `query` its parameters in the order given.
    HttpAnswer get(const std::string& path, const QueryParams& query);
    // Whether `path` is one of get()'s routes.
    static bool is_route(std::string_view path);
    // Counts a request the HTTP layer refused (a wrong token, a method a path does not
    // take) under `label` in the request metrics.
    void observe_refused(const std::string& label);

    static constexpr std::size_t kMaxBatch = 1000;
    static constexpr std::size_t kMaxAnswer = 64u << 20;

private:
    // One call's response as text, an error if it would take more than `room` bytes.
    std::string call(const nlohmann::json& request, bool& notification, std::size_t room);

    StateSource& source_;
    Metrics& metrics_;
    std::function<IndexerStatus()> indexer_;
    std::chrono::steady_clock::time_point started_;
};

}  // namespace stateroot::tools
