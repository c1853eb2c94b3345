// Worker: a thread that runs one task at a time, for work the engine overlaps with its
// own (the tree's second subtree, the write of the previous height).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <thread>

namespace stateroot::engine {

class Worker {
  public:
    // `name` (at most 15 characters) is what top -H and /proc show for the thread.
    explicit Worker(const char* name) : thread_([this, name] {
        pthread_setname_np(pthread_self(), name);
        loop();
    }) {}
    // Runs the task in progress, if any, to its end.
    ~Worker() {
        wait();
        {
            std::lock_guard lock(mu_);
            stop_ = true;
        }
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
    // Returns once no task is in progress.
    void wait() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !task_; });
    }

  private:
    void loop() {
        std::unique_lock lock(mu_);
        for (;;) {
            cv_.wait(lock, [this] { return stop_ || task_; });
            if (stop_) return;
            lock.unlock();
            task_();
            lock.lock();
            task_ = nullptr;
            cv_.notify_all();
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::function<void()> task_;
    bool stop_ = false;
    std::thread thread_;  // last: starts once the rest is initialized
};

}  // namespace stateroot::engine
