#include "rpc.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <expected>

#include "stateroot/engine/json.hpp"
#include "stateroot/engine/proof.hpp"

namespace stateroot::tools {

using nlohmann::json;

namespace {

constexpr int kParseError = -32700;
constexpr int kInvalidRequest = -32600;
constexpr int kMethodNotFound = -32601;
constexpr int kInvalidParams = -32602;
constexpr int kInternalError = -32603;
constexpr int kHeightNotFound = -32001;
constexpr int kAnswerTooLarge = -32000;
constexpr std::size_t kMaxDepth = 64;

// An answer's text. Messages may quote the request, which may hold invalid UTF-8: such
// bytes become U+FFFD rather than failing the answer.
std::string text(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

struct RpcError {
    int code;
    std::string message;
};
using Answer = std::expected<json, RpcError>;

std::unexpected<RpcError> rpc_error(int code, std::string message) {
    return std::unexpected(RpcError{code, std::move(message)});
}

std::unexpected<RpcError> internal(const Error& e) { return rpc_error(kInternalError, "internal error: " + e.message); }

// An engine error as a JSON-RPC one: what the engine could not find (a height, or a
// pruned height's values, changes or nodes) is the client's -32001, not a server fault.
std::unexpected<RpcError> engine_error(const Error& e) {
    if (e.code == ErrorCode::kNotFound) return rpc_error(kHeightNotFound, e.message);
    return internal(e);
}

// Deepest nesting of arrays and objects in `text`, stopping once past `limit`: JSON
// nested deeper than any request needs is refused before it is parsed.
std::size_t nesting(std::string_view text, std::size_t limit) {
    std::size_t depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
            if (deepest > limit) break;
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return deepest;
}

// How an error names params[i]: "params[1] (height)", or for a REST route what the
// route took it from (`name`).
std::string param_name(std::size_t i, const char* what, std::string_view name) {
    return name.empty() ? fmt::format("params[{}] ({})", i, what) : std::string(name);
}

// A height parameter: a non-negative integer, a decimal string, "latest", or absent
// (latest). nullopt means latest.
std::expected<std::optional<std::uint64_t>, RpcError> height_param(const json& params, std::size_t i,
                                                                   std::string_view name = {}) {
    if (params.size() <= i || params[i].is_null()) return std::optional<std::uint64_t>();
    const json& v = params[i];
    if (v.is_number_unsigned()) return std::optional<std::uint64_t>(v.get<std::uint64_t>());
    if (v.is_string()) {
        const std::string& s = v.get_ref<const std::string&>();
        if (s == "latest") return std::optional<std::uint64_t>();
        std::uint64_t h = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), h);
        if (ec == std::errc() && end == s.data() + s.size() && !s.empty()) return std::optional<std::uint64_t>(h);
    }
    return rpc_error(kInvalidParams,
                     fmt::format("invalid params: {} must be a non-negative integer, a decimal string or \"latest\"",
                                 param_name(i, "height", name)));
}

std::expected<std::uint64_t, RpcError> resolve(const engine::View& view, std::optional<std::uint64_t> h) {
    if (!h && view.tip()) return *view.tip();
    // The same words as the CLI's (View::check_height).
    if (!view.tip() || !h || *h < *view.first() || *h > *view.tip()) {
        return rpc_error(
            kHeightNotFound,
            fmt::format("height {} not found ({})", h ? std::to_string(*h) : std::string("latest"),
                        engine::describe_heights(view.first(), view.tip())));
    }
    return *h;
}

std::expected<std::uint64_t, RpcError> height_at(const engine::View& view, const json& params, std::size_t i,
                                                 std::string_view name = {}) {
    auto h = height_param(params, i, name);
    if (!h) return std::unexpected(h.error());
    return resolve(view, *h);
}

// height_at(), for the methods that read a height's state (values, proofs, changes):
// those of a pruned height are gone, though its root and block hash stay.
std::expected<std::uint64_t, RpcError> state_height_at(const engine::View& view, const json& params,
                                                       std::size_t i) {
    auto height = height_at(view, params, i);
    if (height && view.pruned() && *height < *view.pruned()) {
        return rpc_error(kHeightNotFound,
                         fmt::format("height {} is pruned (values and proofs are kept for heights {}..{})",
                                     *height, *view.pruned(), *view.tip()));
    }
    return height;
}

std::expected<Bytes, RpcError> key_param(const json& params, std::size_t i, std::string_view name = {}) {
    const std::string what = param_name(i, "key", name);
    if (params.size() <= i) return rpc_error(kInvalidParams, fmt::format("invalid params: {} is required", what));
    const json& v = params[i];
    std::optional<Bytes> key;
    if (v.is_string()) key = from_hex(v.get_ref<const std::string&>());
    if (!key) return rpc_error(kInvalidParams, fmt::format("invalid params: {} must be a hex string", what));
    if (Status s = engine::check_key_size(*key); !s) {
        return rpc_error(kInvalidParams, fmt::format("invalid params: {}: {}", what, s.error().message));
    }
    return std::move(*key);
}

std::unexpected<RpcError> too_large(std::size_t size, std::size_t room) {
    return rpc_error(kAnswerTooLarge,
                     fmt::format("answer too large: {} bytes, over the {} bytes left of this request's answer limit",
                                 size, room));
}

// The methods (m_ and the name without its namespace). Each gets a view of one committed
// state, its (array) params, and how many bytes its answer may take: those whose answers
// may be large refuse before building one that would not fit.
using Handler = Answer (*)(engine::View&, const json&, std::size_t room);

Answer m_height(engine::View& v, const json&, std::size_t) {
    return v.tip() ? json(*v.tip()) : json(nullptr);
}

Answer m_getroot(engine::View& v, const json& p, std::size_t) {
    auto h = height_at(v, p, 0);
    if (!h) return std::unexpected(h.error());
    auto root = v.root(*h);
    if (!root) return engine_error(root.error());
    return root->hex();
}

Answer m_getblockhash(engine::View& v, const json& p, std::size_t) {
    auto h = height_at(v, p, 0);
    if (!h) return std::unexpected(h.error());
    auto rec = v.record(*h);
    if (!rec) return engine_error(rec.error());
    return rec->block_hash ? json(rec->block_hash->hex()) : json(nullptr);
}

Answer m_get(engine::View& v, const json& p, std::size_t) {
    auto key = key_param(p, 0);
    if (!key) return std::unexpected(key.error());
    auto h = state_height_at(v, p, 1);
    if (!h) return std::unexpected(h.error());
    auto value = v.get(*key, *h);
    if (!value) return engine_error(value.error());
    return *value ? json(to_hex(**value)) : json(nullptr);
}

Answer m_prove(engine::View& v, const json& p, std::size_t) {
    auto key = key_param(p, 0);
    if (!key) return std::unexpected(key.error());
    auto h = state_height_at(v, p, 1);
    if (!h) return std::unexpected(h.error());
    auto proof = v.prove(*key, *h);
    if (!proof) return engine_error(proof.error());
    return engine::to_json(*proof);
}

Answer m_getchanges(engine::View& v, const json& p, std::size_t room) {
    auto h = state_height_at(v, p, 0);
    if (!h) return std::unexpected(h.error());
    auto changes = v.changes(*h);
    if (!changes) return engine_error(changes.error());
    // A height's changes may run to many megabytes: their size as JSON (hex, quotes and
    // separators) is known before any of it is built.
    std::size_t size = 64;
    for (const auto& c : *changes) {
        size += 2 * c.key.size() + (c.value ? 2 * c.value->size() + 8 : 4);
    }
    if (size > room) return too_large(size, room);
    json puts = json::array(), deletes = json::array();
    for (const auto& c : *changes) {
        if (c.value) {
            puts.push_back(json::array({to_hex(c.key), to_hex(*c.value)}));
        } else {
            deletes.push_back(to_hex(c.key));
        }
    }
    return json{{"height", *h}, {"puts", std::move(puts)}, {"deletes", std::move(deletes)}};
}

Answer m_metashrew_height(engine::View& v, const json&, std::size_t) {
    return v.tip() ? json(std::to_string(*v.tip())) : json(nullptr);
}

Answer m_metashrew_stateroot(engine::View& v, const json& p, std::size_t room) {
    auto root = m_getroot(v, p, room);
    if (!root) return root;
    return "0x" + root->get<std::string>();
}

Answer m_metashrew_getblockhash(engine::View& v, const json& p, std::size_t room) {
    auto hash = m_getblockhash(v, p, room);
    if (!hash || hash->is_null()) return hash;
    return "0x" + hash->get<std::string>();
}

struct Method {
    const char* name;
    std::size_t max_params;
    Handler fn;
};

constexpr Method kMethods[] = {
    {"stateroot_height", 0, m_height},
    {"stateroot_getroot", 1, m_getroot},
    {"stateroot_getblockhash", 1, m_getblockhash},
    {"stateroot_get", 2, m_get},
    {"stateroot_prove", 2, m_prove},
    {"stateroot_getchanges", 1, m_getchanges},
    {"metashrew_height", 0, m_metashrew_height},
    {"metashrew_stateroot", 1, m_metashrew_stateroot},
    {"metashrew_getblockhash", 1, m_metashrew_getblockhash},
};

const Method* find_method(const std::string& name) {
    for (const Method& m : kMethods) {
        if (name == m.name) return &m;
    }
    return nullptr;
}

json error_response(const RpcError& e, const json& id) {
    return json{{"jsonrpc", "2.0"}, {"error", {{"code", e.code}, {"message", e.message}}}, {"id", id}};
}

double since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Result<StateSource::Lease> EngineSource::lease() {
    auto view = engine_.view();
    if (!view) return std::unexpected(view.error());
    return Lease{{}, std::move(*view)};
}

WriterFirstLock::WriterFirstLock() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&lock_, &attr);
    pthread_rwlockattr_destroy(&attr);
}

