#include "server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

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

std::string format_addr(const std::string& host, int port) {
    return host.find(':') == std::string::npos ? fmt::format("{}:{}", host, port) : fmt::format("[{}]:{}", host, port);
}

namespace {

using Clock = std::chrono::steady_clock;

bool loopback(const std::string& host) { return host == "127.0.0.1" || host == "localhost" || host == "::1"; }

const char* reason(int status) {
    switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 204: return "No Content";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 411: return "Length Required";
        case 413: return "Payload Too Large";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 503: return "Service Unavailable";
        case 505: return "HTTP Version Not Supported";
        default: return "Status";
    }
}

// The answer's bytes; for a HEAD request (`with_body` false), the same head alone.
std::string render(const HttpAnswer& a, bool keep_alive, bool with_body = true) {
    std::string out = fmt::format("HTTP/1.1 {} {}\r\nConnection: {}\r\n", a.status, reason(a.status),
                                  keep_alive ? "keep-alive" : "close");
    if (a.status == 405) out += fmt::format("Allow: {}\r\n", a.allow);
    if (a.status == 401) out += "WWW-Authenticate: Bearer\r\n";
    if (a.status == 204) return out + "\r\n";
    out += fmt::format("Content-Type: {}\r\nContent-Length: {}\r\n\r\n", a.content_type, a.body.size());
    return with_body ? out + a.body : out;
}

HttpAnswer error_answer(int status, std::string_view message) {
    HttpAnswer a;
    a.status = status;
    a.body = fmt::format(R"({{"error":{{"code":{},"message":"{}"}}}})", status, message);
    return a;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Percent-decoding; in a query, '+' is a space too.
std::string url_decode(std::string_view s, bool query) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
            i += 2;
        } else if (query && s[i] == '+') {
            out += ' ';
        } else {
            out += s[i];
        }
    }
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(x) == std::tolower(y); });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Whether an Authorization value is "Bearer TOKEN" with `token` (the scheme in any case,
// RFC 9110 11.1). The token is compared without stopping at the first difference, so the
// time taken does not tell a client how much of a guess was right.
bool bearer_matches(std::string_view authorization, std::string_view token) {
    const auto sp = authorization.find(' ');
    if (sp == std::string_view::npos || !iequals(authorization.substr(0, sp), "Bearer")) {
        return false;
    }
    const std::string_view given = trim(authorization.substr(sp + 1));
    if (given.size() != token.size()) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < token.size(); ++i) {
        diff |= static_cast<unsigned char>(given[i] ^ token[i]);
    }
    return diff == 0;
}

// A request as the workers see it.
struct Request {
    std::string method;
    std::string path;
    QueryParams query;
    std::string authorization;
    std::string body;
    bool keep_alive = true;
};

// The parts of a request head the server acts on. Returns the HTTP status to refuse
// it with, or 0.
struct Head {
    Request request;
    std::size_t content_length = 0;
    bool expect_continue = false;
};

