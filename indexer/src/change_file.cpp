#include "stateroot/indexer/change_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

#include "stateroot/engine/json.hpp"

namespace stateroot::indexer {

using nlohmann::json;

namespace {

std::unexpected<Error> bad(std::string message) {
    return make_error(ErrorCode::kInvalidArgument, std::move(message));
}

Result<Bytes> hex_string(const json& j, const std::string& where) {
    if (!j.is_string()) return bad(where + " must be a hex string");
    auto b = from_hex(j.get_ref<const std::string&>());
    if (!b) return bad(where + " is not valid hex");
    return *b;
}

}  // namespace

Result<engine::Changes> parse_change_line(std::string_view line) {
    auto parsed = engine::parse_json(line);
    if (!parsed) return std::unexpected(parsed.error());
    const json& j = *parsed;
    if (!j.is_object()) return bad("a line must be a JSON object");

    engine::Changes c;
    c.from_change_file = true;
    for (const auto& [name, value] : j.items()) {
        if (name != "height" && name != "block_hash" && name != "puts" && name != "deletes") {
            return bad(fmt::format("unknown field \"{}\"", name));
        }
    }
    if (!j.contains("height")) return bad("missing \"height\"");
    if (!j["height"].is_number_unsigned()) return bad("\"height\" must be a non-negative integer");
    c.height = j["height"].get<std::uint64_t>();

    if (j.contains("block_hash") && !j["block_hash"].is_null()) {
        auto h = hex_string(j["block_hash"], "\"block_hash\"");
        if (!h) return std::unexpected(h.error());
        if (h->size() != 32) return bad("\"block_hash\" must be 32 bytes");
        c.block_hash = engine::Hash::from(*h);
    }
    if (j.contains("puts")) {
        const json& puts = j["puts"];
        if (!puts.is_array()) return bad("\"puts\" must be an array of [key, value] pairs");
        c.puts.reserve(puts.size());
        for (std::size_t i = 0; i < puts.size(); ++i) {
            const std::string where = fmt::format("puts[{}]", i);
            if (!puts[i].is_array() || puts[i].size() != 2) {
                return bad(where + " must be a [key, value] pair");
            }
            auto key = hex_string(puts[i][0], where + " key");
            if (!key) return std::unexpected(key.error());
            auto value = hex_string(puts[i][1], where + " value");
            if (!value) return std::unexpected(value.error());
            c.puts.emplace_back(std::move(*key), std::move(*value));
        }
    }
    if (j.contains("deletes")) {
        const json& dels = j["deletes"];
        if (!dels.is_array()) return bad("\"deletes\" must be an array of keys");
        c.deletes.reserve(dels.size());
        for (std::size_t i = 0; i < dels.size(); ++i) {
            const std::string where = fmt::format("deletes[{}]", i);
            auto key = hex_string(dels[i], where);
            if (!key) return std::unexpected(key.error());
            c.deletes.push_back(std::move(*key));
        }
    }
    return c;
}

Status apply_change_stream(engine::Engine& engine, std::istream& in, const std::string& name,
                           const std::function<void(const engine::CommitResult&)>& on_height) {
    std::string line;
    std::uint64_t number = 1;  // of the line being read
    for (; std::getline(in, line); ++number) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = fmt::format("{}:{}", name, number);
        auto changes = parse_change_line(line);
        if (!changes) return with_context(changes.error(), where);
        auto result = engine.apply(*changes);
        if (!result) return with_context(result.error(), where);
        on_height(*result);
    }
    if (in.bad()) {
        // iostreams keep no reason (errno may be stale): the line is what can be said.
        return make_error(ErrorCode::kIoError,
                          fmt::format("{}: read error after line {}", name, number - 1));
    }
    return {};
}

}  // namespace stateroot::indexer