WriterFirstLock::~WriterFirstLock() { pthread_rwlock_destroy(&lock_); }

ReplicaSource::ReplicaSource(engine::Engine& engine, std::chrono::milliseconds interval) : engine_(engine) {
    thread_ = std::thread([this, interval] {
        std::unique_lock stop_lock(stop_mu_);
        while (!stop_cv_.wait_for(stop_lock, interval, [this] { return stopping_; })) {
            std::unique_lock lock(mu_);
            try {
                if (Status s = engine_.catch_up(); !s) spdlog::warn("replica: {}", s.error().message);
            } catch (const std::exception& e) {  // out of memory, say: try again next time
                spdlog::warn("replica: {}", e.what());
            }
        }
    });
}

ReplicaSource::~ReplicaSource() {
    {
        std::lock_guard lock(stop_mu_);
        stopping_ = true;
    }
    stop_cv_.notify_all();
    thread_.join();
}

Result<StateSource::Lease> ReplicaSource::lease() {
    std::shared_lock hold(mu_);
    auto view = engine_.view();
    if (!view) return std::unexpected(view.error());
    return Lease{std::move(hold), std::move(*view)};
}

Rpc::Rpc(StateSource& source, Metrics& metrics, std::function<IndexerStatus()> indexer)
    : source_(source), metrics_(metrics), indexer_(std::move(indexer)), started_(std::chrono::steady_clock::now()) {}

