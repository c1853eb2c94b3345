// `stateroot bench`: commit throughput and latency, read as ratios to this machine's two
// ceilings measured in the same run (raw RocksDB writes of the same value rows, and
// SHA-256 node hashes).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <unordered_set>

#include <malloc.h>
#include <unistd.h>

#include "cli.hpp"
#include "stateroot/engine/engine.hpp"
#include "stateroot/engine/schema.hpp"

namespace stateroot::tools {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Heights committed after reopening the database (at most --blocks): enough for the
// tree read back node by node to reach the point where the rest is read in one sweep,
// and for the heights after it.
constexpr std::uint64_t kReopenHeights = 50;

// Counts as doubles, for rates and ratios.
double f(std::uint64_t n) { return static_cast<double>(n); }

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

std::uint64_t splitmix(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// `n` bytes from `draw()`, eight per 64-bit draw: the benchmark shares the machine's
// cores with the engine it measures, so what it spends itself should stay small.
template <class Draw>
Bytes random_bytes(std::size_t n, Draw draw) {
    Bytes v(n);
    for (std::size_t i = 0; i < n; i += 8) {
        const std::uint64_t x = draw();
        for (std::size_t b = 0; b < 8 && i + b < n; ++b) v[i + b] = static_cast<std::uint8_t>(x >> (8 * b));
    }
    return v;
}

// Key number i: 32 bytes drawn from the seed. Keys are deleted oldest first and
// inserted with new numbers, so the live set is the range [first, next) of numbers
// and the benchmark keeps no list of its own in the RSS it reports; their paths are
// hashes, so the oldest keys are as scattered over the tree as any others.
Bytes bench_key(std::uint64_t seed, std::uint64_t i) {
    std::uint64_t s = seed * 0x632be59bd9b4e019ull + i;
    return random_bytes(32, [&] { return splitmix(s); });
}

Bytes bench_value(std::mt19937_64& rng) {
    const std::size_t n = 32 + rng() % 97;  // 32..128 bytes
    return random_bytes(n, [&] { return rng(); });
}

std::uint64_t peak_rss_kb() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6));
    }
    return 0;
}

// CPU seconds used so far by this process's threads, summed by thread name (RocksDB
// names all its compaction threads alike; the calling thread is "main"). Read from
// Linux's /proc; empty elsewhere.
std::map<std::string, double> thread_cpu_s() {
    std::map<std::string, double> cpu;
    const double ticks_per_s = static_cast<double>(sysconf(_SC_CLK_TCK));
    const std::string main_tid = std::to_string(gettid());
    std::error_code ec;
    for (const auto& task : fs::directory_iterator("/proc/self/task", ec)) {
        std::ifstream in(task.path() / "stat");
        std::string stat;
        if (!std::getline(in, stat)) continue;  // the thread has just ended
        // "tid (name) state ...": the name may hold spaces; utime and stime are the
        // 14th and 15th fields.
        const auto open = stat.find('('), close = stat.rfind(')');
        if (open == std::string::npos || close == std::string::npos) continue;
        std::istringstream rest(stat.substr(close + 1));
        std::string field;
        std::uint64_t ticks = 0;
        for (int i = 3; i <= 15 && rest >> field; ++i) {
            if (i >= 14) ticks += std::stoull(field);
        }
        const std::string name =
            task.path().filename() == main_tid ? "main" : stat.substr(open + 1, close - open - 1);
        cpu[name] += f(ticks) / ticks_per_s;
    }
    return cpu;
}

// Starts peak_rss_kb() again from the current RSS (Linux: clear_refs "5").
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t i =
        std::min(v.size() - 1, static_cast<std::size_t>(p * f(v.size() - 1) + 0.5));
    return v[i];
}

fs::path temp_dir(const std::string& tag) {
    const fs::path base = fs::temp_directory_path();
    std::random_device rd;
    for (;;) {
        fs::path p = base / fmt::format("stateroot-bench-{}-{:x}", tag, rd());
        if (fs::create_directory(p)) return p;
    }
}

