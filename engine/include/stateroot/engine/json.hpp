// Reading the JSON documents users hand us (change lines, proof files).
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "stateroot/storage/result.hpp"

namespace stateroot::engine {

// Parses `text` as one JSON document whose top-level object, if it is one, names each
// field once. nlohmann keeps the last copy of a repeated name, so a file could show a
// reader one value and mean another. kInvalidArgument: "bad JSON: <what and where>", or
// "field \"<name>\" given twice".
Result<nlohmann::json> parse_json(std::string_view text);

// Parses `text` as one JSON document, any names repeated (JSON-RPC bodies). Like
// nlohmann::json::parse, except that a NUL byte, which nlohmann takes for the end of the
// input, is an error. kInvalidArgument: "<what and where>".
Result<nlohmann::json> parse_json_text(std::string_view text);

}  // namespace stateroot::engine
