// Worker: a thread that runs one task at a time, for work the engine overlaps with its
// own (the tree's second subtree, the write of the previous height).
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <utility>

namespace stateroot::engine {

class Worker {
  public:
    // `name` (at most 15 characters) is what top -H and /proc show for the thread.
    // Throws std::system_error when the thread cannot be created.
    explicit Worker(const char* name) : thread_([this, name] {
        pthread_setname_np(pthread_self(), name);
        loop();
    }) {}
    // Runs the task in progress, if any, to its end; what it threw is dropped.
    ~Worker() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !task_; });
        stop_ = true;
        lock.unlock();
        cv_.notify_all();
        thread_.join();
    }
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // Starts `f`; the previous task must have ended (wait()).
    void run(std::function<void()> f) {
        std::lock_guard lock(mu_);
        task_ = std::move(f);
        cv_.notify_all();
    }
    // Returns once no task is in progress. An exception the task threw (out of memory,
    // say) is rethrown here, in the thread that waits, instead of ending the process
    // from the worker's.
    void wait() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !task_; });
        if (std::exception_ptr e = std::exchange(thrown_, nullptr)) std::rethrow_exception(e);
    }

  private:
    void loop() {
        std::unique_lock lock(mu_);
        for (;;) {
            cv_.wait(lock, [this] { return stop_ || task_; });
            if (stop_) return;
            lock.unlock();
            std::exception_ptr thrown;
            try {
                task_();
            } catch (...) {
                thrown = std::current_exception();
            }
            lock.lock();
            thrown_ = std::move(thrown);
            task_ = nullptr;
            cv_.notify_all();
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::function<void()> task_;
    std::exception_ptr thrown_;
    bool stop_ = false;
    std::thread thread_;  // last: starts once the rest is initialized
};

// A task on a worker that refers to the caller's locals: leaving the scope, also by an
// exception, waits for it, so it never runs on with what the scope has destroyed.
class ScopedTask {
  public:
    ScopedTask(Worker& worker, std::function<void()> f) : worker_(&worker) { worker.run(std::move(f)); }
    ~ScopedTask() {
        if (!worker_) return;
        try {
            worker_->wait();
        } catch (...) {
            // A destructor cannot throw: only wait() reports the task's exception, and
            // without it the scope is being left by an exception of its own.
        }
    }
    ScopedTask(const ScopedTask&) = delete;
    ScopedTask& operator=(const ScopedTask&) = delete;

    // Waits for the task and rethrows what it threw.
    void wait() {
        Worker* w = std::exchange(worker_, nullptr);
        if (w) w->wait();
    }

  private:
    Worker* worker_;
};

}  // namespace stateroot::engine