int parse_head(std::string_view text, std::size_t max_body, Head& head) {
    const auto line_end = text.find("\r\n");
    const std::string_view line = text.substr(0, line_end);
    const auto sp1 = line.find(' ');
    const auto sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return 400;
    const std::string_view version = line.substr(sp2 + 1);
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return version.starts_with("HTTP/") ? 505 : 400;
    const bool http11 = version == "HTTP/1.1";
    head.request.keep_alive = http11;
    head.request.method = std::string(line.substr(0, sp1));
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    // The absolute form a client sends through a proxy (RFC 9112 3.2.2): its path.
    for (std::string_view scheme : {"http://", "https://"}) {
        if (target.size() >= scheme.size() && iequals(target.substr(0, scheme.size()), scheme)) {
            const auto slash = target.find_first_of("/?", scheme.size());
            target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
            if (target.front() == '?') return 400;  // a query with no path: not a form we serve
            break;
        }
    }
    if (target.empty() || target.front() != '/') return 400;
    const auto q = target.find('?');
    head.request.path = url_decode(target.substr(0, q), false);
    if (q != std::string_view::npos) {
        std::string_view rest = target.substr(q + 1);
        while (!rest.empty()) {
            const auto amp = rest.find('&');
            const std::string_view pair = rest.substr(0, amp);
            const auto eq = pair.find('=');
            if (!pair.empty()) {
                head.request.query.emplace_back(url_decode(pair.substr(0, eq), true),
                                                eq == std::string_view::npos
                                                    ? std::string()
                                                    : url_decode(pair.substr(eq + 1), true));
            }
            if (amp == std::string_view::npos) break;
            rest.remove_prefix(amp + 1);
        }
    }
    bool has_length = false;
    bool close = false, keep_alive = false;  // Connection options, over every Connection field
    std::size_t pos = line_end + 2;
    while (pos < text.size()) {
        const auto end = text.find("\r\n", pos);
        const std::string_view field = text.substr(pos, end - pos);
        pos = end == std::string_view::npos ? text.size() : end + 2;
        if (field.empty()) break;
        const auto colon = field.find(':');
        if (colon == std::string_view::npos || colon == 0) return 400;
        const std::string_view name = field.substr(0, colon);
        // RFC 9112 5.1: whitespace before the colon (or a folded line) must be refused, not
        // read past: a proxy that reads the header differently would frame another request.
        if (name.find_first_of(" \t") != std::string_view::npos) return 400;
        const std::string_view value = trim(field.substr(colon + 1));
        if (iequals(name, "Content-Length")) {
            std::size_t n = 0;
            const auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
            if (ec == std::errc::result_out_of_range) return 413;
            if (ec != std::errc() || p != value.data() + value.size()) return 400;
            if (has_length && n != head.content_length) return 400;  // conflicting lengths smuggle requests
            has_length = true;
            head.content_length = n;
        } else if (iequals(name, "Transfer-Encoding")) {
            return 411;  // bodies are small: a length is required, chunked encoding is not read
        } else if (iequals(name, "Connection")) {
            // A list of options (RFC 9110 7.6.1): "close, TE" closes too.
            for (std::string_view rest = value; !rest.empty();) {
                const auto comma = rest.find(',');
                const std::string_view option = trim(rest.substr(0, comma));
                close |= iequals(option, "close");
                keep_alive |= iequals(option, "keep-alive");
                rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
            }
        } else if (iequals(name, "Authorization")) {
            head.request.authorization = std::string(value);
        } else if (iequals(name, "Expect")) {
            // An HTTP/1.0 client does not know 100 Continue (RFC 9110 10.1.1).
            head.expect_continue = http11 && iequals(value, "100-continue");
        }
    }
    // A close anywhere wins (RFC 9112 9.6); keep-alive asks HTTP/1.0 for what 1.1 has.
    if (close) {
        head.request.keep_alive = false;
    } else if (keep_alive) {
        head.request.keep_alive = true;
    }
    if (head.content_length > max_body) return 413;
    return 0;
}

}  // namespace

// What the event loops share.
struct HttpServer::Impl {
    // Defined where Loop is complete: destroying `loops` needs it.
    Impl(Rpc& r, ServerOptions o);

    struct Loop;

    Rpc& rpc;
    ServerOptions options;
    int listen_fd = -1;
    std::vector<std::unique_ptr<Loop>> loops;
    std::atomic<bool> stopping{false};
    std::atomic<std::size_t> open{0};      // connections, all loops together
    std::atomic<std::size_t> buffered{0};  // body bytes reserved, all loops together
    // A descriptor kept open to be closed when the process has no other, so a connection
    // can still be accepted and closed rather than left waiting (see Loop::shed_one).
    std::mutex reserve_mu;
    int reserve_fd = -1;
    // Shortages of descriptors since the last warning, and when that was: one line per
    // interval, not one per connection turned away.
    std::atomic<std::uint64_t> descriptor_shortages{0};
    std::atomic<Clock::rep> descriptor_warned{0};

    mutable std::mutex stats_mu;
    ServerStats stats;

    void count(std::uint64_t ServerStats::*field) {
        std::lock_guard lock(stats_mu);
        ++(stats.*field);
    }