std::string Rpc::call(const json& request, bool& notification, std::size_t room) {
    const auto t = std::chrono::steady_clock::now();
    notification = false;
    const json null_id = nullptr;
    // Error answers are small and are given whatever room is left.
    auto fail = [&](const std::string& label, const RpcError& e, const json& id) {
        metrics_.observe_request(label, false, since(t));
        return text(error_response(e, id));
    };
    if (!request.is_object()) return fail("invalid", {kInvalidRequest, "invalid request: not a JSON object"}, null_id);
    // An id that is not a 64-bit integer (1.5, or one too large, which the parser holds
    // as a double) could not be echoed back as it was sent.
    if (request.contains("id") && !request["id"].is_string() && !request["id"].is_number_integer() &&
        !request["id"].is_null()) {
        return fail("invalid",
                    {kInvalidRequest, "invalid request: \"id\" must be a string, a 64-bit integer or null"}, null_id);
    }
    const json id = request.contains("id") ? request["id"] : null_id;
    if (!request.contains("jsonrpc") || request["jsonrpc"] != "2.0") {
        return fail("invalid", {kInvalidRequest, "invalid request: \"jsonrpc\" must be \"2.0\""}, id);
    }
    if (!request.contains("method") || !request["method"].is_string()) {
        return fail("invalid", {kInvalidRequest, "invalid request: \"method\" must be a string"}, id);
    }
    // JSON-RPC 2.0 allows params by position or by name; anything else makes the request
    // invalid (and so answered, even without an id).
    if (request.contains("params") && !request["params"].is_array() &&
        !request["params"].is_object()) {
        return fail("invalid",
                    {kInvalidRequest, "invalid request: \"params\" must be an array or an object"},
                    id);
    }
    notification = !request.contains("id");
    const std::string& name = request["method"].get_ref<const std::string&>();
    const Method* m = find_method(name);
    if (!m) return fail("unknown", {kMethodNotFound, "method not found: " + name}, id);
    const json params = request.contains("params") ? request["params"] : json::array();
    if (!params.is_array()) {
        return fail(
            name,
            {kInvalidParams, "invalid params: params by name are not supported, give an array"},
            id);
    }
    if (params.size() > m->max_params) {
        return fail(name, {kInvalidParams, fmt::format("invalid params: {} takes at most {} params, got {}", name,
                                                        m->max_params, params.size())},
                    id);
    }
    auto lease = source_.lease();
    if (!lease) return fail(name, {kInternalError, "internal error: " + lease.error().message}, id);
    auto answer = m->fn(lease->view, params, room);
    if (!answer) return fail(name, answer.error(), id);
    std::string response =
        text(json{{"jsonrpc", "2.0"}, {"result", std::move(*answer)}, {"id", id}});
    if (response.size() > room) {
        return fail(name, too_large(response.size(), room).error(), id);
    }
    metrics_.observe_request(name, true, since(t));
    return response;
}

