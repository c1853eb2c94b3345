// The `stateroot` binary as a child process, for tests that signal or kill it. The
// including test target defines STATEROOT_BIN.
#pragma once

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace stateroot::test {

// Runs `stateroot <args>` with stdout and stderr written to files.
class Child {
public:
    Child(const std::vector<std::string>& args, const std::string& out, const std::string& err) {
        pid_ = fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            dup2(open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 1);
            dup2(open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 2);
            std::vector<char*> argv{const_cast<char*>(STATEROOT_BIN)};
            for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
            argv.push_back(nullptr);
            execv(STATEROOT_BIN, argv.data());
            _exit(127);
        }
    }
    void signal(int sig) { kill(pid_, sig); }
    // The exit code, or 128 + the signal that ended it.
    int wait() {
        int status = 0;
        waitpid(pid_, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

private:
    pid_t pid_;
};

// The port a `serve` child announced on the first line of its stdout, `out`.
inline int announced_port(const std::string& out) {
    for (int i = 0; i < 200; ++i) {
        std::ifstream in(out);
        std::string word, addr;
        if (in >> word >> addr && word == "listening") return std::stoi(addr.substr(addr.rfind(':') + 1));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL("the server did not announce its port");
    return 0;
}

}  // namespace stateroot::test
