// The HTTP server: JSON-RPC on POST /, the REST mirrors on GET.
//
// `threads` event loops own the connections: each accepts, reads, parses, answers and
// writes its own, all non-blocking, so a client that is slow, idle or hostile costs a
// buffer and a slot, never a thread. A request is answered on its loop once it has
// arrived whole (the Rpc bounds every request's answer). Every resource is bounded:
//   - connections: at most `max_connections` (plus one per loop); a new one beyond that
//     evicts the one that has been waiting longest for request bytes (idle or slow), so
//     a flood of idle or slow connections cannot lock out well-behaved clients. Out of
//     file descriptors, a new connection evicts in the same way; with none to evict it
//     is accepted and closed at once (a descriptor is kept in reserve for that);
//   - time: a request must arrive whole within `request_timeout_ms` of its first byte
//     (else 408), an idle keep-alive connection is closed after `idle_timeout_ms`, and a
//     client taking an answer must take 64 KiB of it (or the rest) per
//     `request_timeout_ms`, however long the answer;
//   - memory: request heads are at most `max_head` bytes (else 431), bodies at most
//     `max_body` (else 413), the body bytes received and not yet answered, all
//     connections together, at most `max_buffered` (else 503), and the answers to one
//     request (a batch's together) at most `max_answer` (calls beyond it get JSON-RPC
//     error -32000);
//   - threads: `threads` loops, fixed at start.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "rpc.hpp"

namespace stateroot::tools {

struct ServerOptions {
    std::string addr = "127.0.0.1:8080";  // HOST:PORT; port 0 picks a free one
    std::string token;                   // required for a non-loopback host
    std::size_t threads = 8;             // event loops, each answering its connections
    std::size_t max_body = 1u << 20;     // larger bodies get HTTP 413
    std::size_t max_head = 16u << 10;    // request line and headers; larger get HTTP 431
    std::size_t max_connections = 1024;
    std::size_t max_buffered = 64u << 20;  // bodies being received, all connections together
    std::size_t max_answer = Rpc::kMaxAnswer;  // the answers to one request (a batch's together)
    std::uint64_t request_timeout_ms = 10'000;
    std::uint64_t idle_timeout_ms = 60'000;
};

// What the server has done with connections since it started.
struct ServerStats {
    std::uint64_t accepted = 0;
    std::uint64_t open = 0;
    std::uint64_t evicted = 0;    // closed to admit a new connection (at the limit, or out of fds)
    std::uint64_t timed_out = 0;  // requests that did not arrive, or answers not taken, in time
    std::uint64_t rejected = 0;   // requests the server refused: 400, 411, 413, 431, 503 or 505
    std::uint64_t shed = 0;       // accepted and closed at once: out of descriptors, none to evict
};

class HttpServer {
public:
    HttpServer(Rpc& rpc, ServerOptions options);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds and starts serving on background threads. Returns the port bound.
    // kInvalidArgument for a bad address or a non-loopback host without a token;
    // kIoError if the address cannot be bound.
    Result<int> start();
    // Stops accepting connections (those not yet accepted stay in the backlog until the
    // server is destroyed), finishes sending the answers being sent (each within the
    // timeout above), and closes every other connection, one with a request partly
    // received included. Returns once every loop has ended; calling it again does nothing.
    void stop();
    ServerStats stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Splits "HOST:PORT" ("[::1]:PORT" for IPv6).
Result<std::pair<std::string, int>> parse_addr(const std::string& addr);
// The reverse: "HOST:PORT", with an IPv6 host in brackets, as parse_addr and URLs take it.
std::string format_addr(const std::string& host, int port);

}  // namespace stateroot::tools