HttpAnswer Rpc::post(std::string_view body, std::size_t max_answer) {
    HttpAnswer a;
    auto single_error = [&](int code, const std::string& message) {
        metrics_.observe_request("invalid", false, 0);
        a.body = text(error_response({code, message}, nullptr));
        return a;
    };
    if (nesting(body, kMaxDepth) > kMaxDepth) {
        return single_error(kParseError, fmt::format("parse error: nested deeper than {} levels", kMaxDepth));
    }
    auto parsed = engine::parse_json_text(body);
    if (!parsed) return single_error(kParseError, parsed.error().message);
    json request = std::move(*parsed);
    bool notification = false;
    if (!request.is_array()) {
        std::string response = call(request, notification, max_answer);
        if (notification) {
            a.status = 204;
            return a;
        }
        a.body = std::move(response);
        return a;
    }
    if (request.empty()) return single_error(kInvalidRequest, "invalid request: empty batch");
    if (request.size() > kMaxBatch) {
        return single_error(kInvalidRequest,
                            fmt::format("invalid request: a batch of {} calls exceeds {}", request.size(), kMaxBatch));
    }
    // The responses are joined as they come, as text, so the answer's size is known
    // call by call (and each is rendered once).
    a.body = "[";
    for (const json& r : request) {
        const std::size_t used = a.body.size() + 2;  // and a comma, and the closing bracket
        std::string response = call(r, notification, max_answer > used ? max_answer - used : 0);
        if (notification) continue;
        if (a.body.size() > 1) a.body += ',';
        a.body += response;
    }
    if (a.body.size() == 1) {
        a.body.clear();
        a.status = 204;
        return a;
    }
    a.body += ']';
    return a;
}

namespace {

// The argument of a REST route "PREFIX{arg}" (one non-empty path segment), or nullopt.
std::optional<std::string> route_arg(std::string_view path, std::string_view prefix) {
    if (!path.starts_with(prefix) || path.size() == prefix.size()) return std::nullopt;
    const std::string_view rest = path.substr(prefix.size());
    if (rest.find('/') != std::string_view::npos) return std::nullopt;
    return std::string(rest);
}

constexpr std::string_view kArgRoutes[] = {"/root/", "/blockhash/", "/value/", "/proof/"};

}  // namespace

bool Rpc::is_route(std::string_view path) {
    if (path == "/metrics" || path == "/height" || path == "/status") return true;
    return std::any_of(std::begin(kArgRoutes), std::end(kArgRoutes), [&](std::string_view prefix) {
        return route_arg(path, prefix).has_value();
    });
}

void Rpc::observe_refused(const std::string& label) { metrics_.observe_request(label, false, 0); }