    void out_of_descriptors() {
        ++descriptor_shortages;
        const Clock::rep now = Clock::now().time_since_epoch().count();
        Clock::rep last = descriptor_warned.load();
        const Clock::rep interval =
            std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(10)).count();
        if (last != 0 && now - last < interval) return;
        if (!descriptor_warned.compare_exchange_strong(last, now)) return;
        spdlog::warn("server: out of file descriptors ({} times since the last warning): idle "
                     "connections are closed, or new ones refused; raise the limit (ulimit -n) "
                     "or lower rpc_max_connections",
                     descriptor_shortages.exchange(0));
    }

    Clock::duration request_timeout() const { return std::chrono::milliseconds(options.request_timeout_ms); }
    Clock::duration idle_timeout() const { return std::chrono::milliseconds(options.idle_timeout_ms); }

    // Reserves `n` bytes of the bodies-in-flight budget, or returns false.
    bool reserve(std::size_t n) {
        if (buffered.fetch_add(n) + n <= options.max_buffered) return true;
        buffered.fetch_sub(n);
        return false;
    }

    HttpAnswer handle(const Request& req) {
        if (!options.token.empty() && !bearer_matches(req.authorization, options.token)) {
            rpc.observe_refused("http_401");
            return error_answer(401, "missing or wrong bearer token");
        }
        // JSON-RPC is POST on "/"; the REST routes are read with GET (and HEAD).
        const bool rpc_path = req.path == "/";
        if (rpc_path && req.method == "POST") return rpc.post(req.body, options.max_answer);
        const bool read = req.method == "GET" || req.method == "HEAD";
        if (!rpc_path && (read || !Rpc::is_route(req.path)))
            return rpc.get(req.path, req.query);  // a 404 if unknown
        rpc.observe_refused("http_405");
        HttpAnswer a =
            error_answer(405, rpc_path ? "method not allowed: POST JSON-RPC to /"
                                       : "method not allowed: REST routes are read with GET");
        a.allow = rpc_path ? "POST" : "GET, HEAD";
        return a;
    }
};

// One event-loop thread: the connections it accepted, read, answered and written, all
// non-blocking. Requests are answered on the loop itself: each costs at most a bounded
// batch of lookups, and there is no hand-off to another thread to pay for.
struct HttpServer::Impl::Loop {
    explicit Loop(Impl& s) : shared(s) {}

    enum class State {
        kReading,   // waiting for (the rest of) a request
        kWriting,   // sending the answer
        kDraining,  // refused: the answer is sent, the rest of the input is read and dropped
    };

    struct Conn {
        int fd = -1;
        State state = State::kReading;
        std::string in;            // received bytes not yet consumed
        std::size_t scanned = 0;   // how far `in` is known to hold no end of head
        bool head_done = false;
        Head head;
        std::size_t head_len = 0;
        std::size_t reserved = 0;  // of `max_buffered`: the body bytes received so far
        std::string out;
        std::size_t sent = 0;
        std::size_t progress_mark = 0;  // of `out`, taken when the deadline last moved on
        bool keep_alive = true;
        bool out_watched = false;  // waiting for EPOLLOUT instead of input
        Clock::time_point deadline;
        Clock::time_point waiting_since;  // for eviction: since when it has owed us bytes
    };

    Impl& shared;
    const ServerOptions& options = shared.options;
    int epoll_fd = -1;
    std::thread thread;
    std::unordered_map<std::uint64_t, Conn> conns;
    // epoll user data: the listening socket is kListenTag; connections use a serial
    // number that is never reused (a closed descriptor's number is, so it cannot name a
    // connection in a batch of events).
    static constexpr std::uint64_t kListenTag = 0;
    std::uint64_t next_serial = kListenTag + 1;
    // While an answer is being sent, each this many bytes the client has taken move its
    // deadline on by request_timeout: a minimum rate, not a bound on the answer's size.
    static constexpr std::size_t kProgressStep = 64u << 10;
    // Whether the listening socket is in this loop's epoll set: it is taken out while
    // the process is out of descriptors, and for good when the server stops.
    bool listening = false;
    Clock::time_point listen_again;

