#include "stateroot/engine/tree.hpp"

#include <algorithm>
#include <array>
#include <cassert>

namespace stateroot::engine {

// A slot refers to a subtree: empty, a branch or leaf in memory, or a persisted
// record not loaded yet. The tag lives in the top two bits.
namespace {
using Slot = std::uint64_t;
constexpr Slot kEmpty = 0;
constexpr Slot kTagBranch = Slot{1} << 62;
constexpr Slot kTagLeaf = Slot{2} << 62;
constexpr Slot kTagStored = Slot{3} << 62;
constexpr Slot kTagMask = Slot{3} << 62;
constexpr Slot kPayload = ~kTagMask;

Slot tag(Slot s) { return s & kTagMask; }
std::uint64_t payload(Slot s) { return s & kPayload; }
Slot stored(NodeId id) { return id == kNoNode ? kEmpty : kTagStored | id; }
}  // namespace

struct Tree::Branch {
    Hash top;  // the subtree's hash as its parent sees it
    NodeId id = kNoNode;
    Slot child[2] = {kEmpty, kEmpty};
    std::uint8_t depth = 0;
};

struct Tree::Leaf {
    Hash hash;
    Hash path;
    NodeId id = kNoNode;
};

// Fixed-size blocks, so references stay valid while the arena grows.
template <class T>
class Tree::Arena {
  public:
    std::uint64_t alloc(const T& value) {
        std::uint64_t i;
        if (!free_.empty()) {
            i = free_.back();
            free_.pop_back();
        } else {
            i = size_++;
            if ((i >> kShift) == blocks_.size()) blocks_.push_back(std::make_unique<T[]>(kBlock));
        }
        at(i) = value;
        return i;
    }
    void free(std::uint64_t i) { free_.push_back(i); }
    T& at(std::uint64_t i) { return blocks_[i >> kShift][i & (kBlock - 1)]; }
    const T& at(std::uint64_t i) const { return blocks_[i >> kShift][i & (kBlock - 1)]; }
    std::size_t live() const { return size_ - free_.size(); }
    void clear() {
        blocks_.clear();
        free_.clear();
        size_ = 0;
    }

