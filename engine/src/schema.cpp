#include "stateroot/engine/schema.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "stateroot/storage/store.hpp"

namespace stateroot::engine::schema {
namespace {

// The height record's flags byte.
constexpr std::uint8_t kHasBlockHash = 1;    // 32 bytes of block hash follow
constexpr std::uint8_t kFromChangeFile = 2;  // HeightRecord::from_change_file (version 4 on)

Bytes prefixed_height(Prefix p, std::uint64_t height) {
    Bytes k;
    k.reserve(9);
    k.push_back(p);
    put_be64(k, height);
    return k;
}

constexpr std::uint8_t kTombstone = 0;
constexpr std::uint8_t kPut = 1;

std::array<std::uint8_t, kValueKeySize> value_key_bytes(const Hash& path, std::uint64_t height) {
    std::array<std::uint8_t, kValueKeySize> k;
    k[0] = kValue;
    std::copy(path.bytes.begin(), path.bytes.end(), k.begin() + 1);
    set_be64(k.data() + 33, ~height);
    return k;
}

std::unexpected<Error> corrupt(std::string_view what, std::uint64_t height) {
    return make_error(ErrorCode::kCorruption, fmt::format("corrupt {} at height {}", what, height));
}

}  // namespace

Bytes meta_key(std::string_view name) {
    Bytes k;
    k.reserve(1 + name.size());
    k.push_back(kMeta);
    k.insert(k.end(), name.begin(), name.end());
    return k;
}

Bytes height_key(std::uint64_t height) { return prefixed_height(kHeight, height); }
Bytes changes_key(std::uint64_t height) { return prefixed_height(kChanges, height); }
Bytes stale_key(std::uint64_t height) { return prefixed_height(kStale, height); }
Bytes node_chunk_key(std::uint64_t chunk) { return prefixed_height(kNodes, chunk); }

Bytes aux_key(ByteView key) {
    Bytes k;
    k.reserve(1 + key.size());
    k.push_back(kAux);
    k.insert(k.end(), key.begin(), key.end());
    return k;
}

Bytes value_key(const Hash& path, std::uint64_t height) {
    const auto k = value_key_bytes(path, height);
    return Bytes(k.begin(), k.end());
}

std::uint64_t value_key_height(ByteView key) { return ~get_be64(key.data() + 33); }

bool same_path(ByteView key, ByteView of) {
    return key.size() == kValueKeySize && std::equal(of.begin(), of.begin() + kValueSeekPrefix, key.begin());
}

Bytes format_value() {
    Bytes v(kMagic.begin(), kMagic.end());
    put_be32(v, kFormatVersion);
    return v;
}

Result<std::uint32_t> check_format(ByteView value) {
    if (value.size() != kMagic.size() + 4 ||
        !std::equal(kMagic.begin(), kMagic.end(), value.begin())) {
        return make_error(ErrorCode::kCorruption, "not a stateroot database (bad format row)");
    }
    const std::uint32_t version = get_be32(value.data() + kMagic.size());
    if (version < kOldestFormatVersion || version > kFormatVersion) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("database format version {} is not supported (this build "
                                      "reads versions {} to {})",
                                      version, kOldestFormatVersion, kFormatVersion));
    }
    return version;
}

Bytes encode(const HeightRecord& r) {
    Bytes v;
    v.reserve(32 + 8 * 4 + 32 + 1 + 32);
    v.insert(v.end(), r.root.bytes.begin(), r.root.bytes.end());
    put_be64(v, r.root_id);
    put_be64(v, r.first_chunk);
    put_be64(v, r.end_chunk);
    put_be64(v, r.live_keys);
    v.insert(v.end(), r.digest.bytes.begin(), r.digest.bytes.end());
    v.push_back(static_cast<std::uint8_t>((r.block_hash ? kHasBlockHash : 0) |
                                          (r.from_change_file ? kFromChangeFile : 0)));
    if (r.block_hash) v.insert(v.end(), r.block_hash->bytes.begin(), r.block_hash->bytes.end());
    return v;
}

