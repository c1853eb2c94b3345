// serve, snapshot, config --print.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli.hpp"
#include "rpc.hpp"
#include "server.hpp"
#include "signals.hpp"

namespace stateroot::tools {

ServerOptions server_options(const Config& c) {
    ServerOptions o;
    o.addr = c.rpc_addr.empty() ? kDefaultRpcAddr : c.rpc_addr;
    o.token = c.rpc_token;
    o.threads = c.rpc_threads;
    o.max_connections = c.rpc_max_connections;
    o.request_timeout_ms = c.rpc_timeout_ms;
    o.idle_timeout_ms = c.rpc_idle_ms;
    return o;
}

int cmd_serve(const Config& c) {
    install_stop_handlers();
    if (Status s = require_db(c); !s) return fail(s.error());
    engine::EngineOptions eo = engine_options(c);
    eo.must_exist = true;
    eo.secondary_dir = c.secondary;
    auto e = engine::Engine::open(c.db, eo);
    if (!e) {
        if (e.error().code == ErrorCode::kBusy) {
            return fail(e.error().message + "; to serve beside it, add --secondary SCRATCH_DIR");
        }
        return fail(e.error());
    }
    std::unique_ptr<StateSource> source;
    if (c.secondary.empty()) {
        source = std::make_unique<EngineSource>(**e);
    } else {
        source = std::make_unique<ReplicaSource>(**e, std::chrono::milliseconds(c.catch_up_ms));
    }
    Metrics metrics;
    Rpc rpc(*source, metrics);
    HttpServer server(rpc, server_options(c));
    auto port = server.start();
    if (!port) return fail(port.error());
    const std::string addr = format_addr(parse_addr(server_options(c).addr)->first, *port);
    fmt::print("listening {}\n", addr);
    std::fflush(stdout);
    spdlog::info("serving {} on http://{}{}", c.db, addr, c.secondary.empty() ? "" : " as a replica");
    while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    server.stop();
    spdlog::info("stopped");
    return kExitOk;
}

int cmd_snapshot(const Config& c, const std::string& out) {
    if (Status s = require_db(c); !s) return fail(s.error());
    if (out.empty()) return fail("--out is required");
    if (std::filesystem::exists(out)) return fail(fmt::format("{} already exists", out));
    engine::EngineOptions eo = engine_options(c);
    // As the writer: RocksDB's checkpoint is consistent only in the process that owns
    // the files. From a read-only open beside a writer in another process, the writer
    // flushed and deleted logs the copy needed: copies lacked whole heights.
    eo.must_exist = true;
    auto e = engine::Engine::open(c.db, eo);
    if (!e && e.error().code == ErrorCode::kBusy) {
        return fail(fmt::format("{}: a consistent snapshot needs the process that has it open stopped "
                                "(index, apply, or serve without --secondary; SIGINT stops `stateroot "
                                "index` after its height), and takes seconds",
                                e.error().message));
    }
    if (!e) return fail(e.error());
    if (Status s = (*e)->checkpoint(out); !s) return fail(s.error());
    e->reset();
    eo.must_exist = false;
    eo.read_only = true;
    auto copy = engine::Engine::open(out, eo);
    if (!copy) return fail(with_context(copy.error(), "the snapshot does not open").error());
    if ((*copy)->tip()) {
        fmt::print("{} {}\n", *(*copy)->tip(), (*copy)->root().hex());
    } else {
        fmt::print("empty\n");
    }
    return kExitOk;
}

int cmd_config_print(const Config& c) {
    fmt::print("{}\n", to_json(c).dump(2));
    return kExitOk;
}

}  // namespace stateroot::tools