  private:
    static constexpr int kShift = 12;
    static constexpr std::uint64_t kBlock = std::uint64_t{1} << kShift;
    std::vector<std::unique_ptr<T[]>> blocks_;
    std::vector<std::uint64_t> free_;
    std::uint64_t size_ = 0;
};

// A leaf on its way into build(): an existing leaf kept, or a new one.
struct Tree::Entry {
    Hash path;
    Slot slot;
};

// The new content of a subtree during apply(), as its parent at depth `at - 1` sees it.
// A pending branch has no record yet: it gets one in finalize(), once its slot is known.
struct Tree::Sub {
    enum Kind : std::uint8_t { kZ, kLeaf, kBranch };
    Kind kind = kZ;
    bool pending = false;
    Slot slot = kEmpty;  // kLeaf, and kBranch when !pending: the node
    Hash top;            // kBranch: the hash at depth `at`
    int at = 0;
    int depth = 0;                     // pending: split depth
    Slot child[2] = {kEmpty, kEmpty};  // pending: final children
    Slot replaced = kEmpty;            // pending: the existing branch this one supersedes
};

Tree::Tree(NodeReader& reader)
    : reader_(reader),
      branches_(std::make_unique<Arena<Branch>>()),
      leaves_(std::make_unique<Arena<Leaf>>()) {}

Tree::~Tree() = default;

void Tree::reset(NodeId root_id, const Hash& root_hash) {
    branches_->clear();
    leaves_->clear();
    root_ = stored(root_id);
    root_id_ = root_id;
    root_hash_ = root_hash;
}

std::size_t Tree::resident_nodes() const { return branches_->live() + leaves_->live(); }

Hash Tree::node(const Hash& left, const Hash& right) {
    ++update_->stats.hashes;
    return node_hash(left, right);
}

Result<Slot> Tree::load(Slot slot) {
    if (tag(slot) != kTagStored) return slot;
    const NodeId id = payload(slot);
    auto rec = reader_.read(id);
    if (!rec) return std::unexpected(rec.error());
    if (update_) ++update_->stats.node_reads;
    if (rec->leaf) return kTagLeaf | leaves_->alloc(Leaf{rec->hash, rec->path, id});
    Branch b;
    b.top = rec->hash;
    b.id = id;
    b.child[0] = stored(rec->child[0]);
    b.child[1] = stored(rec->child[1]);
    b.depth = static_cast<std::uint8_t>(rec->depth);
    return kTagBranch | branches_->alloc(b);
}

NodeId Tree::id_of(Slot slot) const {
    switch (tag(slot)) {
        case kTagStored:
            return payload(slot);
        case kTagBranch:
            return branches_->at(payload(slot)).id;
        case kTagLeaf:
            return leaves_->at(payload(slot)).id;
        default:
            return kNoNode;
    }
}

Hash Tree::hash_of(const Sub& sub) const {
    switch (sub.kind) {
        case Sub::kLeaf:
            return leaves_->at(payload(sub.slot)).hash;
        case Sub::kBranch:
            return sub.top;
        default:
            return kZeroHash;
    }
}

Result<Tree::Sub> Tree::existing(Slot* loc, int at) {
    auto s = load(*loc);
    if (!s) return std::unexpected(s.error());
    *loc = *s;
    Sub sub;
    sub.at = at;
    sub.slot = *s;
    if (tag(*s) == kTagLeaf) {
        sub.kind = Sub::kLeaf;
    } else if (tag(*s) == kTagBranch) {
        sub.kind = Sub::kBranch;
        sub.top = branches_->at(payload(*s)).top;
    }
    return sub;
}

Result<Hash> Tree::prefix_path(Slot slot) {
    // Any leaf below a branch carries the branch's prefix; take the leftmost.
    Slot* loc = &slot;
    for (;;) {
        auto s = load(*loc);
        if (!s) return std::unexpected(s.error());
        *loc = *s;
        if (tag(*s) == kTagLeaf) return leaves_->at(payload(*s)).path;
        loc = &branches_->at(payload(*s)).child[0];
    }
}

Tree::Sub Tree::lift(Sub sub, int at, int side) {
    if (sub.kind != Sub::kBranch) return sub;  // a lone leaf moves up; empty stays empty
    if (!sub.pending) {
        // An existing branch whose slot moves up is rewritten with its new top hash.
        const Branch& b = branches_->at(payload(sub.slot));
        sub.pending = true;
        sub.replaced = sub.slot;
        sub.depth = b.depth;
        sub.child[0] = b.child[0];
        sub.child[1] = b.child[1];
    }
    sub.top = side == 0 ? node(sub.top, kZeroHash) : node(kZeroHash, sub.top);
    sub.at = at;
    return sub;
}

Tree::Sub Tree::join(int at, Sub left, Sub right) {
    Sub sub;
    sub.kind = Sub::kBranch;
    sub.pending = true;
    sub.at = at;
    sub.depth = at;
    sub.top = node(hash_of(left), hash_of(right));
    sub.child[0] = finalize(left);
    sub.child[1] = finalize(right);
    return sub;
}

Tree::Sub Tree::combine(int at, Sub left, Sub right) {
    if (left.kind == Sub::kZ && right.kind == Sub::kZ) return Sub{};
    if (left.kind == Sub::kZ) return lift(right, at, 1);
    if (right.kind == Sub::kZ) return lift(left, at, 0);
    return join(at, left, right);
}

Slot Tree::finalize(const Sub& sub) {
    if (sub.kind == Sub::kZ) return kEmpty;
    if (!sub.pending) return sub.slot;
    Branch b;
    b.top = sub.top;
    b.depth = static_cast<std::uint8_t>(sub.depth);
    b.child[0] = sub.child[0];
    b.child[1] = sub.child[1];
    b.id = writer_->add_branch(sub.depth, sub.top, id_of(sub.child[0]), id_of(sub.child[1]));
    ++update_->stats.new_nodes;
    const Slot slot = kTagBranch | branches_->alloc(b);
    update_->fresh.push_back(slot);
    if (sub.replaced != kEmpty) update_->stale.push_back(sub.replaced);
    return slot;
}

Slot Tree::new_leaf(const Hash& path, const Hash& value_hash, const Hash& hash) {
    const NodeId id = writer_->add_leaf(path, value_hash);
    ++update_->stats.new_nodes;
    const Slot slot = kTagLeaf | leaves_->alloc(Leaf{hash, path, id});
    update_->fresh.push_back(slot);
    return slot;
}

Tree::Entry Tree::inserted(const TreeChange& c) {
    ++update_->stats.hashes;
    ++update_->live_key_delta;
    return {c.path, new_leaf(c.path, c.value_hash, leaf_hash(c.path, c.value_hash))};
}

Tree::Sub Tree::build(int at, std::span<const Entry> entries) {
    Sub sub;
    if (entries.empty()) return sub;
    if (entries.size() == 1) {
        sub.kind = Sub::kLeaf;
        sub.slot = entries[0].slot;
        sub.at = at;
        return sub;
    }
    const Hash& first = entries.front().path;
    const int d = common_prefix_bits(first, entries.back().path);
    const auto mid = std::partition_point(entries.begin(), entries.end(),
                                          [d](const Entry& e) { return bit(e.path, d) == 0; });
    const std::size_t m = static_cast<std::size_t>(mid - entries.begin());
    sub = join(d, build(d + 1, entries.first(m)), build(d + 1, entries.subspan(m)));
    for (int j = d - 1; j >= at; --j) sub = lift(sub, j, bit(first, j));
    return sub;
}

Result<Tree::Sub> Tree::retop(Slot slot, int at, const Hash& prefix) {
    Branch& b = branches_->at(payload(slot));
    Hash h[2];
    for (int side = 0; side < 2; ++side) {
        auto child = existing(&b.child[side], b.depth + 1);
        if (!child) return std::unexpected(child.error());
        h[side] = hash_of(*child);
    }
    Sub sub;
    sub.kind = Sub::kBranch;
    sub.pending = true;
    sub.replaced = slot;
    sub.depth = b.depth;
    sub.child[0] = b.child[0];
    sub.child[1] = b.child[1];
    sub.top = node(h[0], h[1]);
    for (int j = b.depth - 1; j >= at; --j) {
        sub.top = bit(prefix, j) == 0 ? node(sub.top, kZeroHash) : node(kZeroHash, sub.top);
    }
    sub.at = at;
    return sub;
}

// The new content of the subtree in *loc, seen from depth `at`, after `cs` (all of whose
// paths share the subtree's first `at` bits); nullopt if it does not change.
Result<std::optional<Tree::Sub>> Tree::apply_at(Slot* loc, int at, std::span<const TreeChange> cs) {
    using R = std::optional<Sub>;
    if (cs.empty()) return R();
    {
        auto s = load(*loc);
        if (!s) return std::unexpected(s.error());
        *loc = *s;
    }
    const Slot slot = *loc;
    std::vector<Entry> entries;

    if (tag(slot) == kEmpty || tag(slot) == kTagLeaf) {
        // The existing leaf, if any, unless a change replaces or deletes it, goes into
        // the new subtree in path order among the inserted leaves.
        const Leaf* old = tag(slot) == kTagLeaf ? &leaves_->at(payload(slot)) : nullptr;
        bool placed = old == nullptr;
        bool changed = false;
        entries.reserve(cs.size() + 1);
        for (const TreeChange& c : cs) {
            if (!placed && old->path < c.path) {
                entries.push_back({old->path, slot});
                placed = true;
            }
            if (!placed && old->path == c.path) {
                placed = true;
                if (!c.del) {
                    ++update_->stats.hashes;
                    const Hash h = leaf_hash(c.path, c.value_hash);
                    if (h == old->hash) {
                        entries.push_back({c.path, slot});  // same value: the leaf stays
                        continue;
                    }
                    entries.push_back({c.path, new_leaf(c.path, c.value_hash, h)});
                } else {
                    --update_->live_key_delta;
                }
                changed = true;
                update_->stale.push_back(slot);
                continue;
            }
            if (!c.del) {  // deleting an absent path changes nothing
                changed = true;
                entries.push_back(inserted(c));
            }
        }
        if (!placed) entries.push_back({old->path, slot});
        if (!changed) return R();
        return R(build(at, entries));
    }

    // A branch. Changes are sorted, so those with bit `at` = 0 come first.
    const auto mid = std::partition_point(
        cs.begin(), cs.end(), [at](const TreeChange& c) { return bit(c.path, at) == 0; });
    const std::size_t m = static_cast<std::size_t>(mid - cs.begin());
    const std::span<const TreeChange> side_cs[2] = {cs.first(m), cs.subspan(m)};
    const std::uint64_t index = payload(slot);

    if (branches_->at(index).depth > at) {
        // A one-sided level above the split: the branch continues on side `b`; changes
        // on the other side hang a new subtree beside it.
        auto prefix = prefix_path(slot);
        if (!prefix) return std::unexpected(prefix.error());
        const int b = bit(*prefix, at);
        for (const TreeChange& c : side_cs[1 - b]) {
            if (!c.del) entries.push_back(inserted(c));
        }
        const Sub other = build(at + 1, entries);
        auto match = apply_at(loc, at + 1, side_cs[b]);
        if (!match) return std::unexpected(match.error());
        if (!*match && other.kind == Sub::kZ) return R();
        Sub mine;
        if (*match) {
            mine = **match;
        } else {
            // Unchanged, but the new subtree beside it moves its slot one level down.
            auto moved = retop(slot, at + 1, *prefix);
            if (!moved) return std::unexpected(moved.error());
            mine = *moved;
        }
        return R(b == 0 ? combine(at, mine, other) : combine(at, other, mine));
    }

    std::optional<Sub> result[2];
    for (int side = 0; side < 2; ++side) {
        auto r = apply_at(&branches_->at(index).child[side], at + 1, side_cs[side]);
        if (!r) return std::unexpected(r.error());
        result[side] = *r;
    }
    if (!result[0] && !result[1]) return R();
    for (int side = 0; side < 2; ++side) {
        if (result[side]) continue;
        auto e = existing(&branches_->at(index).child[side], at + 1);
        if (!e) return std::unexpected(e.error());
        result[side] = *e;
    }
    update_->stale.push_back(slot);
    return R(combine(at, *result[0], *result[1]));
}

Result<Tree::Update> Tree::apply(std::span<const TreeChange> changes, ChunkWriter& writer) {
    Update update;
    writer_ = &writer;
    update_ = &update;
    auto result = apply_at(&root_, 0, changes);
    if (!result) {
        // Loads made so far stay: they are part of the current tree.
        abort(std::move(update));
        writer_ = nullptr;
        update_ = nullptr;
        return std::unexpected(result.error());
    }
    if (!*result) {
        update.root_slot = root_;
        update.root_hash = root_hash_;
        update.root_id = root_id_;
    } else {
        update.root_hash = hash_of(**result);
        update.root_slot = finalize(**result);
        update.root_id = id_of(update.root_slot);
    }
    update.stale_ids.reserve(update.stale.size());
    for (Slot s : update.stale) update.stale_ids.push_back(id_of(s));
    std::sort(update.stale_ids.begin(), update.stale_ids.end());
    writer_ = nullptr;
    update_ = nullptr;
    return update;
}

void Tree::release(Slot slot) {
    tag(slot) == kTagLeaf ? leaves_->free(payload(slot)) : branches_->free(payload(slot));
}

void Tree::commit(Update&& update) {
    for (Slot s : update.stale) release(s);
    root_ = update.root_slot;
    root_hash_ = update.root_hash;
    root_id_ = update.root_id;
    update = Update{};
}

void Tree::abort(Update&& update) {
    for (Slot s : update.fresh) release(s);
    update = Update{};
}

}  // namespace stateroot::engine