// Raw RocksDB writes of value rows shaped like the engine's (41-byte keys, 1 +
// 32..128-byte values, each batch in key order as the engine writes them) into a
// store opened with the engine's storage options (Engine::store_options: its column
// families too, which set how the value rows' family is kept): the storage ceiling for
// the value rows alone. `preload` rows are written first, untimed, in batches of
// `preload_batch`, as the engine's preload; then `batches` batches of `per_batch` rows
// are timed, waits for RocksDB's compactions (stalls) included.
Result<double> raw_rocksdb_rows_per_s(std::uint64_t preload, std::uint64_t preload_batch,
                                      std::uint64_t batches, std::uint64_t per_batch,
                                      const storage::StoreOptions& so) {
    const fs::path dir = temp_dir("raw");
    double elapsed = 0;
    {
        auto store = storage::Store::open(dir.string(), so);
        if (!store) return std::unexpected(store.error());
        std::mt19937_64 rng(7);
        std::vector<engine::Hash> paths;
        std::uint64_t height = 0;
        auto make_batch = [&](std::uint64_t rows) {
            paths.resize(rows);
            for (auto& path : paths) {
                for (auto& x : path.bytes) x = static_cast<std::uint8_t>(rng());
            }
            std::sort(paths.begin(), paths.end());
            storage::WriteBatch batch = (*store)->batch(rows * (engine::schema::kValueKeySize + 140));
            for (const auto& path : paths) engine::schema::put_value_row(batch, path, height, bench_value(rng));
            ++height;
            return batch;
        };
        for (std::uint64_t done = 0; done < preload; done += preload_batch) {
            if (Status s = (*store)->write(make_batch(std::min(preload_batch, preload - done))); !s)
                return std::unexpected(s.error());
        }
        for (std::uint64_t b = 0; b < batches; ++b) {
            const storage::WriteBatch batch = make_batch(per_batch);
            const auto t = Clock::now();
            if (Status s = (*store)->write(batch); !s) return std::unexpected(s.error());
            elapsed += seconds_since(t);
        }
    }
    fs::remove_all(dir);
    return f(batches * per_batch) / elapsed;
}

// Node hashes per second on one core, kHashLanes independent chains at a time as the
// tree computes most of them (SHA-NI lanes where the CPU has them, else OpenSSL).
double node_hashes_per_s() {
    engine::Hash h[engine::kHashLanes];
    const engine::Hash* left[engine::kHashLanes];
    const engine::Hash* right[engine::kHashLanes];
    engine::Hash* out[engine::kHashLanes];
    for (int i = 0; i < engine::kHashLanes; ++i) {
        h[i].bytes[0] = static_cast<std::uint8_t>(i + 1);
        left[i] = &h[i];
        right[i] = &engine::kZeroHash;
        out[i] = &h[i];
    }
    std::uint64_t n = 0;
    const auto t = Clock::now();
    while (seconds_since(t) < 0.5) {
        for (int i = 0; i < 2500; ++i) engine::node_hashes(engine::kHashLanes, left, right, out);
        n += 2500 * engine::kHashLanes;
    }
    return f(n) / seconds_since(t);
}

// Keys per preload height by default: 100,000, or under a memory budget of `cache_mb`
// MiB at most one per 16 KiB of it. A height's own working set (its changes, new
// nodes, rows and batch: 3-4 KB per changed key) comes on top of what the budget
// bounds, as a block being connected does on top of bitcoind's -dbcache; this keeps
// it within about a quarter of the budget.
std::uint64_t preload_batch_for(std::size_t cache_mb) {
    constexpr std::uint64_t kDefault = 100'000;
    constexpr std::uint64_t kBudgetBytesPerKey = 16 << 10;
    if (cache_mb == 0) return kDefault;
    return std::clamp<std::uint64_t>((std::uint64_t{cache_mb} << 20) / kBudgetBytesPerKey, 1, kDefault);
}

}  // namespace

