// Fuzz target: the query API (tools::Rpc) over the database of tests/fuzz/state.jsonl.
//
// An input is a JSON-RPC POST body, or "GET <path>[?k=v&...]" for a REST route (the
// query as the HTTP layer hands it over, already decoded). Every answer must be HTTP 200
// with a JSON-RPC 2.0 response (or a batch of them), 204 with no body for notifications
// only, or for REST a JSON body with 200/400/404/500 (/metrics: text). Whatever the
// request, no exception may escape. Every proof the API returns must verify against the
// database's root at its height.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"
#include "metrics.hpp"
#include "rpc.hpp"
#include "stateroot/engine/proof.hpp"

using namespace stateroot;
using nlohmann::json;

namespace {

struct Api {
    tools::EngineSource source;
    tools::Metrics metrics;
    tools::Rpc rpc;
    explicit Api(engine::Engine& e) : source(e), rpc(source, metrics) {}
};

Api* g_api = nullptr;

Api& api() {
    if (!g_api) {
        fuzz::State& st = fuzz::state();  // registers its teardown first, so it runs after ours
        g_api = new Api(*st.engine);
        std::atexit([] {
            delete g_api;
            g_api = nullptr;
        });
    }
    return *g_api;
}

json parse_answer(const std::string& body, const std::string_view request) {
    try {
        return json::parse(body);
    } catch (const json::exception& e) {
        fuzz::fail(__FILE__, __LINE__,
                   fmt::format("the answer is not JSON ({}): {} for {}", e.what(), body, request));
    }
}

void check_proof(const json& result) {
    auto proof = engine::proof_from_json(result);
    FUZZ_CHECK(proof.has_value(), "a proof answer does not parse: {}", proof ? "" : proof.error().message);
    const auto& roots = fuzz::state().roots;
    const auto root = roots.find(proof->height);
    FUZZ_CHECK(root != roots.end() && root->second == proof->root, "a proof for height {} with root {}",
               proof->height, proof->root.hex());
    const Status s = engine::verify(*proof, root->second);
    FUZZ_CHECK(s.has_value(), "a proof answer does not verify: {}", s ? "" : s.error().message);
}

// One JSON-RPC response object.
void check_response(const json& r, const std::string_view request) {
    FUZZ_CHECK(r.is_object() && r.value("jsonrpc", "") == "2.0" && r.contains("id") &&
                   (r["id"].is_null() || r["id"].is_string() || r["id"].is_number()) &&
                   r.contains("result") != r.contains("error") && r.size() == 3,
               "not a JSON-RPC 2.0 response: {} for {}", r.dump(), request);
    if (r.contains("error")) {
        const json& e = r["error"];
        FUZZ_CHECK(e.is_object() && e.contains("code") && e["code"].is_number_integer() && e.contains("message") &&
                       e["message"].is_string(),
                   "a malformed error: {}", r.dump());
        return;
    }
    const json& result = r["result"];
    if (result.is_object() && result.contains("side_nodes")) check_proof(result);
}

void post(std::string_view body) {
    const tools::HttpAnswer a = api().rpc.post(body);
    if (a.status == 204) {
        FUZZ_CHECK(a.body.empty(), "204 with a body: {}", a.body);
        return;
    }
    FUZZ_CHECK(a.status == 200, "HTTP {} for {}", a.status, body);
    const json answer = parse_answer(a.body, body);
    if (answer.is_array()) {
        FUZZ_CHECK(!answer.empty() && answer.size() <= tools::Rpc::kMaxBatch, "a batch answer of {} responses",
                   answer.size());
        for (const json& r : answer) check_response(r, body);
    } else {
        check_response(answer, body);
    }
}

void get(std::string_view target) {
    target = target.substr(0, target.find('\n'));
    const std::string path(target.substr(0, target.find('?')));
    tools::QueryParams query;
    if (const auto q = target.find('?'); q != std::string_view::npos) {
        std::string_view rest = target.substr(q + 1);
        while (!rest.empty()) {
            const std::string_view item = rest.substr(0, rest.find('&'));
            rest.remove_prefix(std::min(rest.size(), item.size() + 1));
            if (item.empty()) continue;  // "?&height=1": as the server reads it
            const auto eq = item.find('=');
            query.emplace_back(item.substr(0, eq), eq == std::string_view::npos
                                                       ? ""
                                                       : std::string(item.substr(eq + 1)));
        }
    }
    const tools::HttpAnswer a = api().rpc.get(path, query);
    if (path == "/metrics") {
        FUZZ_CHECK(a.status == 200 && !a.body.empty(), "/metrics: HTTP {}", a.status);
        return;
    }
    FUZZ_CHECK(a.status == 200 || a.status == 400 || a.status == 404 || a.status == 500, "HTTP {} for GET {}",
               a.status, target);
    const json answer = parse_answer(a.body, target);
    FUZZ_CHECK(answer.is_object(), "GET {}: {}", target, a.body);
    if (a.status != 200) {
        FUZZ_CHECK(answer.contains("error") && answer["error"].contains("code") && answer["error"].contains("message"),
                   "GET {}: a malformed error: {}", target, a.body);
    } else if (answer.contains("side_nodes")) {
        check_proof(answer);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    api();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    if (input.starts_with("GET ")) {
        get(input.substr(4));
    } else {
        post(input);
    }
    return 0;
}
