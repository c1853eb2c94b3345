// Out of memory part-way through a height, on the calling thread or on the tree's
// second: the engine reports it, refuses writes until reopened, and the reopened
// database is at its last height, from which the same changes give the same root.
// Out of memory in the query server's loop: that connection is closed, the server
// goes on.
//
// This program replaces the global operator new to fail one allocation on demand, so
// it is a test executable of its own.
#include "stateroot/engine/engine.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include <httplib.h>

#include "rpc.hpp"
#include "server.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::engine;

namespace {

// The next allocation on the thread named `g_fail_on` throws std::bad_alloc.
std::atomic<bool> g_armed = false;
const char* g_fail_on = "";
std::atomic<int> g_failures = 0;

bool on_failing_thread() {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    return std::strcmp(name, g_fail_on) == 0;
}

}  // namespace

void* operator new(std::size_t n) {
    if (g_armed.load(std::memory_order_relaxed) && on_failing_thread() && g_armed.exchange(false)) {
        ++g_failures;
        throw std::bad_alloc();
    }
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return std::malloc(n == 0 ? 1 : n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return std::malloc(n == 0 ? 1 : n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

Changes height_of(std::uint64_t height, int keys) {
    Changes c;
    c.height = height;
    for (int i = 0; i < keys; ++i) {
        const std::string k = fmt::format("key-{}", (height * 7919 + static_cast<std::uint64_t>(i)) % 5000);
        const std::string v = fmt::format("value-{}-{}", height, i);
        c.puts.emplace_back(Bytes(k.begin(), k.end()), Bytes(v.begin(), v.end()));
    }
    return c;
}

std::unique_ptr<Engine> open_engine(const test::TempDir& dir) {
    EngineOptions o;
    o.pipelined_writes = true;
    auto e = Engine::open(dir.str(), o);
    REQUIRE(e);
    return std::move(*e);
}

}  // namespace

TEST_CASE("engine: out of memory part-way through a height loses nothing", "[engine][oom]") {
    // Enough changes for the two subtrees under the root to go to two threads, and for
    // the pipelined write.
    const int keys = 2 * static_cast<int>(Tree::kParallelMin);
    test::TempDir ref_dir;
    auto ref = open_engine(ref_dir);
    for (std::uint64_t h = 1; h <= 3; ++h) REQUIRE(ref->apply(height_of(h, keys)));
    REQUIRE(ref->settle());

    std::string thread = GENERATE(as<std::string>{}, "the caller's", "stateroot:tree");
    INFO("failing thread: " << thread);
    if (thread == "the caller's") {
        char name[16] = {};
        pthread_getname_np(pthread_self(), name, sizeof name);
        thread = name;
    }

    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(height_of(1, keys)));
    REQUIRE(e->apply(height_of(2, keys)));

    const Changes third = height_of(3, keys);
    g_fail_on = thread.c_str();
    const int failures = g_failures;
    g_armed = true;
    auto failed = e->apply(third);
    g_armed = false;
    REQUIRE(g_failures == failures + 1);
    REQUIRE_FALSE(failed);
    CHECK(failed.error().message == "out of memory");

    auto refused = e->apply(third);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message == "out of memory; reopen the database to go on");
    CHECK_FALSE(e->rollback(1));

    e.reset();
    e = open_engine(dir);
    REQUIRE(e->tip() == 2u);
    auto v = ref->view();
    REQUIRE(v);
    CHECK(e->root() == *v->root(2));
    auto again = e->apply(third);
    REQUIRE(again);
    CHECK(again->root == *v->root(3));
}

TEST_CASE("engine: out of memory in a pipelined write refuses writes until reopened", "[engine][oom]") {
    const int keys = 2 * static_cast<int>(Tree::kParallelMin);
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(height_of(1, keys)));
    REQUIRE(e->settle());
    const Changes second = height_of(2, keys);
    g_fail_on = "stateroot:write";
    const int failures = g_failures;
    g_armed = true;
    REQUIRE(e->apply(second));  // its write goes on in the background
    auto settled = e->settle();
    g_armed = false;
    REQUIRE(g_failures == failures + 1);
    REQUIRE_FALSE(settled);
    CHECK(settled.error().message == "out of memory");
    CHECK(e->apply(height_of(3, keys)).error().message == "out of memory; reopen the database to go on");
    CHECK(e->put_aux({{Bytes{1}, Bytes{2}}}).error().message == "out of memory; reopen the database to go on");
    CHECK_FALSE(e->checkpoint(dir.sub("copy")));

    e.reset();
    e = open_engine(dir);
    REQUIRE(e->tip());
    CHECK(*e->tip() >= 1u);  // the write failed before or after RocksDB took it
    if (*e->tip() == 1u) REQUIRE(e->apply(second));
    REQUIRE(e->settle());
    auto v = e->view();
    REQUIRE(v);
    auto recomputed = v->recompute_root(2);
    INFO("tip " << *e->tip() << (recomputed ? "" : ": " + recomputed.error().message));
    REQUIRE(recomputed);
    CHECK(*recomputed == v->root(2).value());
}

TEST_CASE("server: out of memory in a loop closes that connection and the server goes on",
          "[server][oom]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(height_of(1, 10)));
    REQUIRE(e->settle());
    tools::EngineSource source(*e);
    tools::Metrics metrics;
    tools::Rpc rpc(source, metrics);
    tools::ServerOptions o;
    o.addr = "127.0.0.1:0";
    o.threads = 1;
    tools::HttpServer server(rpc, o);
    auto port = server.start();
    REQUIRE(port);
    httplib::Client client("127.0.0.1", *port);

    g_fail_on = "stateroot:http";
    const int failures = g_failures;
    g_armed = true;
    for (int i = 0; i < 100 && g_failures == failures; ++i) {
        (void)client.Get("/height");  // fails or not, depending on where the allocation failed
    }
    g_armed = false;
    REQUIRE(g_failures == failures + 1);
    const auto after = client.Get("/height");
    REQUIRE(after);
    CHECK(after->status == 200);
    CHECK(after->body == R"({"height":1})");
}
