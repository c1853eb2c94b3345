// Fuzz target: indexer::parse_change_line, one line of a change file.
//
// Any input must give Changes or a kInvalidArgument error, never an exception. Changes
// written back as a line (lowercase hex, fields in a fixed order) must parse to the same
// Changes, and the engine's normalisation of both must agree: the same digest, changes
// sorted by path without repeats, keys and values within the limits.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "fuzz_support.hpp"
#include "stateroot/engine/changes.hpp"
#include "stateroot/indexer/change_file.hpp"

using namespace stateroot;
using nlohmann::json;

namespace {

std::string to_line(const engine::Changes& c) {
    json j{{"height", c.height}};
    if (c.block_hash) j["block_hash"] = c.block_hash->hex();
    json puts = json::array();
    for (const auto& [key, value] : c.puts) puts.push_back(json::array({to_hex(key), to_hex(value)}));
    json deletes = json::array();
    for (const Bytes& key : c.deletes) deletes.push_back(to_hex(key));
    j["puts"] = std::move(puts);
    j["deletes"] = std::move(deletes);
    return j.dump();
}

bool same(const engine::Changes& a, const engine::Changes& b) {
    return a.height == b.height && a.block_hash == b.block_hash && a.puts == b.puts && a.deletes == b.deletes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view line(reinterpret_cast<const char*>(data), size);
    const auto changes = indexer::parse_change_line(line);
    if (!changes) {
        FUZZ_CHECK(changes.error().code == ErrorCode::kInvalidArgument && !changes.error().message.empty(),
                   "an error of code {}: {}", static_cast<int>(changes.error().code), changes.error().message);
        return 0;
    }
    const std::string again = to_line(*changes);
    const auto reparsed = indexer::parse_change_line(again);
    FUZZ_CHECK(reparsed.has_value(), "the line written back does not parse: {}: {}", again,
               reparsed ? "" : reparsed.error().message);
    FUZZ_CHECK(same(*changes, *reparsed), "the line written back parses to other changes: {}", again);

    const auto normal = engine::normalize(*changes);
    const auto normal_again = engine::normalize(*reparsed);
    FUZZ_CHECK(normal.has_value() == normal_again.has_value(), "normalize differs on the line written back");
    if (!normal) {
        FUZZ_CHECK(normal.error().code == ErrorCode::kInvalidArgument, "normalize: {}", normal.error().message);
        return 0;
    }
    FUZZ_CHECK(engine::changes_digest(*normal) == engine::changes_digest(*normal_again), "digests differ");
    FUZZ_CHECK(normal->size() == changes->puts.size() + changes->deletes.size(), "normalize lost changes");
    for (std::size_t i = 0; i < normal->size(); ++i) {
        const engine::NormalChange& c = (*normal)[i];
        FUZZ_CHECK(i == 0 || (*normal)[i - 1].path < c.path, "change {} is out of path order or repeated", i);
        FUZZ_CHECK(c.key != nullptr && !c.key->empty() && c.key->size() <= engine::kMaxKeySize &&
                       c.path == engine::sha256(*c.key),
                   "change {}: bad key", i);
        FUZZ_CHECK(c.value == nullptr || (!c.value->empty() && c.value->size() <= engine::kMaxValueSize &&
                                          c.value_hash == engine::sha256(*c.value)),
                   "change {}: bad value", i);
    }
    return 0;
}
