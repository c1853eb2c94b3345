// Hostile requests against the query server on loopback: each gets a bounded-cost answer
// or is dropped, threads and memory stay bounded, and a well-behaved client keeps being
// served throughout.
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <limits>
#include <thread>

#include "process.hpp"
#include "rpc.hpp"
#include "server.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::tools;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Sanitizer builds run several times slower; the time bounds scale with them.
#if defined(__has_feature)
#define STATEROOT_HAS_FEATURE(x) __has_feature(x)
#else
#define STATEROOT_HAS_FEATURE(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || STATEROOT_HAS_FEATURE(address_sanitizer) || \
    STATEROOT_HAS_FEATURE(thread_sanitizer)
constexpr double kSlow = 10;
#else
constexpr double kSlow = 1;
#endif

namespace {

std::unique_ptr<engine::Engine> small_db(const std::string& dir) {
    auto e = engine::Engine::open(dir);
    REQUIRE(e);
    for (std::uint64_t h = 0; h < 3; ++h) {
        engine::Changes c;
        c.height = h;
        c.puts.emplace_back(Bytes{0x01, 0x02}, Bytes{static_cast<std::uint8_t>(h + 1)});
        c.puts.emplace_back(Bytes{static_cast<std::uint8_t>(0x10 + h)}, Bytes{0xaa});
        REQUIRE((*e)->apply(c));
    }
    return std::move(*e);
}

// small_db, with one more height (3) whose changes answer `megabytes` MiB of JSON.
std::unique_ptr<engine::Engine> big_db(const std::string& dir, std::size_t megabytes) {
    auto e = small_db(dir);
    engine::Changes c;
    c.height = 3;
    for (std::size_t i = 0; i < megabytes; ++i) {
        c.puts.emplace_back(Bytes{0x20, static_cast<std::uint8_t>(i)}, Bytes(512u << 10, static_cast<std::uint8_t>(i)));
    }
    REQUIRE(e->apply(c));
    return e;
}

struct Served {
    test::TempDir dir;
    std::unique_ptr<engine::Engine> engine;
    EngineSource source{*engine};
    Metrics metrics;
    Rpc rpc{source, metrics};
    HttpServer server;
    int port = 0;
    explicit Served(ServerOptions o = {}, std::size_t big_megabytes = 0)
        : engine(big_megabytes ? big_db(dir.str(), big_megabytes) : small_db(dir.str())),
          server(rpc, (o.addr = "127.0.0.1:0", o)) {
        auto p = server.start();
        REQUIRE(p);
        port = *p;
    }
};

// A raw TCP connection, for the bytes no HTTP client library would send.
class Raw {
public:
    // A `receive_buffer` (bytes) other than 0 fixes the socket's receive buffer, so the
    // kernel does not take an answer faster than the test reads it.
    explicit Raw(int port, int receive_buffer = 0) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        if (receive_buffer > 0) {
            REQUIRE(::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer) == 0);
        }
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    ~Raw() { ::close(fd_); }
    Raw(const Raw&) = delete;
    Raw& operator=(const Raw&) = delete;

    void shutdown_write() { ::shutdown(fd_, SHUT_WR); }

    // False once the server has closed or reset the connection.
    bool send(std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n <= 0) return false;
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Everything the server sends until it closes, or until `timeout`.
    struct Read {
        std::string bytes;
        bool closed = false;
    };
    Read read_until_close(std::chrono::milliseconds timeout) {
        return read_paced(std::numeric_limits<std::size_t>::max(), timeout);
    }

