#include "stateroot/indexer/chain.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>

namespace stateroot::indexer {

namespace {

using Limbs = std::array<std::uint64_t, 4>;

bool bit_of(const Limbs& x, int i) { return (x[i / 64] >> (i % 64)) & 1; }

int compare(const Limbs& a, const Limbs& b) {
    for (int i = 3; i >= 0; --i) {
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    }
    return 0;
}

Limbs sub(const Limbs& a, const Limbs& b) {
    Limbs r{};
    std::uint64_t borrow = 0;
    for (int i = 0; i < 4; ++i) {
        const std::uint64_t d = a[i] - b[i] - borrow;
        borrow = (a[i] < b[i] || (a[i] == b[i] && borrow)) ? 1 : 0;
        r[i] = d;
    }
    return r;
}

Limbs shl1(const Limbs& a) {
    Limbs r{};
    for (int i = 3; i >= 0; --i) r[i] = a[i] << 1 | (i > 0 ? a[i - 1] >> 63 : 0);
    return r;
}

// Long division, one bit at a time: plenty fast for one division per header.
Limbs divide(const Limbs& n, const Limbs& d) {
    Limbs q{}, r{};
    for (int i = 255; i >= 0; --i) {
        r = shl1(r);
        r[0] |= bit_of(n, i) ? 1 : 0;
        if (compare(r, d) >= 0) {
            r = sub(r, d);
            q[i / 64] |= std::uint64_t{1} << (i % 64);
        }
    }
    return q;
}

// The target a compact `bits` encodes: mantissa * 256^(exponent - 3). Absent if the sign
// bit is set, the target is zero or it overflows 256 bits.
std::optional<Limbs> target_of(std::uint32_t bits) {
    const std::uint32_t exponent = bits >> 24;
    const std::uint32_t mantissa = bits & 0x007fffff;
    if ((bits & 0x00800000) != 0 || mantissa == 0) return std::nullopt;
    Limbs target{};
    if (exponent <= 3) {
        target[0] = mantissa >> (8 * (3 - exponent));
    } else {
        const std::uint32_t shift = 8 * (exponent - 3);
        if (shift >= 256 - 23) return std::nullopt;
        const std::uint32_t limb = shift / 64, off = shift % 64;
        target[limb] = static_cast<std::uint64_t>(mantissa) << off;
        if (off > 40 && limb + 1 < 4)
            target[limb + 1] = static_cast<std::uint64_t>(mantissa) >> (64 - off);
    }
    if (target == Limbs{}) return std::nullopt;
    return target;
}

}  // namespace

Status check_work(const BlockHeader& header, Network network) {
    const auto target = target_of(header.bits);
    if (!target) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("its bits {:08x} encode no valid target", header.bits));
    }
    if (compare(*target, *target_of(pow_limit_bits(network))) > 0) {
        return make_error(
            ErrorCode::kInvalidArgument,
            fmt::format("its target (bits {:08x}) is easier than {}'s limit (bits {:08x})",
                        header.bits, network_name(network), pow_limit_bits(network)));
    }
    Limbs hash{};  // the hash in internal byte order is a little-endian number
    for (int i = 0; i < 4; ++i) {
        for (int b = 7; b >= 0; --b) hash[i] = hash[i] << 8 | header.hash.bytes[8 * i + b];
    }
    if (compare(hash, *target) > 0) {
        return make_error(
            ErrorCode::kInvalidArgument,
            fmt::format("its hash is above the target its bits {:08x} encode", header.bits));
    }
    return {};
}

Work Work::from_bits(std::uint32_t bits) {
    const auto t = target_of(bits);
    if (!t) return {};
    const Limbs& target = *t;
    // 2^256 / (target + 1) = ~target / (target + 1) + 1, computed within 256 bits.
    Limbs plus_one = target;
    for (auto& l : plus_one) {
        if (++l != 0) break;
    }
    Limbs inverted;
    for (int i = 0; i < 4; ++i) inverted[i] = ~target[i];
    Work w;
    w.limb = divide(inverted, plus_one);
    return w + Work{{1, 0, 0, 0}};
}

Work Work::operator+(const Work& o) const {
    Work r;
    std::uint64_t carry = 0;
    for (int i = 0; i < 4; ++i) {
        const std::uint64_t s = limb[i] + o.limb[i];
        const std::uint64_t c1 = s < limb[i] ? 1 : 0;
        r.limb[i] = s + carry;
        carry = c1 | (r.limb[i] < s ? 1 : 0);
    }
    return r;
}

