// The engine's worker thread (a private header of the engine).
#include "worker.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

using namespace stateroot::engine;
using namespace std::chrono_literals;

TEST_CASE("worker: a task's exception is rethrown by wait, and the worker goes on", "[engine][worker]") {
    Worker w("test:worker");
    w.run([] { throw std::runtime_error("task failed"); });
    CHECK_THROWS_WITH(w.wait(), "task failed");
    w.wait();  // reported once
    int ran = 0;
    w.run([&] { ran = 1; });
    w.wait();
    CHECK(ran == 1);
}

TEST_CASE("worker: a worker whose task threw closes without ending the process", "[engine][worker]") {
    auto w = std::make_unique<Worker>("test:worker");
    w->run([] { throw std::bad_alloc(); });
    w.reset();
    SUCCEED();
}

TEST_CASE("worker: a scoped task is waited for when its scope is left by an exception",
          "[engine][worker]") {
    Worker w("test:worker");
    std::atomic<bool> finished = false;
    try {
        int local = 0;  // what the task refers to, gone once the scope is left
        ScopedTask task(w, [&] {
            std::this_thread::sleep_for(50ms);
            local = 1;
            finished = true;
        });
        throw std::runtime_error("main side failed");
    } catch (const std::runtime_error&) {
    }
    CHECK(finished);
}

TEST_CASE("worker: a scoped task's exception is rethrown by its wait", "[engine][worker]") {
    Worker w("test:worker");
    ScopedTask task(w, [] { throw std::runtime_error("second half failed"); });
    CHECK_THROWS_WITH(task.wait(), "second half failed");
}
