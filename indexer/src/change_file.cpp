#include "stateroot/indexer/change_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

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
    json j;
    // A field given twice would otherwise be taken from its last copy, silently
    // dropping the first one's puts: the callback notes the line's top-level names.
    std::vector<std::string> names;
    std::optional<std::string> repeated;
    const auto note_field = [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth == 1 && event == json::parse_event_t::key && !repeated) {
            std::string name = parsed.get<std::string>();
            if (std::find(names.begin(), names.end(), name) != names.end()) repeated = name;
            names.push_back(std::move(name));
        }
        return true;
    };
    try {
        j = json::parse(line, note_field);
    } catch (const json::exception& e) {
        // Not only parse_error: a number too large for a double (1e400) throws
        // out_of_range, which must be a bad line too, not an exception that aborts the
        // process. Drop nlohmann's "[json.exception.parse_error.101] " tag.
        std::string what = e.what();
        if (const auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
        return bad("bad JSON: " + what);
    }
    if (!j.is_object()) return bad("a line must be a JSON object");
    if (repeated) return bad(fmt::format("field \"{}\" given twice", *repeated));

    engine::Changes c;
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
    for (std::uint64_t number = 1; std::getline(in, line); ++number) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = fmt::format("{}:{}", name, number);
        auto changes = parse_change_line(line);
        if (!changes) return with_context(changes.error(), where);
        auto result = engine.apply(*changes);
        if (!result) return with_context(result.error(), where);
        on_height(*result);
    }
    if (in.bad()) return make_error(ErrorCode::kIoError, fmt::format("{}: read error", name));
    return {};
}

}  // namespace stateroot::indexer
