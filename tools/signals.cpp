#include "signals.hpp"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace stateroot::tools {
namespace {

std::atomic<int> g_signals{0};

void on_signal(int) {
    if (g_signals.fetch_add(1) > 0) {
        constexpr char kMsg[] = "\nstateroot: second signal, exiting now\n";
        (void)!write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
        _exit(130);
    }
    constexpr char kMsg[] =
        "\nstateroot: stopping (signal again to exit now)\n";
    (void)!write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
}

}  // namespace

void install_stop_handlers() {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    // The first signal only asks to stop after the current height: a read it lands in
    // goes on rather than failing with EINTR.
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_signals.load() > 0; }

}  // namespace stateroot::tools