    // Whether a client taking an answer has taken kProgressStep more bytes since its
    // deadline was last set; if so, sets the next one. Counted from what the peer has
    // acknowledged, not from what send() accepted: the kernel takes megabytes at once
    // and then wakes the loop only when a third of its buffer is free again, which a
    // steady reader may take longer than request_timeout to free.
    bool still_taking(Conn& c) {
        int unacknowledged = 0;
        if (::ioctl(c.fd, SIOCOUTQ, &unacknowledged) != 0) return false;
        const auto queued = static_cast<std::size_t>(std::max(unacknowledged, 0));
        const std::size_t taken = c.sent - std::min(c.sent, queued);
        if (taken < c.progress_mark + kProgressStep) return false;
        c.progress_mark = taken;
        c.deadline = Clock::now() + shared.request_timeout();
        return true;
    }

    void watch(std::uint64_t serial, Conn& c, std::uint32_t events, int op = EPOLL_CTL_MOD) {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = serial;
        epoll_ctl(epoll_fd, op, c.fd, &ev);
    }

    void close_conn(std::uint64_t serial) {
        auto it = conns.find(serial);
        if (it == conns.end()) return;
        shared.buffered -= it->second.reserved;
        ::close(it->second.fd);  // also removes it from the epoll set
        conns.erase(it);
        --shared.open;
        std::lock_guard lock(shared.stats_mu);
        --shared.stats.open;
    }

    // Admits new connections; at the limit, first closes the one of this loop that has
    // owed a request longest (idle, or slow to send it).
    void accept_all() {
        for (;;) {
            const int fd = ::accept4(shared.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno == EMFILE || errno == ENFILE) {
                    // The connection stays in the backlog and the (level-triggered) socket
                    // stays ready: returning now would wake this loop again at once. Make
                    // room as at max_connections, closing this loop's longest-waiting
                    // connection; with none, turn the newcomer away.
                    shared.out_of_descriptors();
                    if (evict_one()) continue;
                    const Shed shed = shed_one();
                    if (shed == Shed::kShed) continue;
                    if (shed == Shed::kFailed) stop_listening(std::chrono::milliseconds(100));
                }
                return;
            }
            // At the limit, the new connection replaces this loop's longest-waiting one.
            // If this loop has none, it is admitted over the limit: it then has one to
            // replace next time, so the total stays within max_connections + loops.
            if (shared.open >= options.max_connections) evict_one();
            const int one = 1;
            // Answers are small: without this, Nagle's algorithm and delayed ACKs add ~40 ms.
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            const std::uint64_t serial = next_serial++;
            Conn& c = conns[serial];
            c.fd = fd;
            c.deadline = Clock::now() + shared.idle_timeout();
            c.waiting_since = Clock::now();
            watch(serial, c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
            ++shared.open;
            std::lock_guard lock(shared.stats_mu);
            ++shared.stats.accepted;
            ++shared.stats.open;
        }
    }

    enum class Shed { kShed, kNonePending, kFailed };

    // Accepts one pending connection and closes it at once, with the descriptor kept in
    // reserve for this: the client gets a closed connection rather than a wait.
    Shed shed_one() {
        std::lock_guard lock(shared.reserve_mu);
        if (shared.reserve_fd < 0) shared.reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (shared.reserve_fd < 0) return Shed::kFailed;
        ::close(shared.reserve_fd);
        const int fd = ::accept4(shared.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        const int why = errno;
        if (fd >= 0) ::close(fd);
        // Another thread may take the freed number first; then there is no reserve until
        // a later shortage finds one free.
        shared.reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            shared.count(&ServerStats::shed);
            return Shed::kShed;
        }
        return why == EAGAIN || why == EWOULDBLOCK ? Shed::kNonePending : Shed::kFailed;
    }