std::strong_ordering Work::operator<=>(const Work& o) const {
    const int c = compare(limb, o.limb);
    return c < 0   ? std::strong_ordering::less
           : c > 0 ? std::strong_ordering::greater
                   : std::strong_ordering::equal;
}

std::size_t ChainIndex::HashOf::operator()(const Hash& h) const {
    std::size_t v;
    std::memcpy(&v, h.data(), sizeof v);
    return v;
}

ChainEntry& ChainIndex::add(const BlockHeader& header, std::optional<BlockLocation> location,
                            std::uint64_t seq, bool* added) {
    auto [it, inserted] = entries_.try_emplace(header.hash);
    if (inserted) {
        it->second = std::make_unique<ChainEntry>();
        it->second->header = header;
        it->second->seq = seq;
        next_seq_ = std::max(next_seq_, seq + 1);
    }
    ChainEntry& e = *it->second;
    if (location && !e.location) {
        e.location = std::move(location);
    } else if (location && (location->file != e.location->file || location->offset != e.location->offset)) {
        e.other_copies.push_back(std::move(*location));
    }
    if (added) *added = inserted;
    return e;
}

ChainEntry* ChainIndex::find(const Hash& hash) {
    const auto it = entries_.find(hash);
    return it == entries_.end() ? nullptr : it->second.get();
}

void ChainIndex::connect(const Hash& root, std::uint64_t root_height) {
    std::unordered_map<Hash, std::vector<ChainEntry*>, HashOf> children;
    for (auto& [hash, e] : entries_) {
        e->height.reset();
        e->parent = nullptr;
        e->below_root = false;
        children[e->header.prev].push_back(e.get());
    }
    // Visits what descends from `start`, breadth first: `visit(parent, child)` says
    // whether to go on below the child.
    auto descend = [&](ChainEntry* start, auto&& visit) {
        std::deque<ChainEntry*> queue{start};
        while (!queue.empty()) {
            ChainEntry* e = queue.front();
            queue.pop_front();
            const auto it = children.find(e->header.hash);
            if (it == children.end()) continue;
            for (ChainEntry* c : it->second) {
                if (visit(*e, *c)) queue.push_back(c);
            }
        }
    };
    ChainEntry* r = find(root);
    if (!r) return;
    r->height = root_height;
    r->chain_work = Work::from_bits(r->header.bits);
    descend(r, [&](ChainEntry& e, ChainEntry& c) {
        if (&c == r) return false;
        // What descends from an invalid block is invalid too, and gets no height.
        if (e.invalid || c.invalid) {
            c.invalid = true;
        } else {
            c.parent = &e;
            c.height = *e.height + 1;
            c.chain_work = e.chain_work + Work::from_bits(c.header.bits);
        }
        return true;
    });
    // The root's known ancestors and all that descends from them without reaching the
    // root: blocks below the root, which the chain above it does not need.
    ChainEntry* oldest = r;
    while (ChainEntry* p = find(oldest->header.prev)) {
        if (p == r) break;  // a cycle cannot happen with real hashes; do not loop on one
        oldest = p;
    }
    if (oldest == r) return;
    oldest->below_root = true;
    descend(oldest, [](ChainEntry&, ChainEntry& c) {
        if (c.height || c.below_root) return false;
        c.below_root = true;
        return true;
    });
}

std::vector<const ChainEntry*> ChainIndex::unconnected() const {
    std::vector<const ChainEntry*> out;
    for (const auto& [hash, e] : entries_) {
        if (!e->height && !e->invalid && !e->below_root) out.push_back(e.get());
    }
    std::sort(out.begin(), out.end(), [](const auto* a, const auto* b) { return a->seq < b->seq; });
    return out;
}

const ChainEntry* ChainIndex::best() const {
    const ChainEntry* best = nullptr;
    for (const auto& [hash, e] : entries_) {
        if (!e->height) continue;
        if (!best || e->chain_work > best->chain_work ||
            (e->chain_work == best->chain_work && e->seq < best->seq)) {
            best = e.get();
        }
    }
    return best;
}

std::vector<const ChainEntry*> ChainIndex::path_to(const ChainEntry& tip) {
    std::vector<const ChainEntry*> path;
    for (const ChainEntry* e = &tip; e; e = e->parent) path.push_back(e);
    std::reverse(path.begin(), path.end());
    return path;
}

}  // namespace stateroot::indexer