    // One answer (head and Content-Length body), waiting at most `timeout`.
    std::string read_answer(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
        const auto until = Clock::now() + timeout;
        char buf[64 << 10];
        for (;;) {
            const auto head_end = pending_.find("\r\n\r\n");
            if (head_end != std::string::npos) {
                std::size_t length = 0;
                if (const auto at = pending_.find("Content-Length: "); at != std::string::npos && at < head_end) {
                    length = std::stoull(pending_.substr(at + 16));
                }
                if (pending_.size() >= head_end + 4 + length) {
                    std::string answer = pending_.substr(0, head_end + 4 + length);
                    pending_.erase(0, answer.size());
                    return answer;
                }
            }
            if (Clock::now() >= until) return {};
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) return {};
            pending_.append(buf, static_cast<std::size_t>(n));
        }
    }

    // Reads at most `rate` bytes per second until the server closes or `timeout`.
    Read read_paced(std::size_t rate, std::chrono::milliseconds timeout) {
        Read r;
        const auto start = Clock::now();
        char buf[16 << 10];
        while (Clock::now() < start + timeout) {
            const double allowed = std::chrono::duration<double>(Clock::now() - start).count() * static_cast<double>(rate);
            if (rate != std::numeric_limits<std::size_t>::max() && static_cast<double>(r.bytes.size()) >= allowed) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
                continue;
            }
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) {
                r.closed = true;
                break;
            }
            r.bytes.append(buf, static_cast<std::size_t>(n));
        }
        return r;
    }

private:
    int fd_ = -1;
    std::string pending_;
};

int status_of(const std::string& answer) {
    return answer.size() >= 12 && answer.starts_with("HTTP/1.1 ") ? std::stoi(answer.substr(9, 3)) : 0;
}

std::string body_of(const std::string& answer) {
    const auto at = answer.find("\r\n\r\n");
    return at == std::string::npos ? std::string() : answer.substr(at + 4);
}

std::string post_head(std::size_t length) {
    return fmt::format("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", length);
}

const std::string kHeight = R"({"jsonrpc":"2.0","method":"stateroot_height","id":1})";

// A well-behaved client, on a new connection: answered correctly and promptly.
void served_promptly(const Served& s) {
    httplib::Client c("127.0.0.1", s.port);
    c.set_connection_timeout(2);
    c.set_read_timeout(2);
    const auto t = Clock::now();
    auto r = c.Post("/", kHeight, "application/json");
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json::parse(r->body)["result"] == *s.engine->tip());
    CHECK(static_cast<double>(ms) < 500 * kSlow);
}

// A JSON-RPC POST on its own connection: the parsed answer and the time it took.
std::pair<json, double> timed_call(const Served& s, const std::string& body) {
    Raw raw(s.port);
    const auto t = Clock::now();
    REQUIRE(raw.send(post_head(body.size()) + body));
    const std::string answer = raw.read_answer();
    const double seconds = std::chrono::duration<double>(Clock::now() - t).count();
    REQUIRE(status_of(answer) == 200);
    return {json::parse(body_of(answer)), seconds};
}

std::size_t threads_of_process() {
    return static_cast<std::size_t>(
        std::distance(std::filesystem::directory_iterator("/proc/self/task"), std::filesystem::directory_iterator{}));
}

std::uint64_t rss_kib() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6));
    }
    return 0;
}

// Room for the test's own ends of many connections as well as the server's.
void raise_fd_limit() {
    rlimit l{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &l) == 0);
    l.rlim_cur = std::min<rlim_t>(l.rlim_max, 8192);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &l) == 0);
    REQUIRE(l.rlim_cur >= 4096);
}

}  // namespace