    // Takes the listening socket out of this loop's epoll set until `pause` has passed;
    // once the server stops, for good.
    void stop_listening(Clock::duration pause) {
        if (!listening) return;
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, shared.listen_fd, nullptr);
        listening = false;
        listen_again = Clock::now() + pause;
    }

    // Puts the listening socket (back) into this loop's epoll set; false if it cannot.
    bool listen() {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLEXCLUSIVE;
        ev.data.u64 = kListenTag;
        listening = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, shared.listen_fd, &ev) == 0;
        return listening;
    }

    bool evict_one() {
        std::uint64_t victim = 0;
        Clock::time_point oldest = Clock::time_point::max();
        for (const auto& [serial, c] : conns) {
            if (c.state != State::kWriting && c.waiting_since < oldest) {
                oldest = c.waiting_since;
                victim = serial;
            }
        }
        if (victim == 0) return false;
        close_conn(victim);
        shared.count(&ServerStats::evicted);
        return true;
    }

    // Sends what can be sent now; returns false if the connection was closed.
    bool flush(std::uint64_t serial, Conn& c) {
        while (c.sent < c.out.size()) {
            const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
            if (n > 0) {
                c.sent += static_cast<std::size_t>(n);
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                watch(serial, c, EPOLLOUT);
                c.out_watched = true;
                return true;
            } else {
                close_conn(serial);
                return false;
            }
        }
        c.out.clear();
        c.sent = 0;
        if (c.state == State::kDraining) {
            ::shutdown(c.fd, SHUT_WR);
            c.deadline = Clock::now() + std::chrono::seconds(2);
            watch(serial, c, EPOLLIN | EPOLLRDHUP);
            c.out_watched = false;
            return true;
        }
        if (!c.keep_alive || shared.stopping) {
            close_conn(serial);
            return false;
        }
        c.state = State::kReading;
        c.deadline = Clock::now() + (c.in.empty() ? shared.idle_timeout() : shared.request_timeout());
        c.waiting_since = Clock::now();
        // An answer sent at once never changed what the socket is watched for: no
        // epoll_ctl per request on the common path.
        if (c.out_watched) {
            watch(serial, c, EPOLLIN | EPOLLRDHUP);
            c.out_watched = false;
        }
        return parse(serial, c);  // a pipelined request may already be here
    }

    // Answers from the loop itself (a request it refuses) and closes after; the rest of
    // the input is drained so the peer reads the answer rather than a reset.
    bool refuse(std::uint64_t serial, Conn& c, int status, std::string_view message) {
        shared.count(&ServerStats::rejected);
        shared.buffered -= c.reserved;
        c.reserved = 0;
        c.in.clear();
        c.state = State::kDraining;
        c.keep_alive = false;
        c.out = render(error_answer(status, message), false);
        c.sent = 0;
        c.progress_mark = 0;
        c.deadline = Clock::now() + shared.request_timeout();
        return flush(serial, c);
    }

    // Answers the complete requests in `in`, if any. Returns false if the connection
    // was closed.
    bool parse(std::uint64_t serial, Conn& c) {
        if (!c.head_done) {
            const std::size_t from = c.scanned >= 3 ? c.scanned - 3 : 0;
            const auto end = c.in.find("\r\n\r\n", from);
            // A line ended by LF alone (`printf 'GET / HTTP/1.0\n\n'`) would never end the
            // head: refused at once (RFC 9112 2.2 allows either), not after the timeout.
            const std::size_t head_end = end == std::string::npos ? c.in.size() : end + 4;
            for (auto lf = c.in.find('\n', c.scanned); lf < head_end; lf = c.in.find('\n', lf + 1)) {
                if (lf == 0 || c.in[lf - 1] != '\r') return refuse(serial, c, 400, "malformed request: a line ends in LF without CR");
            }
            if (end == std::string::npos) {
                c.scanned = c.in.size();
                if (c.in.size() > options.max_head) return refuse(serial, c, 431, "request head too large");
                return true;
            }
            if (end + 4 > options.max_head) return refuse(serial, c, 431, "request head too large");
            c.head = Head{};
            if (const int status = parse_head(std::string_view(c.in).substr(0, end + 4), options.max_body, c.head)) {
                const char* what = status == 413   ? "request body too large"
                                   : status == 411 ? "a Content-Length is required"
                                   : status == 505 ? "HTTP version not supported"
                                                   : "malformed request";
                return refuse(serial, c, status, what);
            }
            c.head_done = true;
            c.head_len = end + 4;
            const bool body_pending = c.in.size() < c.head_len + c.head.content_length;
            if (c.head.expect_continue && body_pending) {
                // Best effort: a client that sends its body anyway loses nothing.
                const std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
                (void)::send(c.fd, cont.data(), cont.size(), MSG_NOSIGNAL);
            }
        }
        // The budget holds the body bytes received, not those announced: a head that
        // announces a body and sends none costs nothing, so idle heads cannot use it up.
        const std::size_t arrived = std::min(c.in.size() - c.head_len, c.head.content_length);
        if (arrived > c.reserved) {
            if (!shared.reserve(arrived - c.reserved)) {
                return refuse(serial, c, 503, "server busy: too many request bodies in flight");
            }
            c.reserved = arrived;
        }
        if (c.in.size() < c.head_len + c.head.content_length) return true;
        Request req = std::move(c.head.request);
        req.body = c.in.substr(c.head_len, c.head.content_length);
        c.in.erase(0, c.head_len + c.head.content_length);
        c.scanned = 0;
        c.head_done = false;
        HttpAnswer answer;
        try {
            answer = shared.handle(req);
        } catch (const std::exception& e) {
            spdlog::error("server: {} {}: {}", req.method, req.path, e.what());
            answer = error_answer(500, "internal error");
        }
        shared.buffered -= c.reserved;
        c.reserved = 0;
        c.keep_alive = req.keep_alive && !shared.stopping;
        c.out = render(answer, c.keep_alive, req.method != "HEAD");
        c.sent = 0;
        c.progress_mark = 0;
        c.state = State::kWriting;
        c.deadline = Clock::now() + shared.request_timeout();
        return flush(serial, c);
    }

    void on_event(std::uint64_t serial, std::uint32_t events) {
        auto it = conns.find(serial);
        if (it == conns.end()) return;
        Conn& c = it->second;
        if (!c.out.empty()) {  // an answer is being sent
            if (events & (EPOLLERR | EPOLLHUP)) {
                close_conn(serial);
            } else if (events & EPOLLOUT) {
                flush(serial, c);
            }
            return;
        }
        // Reading or draining.
        char buf[64 << 10];
        // At most 1 MiB per event, so one fast sender cannot hold the loop; the rest
        // is read on the next round (the events are level-triggered).
        for (int round = 0; round < 16; ++round) {
            const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
            if (n > 0) {
                if (c.state == State::kDraining) continue;
                if (c.in.empty()) {
                    c.deadline = Clock::now() + shared.request_timeout();
                    c.waiting_since = Clock::now();
                }
                c.in.append(buf, static_cast<std::size_t>(n));
                if (!parse(serial, c)) return;
                if (c.state != State::kReading) return;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return;
            } else {
                // The peer closed or reset. Requests it sent before closing its side
                // (a half-close) were answered above, as they arrived.
                close_conn(serial);
                return;
            }
        }
    }

    void sweep() {
        const auto now = Clock::now();
        std::vector<std::uint64_t> expired;
        for (auto& [serial, c] : conns) {
            if (now < c.deadline) continue;
            if (c.state == State::kWriting && still_taking(c)) continue;
            expired.push_back(serial);
        }
        for (const std::uint64_t serial : expired) {
            Conn& c = conns.at(serial);
            if (c.state == State::kReading && !c.in.empty()) {
                shared.count(&ServerStats::timed_out);
                // The answer is best effort: a client this slow may not read it either.
                const std::string answer = render(error_answer(408, "request not received in time"), false);
                (void)::send(c.fd, answer.data(), answer.size(), MSG_NOSIGNAL);
            } else if (c.state == State::kWriting) {
                shared.count(&ServerStats::timed_out);
            }
            close_conn(serial);
        }
    }

    void run() {
        epoll_event events[256];
        auto next_sweep = Clock::now();
        for (;;) {
            if (shared.stopping) {
                // New connections stay in the backlog: the socket would wake the loop at
                // once, again and again, while the answers being sent finish.
                stop_listening(Clock::duration::zero());
                // Close what waits for input; let the answers being sent finish.
                std::vector<std::uint64_t> idle;
                for (const auto& [serial, c] : conns) {
                    if (c.state != State::kWriting) idle.push_back(serial);
                }
                for (const std::uint64_t serial : idle) close_conn(serial);
                if (conns.empty()) return;
            }
            const int n = ::epoll_wait(epoll_fd, events, 256, 100);
            for (int i = 0; i < n; ++i) {
                const std::uint64_t tag = events[i].data.u64;
                // Out of memory while serving one connection ends that connection,
                // not the process (a request's own errors are answered in handle()).
                try {
                    if (tag == kListenTag) {
                        if (!shared.stopping) accept_all();
                    } else {
                        on_event(tag, events[i].events);
                    }
                } catch (const std::exception& e) {
                    spdlog::error("server: {}", e.what());
                    if (tag != kListenTag) close_conn(tag);
                }
            }
            if (!listening && !shared.stopping && Clock::now() >= listen_again && !listen()) {
                listen_again = Clock::now() + std::chrono::milliseconds(100);
            }
            if (Clock::now() >= next_sweep) {
                sweep();
                next_sweep = Clock::now() + std::chrono::milliseconds(100);
            }
        }
    }
};

