#include "server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <charconv>

namespace stateroot::tools {

Result<std::pair<std::string, int>> parse_addr(const std::string& addr) {
    const auto colon = addr.rfind(':');
    if (colon == std::string::npos || colon == 0) {
        return make_error(ErrorCode::kInvalidArgument, fmt::format("address \"{}\" is not HOST:PORT", addr));
    }
    std::string host = addr.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    int port = -1;
    const std::string p = addr.substr(colon + 1);
    const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    if (ec != std::errc() || end != p.data() + p.size() || port < 0 || port > 65535) {
        return make_error(ErrorCode::kInvalidArgument, fmt::format("address \"{}\" has no valid port", addr));
    }
    return std::pair{host, port};
}

struct HttpServer::Impl {
    Impl(Rpc& r, ServerOptions o) : rpc(r), options(std::move(o)) {}
    Rpc& rpc;
    ServerOptions options;
    httplib::Server server;
    std::thread thread;
};

HttpServer::HttpServer(Rpc& rpc, ServerOptions options)
    : impl_(std::make_unique<Impl>(rpc, std::move(options))) {}

HttpServer::~HttpServer() { stop(); }

namespace {
bool loopback(const std::string& host) { return host == "127.0.0.1" || host == "localhost" || host == "::1"; }

void answer(httplib::Response& res, const HttpAnswer& a) {
    res.status = a.status;
    if (a.status != 204) res.set_content(a.body, a.content_type.c_str());
}
}  // namespace

Result<int> HttpServer::start() {
    auto addr = parse_addr(impl_->options.addr);
    if (!addr) return std::unexpected(addr.error());
    const auto& [host, port] = *addr;
    if (!loopback(host) && impl_->options.token.empty()) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("binding {} (not a loopback address) requires --rpc-token", impl_->options.addr));
    }
    httplib::Server& s = impl_->server;
    const std::size_t threads = std::max<std::size_t>(1, impl_->options.threads);
    s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    s.set_payload_max_length(impl_->options.max_body);
    s.set_read_timeout(10, 0);
    s.set_write_timeout(10, 0);
    s.set_keep_alive_max_count(10'000);
    // Answers are small: without this, Nagle's algorithm and delayed ACKs add ~40 ms.
    s.set_tcp_nodelay(true);
    if (!impl_->options.token.empty()) {
        const std::string expected = "Bearer " + impl_->options.token;
        s.set_pre_routing_handler([expected](const httplib::Request& req, httplib::Response& res) {
            if (req.get_header_value("Authorization") == expected) return httplib::Server::HandlerResponse::Unhandled;
            res.status = 401;
            res.set_content(R"({"error":{"code":401,"message":"missing or wrong bearer token"}})", "application/json");
            return httplib::Server::HandlerResponse::Handled;
        });
    }
    Rpc& rpc = impl_->rpc;
    s.Post("/", [&rpc](const httplib::Request& req, httplib::Response& res) { answer(res, rpc.post(req.body)); });
    s.Get(R"(/.*)", [&rpc](const httplib::Request& req, httplib::Response& res) {
        std::map<std::string, std::string> query;
        for (const auto& [k, v] : req.params) query[k] = v;
        answer(res, rpc.get(req.path, query));
    });
    int bound = port;
    if (port == 0) {
        bound = s.bind_to_any_port(host);
        if (bound < 0) return make_error(ErrorCode::kIoError, fmt::format("cannot bind {}", impl_->options.addr));
    } else if (!s.bind_to_port(host, port)) {
        return make_error(ErrorCode::kIoError, fmt::format("cannot bind {}", impl_->options.addr));
    }
    impl_->thread = std::thread([&s] { s.listen_after_bind(); });
    return bound;
}

void HttpServer::stop() {
    if (!impl_->thread.joinable()) return;
    impl_->server.stop();
    impl_->thread.join();
}

}  // namespace stateroot::tools