TEST_CASE("http: malformed and oversize requests get their status and a closed connection", "[server][hostile]") {
    Served s;
    const std::string long_line(20'000, 'a');
    const struct {
        std::string what;
        std::string bytes;
        int status;
    } cases[] = {
        {"a head that never ends within the limit", "GET /" + long_line, 431},
        {"a header line over the limit", "GET / HTTP/1.1\r\nX-Long: " + long_line + "\r\n\r\n", 431},
        {"a URI over the limit", "GET /value/" + long_line + " HTTP/1.1\r\n\r\n", 431},
        {"a body over 1 MiB, refused before it is sent", post_head((1u << 20) + 1), 413},
        {"a length past 64 bits", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413},
        {"a negative length", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
        {"two different lengths", "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400},
        {"a chunked body", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411},
        {"no request line", "GARBAGE\r\n\r\n", 400},
        {"a target that is not a path", "GET value HTTP/1.1\r\n\r\n", 400},
        {"HTTP/2 in plain text", "GET / HTTP/2.0\r\n\r\n", 505},
        {"a header without a colon", "GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400},
        {"whitespace before a header's colon", "POST / HTTP/1.1\r\nContent-Length : 2\r\n\r\n{}", 400},
        {"a folded header line", "GET / HTTP/1.1\r\nX-A: 1\r\n X-B: 2\r\n\r\n", 400},
        {"binary noise", std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15), 400},
        {"lines ended by LF alone, at once rather than after the timeout", "GET /height HTTP/1.0\n\n", 400},
        {"a header line ended by LF alone", "GET /height HTTP/1.1\r\nHost: x\n\r\n", 400},
    };
    for (const auto& c : cases) {
        INFO(c.what);
        Raw raw(s.port);
        raw.send(c.bytes);  // the server may close before taking all of it
        const Raw::Read r = raw.read_until_close(std::chrono::milliseconds(3000));
        CHECK(status_of(r.bytes) == c.status);
        CHECK(json::parse(body_of(r.bytes))["error"]["code"] == c.status);
        CHECK(r.closed);
    }
    CHECK(s.server.stats().rejected == std::size(cases));
    served_promptly(s);

    // Not refused, but not served either: answered, and the connection stays usable.
    Raw raw(s.port);
    // "/" takes POST, the REST routes GET and HEAD: a 405 names them. A path that is
    // neither is not found, whatever the method.
    for (const auto& [request, allow] :
         {std::pair{"DELETE / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "POST"},
          std::pair{"GET / HTTP/1.1\r\n\r\n", "POST"},
          std::pair{"POST /height HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "GET, HEAD"},
          std::pair{"PUT /value/00 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "GET, HEAD"}}) {
        INFO(request);
        REQUIRE(raw.send(request));
        const std::string answer = raw.read_answer();
        CHECK(status_of(answer) == 405);
        CHECK(answer.find(fmt::format("\r\nAllow: {}\r\n", allow)) != std::string::npos);
    }
    for (const char* request : {"POST /elsewhere HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                                "PUT /elsewhere HTTP/1.1\r\nContent-Length: 0\r\n\r\n"}) {
        INFO(request);
        REQUIRE(raw.send(request));
        CHECK(status_of(raw.read_answer()) == 404);
    }
    REQUIRE(raw.send("GET /metrics HTTP/1.1\r\n\r\n"));
    CHECK(raw.read_answer().find(
              "stateroot_rpc_requests_total{method=\"http_405\",outcome=\"error\"} 4\n") !=
          std::string::npos);
    REQUIRE(raw.send(post_head(kHeight.size()) + kHeight));
    CHECK(status_of(raw.read_answer()) == 200);
}

TEST_CASE("http: HEAD, absolute targets, Connection lists, HTTP/1.0 expectations and 401 challenges as RFC 9110 has them",
          "[server]") {
    Served s;
    {
        // HEAD is GET without the body: the same status and Content-Length.
        Raw raw(s.port);
        REQUIRE(raw.send("GET /height HTTP/1.1\r\n\r\n"));
        const std::string got = raw.read_answer();
        REQUIRE(raw.send("HEAD /height HTTP/1.1\r\n\r\nGET /height HTTP/1.1\r\nConnection: close\r\n\r\n"));
        const Raw::Read both = raw.read_until_close(std::chrono::milliseconds(3000));
        const std::string head = got.substr(0, got.find("\r\n\r\n") + 4);
        CHECK(status_of(got) == 200);
        CHECK(both.bytes.starts_with(head));
        CHECK(both.bytes.substr(head.size()).starts_with("HTTP/1.1 200 OK\r\nConnection: close\r\n"));
        CHECK(both.closed);
    }
    {
        // The absolute form, as through a proxy, names the same route.
        Raw raw(s.port);
        REQUIRE(raw.send(fmt::format("GET http://127.0.0.1:{}/height HTTP/1.1\r\n\r\n", s.port)));
        const std::string answer = raw.read_answer();
        CHECK(status_of(answer) == 200);
        CHECK(json::parse(body_of(answer)).contains("height"));
    }
    {
        // Connection holds a list: "close" among other options closes, whatever follows.
        for (const char* fields : {"Connection: TE, close\r\n", "Connection: close, keep-alive\r\n",
                                   "Connection: close\r\nConnection: keep-alive\r\n"}) {
            INFO(fields);
            Raw raw(s.port);
            REQUIRE(raw.send(fmt::format("GET /height HTTP/1.1\r\n{}\r\n", fields)));
            const Raw::Read r = raw.read_until_close(std::chrono::milliseconds(3000));
            CHECK(status_of(r.bytes) == 200);
            CHECK(r.bytes.find("Connection: close\r\n") != std::string::npos);
            CHECK(r.closed);
        }
    }
    {
        // No 100 Continue for an HTTP/1.0 client, which would take it for the answer.
        Raw raw(s.port);
        REQUIRE(raw.send(fmt::format("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                                     kHeight.size())));
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        REQUIRE(raw.send(kHeight));
        const Raw::Read r = raw.read_until_close(std::chrono::milliseconds(3000));
        CHECK(r.bytes.starts_with("HTTP/1.1 200 OK\r\n"));
    }
    ServerOptions guarded;
    guarded.token = "s3cret";
    Served t(guarded);
    Raw raw(t.port);
    REQUIRE(raw.send("GET /height HTTP/1.1\r\n\r\n"));
    const std::string denied = raw.read_answer();
    CHECK(status_of(denied) == 401);
    CHECK(denied.find("\r\nWWW-Authenticate: Bearer\r\n") != std::string::npos);
}

TEST_CASE("http: pipelined requests are answered in order on one connection", "[server]") {
    Served s;
    Raw raw(s.port);
    std::string burst;
    for (int i = 0; i < 50; ++i) {
        const std::string body = fmt::format(R"({{"jsonrpc":"2.0","method":"stateroot_getroot","params":[{}],"id":{}}})", i % 3, i);
        burst += post_head(body.size()) + body;
    }
    burst += "GET /height HTTP/1.1\r\n\r\n";
    REQUIRE(raw.send(burst));
    auto v = s.engine->view();
    for (int i = 0; i < 50; ++i) {
        const std::string answer = raw.read_answer();
        REQUIRE(status_of(answer) == 200);
        const json j = json::parse(body_of(answer));
        CHECK(j["id"] == i);
        CHECK(j["result"] == v->root(static_cast<std::uint64_t>(i % 3))->hex());
    }
    CHECK(json::parse(body_of(raw.read_answer()))["height"] == 2);
    // HTTP/1.0 and Connection: close end the connection after the answer.
    REQUIRE(raw.send("GET /height HTTP/1.1\r\nConnection: close\r\n\r\n"));
    const Raw::Read last = raw.read_until_close(std::chrono::milliseconds(2000));
    CHECK(status_of(last.bytes) == 200);
    CHECK(last.closed);
    // A client that shuts its sending side after the request still gets the answer.
    Raw half(s.port);
    REQUIRE(half.send(post_head(kHeight.size()) + kHeight));
    half.shutdown_write();
    const Raw::Read answered = half.read_until_close(std::chrono::milliseconds(2000));
    CHECK(status_of(answered.bytes) == 200);
    CHECK(answered.closed);
    Raw old(s.port);
    REQUIRE(old.send("GET /height HTTP/1.0\r\n\r\n"));
    const Raw::Read r = old.read_until_close(std::chrono::milliseconds(2000));
    CHECK(status_of(r.bytes) == 200);
    CHECK(r.closed);
}

TEST_CASE("http: JSON nested 100,000 levels deep gets a parse error at bounded cost", "[server][hostile]") {
    Served s;
    const std::size_t depth = 100'000;
    const std::string arrays = std::string(depth, '[') + std::string(depth, ']');
    std::string objects;
    for (std::size_t i = 0; i < depth; ++i) objects += R"({"a":)";
    objects += "1" + std::string(depth, '}');
    const std::string unclosed = std::string(depth, '[');
    const std::string in_params = R"({"jsonrpc":"2.0","method":"stateroot_height","params":)" + arrays + R"(,"id":1})";
    const std::string in_id = R"({"jsonrpc":"2.0","method":"stateroot_height","id":)" + arrays + "}";
    const std::string in_string = R"({"jsonrpc":"2.0","method":"stateroot_height","id":")" + arrays + R"("})";
    for (const std::string* body : std::initializer_list<const std::string*>{&arrays, &objects, &unclosed, &in_params, &in_id}) {
        const auto [answer, seconds] = timed_call(s, *body);
        INFO(answer.dump().substr(0, 200));
        CHECK(answer["error"]["code"] == -32700);
        CHECK(answer["error"]["message"] == "parse error: nested deeper than 64 levels");
        CHECK(seconds < 0.5 * kSlow);
    }
    // Brackets inside a string are not nesting.
    const auto [answer, seconds] = timed_call(s, in_string);
    CHECK(answer["result"] == 2);
    CHECK(answer["id"] == arrays);
    served_promptly(s);
}

TEST_CASE("http: invalid UTF-8 gets an error in valid JSON", "[server][hostile]") {
    Served s;
    const std::string bad[] = {"\xff", "\xc3\x28", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"};
    for (std::size_t i = 0; i < std::size(bad); ++i) {
        const std::string& b = bad[i];
        INFO("sequence " << i);
        for (const std::string& body : {R"({"jsonrpc":"2.0","method":"stateroot_get)" + b + R"(","id":1})",
                                        R"({"jsonrpc":"2.0","method":"stateroot_get","params":[")" + b + R"(",1],"id":1})",
                                        R"({"jsonrpc":"2.0","method":"stateroot_height","id":")" + b + R"("})", b}) {
            const auto [answer, seconds] = timed_call(s, body);  // parses: the answer is valid JSON
            CHECK(answer["error"]["code"] == -32700);
            // The message quotes the bytes read, the invalid ones replaced by U+FFFD.
            CHECK(answer["error"]["message"].get<std::string>().find("\xef\xbf\xbd") != std::string::npos);
            CHECK(seconds < 0.5 * kSlow);
        }
        // On the REST routes, in the path and in the query.
        for (const std::string& target : {"/value/" + b, "/value/0102?height=" + b, "/root/" + b}) {
            Raw raw(s.port);
            REQUIRE(raw.send("GET " + target + " HTTP/1.1\r\n\r\n"));
            const std::string answer = raw.read_answer();
            CHECK(status_of(answer) == 400);
            const json j = json::parse(body_of(answer));
            CHECK_FALSE(j["error"]["message"].get<std::string>().empty());
        }
    }
    served_promptly(s);
}

TEST_CASE("http: huge batches are refused whole and the largest allowed is answered", "[server][hostile]") {
    Served s;
    auto batch = [](std::size_t n, const std::string& call) {
        std::string body = "[";
        for (std::size_t i = 0; i < n; ++i) body += (i ? "," : "") + call;
        return body + "]";
    };
    const std::string prove = R"({"jsonrpc":"2.0","method":"stateroot_prove","params":["0102",2],"id":1})";
    {
        const auto [answer, seconds] = timed_call(s, batch(Rpc::kMaxBatch + 1, kHeight));
        CHECK(answer["error"]["code"] == -32600);
        CHECK(answer["error"]["message"] == "invalid request: a batch of 1001 calls exceeds 1000");
    }
    {
        const auto [answer, seconds] = timed_call(s, batch(200'000, "1"));
        CHECK(answer["error"]["message"] == "invalid request: a batch of 200000 calls exceeds 1000");
        CHECK(seconds < 0.5 * kSlow);
    }
    {
        const auto [answer, seconds] = timed_call(s, batch(Rpc::kMaxBatch, prove));
        REQUIRE(answer.size() == Rpc::kMaxBatch);
        for (const json& a : answer) CHECK(a["result"]["root"] == s.engine->root().hex());
        CHECK(seconds < 2.0 * kSlow);
    }
    // Over the body limit: refused before it is read.
    Raw raw(s.port);
    raw.send(post_head(4u << 20) + batch(1000, prove));
    CHECK(status_of(raw.read_until_close(std::chrono::milliseconds(2000)).bytes) == 413);
    served_promptly(s);
}

TEST_CASE("http: very long keys are refused by their size and cost nothing", "[server][hostile]") {
    Served s;
    const std::string huge(900'000, 'a');  // 450,000 bytes as hex, within the body limit
    for (const std::string method : {"stateroot_get", "stateroot_prove"}) {
        const std::string body = fmt::format(R"({{"jsonrpc":"2.0","method":"{}","params":["{}",2],"id":1}})", method, huge);
        const auto [answer, seconds] = timed_call(s, body);
        CHECK(answer["error"]["code"] == -32602);
        const std::string message = answer["error"]["message"];
        CHECK(message.find("-byte limit") != std::string::npos);
        CHECK(message.size() < 300);  // the key is abbreviated, not echoed
        CHECK(seconds < 0.5 * kSlow);
    }
    // Odd length and non-hex keys are invalid params too.
    const auto [odd, odd_seconds] = timed_call(s, R"({"jsonrpc":"2.0","method":"stateroot_get","params":["abc",2],"id":1})");
    CHECK(odd["error"]["code"] == -32602);
    served_promptly(s);
}

TEST_CASE("http: slow clients that never finish a request are dropped and others are served", "[server][hostile]") {
    raise_fd_limit();
    ServerOptions o;
    o.request_timeout_ms = 1000;
    Served s(o);
    const std::size_t threads = threads_of_process();
    std::vector<std::unique_ptr<Raw>> slow;
    for (int i = 0; i < 300; ++i) {
        slow.push_back(std::make_unique<Raw>(s.port));
        // A third stop in the head, a third in the body, a third trickle a byte at a time.
        if (i % 3 == 0) REQUIRE(slow.back()->send("POST / HTTP/1.1\r\nContent-Le"));
        if (i % 3 == 1) REQUIRE(slow.back()->send(post_head(100) + "{\"jsonrpc\""));
        if (i % 3 == 2) REQUIRE(slow.back()->send("P"));
    }
    for (int round = 0; round < 5; ++round) {
        served_promptly(s);
        for (std::size_t i = 2; i < slow.size(); i += 3) slow[i]->send("O");  // still trickling
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(threads_of_process() == threads);
    // Past the deadline every slow client has its 408 and a closed connection.
    for (auto& raw : slow) {
        const Raw::Read r = raw->read_until_close(std::chrono::milliseconds(3000));
        CHECK(status_of(r.bytes) == 408);
        CHECK(r.closed);
    }
    const ServerStats st = s.server.stats();
    CHECK(st.timed_out == slow.size());
    CHECK(st.open <= 1);
    served_promptly(s);
}

TEST_CASE("http: many idle connections cost no thread and never lock out a client", "[server][hostile]") {
    raise_fd_limit();
    ServerOptions o;
    o.max_connections = 100;
    o.idle_timeout_ms = 1500;
    Served s(o);
    served_promptly(s);
    const std::size_t threads = threads_of_process();
    const std::uint64_t rss = rss_kib();
    std::vector<std::unique_ptr<Raw>> idle;
    for (int i = 0; i < 2000; ++i) idle.push_back(std::make_unique<Raw>(s.port));
    for (int round = 0; round < 5; ++round) served_promptly(s);
    CHECK(threads_of_process() == threads);
    const ServerStats st = s.server.stats();
    CHECK(st.open <= o.max_connections + o.threads);
    CHECK(st.evicted >= idle.size() - o.max_connections - o.threads);
    CHECK(rss_kib() < rss + 64 * 1024);
    // Idle connections are closed after the idle timeout.
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    CHECK(s.server.stats().open == 0);
    CHECK(idle.back()->read_until_close(std::chrono::milliseconds(500)).closed);
    served_promptly(s);
}

TEST_CASE("http: request bodies in flight are bounded together", "[server][hostile]") {
    ServerOptions o;
    o.max_buffered = 2'500'000;
    Served s(o);
    // Two clients send most of near-1 MiB bodies; a third, more than what is left.
    Raw a(s.port), b(s.port), c(s.port);
    REQUIRE(a.send(post_head(1'000'000) + std::string(999'000, ' ')));
    REQUIRE(b.send(post_head(1'000'000) + std::string(999'000, ' ')));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    c.send(post_head(1'000'000) + std::string(600'000, ' '));  // the server may close before taking all of it
    const Raw::Read r = c.read_until_close(std::chrono::milliseconds(2000));
    CHECK(status_of(r.bytes) == 503);
    CHECK(r.closed);
    served_promptly(s);  // a small body still fits
    // Once one of them finishes, its share is free again.
    REQUIRE(a.send(std::string(1'000'000 - 999'000 - kHeight.size(), ' ') + kHeight));
    CHECK(status_of(a.read_answer()) == 200);
    Raw d(s.port);
    REQUIRE(d.send(post_head(1'000'000) + std::string(1'000'000 - kHeight.size(), ' ') + kHeight));
    CHECK(status_of(d.read_answer()) == 200);
}

TEST_CASE("http: a long answer taken steadily is sent whole, however long it takes", "[server][hostile]") {
    ServerOptions o;
    o.request_timeout_ms = 300;
    Served s(o, 8);  // an 8 MiB answer
    const std::string body = R"({"jsonrpc":"2.0","method":"stateroot_getchanges","params":[3],"id":1})";
    Raw steady(s.port, 32 << 10);
    Raw stalled(s.port, 32 << 10);
    const std::string request =
        fmt::format("POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}", body.size(), body);
    REQUIRE(steady.send(request));
    REQUIRE(stalled.send(request));
    // About 4 MB/s: the answer takes several request timeouts to take (more than the
    // kernel buffers), but each timeout sees far more than 64 KiB of it taken.
    const Raw::Read r = steady.read_paced(4'000'000, std::chrono::milliseconds(10'000));
    REQUIRE(status_of(r.bytes) == 200);
    const auto at = r.bytes.find("Content-Length: ");
    REQUIRE(at != std::string::npos);
    const std::size_t length = std::stoull(r.bytes.substr(at + 16));
    CHECK(length > (8u << 20));
    REQUIRE(body_of(r.bytes).size() == length);
    const json answer = json::parse(body_of(r.bytes));
    CHECK(answer["result"]["puts"].size() == 8);
    std::string value;
    for (int i = 0; i < 512 << 10; ++i) value += "03";
    bool found = false;
    for (const json& put : answer["result"]["puts"]) found = found || (put[0] == "2003" && put[1] == value);
    CHECK(found);
    // A client that takes nothing is cut off after the timeout, its answer dropped.
    CHECK(s.server.stats().timed_out == 1);
    CHECK(stalled.read_until_close(std::chrono::milliseconds(5000)).closed);
}

TEST_CASE("http: heads announcing bodies they do not send hold none of the body budget", "[server][hostile]") {
    raise_fd_limit();
    Served s;  // 64 MiB for bodies in flight
    std::vector<std::unique_ptr<Raw>> heads;
    for (int i = 0; i < 80; ++i) {
        heads.push_back(std::make_unique<Raw>(s.port));
        REQUIRE(heads.back()->send(post_head(1u << 20)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    served_promptly(s);
    Raw d(s.port);
    REQUIRE(d.send(post_head(1'000'000) + std::string(1'000'000 - kHeight.size(), ' ') + kHeight));
    CHECK(status_of(d.read_answer()) == 200);
    CHECK(s.server.stats().rejected == 0);
}

TEST_CASE("http: the answers to one request are bounded together", "[server][hostile]") {
    ServerOptions o;
    o.max_answer = 2000;
    Served s(o, 1);  // height 3's changes answer 1 MiB
    const auto [big, seconds] =
        timed_call(s, R"({"jsonrpc":"2.0","method":"stateroot_getchanges","params":[3],"id":7})");
    CHECK(big["id"] == 7);
    CHECK(big["error"]["code"] == -32000);
    CHECK(big["error"]["message"].get<std::string>().starts_with("answer too large: "));
    CHECK(big["error"]["message"].get<std::string>().ends_with(" bytes, over the 2000 bytes left of this request's answer limit"));
    // In a batch, the answers that fit are given; each call after them gets -32000.
    json batch = json::array();
    for (int i = 0; i < 40; ++i) {
        batch.push_back({{"jsonrpc", "2.0"}, {"method", "stateroot_getroot"}, {"params", {i % 3}}, {"id", i}});
    }
    const auto [answers, batch_seconds] = timed_call(s, batch.dump());
    REQUIRE(answers.size() == 40);
    std::size_t answered = 0;
    while (answered < answers.size() && answers[answered].contains("result")) ++answered;
    CHECK(answered >= 10);
    CHECK(answered < 20);
    for (std::size_t i = 0; i < answers.size(); ++i) {
        CHECK(answers[i]["id"] == i);
        if (i >= answered) CHECK(answers[i]["error"]["code"] == -32000);
    }
    std::size_t results_size = 2;
    for (std::size_t i = 0; i < answered; ++i) results_size += answers[i].dump().size() + 1;
    CHECK(results_size <= 2000);
    // Small answers are still given, and the REST routes are not limited by it.
    CHECK(timed_call(s, R"({"jsonrpc":"2.0","method":"stateroot_height","id":1})").first["result"] == 3);
    served_promptly(s);
}

TEST_CASE("http: a stopping server does not spin on connections it will not accept", "[server]") {
    ServerOptions o;
    o.threads = 1;
    o.request_timeout_ms = 1500;
    Served s(o, 8);
    // An answer the client does not take keeps the loop draining until its timeout.
    const std::string body = R"({"jsonrpc":"2.0","method":"stateroot_getchanges","params":[3],"id":1})";
    Raw stalled(s.port, 32 << 10);
    REQUIRE(stalled.send(post_head(body.size()) + body));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::thread stopper([&] { s.server.stop(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    Raw late(s.port);  // its handshake is completed by the kernel; it waits in the backlog
    auto cpu_seconds = [] {
        timespec t{};
        ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
    };
    const double before = cpu_seconds();
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    const double used = cpu_seconds() - before;
    stopper.join();
    CHECK(used < 0.2 * kSlow);
    CHECK(s.server.stats().timed_out == 1);
    CHECK(s.server.stats().open == 0);
}

namespace {

// User and system CPU time a process has used.
double cpu_seconds_of(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
        if (i >= 14) ticks += std::stod(field);  // utime, stime
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace

TEST_CASE("http: out of file descriptors, the server neither spins nor floods its log and still serves",
          "[server][hostile]") {
#if defined(__SANITIZE_ADDRESS__)
    // UndefinedBehaviorSanitizer tests whether a vtable is readable through a pipe of its
    // own, which a process out of descriptors cannot open: it then reports every virtual
    // call as one on a bad object. So this runs in the plain and ThreadSanitizer builds.
    WARN("not run under AddressSanitizer and UndefinedBehaviorSanitizer");
    return;
#endif
    raise_fd_limit();
    test::TempDir dir;
    const std::string db = dir.sub("db"), out = dir.sub("out"), err = dir.sub("err");
    small_db(db);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // A limit the connections reach long before max_connections, as a common soft
        // limit of 1024 is reached with the default of 1024.
        rlimit l{};
        ::getrlimit(RLIMIT_NOFILE, &l);
        l.rlim_cur = 64;
        ::setrlimit(RLIMIT_NOFILE, &l);
        ::dup2(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), 1);
        ::dup2(::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), 2);
        ::execl(STATEROOT_BIN, STATEROOT_BIN, "serve", "--db", db.c_str(), "--rpc-addr", "127.0.0.1:0", "--rpc-threads",
                "1", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    struct Reaper {  // a failed check must not leave the server running
        pid_t pid;
        ~Reaper() {
            if (pid > 0) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, nullptr, 0);
            }
        }
    } reaper{pid};
    const int port = test::announced_port(out);
    std::vector<std::unique_ptr<Raw>> idle;
    for (int i = 0; i < 100; ++i) idle.push_back(std::make_unique<Raw>(port));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const double before = cpu_seconds_of(pid);
    for (int round = 0; round < 5; ++round) {
        httplib::Client c("127.0.0.1", port);
        c.set_connection_timeout(2);
        c.set_read_timeout(2);
        auto r = c.Get("/height");
        REQUIRE(r);
        CHECK(r->status == 200);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const double used = cpu_seconds_of(pid) - before;
    CHECK(used < 0.3 * kSlow);
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    reaper.pid = 0;
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    std::ifstream log(err);
    std::string line;
    int warnings = 0;
    while (std::getline(log, line)) warnings += line.find("out of file descriptors") != std::string::npos;
    CHECK(warnings >= 1);
    CHECK(warnings <= 2);
}