HttpServer::Impl::Impl(Rpc& r, ServerOptions o) : rpc(r), options(std::move(o)) {}

HttpServer::HttpServer(Rpc& rpc, ServerOptions options)
    : impl_(std::make_unique<Impl>(rpc, std::move(options))) {}

HttpServer::~HttpServer() {
    stop();
    for (auto& loop : impl_->loops) {
        if (loop->epoll_fd >= 0) ::close(loop->epoll_fd);
    }
    if (impl_->listen_fd >= 0) ::close(impl_->listen_fd);
    if (impl_->reserve_fd >= 0) ::close(impl_->reserve_fd);
}

Result<int> HttpServer::start() {
    auto addr = parse_addr(impl_->options.addr);
    if (!addr) return std::unexpected(addr.error());
    const auto& [host, port] = *addr;
    if (!loopback(host) && impl_->options.token.empty()) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("binding {} (not a loopback address) requires --rpc-token", impl_->options.addr));
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found); rc != 0) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("cannot resolve {}: {}", impl_->options.addr, gai_strerror(rc)));
    }
    int fd = -1;
    std::string why;
    for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
        fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        const int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
            why = std::strerror(errno);
            ::close(fd);
            fd = -1;
        }
    }
    ::freeaddrinfo(found);
    if (fd < 0) return make_error(ErrorCode::kIoError, fmt::format("cannot bind {}: {}", impl_->options.addr, why));
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
    const int bound_port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                             : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

    Impl& s = *impl_;
    s.options.max_connections = std::max<std::size_t>(1, s.options.max_connections);
    s.listen_fd = fd;
    // Every loop waits on the listening socket; EPOLLEXCLUSIVE wakes one of them per
    // new connection, so connections spread over the loops that are idle.
    const std::size_t threads = std::max<std::size_t>(1, s.options.threads);
    for (std::size_t i = 0; i < threads; ++i) {
        auto loop = std::make_unique<Impl::Loop>(s);
        loop->epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
        if (loop->epoll_fd < 0 || !loop->listen()) {
            return make_error(ErrorCode::kIoError, fmt::format("server: {}", std::strerror(errno)));
        }
        s.loops.push_back(std::move(loop));
    }
    s.reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (auto& loop : s.loops) {
        loop->thread = std::thread([l = loop.get()] {
            pthread_setname_np(pthread_self(), "stateroot:http");
            l->run();
        });
    }
    return bound_port;
}

void HttpServer::stop() {
    Impl& s = *impl_;
    s.stopping = true;
    for (auto& loop : s.loops) {
        if (loop->thread.joinable()) loop->thread.join();
        for (auto& [serial, c] : loop->conns) ::close(c.fd);
        loop->conns.clear();
    }
}

ServerStats HttpServer::stats() const {
    std::lock_guard lock(impl_->stats_mu);
    return impl_->stats;
}

}  // namespace stateroot::tools
