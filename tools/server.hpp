// The HTTP server: JSON-RPC on POST /, the REST mirrors on GET, over cpp-httplib.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "rpc.hpp"

namespace stateroot::tools {

struct ServerOptions {
    std::string addr = "127.0.0.1:8080";  // HOST:PORT; port 0 picks a free one
    std::string token;                   // required for a non-loopback host
    std::size_t threads = 8;
    std::size_t max_body = 1u << 20;     // larger bodies get HTTP 413
};

class HttpServer {
public:
    HttpServer(Rpc& rpc, ServerOptions options);
    ~HttpServer();
    // Binds and starts serving on a background thread. Returns the port bound.
    // kInvalidArgument for a bad address or a non-loopback host without a token;
    // kIoError if the address cannot be bound.
    Result<int> start();
    // Stops accepting connections and waits for the requests in flight.
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Splits "HOST:PORT" ("[::1]:PORT" for IPv6).
Result<std::pair<std::string, int>> parse_addr(const std::string& addr);

}  // namespace stateroot::tools
