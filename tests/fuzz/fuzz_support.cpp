#include "fuzz_support.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "stateroot/indexer/change_file.hpp"

namespace stateroot::fuzz {

namespace {

// Owned here rather than as statics with destructors, so that the order of teardown at
// exit is fixed by when each is registered with atexit (the reverse order runs).
std::filesystem::path* g_scratch = nullptr;
State* g_state = nullptr;

void remove_scratch() {
    std::error_code ec;
    std::filesystem::remove_all(*g_scratch, ec);
    delete g_scratch;
    g_scratch = nullptr;
}

void close_state() {
    delete g_state;
    g_state = nullptr;
}

}  // namespace

void fail(const char* file, int line, const std::string& what) {
    std::fprintf(stderr, "\nfuzz check failed at %s:%d: %s\n", file, line, what.c_str());
    std::fflush(stderr);
    std::abort();
}

const std::filesystem::path& scratch_dir() {
    if (!g_scratch) {
        std::string templ = (std::filesystem::temp_directory_path() / "stateroot-fuzz-XXXXXX").string();
        FUZZ_CHECK(mkdtemp(templ.data()) != nullptr, "mkdtemp {} failed", templ);
        g_scratch = new std::filesystem::path(templ);
        std::atexit(remove_scratch);
    }
    return *g_scratch;
}

void write_file(const std::filesystem::path& path, ByteView data) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    FUZZ_CHECK(f != nullptr, "cannot create {}", path.string());
    const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
    FUZZ_CHECK(std::fclose(f) == 0 && ok, "cannot write {}", path.string());
}

State& state() {
    if (g_state) return *g_state;
    const std::string dir = (scratch_dir() / "state-db").string();
    engine::EngineOptions options;
    options.node_cache_mb = 8;
    auto engine = engine::Engine::open(dir, options);
    FUZZ_CHECK(engine.has_value(), "{}", engine ? "" : engine.error().message);
    auto* s = new State{std::move(*engine), {}};
    std::ifstream in(STATEROOT_FUZZ_STATE);
    FUZZ_CHECK(static_cast<bool>(in), "cannot read {}", STATEROOT_FUZZ_STATE);
    const Status applied = indexer::apply_change_stream(
        *s->engine, in, STATEROOT_FUZZ_STATE,
        [&](const engine::CommitResult& r) { s->roots[r.height] = r.root; });
    FUZZ_CHECK(applied.has_value(), "{}", applied ? "" : applied.error().message);
    FUZZ_CHECK(!s->roots.empty(), "{} holds no height", STATEROOT_FUZZ_STATE);
    // RocksDB creates function-local statics (its Env, thread pools) on first use, and
    // they are destroyed at exit in the reverse order of their creation. Reading once
    // before registering the close makes the database close before they go.
    auto view = s->engine->view();
    FUZZ_CHECK(view.has_value(), "view: {}", view ? "" : view.error().message);
    FUZZ_CHECK(view->get(as_bytes("a"), *view->tip()).has_value(), "get failed");
    FUZZ_CHECK(view->prove(as_bytes("a"), *view->tip()).has_value(), "prove failed");
    g_state = s;
    std::atexit(close_state);
    return *g_state;
}

}  // namespace stateroot::fuzz
