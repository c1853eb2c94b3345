#include "stateroot/engine/json.hpp"

#include <fmt/format.h>

#include <optional>
#include <string>
#include <unordered_set>

namespace stateroot::engine {
namespace {

// nlohmann::json::parse with `callback`, its exceptions turned into kInvalidArgument
// "<what and where>". nlohmann's reader takes a NUL byte for the end of the input, and
// would drop what follows one unread; a NUL is never valid outside a string, nor raw
// inside one, so it is refused first.
template <class Callback>
Result<nlohmann::json> parse_checked(std::string_view text, Callback callback) {
    using nlohmann::json;
    if (const auto nul = text.find('\0'); nul != std::string_view::npos) {
        return make_error(
            ErrorCode::kInvalidArgument,
            fmt::format(
                "parse error at byte {}: a NUL byte (JSON allows one only escaped, in a string)",
                nul + 1));
    }
    try {
        return json::parse(text, callback);
    } catch (const json::exception& e) {
        // Not only parse_error: a number too large for a double (1e400) throws
        // out_of_range. Drop nlohmann's "[json.exception.parse_error.101] " tag.
        std::string what = e.what();
        if (const auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
        return make_error(ErrorCode::kInvalidArgument, what);
    }
}

}  // namespace

Result<nlohmann::json> parse_json_text(std::string_view text) {
    return parse_checked(text, nullptr);
}

Result<nlohmann::json> parse_json(std::string_view text) {
    using nlohmann::json;
    std::unordered_set<std::string> names;
    std::optional<std::string> repeated;
    const auto note_field = [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth == 1 && event == json::parse_event_t::key && !repeated) {
            std::string name = parsed.get<std::string>();
            if (!names.insert(name).second) repeated = std::move(name);
        }
        return true;
    };
    auto j = parse_checked(text, json::parser_callback_t(note_field));
    if (!j) return make_error(ErrorCode::kInvalidArgument, "bad JSON: " + j.error().message);
    if (repeated) return make_error(ErrorCode::kInvalidArgument, fmt::format("field \"{}\" given twice", *repeated));
    return j;
}

}  // namespace stateroot::engine