int run_bench(const BenchOptions& o) {
    if (o.block_keys == 0 || o.blocks == 0)
        return fail("--block-keys and --blocks must be positive");
    if (o.block_keys < 5 && o.keys < 2) {
        return fail("with --block-keys below 5 a height only updates preloaded keys: --keys must be at least 2");
    }
    // Measured heights: 70 % updates, 20 % inserts, 10 % deletes (of the oldest keys).
    const std::uint64_t inserts = o.block_keys / 5;
    const bool own_dir = o.db.empty();
    const fs::path dir = own_dir ? temp_dir("db") : fs::path(o.db);
    if (!own_dir && fs::exists(dir) && !fs::is_empty(dir)) {
        return fail(fmt::format("--db {} must be empty or absent", o.db));
    }
    engine::EngineOptions eo;
    if (o.cache_mb > 0) set_memory_budget(eo, o.cache_mb);
    eo.pipelined_writes = o.pipelined_writes;
    eo.parallel_tree = o.tree_threads > 1;
    auto opened = engine::Engine::open(dir.string(), eo);
    if (!opened) return fail(opened.error());
    engine::Engine& eng = **opened;

    std::mt19937_64 rng(o.seed);
    // The live keys' numbers: [first_key, next_key).
    std::uint64_t first_key = 0, next_key = 0;
    auto live = [&] { return next_key - first_key; };
    auto any_live = [&] { return first_key + rng() % live(); };
    std::uint64_t height = 0;

    // Preload.
    const std::uint64_t preload_batch = o.preload_batch > 0 ? o.preload_batch : preload_batch_for(o.cache_mb);
    const auto preload_start = Clock::now();
    auto last_log = Clock::now();
    while (live() < o.keys) {
        engine::Changes c;
        c.height = height++;
        const std::uint64_t n = std::min<std::uint64_t>(preload_batch, o.keys - live());
        for (std::uint64_t i = 0; i < n; ++i) c.puts.emplace_back(bench_key(o.seed, next_key++), bench_value(rng));
        auto r = eng.apply(c);
        if (!r) return fail(r.error());
        if (seconds_since(last_log) > 10) {
            spdlog::info("preload: {} / {} keys", live(), o.keys);
            last_log = Clock::now();
        }
    }
    // The last preload height's write, if still in flight, belongs to the preload; once
    // it is written, the engine lets go of what that height held, so the peak below
    // restarts from what the measured heights start with.
    if (Status s = eng.settle(); !s) return fail(s.error());
    const double preload_s = seconds_since(preload_start);
    // The preload's heights are larger than the measured ones: the peak while measuring
    // is reported on its own too.
    const std::uint64_t preload_rss_kb = peak_rss_kb();
    reset_peak_rss();
    spdlog::info("preload: {} keys in {:.1f} s; measuring {} heights", live(), preload_s, o.blocks);

    std::vector<double> latencies_ms;
    std::uint64_t changed = 0, hashes = 0, rows = 0, bytes = 0, reads = 0;
    double commit_s = 0, prepare_s = 0, tree_s = 0, encode_s = 0, write_s = 0;
    const auto cpu_before = thread_cpu_s();
    // A measured height: deletes of the oldest keys, updates of live ones, inserts.
    auto next_changes = [&] {
        engine::Changes c;
        c.height = height++;
        const std::uint64_t deletes = std::min<std::uint64_t>(o.block_keys / 10, live() / 2);
        const std::uint64_t updates = std::min<std::uint64_t>(o.block_keys - inserts - deletes, live() / 2);
        for (std::uint64_t i = 0; i < deletes; ++i) c.deletes.push_back(bench_key(o.seed, first_key++));
        std::unordered_set<std::uint64_t> picked;
        while (picked.size() < updates) {
            const std::uint64_t k = any_live();
            if (picked.insert(k).second) c.puts.emplace_back(bench_key(o.seed, k), bench_value(rng));
        }
        for (std::uint64_t i = 0; i < inserts; ++i)
            c.puts.emplace_back(bench_key(o.seed, next_key++), bench_value(rng));
        return c;
    };
    for (std::uint64_t b = 0; b < o.blocks; ++b) {
        const engine::Changes c = next_changes();
        const auto t = Clock::now();
        auto r = eng.apply(c);
        const double s = seconds_since(t);
        if (!r) return fail(r.error());
        commit_s += s;
        prepare_s += r->prepare_s;
        tree_s += r->tree_s;
        encode_s += r->encode_s;
        write_s += r->write_s;
        latencies_ms.push_back(s * 1000);
        changed += c.puts.size() + c.deletes.size();
        hashes += r->tree.hashes;
        reads += r->tree.node_reads;
        rows += r->rows;
        bytes += r->bytes;
    }
    {
        // The last height's write, if it is still in flight, belongs to the measurement.
        const auto t = Clock::now();
        if (Status s = eng.settle(); !s) return fail(s.error());
        const double waited = seconds_since(t);
        commit_s += waited;
        write_s += waited;
    }
    // Each thread's CPU over the measured heights, per changed key. The main thread's
    // includes making the benchmark's changes; the compactions' depends on where the
    // measured heights fall among RocksDB's merges, which come a few hundred MB apart.
    std::vector<std::pair<std::string, double>> cpu_us;
    double cpu_us_total = 0;
    for (const auto& [name, s] : thread_cpu_s()) {
        const auto before = cpu_before.find(name);
        const double used = s - (before == cpu_before.end() ? 0.0 : before->second);
        if (used <= 0) continue;
        cpu_us.emplace_back(name, used * 1e6 / f(changed));
        cpu_us_total += cpu_us.back().second;
    }
    std::sort(cpu_us.begin(), cpu_us.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    spdlog::info("measured {} heights", o.blocks);
    if (Status s = eng.store().flush(); !s) return fail(s.error());
    const std::uint64_t disk = eng.store().disk_bytes();
    const std::uint64_t live_keys = eng.live_keys();
    const std::uint64_t measured_rss_kb = peak_rss_kb();
    const std::uint64_t rss_kb = std::max(preload_rss_kb, measured_rss_kb);

    // Reads at the tip: proofs and values of live keys, timed on a second (warm) pass.
    std::vector<double> proof_us, get_us;
    {
        auto view = eng.view();
        if (!view) return fail(view.error());
        std::vector<Bytes> sample;
        for (int i = 0; i < 2000 && live() > 0; ++i) sample.push_back(bench_key(o.seed, any_live()));
        for (int pass = 0; pass < 2; ++pass) {
            for (const Bytes& k : sample) {
                auto t = Clock::now();
                auto p = view->prove(k, height - 1);
                const double prove_s = seconds_since(t);
                if (!p) return fail(p.error());
                t = Clock::now();
                auto v = view->get(k, height - 1);
                const double get_s = seconds_since(t);
                if (!v) return fail(v.error());
                if (pass == 1) {
                    proof_us.push_back(prove_s * 1e6);
                    get_us.push_back(get_s * 1e6);
                }
            }
        }
    }

    // Opening the database again and committing the next heights: the tree is read
    // from the disk again, node by node and then in one sweep (Engine: load_tree_if_due).
    opened->reset();
    // As a process that opens the database: what the first engine freed goes back to
    // the system first, so the peak below is the reopened engine's.
    malloc_trim(0);
    reset_peak_rss();
    const std::uint64_t reopen_base_rss_kb = peak_rss_kb();
    const std::uint64_t reopen_heights = std::min<std::uint64_t>(o.blocks, kReopenHeights);
    double reopen_commit_s = 0;
    std::uint64_t reopen_changed = 0;
    const auto reopen_start = Clock::now();
    {
        auto reopened = engine::Engine::open(dir.string(), eo);
        if (!reopened) return fail(reopened.error());
        for (std::uint64_t b = 0; b < reopen_heights; ++b) {
            const engine::Changes c = next_changes();
            auto r = (*reopened)->apply(c);
            if (!r) return fail(r.error());
            if (b == 0) reopen_commit_s = seconds_since(reopen_start);
            reopen_changed += c.puts.size() + c.deletes.size();
        }
        if (Status s = (*reopened)->settle(); !s) return fail(s.error());
    }
    const double reopen_heights_s = seconds_since(reopen_start);
    const std::uint64_t reopen_rss_kb = peak_rss_kb();

    const double keys_per_s = f(changed) / commit_s;
    const double hashes_per_key = f(hashes) / f(changed);
    const std::uint64_t raw_batches = std::max<std::uint64_t>(o.blocks, 200'000 / o.block_keys + 1);
    // Into an empty store, and into one already holding N value rows written as the
    // engine's preload wrote its keys: the engine's measured heights start from such a
    // store, and what RocksDB's compactions cost grows with what it holds.
    const storage::StoreOptions raw_options = engine::Engine::store_options(eo);
    auto raw = raw_rocksdb_rows_per_s(0, 1, raw_batches, o.block_keys, raw_options);
    if (!raw) return fail(raw.error());
    auto raw_at_n = raw_rocksdb_rows_per_s(o.keys, preload_batch, raw_batches, o.block_keys, raw_options);
    if (!raw_at_n) return fail(raw_at_n.error());
    const double hash_rate = node_hashes_per_s();
    const double hash_ceiling = hashes_per_key > 0 ? hash_rate / hashes_per_key : 0;
    if (own_dir) fs::remove_all(dir);

    nlohmann::json j{
        {"keys", o.keys},
        {"block_keys", o.block_keys},
        {"blocks", o.blocks},
        // Whether the measured heights were pipelined (small ones are written inline).
        {"pipelined_writes", o.pipelined_writes && o.block_keys >= eo.pipeline_min_changes},
        // Threads that updated a measured height's tree.
        {"tree_threads", eo.parallel_tree && o.block_keys >= engine::Tree::kParallelMin ? 2 : 1},
        {"keys_per_s", keys_per_s},
        {"p50_ms", percentile(latencies_ms, 0.50)},
        {"p99_ms", percentile(latencies_ms, 0.99)},
        {"hashes_per_key", hashes_per_key},
        {"node_reads_per_key", f(reads) / f(changed)},
        {"rows_per_key", f(rows) / f(changed)},
        {"write_bytes_per_key", f(bytes) / f(changed)},
        {"disk_bytes_per_key", live_keys ? f(disk) / f(live_keys) : 0.0},
        {"peak_rss_mb", f(rss_kb) / 1024.0},
        {"measured_peak_rss_mb", f(measured_rss_kb) / 1024.0},
        {"raw_rocksdb_keys_per_s", *raw},
        {"raw_rocksdb_at_n_keys_per_s", *raw_at_n},
        {"sha256_node_hashes_per_s", hash_rate},
        {"sha256_lanes", engine::hash_lanes()},
        {"hash_ceiling_keys_per_s", hash_ceiling},
        {"preload_s", preload_s},
        {"preload_batch", preload_batch},
        {"proof_us_p50", percentile(proof_us, 0.50)},
        {"proof_us_p99", percentile(proof_us, 0.99)},
        {"get_us_p50", percentile(get_us, 0.50)},
        {"reopen_commit_s", reopen_commit_s},
        {"reopen_heights", reopen_heights},
        {"reopen_heights_s", reopen_heights_s},
        {"reopen_peak_rss_mib", f(reopen_rss_kb) / 1024.0},
        {"reopen_base_rss_mib", f(reopen_base_rss_kb) / 1024.0},
        {"prepare_us_per_key", prepare_s * 1e6 / f(changed)},
        {"tree_us_per_key", tree_s * 1e6 / f(changed)},
        {"encode_us_per_key", encode_s * 1e6 / f(changed)},
        {"write_us_per_key", write_s * 1e6 / f(changed)},
        {"cpu_us_per_key", cpu_us_total},
    };
    for (const auto& [name, thread_us] : cpu_us) j["cpu_us_per_key_by_thread"][name] = thread_us;
    fmt::print("stateroot bench: N = {} keys, K = {} changed keys per height, B = {} heights{}{}\n", o.keys,
               o.block_keys, o.blocks, o.pipelined_writes ? ", pipelined writes" : "",
               eo.parallel_tree ? "" : ", tree on one thread");
    fmt::print("  commit:    {:.0f} changed keys/s, p50 {:.2f} ms, p99 {:.2f} ms per height\n",
               keys_per_s, percentile(latencies_ms, 0.50), percentile(latencies_ms, 0.99));
    fmt::print(
        "  per key:   {:.1f} node hashes, {:.2f} node reads, {:.2f} rows, {:.0f} bytes written\n",
        hashes_per_key, f(reads) / f(changed), f(rows) / f(changed), f(bytes) / f(changed));
    const double us = 1e6 / f(changed);
    fmt::print(
        "  µs/key:    {:.2f} prepare (hash keys and values, sort), {:.2f} tree, {:.2f} encode "
        "rows, {:.2f} RocksDB write\n",
        prepare_s * us, tree_s * us, encode_s * us, write_s * us);
    if (!cpu_us.empty()) {
        std::string by_thread;
        for (const auto& [name, thread_us] : cpu_us) {
            by_thread += fmt::format("{}{} {:.2f}", by_thread.empty() ? "" : ", ", name, thread_us);
        }
        fmt::print("  CPU:       {:.2f} µs per changed key in all threads: {}\n", cpu_us_total, by_thread);
    }
    fmt::print("  disk:      {:.0f} bytes per live key ({} live keys); peak RSS {:.0f} MiB ({:.0f} MiB while measuring)\n",
               live_keys ? f(disk) / f(live_keys) : 0.0, live_keys, f(rss_kb) / 1024.0,
               f(measured_rss_kb) / 1024.0);
    fmt::print(
        "  ceilings:  raw RocksDB {:.0f} rows/s into an empty store ({:.0f} %), {:.0f} into one holding N "
        "value rows ({:.0f} %);\n"
        "             SHA-256 {:.0f} node hashes/s ({}) = {:.0f} keys/s ({:.0f} %)\n",
        *raw, 100 * keys_per_s / *raw, *raw_at_n, 100 * keys_per_s / *raw_at_n, hash_rate,
        engine::hash_lanes() ? "SHA-NI lanes" : "OpenSSL", hash_ceiling,
        hash_ceiling > 0 ? 100 * keys_per_s / hash_ceiling : 0.0);
    fmt::print("  reads:     proof p50 {:.1f} µs, p99 {:.1f} µs; value p50 {:.1f} µs (warm, at the tip)\n",
               percentile(proof_us, 0.50), percentile(proof_us, 0.99), percentile(get_us, 0.50));
    fmt::print("  reopen:    open and commit the next height in {:.2f} s, the next {} in {:.2f} s ({:.0f} changed keys/s); "
               "peak RSS {:.0f} MiB (from {:.0f})\n",
               reopen_commit_s, reopen_heights, reopen_heights_s, f(reopen_changed) / reopen_heights_s,
               f(reopen_rss_kb) / 1024.0, f(reopen_base_rss_kb) / 1024.0);
    fmt::print("  preload:   {:.1f} s, heights of {} keys\n", preload_s, preload_batch);
    if (o.json) fmt::print("{}\n", j.dump());
    return kExitOk;
}

}  // namespace stateroot::tools