// The REST routes' answers are bounded by what they read (one value, one proof), well
// within the answer limit.
HttpAnswer Rpc::get(const std::string& path, const QueryParams& query) {
    const auto t = std::chrono::steady_clock::now();
    HttpAnswer a;
    auto finish = [&](const std::string& route, Answer answer) {
        metrics_.observe_request(route, answer.has_value(), since(t));
        if (answer) {
            a.body = text(*answer);
            return a;
        }
        const int code = answer.error().code;
        a.status = code == kHeightNotFound ? 404 : code == kInternalError ? 500 : 400;
        a.body = text(json{{"error", {{"code", code}, {"message", answer.error().message}}}});
        return a;
    };
    auto segments = [&](std::string_view prefix) { return route_arg(path, prefix); };
    // The height a route is asked for: its one query parameter, given at most once, or
    // the tip. A misspelt or repeated parameter is refused rather than answered for the
    // tip or for one of its values.
    const auto height_query = [&](bool takes_height) -> std::expected<json, RpcError> {
        json height = "latest";
        bool seen = false;
        for (const auto& [name, value] : query) {
            if (!takes_height || name != "height") {
                return rpc_error(
                    kInvalidParams,
                    fmt::format(
                        "invalid params: unknown query parameter {} ({})", text(json(name)),
                        takes_height ? "this route takes height" : "this route takes none"));
            }
            if (seen)
                return rpc_error(kInvalidParams,
                                 "invalid params: query parameter height given twice");
            seen = true;
            height = value;
        }
        return height;
    };

    if (path == "/metrics") {
        auto lease = source_.lease();
        a.content_type = "text/plain; version=0.0.4";
        a.body = metrics_.render(lease ? lease->view.tip() : std::nullopt, source_.disk_bytes());
        metrics_.observe_request("rest_metrics", true, since(t));
        return a;
    }
    auto lease = source_.lease();
    if (!lease) return finish("rest", internal(lease.error()));
    engine::View& v = lease->view;
    // Only /value and /proof take a query (height); checked here for every route, under
    // the route's own label ("rest_" and its first segment).
    auto asked = height_query(segments("/value/") || segments("/proof/"));
    if (!asked && is_route(path)) {
        return finish("rest_" + path.substr(1, path.find('/', 1) - 1), std::unexpected(asked.error()));
    }
    if (path == "/height") {
        return finish("rest_height", json{{"height", *m_height(v, json::array(), kMaxAnswer)}});
    }
    if (path == "/status") {
        json status{{"tip", v.tip() ? json(*v.tip()) : json(nullptr)},
                    {"root", nullptr},
                    {"block_hash", nullptr},
                    {"bytes_on_disk", source_.disk_bytes()},
                    {"uptime_s", since(started_)}};
        if (v.tip()) {
            auto rec = v.record(*v.tip());
            if (!rec) return finish("rest_status", engine_error(rec.error()));
            status["root"] = rec->root.hex();
            status["block_hash"] = rec->block_hash ? json(rec->block_hash->hex()) : json(nullptr);
        }
        const IndexerStatus ix = indexer_ ? indexer_() : IndexerStatus{};
        status["indexer"] = {{"state", ix.state}};
        if (ix.state != "none") {
            status["indexer"]["height"] = ix.height;
            status["indexer"]["target"] = ix.target;
            status["indexer"]["progress"] =
                ix.target > 0 ? static_cast<double>(ix.height) / static_cast<double>(ix.target) : 1.0;
        }
        return finish("rest_status", status);
    }
    // A REST route's errors name where it took the parameter from, checked here before
    // the method reads it again.
    constexpr std::string_view kPathHeight = "the height in the path", kQueryHeight = "query parameter height",
                               kPathKey = "the key in the path";
    if (auto h = segments("/root/")) {
        auto height_value = height_at(v, json::array({*h}), 0, kPathHeight);
        if (!height_value) return finish("rest_root", std::unexpected(height_value.error()));
        auto root = m_getroot(v, json::array({*height_value}), kMaxAnswer);
        if (!root) return finish("rest_root", root);
        return finish("rest_root", json{{"height", *height_value}, {"root", *root}});
    }
    if (auto h = segments("/blockhash/")) {
        auto height_value = height_at(v, json::array({*h}), 0, kPathHeight);
        if (!height_value) return finish("rest_blockhash", std::unexpected(height_value.error()));
        auto hash = m_getblockhash(v, json::array({*height_value}), kMaxAnswer);
        if (!hash) return finish("rest_blockhash", hash);
        return finish("rest_blockhash", json{{"height", *height_value}, {"block_hash", *hash}});
    }
    if (auto key = segments("/value/")) {
        if (auto k = key_param(json::array({*key}), 0, kPathKey); !k) return finish("rest_value", std::unexpected(k.error()));
        auto height_value = height_at(v, json::array({*asked}), 0, kQueryHeight);
        if (!height_value) return finish("rest_value", std::unexpected(height_value.error()));
        auto value = m_get(v, json::array({*key, *height_value}), kMaxAnswer);
        if (!value) return finish("rest_value", value);
        auto normal = from_hex(*key);
        return finish("rest_value", json{{"height", *height_value}, {"key", to_hex(*normal)}, {"value", *value}});
    }
    if (auto key = segments("/proof/")) {
        if (auto k = key_param(json::array({*key}), 0, kPathKey); !k) return finish("rest_proof", std::unexpected(k.error()));
        if (auto h = height_param(json::array({*asked}), 0, kQueryHeight); !h) {
            return finish("rest_proof", std::unexpected(h.error()));
        }
        return finish("rest_proof", m_prove(v, json::array({*key, *asked}), kMaxAnswer));
    }
    a.status = 404;
    a.body = text(json{{"error", {{"code", 404}, {"message", "no such route: " + path}}}});
    metrics_.observe_request("rest_unknown", false, since(t));
    return a;
}

}  // namespace stateroot::tools