Result<HeightRecord> decode_height_record(ByteView v, std::uint64_t height) {
    constexpr std::size_t kFixed = 32 + 8 * 4 + 32 + 1;
    if (v.size() != kFixed && v.size() != kFixed + 32) return corrupt("height record", height);
    HeightRecord r;
    const std::uint8_t* p = v.data();
    r.root = Hash::from({p, 32});
    r.root_id = get_be64(p + 32);
    r.first_chunk = get_be64(p + 40);
    r.end_chunk = get_be64(p + 48);
    r.live_keys = get_be64(p + 56);
    r.digest = Hash::from({p + 64, 32});
    const std::uint8_t flags = p[96];
    const bool has_hash = (flags & kHasBlockHash) != 0;
    if (r.first_chunk > r.end_chunk || (flags & ~(kHasBlockHash | kFromChangeFile)) != 0 ||
        has_hash != (v.size() == kFixed + 32)) {
        return corrupt("height record", height);
    }
    if (has_hash) r.block_hash = Hash::from({p + 97, 32});
    r.from_change_file = (flags & kFromChangeFile) != 0;
    return r;
}

Bytes encode_change_index(const std::vector<ChangeEntry>& entries) {
    Bytes v;
    put_varint(v, entries.size());
    for (const ChangeEntry& e : entries) {
        v.push_back(e.put ? 1 : 0);
        put_varint(v, e.key.size());
        v.insert(v.end(), e.key.begin(), e.key.end());
    }
    return v;
}

Result<std::vector<ChangeEntry>> decode_change_index(ByteView v, std::uint64_t height) {
    std::size_t pos = 0;
    const auto count = get_varint(v, pos);
    if (!count || *count > v.size()) return corrupt("change index", height);
    std::vector<ChangeEntry> entries(*count);
    for (ChangeEntry& e : entries) {
        if (pos >= v.size() || v[pos] > 1) return corrupt("change index", height);
        e.put = v[pos++] == 1;
        const auto len = get_varint(v, pos);
        if (!len || *len > v.size() - pos) return corrupt("change index", height);
        e.key.assign(v.begin() + pos, v.begin() + pos + *len);
        pos += *len;
    }
    if (pos != v.size()) return corrupt("change index", height);
    return entries;
}

void put_value_row(storage::WriteBatch& batch, const Hash& path, std::uint64_t height,
                   std::optional<ByteView> value) {
    static constexpr std::uint8_t kTags[2] = {kTombstone, kPut};
    const auto key = value_key_bytes(path, height);
    const ByteView parts[2] = {{&kTags[value ? 1 : 0], 1}, value.value_or(ByteView{})};
    batch.put({key.data(), key.size()}, std::span<const ByteView>(parts, value ? 2 : 1));
}

Result<std::optional<ByteView>> decode_value_row(ByteView row) {
    if (row.empty() || row[0] > kPut || (row[0] == kTombstone && row.size() != 1) ||
        (row[0] == kPut && row.size() < 2)) {
        return make_error(ErrorCode::kCorruption, "corrupt value row");
    }
    if (row[0] == kTombstone) return std::optional<ByteView>();
    return std::optional<ByteView>(row.subspan(1));
}

Bytes encode_stale(const std::vector<NodeId>& ids) {
    Bytes v;
    put_varint(v, ids.size());
    NodeId prev = 0;
    for (NodeId id : ids) {
        put_varint(v, id - prev);
        prev = id;
    }
    return v;
}

Result<std::vector<NodeId>> decode_stale(ByteView v, std::uint64_t height) {
    std::size_t pos = 0;
    const auto count = get_varint(v, pos);
    if (!count || *count > v.size()) return corrupt("stale list", height);
    std::vector<NodeId> ids(*count);
    NodeId prev = 0;
    for (NodeId& id : ids) {
        const auto delta = get_varint(v, pos);
        if (!delta) return corrupt("stale list", height);
        id = prev + *delta;
        prev = id;
    }
    if (pos != v.size()) return corrupt("stale list", height);
    return ids;
}

}  // namespace stateroot::engine::schema
