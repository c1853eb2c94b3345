// Change files: the way an external indexer hands its changes to stateroot.
//
// One JSON object per line, one height each:
//   {"height": 7, "block_hash": "<hex, optional>", "puts": [["<key hex>", "<value hex>"], ...],
//    "deletes": ["<key hex>", ...]}
// block_hash is in display byte order; a put with an empty value is a delete.
#pragma once

#include <functional>
#include <istream>
#include <string>
#include <string_view>

#include "stateroot/engine/changes.hpp"
#include "stateroot/engine/engine.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::indexer {

// Parses one line. kInvalidArgument saying what is wrong (bad JSON, a missing or unknown
// field, bad hex, a limit exceeded). Does not check repeated keys; the engine does.
Result<engine::Changes> parse_change_line(std::string_view line);

// Applies the lines of `in` in order (blank lines are skipped), calling `on_height`
// after each, committed or found already committed. Stops at the first line that cannot
// be applied, returning its error prefixed with "<name>:<line>: "; the heights before it
// stay committed and nothing of it is.
Status apply_change_stream(engine::Engine& engine, std::istream& in, const std::string& name,
                           const std::function<void(const engine::CommitResult&)>& on_height);

}  // namespace stateroot::indexer
