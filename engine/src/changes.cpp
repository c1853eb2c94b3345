#include "stateroot/engine/changes.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace stateroot::engine {

std::string key_for_message(ByteView key) {
    if (key.size() <= 32) return to_hex(key);
    return fmt::format("{}... ({} bytes)", to_hex(key.first(32)), key.size());
}

Status check_key_size(ByteView key) {
    if (key.empty()) return make_error(ErrorCode::kInvalidArgument, "empty key");
    if (key.size() > kMaxKeySize) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("key {} is longer than the {}-byte limit",
                                      key_for_message(key), kMaxKeySize));
    }
    return {};
}

Result<std::vector<NormalChange>> normalize(const Changes& changes) {
    std::vector<NormalChange> out;
    out.reserve(changes.puts.size() + changes.deletes.size());
    for (const auto& [key, value] : changes.puts) {
        if (Status s = check_key_size(key); !s) return with_context(s.error(), "put");
        if (value.size() > kMaxValueSize) {
            return make_error(ErrorCode::kInvalidArgument,
                              fmt::format("value of key {} is {} bytes, over the {}-byte limit",
                                          key_for_message(key), value.size(), kMaxValueSize));
        }
        NormalChange c;
        c.path = sha256(key);
        c.key = &key;
        if (!value.empty()) {
            c.value = &value;
            c.value_hash = sha256(value);
        }
        out.push_back(c);
    }
    for (const Bytes& key : changes.deletes) {
        if (Status s = check_key_size(key); !s) return with_context(s.error(), "delete");
        NormalChange c;
        c.path = sha256(key);
        c.key = &key;
        out.push_back(c);
    }
    // By path: the first 8 bytes as one integer decide nearly every comparison of two
    // hashes, without a call to memcmp; the 80-byte changes move once, at the end.
    std::vector<std::pair<std::uint64_t, std::size_t>> order(out.size());
    for (std::size_t i = 0; i < out.size(); ++i) order[i] = {get_be64(out[i].path.data()), i};
    std::sort(order.begin(), order.end(), [&out](const auto& a, const auto& b) {
        if (a.first != b.first) return a.first < b.first;
        return out[a.second].path < out[b.second].path;
    });
    std::vector<NormalChange> sorted;
    sorted.reserve(out.size());
    for (const auto& entry : order) sorted.push_back(out[entry.second]);
    out = std::move(sorted);
    const auto dup = std::adjacent_find(
        out.begin(), out.end(),
        [](const NormalChange& a, const NormalChange& b) { return a.path == b.path; });
    if (dup != out.end()) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("key {} appears more than once", key_for_message(*dup->key)));
    }
    return out;
}

Hash changes_digest(const std::vector<NormalChange>& changes) {
    Bytes buf;
    buf.reserve(changes.size() * 65);
    for (const NormalChange& c : changes) {
        buf.insert(buf.end(), c.path.bytes.begin(), c.path.bytes.end());
        buf.push_back(c.value ? 1 : 0);
        if (c.value) buf.insert(buf.end(), c.value_hash.bytes.begin(), c.value_hash.bytes.end());
    }
    return sha256(buf);
}

}  // namespace stateroot::engine
