#include "stateroot/engine/tree.hpp"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cstdio>
#include <cstdlib>
#include <queue>

#include "worker.hpp"

namespace stateroot::engine {

// A slot names a subtree: empty, a branch or leaf in memory, or a persisted record
// not loaded yet. The tag lives in the top two bits; in-memory nodes carry the arena
// that holds them in bit 61, and a branch its depth in bits 53-60: the walk learns
// whether a branch splits at the level it is at from the link already in cache, and a
// branch is 96 bytes, two cache lines.
namespace {
using Slot = std::uint64_t;
constexpr Slot kEmpty = 0;
constexpr Slot kTagBranch = Slot{1} << 62;
constexpr Slot kTagLeaf = Slot{2} << 62;
constexpr Slot kTagStored = Slot{3} << 62;
constexpr Slot kTagMask = Slot{3} << 62;
constexpr Slot kArenaBit = Slot{1} << 61;
constexpr int kDepthShift = 53;
constexpr Slot kIndexMask = (Slot{1} << kDepthShift) - 1;

Slot tag(Slot s) { return s & kTagMask; }

// Sorts least significant digit first, 11 bits at a time, for as many digits as the
// largest value needs: a height supersedes (and frees the slots of) ~10 nodes per
// changed key, and a comparison sort of them showed in profiles.
void radix_sort(std::span<std::uint64_t> values) {
    if (values.size() < 256) {
        std::sort(values.begin(), values.end());
        return;
    }
    const std::uint64_t max = *std::max_element(values.begin(), values.end());
    std::vector<std::uint64_t> tmp(values.size());
    std::span<std::uint64_t> from = values;
    std::span<std::uint64_t> to = tmp;
    for (int shift = 0; shift < 64 && (max >> shift) != 0; shift += 11) {
        std::size_t count[2049] = {};
        for (std::uint64_t v : from) ++count[((v >> shift) & 2047) + 1];
        for (std::size_t i = 1; i < 2049; ++i) count[i] += count[i - 1];
        for (std::uint64_t v : from) to[count[(v >> shift) & 2047]++] = v;
        std::swap(from, to);
    }
    if (from.data() != values.data()) std::copy(from.begin(), from.end(), values.begin());
}
std::uint64_t index_of(Slot s) { return s & kIndexMask; }
int arena_of(Slot s) { return (s & kArenaBit) ? 1 : 0; }
int depth_of(Slot s) { return static_cast<int>((s >> kDepthShift) & 255); }

// Starts fetching the cache lines of `node` (two for a branch), for writing if kWrite.
// GCC takes a function whose only effect is a prefetch for one without effects and
// drops the calls to it, as it once did Tree::prefetch's: the empty asm statement,
// which must run, keeps them.
template <int kWrite = 0, class T>
void prefetch_node(const T* node) {
    const char* p = reinterpret_cast<const char*>(node);
    __builtin_prefetch(p, kWrite);
    __builtin_prefetch(p + sizeof(T) - 1, kWrite);
    asm volatile("" : : "r"(p));
}
Slot in_arena(Slot tag_bits, int arena, std::uint64_t index, int depth = 0) {
    return tag_bits | (arena ? kArenaBit : 0) | (Slot(depth) << kDepthShift) | index;
}
// A stored link to a child of the branch at `parent_depth` keeps that depth, flagged by
// the arena bit (which a stored link has no use for), so that loading the child can
// check that it splits below its parent.
Slot stored_child(NodeId id, int parent_depth) {
    return kTagStored | kArenaBit | (Slot(parent_depth) << kDepthShift) | id;
}
bool has_parent_depth(Slot stored) { return (stored & kArenaBit) != 0; }
// A subtree whose paths do not share the bits that lead to its slot: a record written
// wrong (its children swapped, say) with a valid checksum.
Error misplaced(NodeId id, int at) {
    return {ErrorCode::kCorruption,
            fmt::format("corrupt tree: node {} does not belong at depth {}", id, at)};
}
}  // namespace

// A link to a subtree with what its parent needs of it: its node id and its top hash
// (its hash at this slot). The top of a stored, unloaded subtree is not known.
struct Tree::Ref {
    Slot slot = kEmpty;
    NodeId id = kNoNode;
    Hash top;
};

// Its depth is in the slot that links to it.
struct Tree::Branch {
    Ref child[2];
};

struct Tree::Leaf {
    Hash path;
};

// Nodes in one reserved range of address space, backed by memory only as it is touched
// and by transparent huge pages where the kernel allows: the tree is walked at random,
// and with 4 KiB pages every level would also miss the TLB. Addresses never move, so
// references stay valid while the arena grows and one thread may read nodes of an
// arena that another allocates in.
template <class T>
class Tree::Arena {
public:
    Arena() {
        void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::fprintf(stderr, "stateroot: cannot reserve %zu bytes of address space for tree nodes\n", kBytes);
            std::abort();
        }
        madvise(p, kBytes, MADV_HUGEPAGE);
        base_ = static_cast<T*>(p);
    }
    ~Arena() { munmap(base_, kBytes); }
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;

    std::uint64_t alloc(const T& value) {
        std::uint64_t i;
        if (!free_.empty()) {
            i = free_.back();
            free_.pop_back();
            ordered_ = std::min(ordered_, free_.size());
            // Free slots are scattered: fetch the one taken a few allocations from now,
            // so writing a node does not wait for its cache lines.
            if (free_.size() >= kAhead) prefetch_for_write(free_[free_.size() - kAhead]);
        } else {
            i = size_++;
            if (i >= kMaxNodes) {
                std::fprintf(stderr, "stateroot: more than %zu tree nodes in memory\n", kMaxNodes);
                std::abort();
            }
        }
        new (&base_[i]) T(value);
        return i;
    }
    void free(std::uint64_t i) { free_.push_back(i); }
    // Orders the slots freed since the last call so that they are handed out in
    // ascending address order. They were freed in path order, scattered over the whole
    // arena; taken in address order, the allocations of a height sweep the arena once
    // instead of jumping across it (at ten million keys the tree's helper thread took a
    // tenth less CPU, docs/performance.md).
    void order_freed() {
        const std::span<std::uint64_t> fresh(free_.data() + ordered_, free_.size() - ordered_);
        radix_sort(fresh);
        std::reverse(fresh.begin(), fresh.end());
        ordered_ = free_.size();
    }
    T& at(std::uint64_t i) { return base_[i]; }
    std::size_t live() const { return size_ - free_.size(); }
    // Slots ever used: what the arena occupies in memory.
    std::size_t used() const { return size_; }
    // The free slots below live(), for the nodes above it to move into.
    std::vector<std::uint64_t> holes() const {
        std::vector<std::uint64_t> h;
        for (std::uint64_t i : free_) {
            if (i < live()) h.push_back(i);
        }
        return h;
    }
    // Where the node at `i` lives once moved below live(): into one of `holes` if it
    // is above.
    std::uint64_t move_down(std::uint64_t i, std::vector<std::uint64_t>& holes) {
        if (i < live()) return i;
        const std::uint64_t to = holes.back();
        holes.pop_back();
        base_[to] = base_[i];
        return to;
    }
    // Once every node is below live(): forgets the slots above and gives their memory
    // back.
    void shrink() {
        const std::size_t end = live();
        const std::uintptr_t from = (reinterpret_cast<std::uintptr_t>(base_ + end) + kPage - 1) / kPage * kPage;
        const std::uintptr_t to = reinterpret_cast<std::uintptr_t>(base_ + size_);
        if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
        free_.clear();
        ordered_ = 0;
        size_ = end;
    }
    // Forgets every node and gives the memory back.
    void clear() {
        madvise(base_, size_ * sizeof(T), MADV_DONTNEED);
        free_.clear();
        ordered_ = 0;
        size_ = 0;
    }

private:
    static constexpr std::size_t kPage = 4096;
    // Far enough ahead for the slot to arrive before it is written: 32 measured a few
    // per cent faster than 8 at ten million keys (docs/performance.md).
    static constexpr std::size_t kAhead = 32;
    void prefetch_for_write(std::uint64_t i) const { prefetch_node<1>(base_ + i); }
    static constexpr std::size_t kMaxNodes = std::size_t{1} << 30;
    static constexpr std::size_t kBytes = kMaxNodes * sizeof(T);
    T* base_ = nullptr;
    std::vector<std::uint64_t> free_;
    std::size_t ordered_ = 0;  // free_[0, ordered_) were ordered by order_freed()
    std::uint64_t size_ = 0;
};

// A node hash put off while a group of changes is worked on: the top of a new branch,
// which starts as the hash of its children (or as a given hash) and is wrapped once
// per one-sided level above it. Its result goes into its parent's link and its record.
struct Tree::HashJob {
    Slot branch = kEmpty;  // if set, the top starts as the hash of its children's tops
    Hash value;            // else it starts as this; in the end, the result
    std::uint64_t sides[4] = {};  // bit i: the side of the i-th wrap
    std::uint16_t wraps = 0;
    // 1 + the highest rank among the jobs whose results it hashes: jobs of one rank
    // are independent of each other.
    std::uint16_t rank = 1;
    std::uint8_t side = 0;     // which child of `parent` it is
    Slot parent = kEmpty;      // the branch whose link takes the result, once placed
    NodeId record = kNoNode;   // the record that takes the result, once written
};

namespace {
constexpr std::uint32_t kNoJob = ~std::uint32_t{0};
}  // namespace

// What one thread of an update works with and produces.
struct Tree::Context {
    Context(int a, NodeReader* r, std::uint64_t first_chunk) : arena(a), reader(r), writer(first_chunk) {}
    int arena;
    NodeReader* reader;
    ChunkWriter writer;
    std::vector<Slot> fresh;                       // nodes created: freed by abort()
    std::vector<std::pair<Slot, NodeId>> stale;    // nodes superseded: freed by commit()
    std::int64_t live_key_delta = 0;
    TreeStats stats;
    bool deferring = false;       // hashes are put off into `jobs` (kHashGroup)
    std::vector<HashJob> jobs;
    std::vector<std::uint32_t> job_order;  // run_jobs(): jobs by rank
};

// A leaf on its way into build(): an existing leaf kept, or a new one.
struct Tree::Entry {
    Hash path;
    Ref ref;
};

// The new content of a subtree during apply(), as its parent at depth `at - 1` sees it:
// a link whose top is the hash at `at`. A pending branch is already in the arena but has
// no record and no id yet: it gets them in finalize(), once its slot is known.
struct Tree::Sub {
    enum Kind : std::uint8_t { kZ, kLeaf, kBranch };
    Kind kind = kZ;
    bool pending = false;
    int at = 0;
    Ref ref;
    Slot replaced = kEmpty;  // pending: the existing branch it supersedes, if any
    NodeId replaced_id = kNoNode;
    std::uint32_t job = kNoJob;  // pending, while hashes are put off: the job of its top
};

Tree::Update::Update() : root(std::make_unique<Ref>()) {}
Tree::Update::~Update() = default;
Tree::Update::Update(Update&&) noexcept = default;
Tree::Update& Tree::Update::operator=(Update&&) noexcept = default;

void Tree::Update::write_records(storage::WriteBatch& batch) const {
    for (const auto& part : parts) part->writer.write_to(batch);
}

std::size_t Tree::Update::record_bytes() const {
    std::size_t n = 0;
    for (const auto& part : parts) n += part->writer.row_bytes();
    return n;
}

Tree::Tree(NodeReader& reader, NodeReader* helper)
    : reader_(reader), helper_(helper), root_(std::make_unique<Ref>()) {
    for (int a = 0; a < 2; ++a) {
        branches_[a] = std::make_unique<Arena<Branch>>();
        leaves_[a] = std::make_unique<Arena<Leaf>>();
    }
    if (helper_) worker_ = std::make_unique<Worker>("stateroot:tree");
}

Tree::~Tree() = default;

void Tree::reset(NodeId root_id, const Hash& root_hash) {
    for (int a = 0; a < 2; ++a) {
        branches_[a]->clear();
        leaves_[a]->clear();
    }
    trimmed_to_ = growth_ = 0;
    *root_ = Ref{root_id == kNoNode ? kEmpty : kTagStored | root_id, root_id, root_hash};
}

const Hash& Tree::root_hash() const { return root_->slot == kEmpty ? kZeroHash : root_->top; }
NodeId Tree::root_id() const { return root_->id; }

std::size_t Tree::resident_nodes() const {
    std::size_t n = 0;
    for (int a = 0; a < 2; ++a) n += branches_[a]->live() + leaves_[a]->live();
    return n;
}

std::size_t Tree::resident_bytes() const { return arena_bytes(false); }
std::size_t Tree::memory_bytes() const { return arena_bytes(true); }

std::size_t Tree::arena_bytes(bool free_slots_too) const {
    std::size_t n = 0;
    for (int a = 0; a < 2; ++a) {
        const auto& b = *branches_[a];
        const auto& l = *leaves_[a];
        n += (free_slots_too ? b.used() : b.live()) * sizeof(Branch) +
             (free_slots_too ? l.used() : l.live()) * sizeof(Leaf);
    }
    return n;
}

bool Tree::root_splits() const { return tag(root_->slot) == kTagBranch && depth_of(root_->slot) == 0; }

Tree::Branch& Tree::branch(Slot slot) { return branches_[arena_of(slot)]->at(index_of(slot)); }
Tree::Leaf& Tree::leaf(Slot slot) { return leaves_[arena_of(slot)]->at(index_of(slot)); }

void Tree::prefetch(Slot slot) {
    if (tag(slot) == kTagBranch) prefetch_node(&branch(slot));
    if (tag(slot) == kTagLeaf) prefetch_node(&leaf(slot));
}

void Tree::release(Slot slot) {
    if (tag(slot) == kTagLeaf) leaves_[arena_of(slot)]->free(index_of(slot));
    if (tag(slot) == kTagBranch) branches_[arena_of(slot)]->free(index_of(slot));
}

void Tree::release_subtree(Slot slot) {
    if (tag(slot) == kTagBranch) {
        for (const Ref& child : branch(slot).child) release_subtree(child.slot);
    }
    release(slot);
}

// Adds the bytes of the nodes held in memory under `ref`, a slot at depth `at`, to
// bytes[depth of their slot].
void Tree::measure(const Ref& ref, int at, std::vector<std::size_t>& bytes) {
    if (tag(ref.slot) == kTagLeaf) bytes[at] += sizeof(Leaf);
    if (tag(ref.slot) != kTagBranch) return;
    bytes[at] += sizeof(Branch);
    const Branch& b = branch(ref.slot);
    for (const Ref& child : b.child) measure(child, depth_of(ref.slot) + 1, bytes);
}

void Tree::evict(Ref& ref, int at, int cut, NodeId unwritten) {
    if (tag(ref.slot) != kTagBranch && tag(ref.slot) != kTagLeaf) return;
    // A subtree is at least as old as its top node: when its top was written, so was
    // everything below it.
    if (at >= cut && ref.id < unwritten) {
        release_subtree(ref.slot);
        ref.slot = at > 0 ? stored_child(ref.id, at - 1) : kTagStored | ref.id;
        return;
    }
    if (tag(ref.slot) != kTagBranch) return;
    Branch& b = branch(ref.slot);
    for (Ref& child : b.child) evict(child, depth_of(ref.slot) + 1, cut, unwritten);
}

// Free slots below each arena's live count, which the nodes above it move into.
struct Tree::Holes {
    std::vector<std::uint64_t> branches[2];
    std::vector<std::uint64_t> leaves[2];
};

void Tree::relocate(Ref& ref, Holes& holes) {
    const int a = arena_of(ref.slot);
    const std::uint64_t i = index_of(ref.slot);
    if (tag(ref.slot) == kTagBranch) {
        for (Ref& child : branch(ref.slot).child) relocate(child, holes);
        ref.slot = in_arena(kTagBranch, a, branches_[a]->move_down(i, holes.branches[a]), depth_of(ref.slot));
    } else if (tag(ref.slot) == kTagLeaf) {
        ref.slot = in_arena(kTagLeaf, a, leaves_[a]->move_down(i, holes.leaves[a]));
    }
}

void Tree::trim(NodeId unwritten) {
    if (budget_ == 0) return;
    // The next height will likely grow the arenas by about what the last one did, and
    // while it is built the nodes it replaces stay too: trim to leave room for two such
    // heights, so that the budget bounds the tree during a height, not only between.
    const std::size_t now = memory_bytes();
    growth_ = std::max(now > trimmed_to_ ? now - trimmed_to_ : 0, growth_ / 2);
    const std::size_t limit = budget_ - std::min(budget_ / 2, 2 * growth_);
    trimmed_to_ = now;
    if (now <= limit) return;
    if (resident_bytes() > limit) {
        std::vector<std::size_t> bytes(258);
        measure(*root_, 0, bytes);
        const std::size_t keep = limit / 4 * 3;
        std::size_t kept = bytes[0];
        int cut = 1;
        while (cut < 257 && kept + bytes[cut] <= keep) kept += bytes[cut++];
        evict(*root_, 0, cut, unwritten);
    }
    trimmed_to_ = memory_bytes();
    // The nodes kept are scattered up to the high-water mark of the largest height
    // so far: move them down so the memory above can be given back.
    if (trimmed_to_ <= limit) return;
    Holes holes;
    for (int a = 0; a < 2; ++a) {
        holes.branches[a] = branches_[a]->holes();
        holes.leaves[a] = leaves_[a]->holes();
    }
    relocate(*root_, holes);
    for (int a = 0; a < 2; ++a) {
        branches_[a]->shrink();
        leaves_[a]->shrink();
    }
    trimmed_to_ = memory_bytes();
}

Hash Tree::node(Context& cx, const Hash& left, const Hash& right) {
    ++cx.stats.hashes;
    return node_hash(left, right);
}

void Tree::run_jobs(Context& cx, Sub* result) {
    std::vector<HashJob>& jobs = cx.jobs;
    if (result == nullptr) {
        jobs.clear();
        return;
    }
    // The jobs by rank (a counting sort): each rank's jobs wait only for lower ranks.
    std::uint16_t max_rank = 0;
    for (const HashJob& job : jobs) max_rank = std::max(max_rank, job.rank);
    std::vector<std::uint32_t> starts(max_rank + 2, 0);
    for (const HashJob& job : jobs) ++starts[job.rank + 1];
    for (std::size_t r = 1; r < starts.size(); ++r) starts[r] += starts[r - 1];
    std::vector<std::uint32_t>& order = cx.job_order;
    order.resize(jobs.size());
    {
        std::vector<std::uint32_t> next(starts.begin(), starts.end() - 1);
        for (std::uint32_t i = 0; i < jobs.size(); ++i) order[next[jobs[i].rank]++] = i;
    }
    auto finish = [&](HashJob& job) {
        if (job.parent != kEmpty) branch(job.parent).child[job.side].top = job.value;
        if (job.record != kNoNode) cx.writer.set_branch_hash(job.record, job.value);
    };
    // Each lane works through one job's chain of hashes (its children, then each
    // wrap), and takes the rank's next job when done.
    struct Lane {
        std::uint32_t job;
        bool children;         // the next hash is of the branch's children
        std::uint16_t wrapped;  // wraps done
    };
    for (std::size_t r = 0; r + 1 < starts.size(); ++r) {
        std::uint32_t next = starts[r];
        const std::uint32_t end = starts[r + 1];
        Lane lanes[kHashLanes];
        int active = 0;
        for (;;) {
            while (active < kHashLanes && next < end) {
                HashJob& job = jobs[order[next]];
                Lane lane{order[next++], job.branch != kEmpty, 0};
                if (!lane.children && job.wraps == 0) {
                    finish(job);
                    continue;
                }
                lanes[active++] = lane;
            }
            if (active == 0) break;
            const Hash* left[kHashLanes];
            const Hash* right[kHashLanes];
            Hash* out[kHashLanes];
            for (int i = 0; i < active; ++i) {
                HashJob& job = jobs[lanes[i].job];
                out[i] = &job.value;
                if (lanes[i].children) {
                    const Branch& b = branch(job.branch);
                    left[i] = &b.child[0].top;
                    right[i] = &b.child[1].top;
                } else {
                    const std::uint16_t w = lanes[i].wrapped;
                    const bool side = (job.sides[w >> 6] >> (w & 63)) & 1;
                    left[i] = side ? &kZeroHash : &job.value;
                    right[i] = side ? &job.value : &kZeroHash;
                }
            }
            node_hashes(active, left, right, out);
            cx.stats.hashes += static_cast<std::uint64_t>(active);
            for (int i = active - 1; i >= 0; --i) {
                Lane& lane = lanes[i];
                HashJob& job = jobs[lane.job];
                if (lane.children) {
                    lane.children = false;
                } else {
                    ++lane.wrapped;
                }
                if (lane.wrapped == job.wraps) {
                    finish(job);
                    lane = lanes[--active];
                }
            }
        }
    }
    if (result->job != kNoJob) {
        result->ref.top = jobs[result->job].value;
        result->job = kNoJob;
    }
    jobs.clear();
}

void Tree::walk_ahead(std::uint64_t top, std::span<const TreeChange> cs) {
    Slot at[kWalkAheadGroup];
    const std::size_t n = cs.size();
    for (std::size_t i = 0; i < n; ++i) at[i] = top;
    for (bool more = n > 0; more;) {
        more = false;
        for (std::size_t i = 0; i < n; ++i) {
            if (tag(at[i]) != kTagBranch) continue;
            const Slot next = branch(at[i]).child[bit(cs[i].path, depth_of(at[i]))].slot;
            prefetch(next);
            at[i] = next;
            more = true;
        }
    }
}

// Brings a stored subtree into memory (its record only; its children stay stored),
// learning its top hash.
Status Tree::load(Context& cx, Ref& ref) {
    if (tag(ref.slot) != kTagStored) return {};
    auto rec = cx.reader->read(ref.id);
    if (!rec) return std::unexpected(rec.error());
    ++cx.stats.node_reads;
    ref.top = rec->hash;
    if (rec->leaf) {
        ref.slot = in_arena(kTagLeaf, cx.arena, leaves_[cx.arena]->alloc(Leaf{rec->path}));
        return {};
    }
    // A branch splits below its parent (a record written wrong, with a valid checksum,
    // would otherwise send the walk past the 256 bits of a path).
    if (has_parent_depth(ref.slot) && rec->depth <= depth_of(ref.slot)) {
        return make_error(ErrorCode::kCorruption,
                          fmt::format("corrupt tree: node {} splits at depth {}, not below its "
                                      "parent at depth {}",
                                      ref.id, rec->depth, depth_of(ref.slot)));
    }
    Branch b;
    for (int side = 0; side < 2; ++side) {
        b.child[side] = Ref{stored_child(rec->child[side], rec->depth), rec->child[side], {}};
    }
    ref.slot = in_arena(kTagBranch, cx.arena, branches_[cx.arena]->alloc(b), rec->depth);
    return {};
}

// The nodes a sweep has found and not loaded yet, by chunk: a chain of entries per
// chunk, whose head an open-addressing table finds. Chunks holding nodes of the
// current tree are few against those written, and scattered among them.
class Tree::PendingByChunk {
public:
    // Returns whether `chunk` had no pending node before.
    bool add(std::uint64_t chunk, Ref* ref) {
        if (2 * (used_ + 1) > keys_.size()) grow();
        std::uint32_t& head = heads_[find(chunk)];
        const bool first = head == kNone;
        std::uint32_t i;
        if (free_ != kNone) {
            i = free_;
            free_ = next(i);
        } else {
            i = size_++;
            if (i % kPage == 0) pages_.push_back(std::make_unique<Page>());
        }
        next(i) = head;
        ref_at(i) = ref;
        head = i;
        return first;
    }
    // Calls f(ref) for each pending node of `chunk`, and forgets them.
    template <class F>
    void take(std::uint64_t chunk, F&& f) {
        std::uint32_t& head = heads_[find(chunk)];
        for (std::uint32_t i = head; i != kNone;) {
            f(ref_at(i));
            const std::uint32_t after = next(i);
            next(i) = free_;  // reused: the lists hold the sweep's frontier, not all it found
            free_ = i;
            i = after;
        }
        head = kNone;  // the slot stays taken: nothing is added to a chunk once taken
    }

private:
    static constexpr std::uint32_t kNone = ~std::uint32_t{0};
    static constexpr std::uint64_t kFree = ~std::uint64_t{0};
    std::size_t find(std::uint64_t chunk) {
        const std::size_t mask = keys_.size() - 1;
        for (std::size_t i = (chunk * 0x9e3779b97f4a7c15u) >> 20 & mask;; i = (i + 1) & mask) {
            if (keys_[i] == chunk) return i;
            if (keys_[i] == kFree) {
                keys_[i] = chunk;
                heads_[i] = kNone;
                ++used_;
                return i;
            }
        }
    }
    void grow() {
        std::vector<std::uint64_t> keys = std::move(keys_);
        std::vector<std::uint32_t> heads = std::move(heads_);
        keys_.assign(std::max<std::size_t>(1024, 2 * keys.size()), kFree);
        heads_.assign(keys_.size(), kNone);
        used_ = 0;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (keys[i] != kFree) heads_[find(keys[i])] = heads[i];
        }
    }
    std::vector<std::uint64_t> keys_;
    std::vector<std::uint32_t> heads_;
    std::size_t used_ = 0;
    // The entries, in pages: the frontier reaches millions of entries at ten million
    // keys, and a vector doubling its capacity would hold up to twice that.
    static constexpr std::uint32_t kPage = 1 << 16;
    struct Page {
        Ref* refs[kPage];
        std::uint32_t next[kPage];
    };
    Ref*& ref_at(std::uint32_t i) { return pages_[i / kPage]->refs[i % kPage]; }
    std::uint32_t& next(std::uint32_t i) { return pages_[i / kPage]->next[i % kPage]; }
    std::vector<std::unique_ptr<Page>> pages_;
    std::uint32_t size_ = 0;
    std::uint32_t free_ = kNone;  // a chain of the entries taken
};

Status Tree::sweep(Context& cx, Ref& top, ChunkPrefetcher* prefetcher) {
    // Chunk by chunk, highest first: a record is written after those of its children,
    // so every node found below one being loaded has a lower id, in the same chunk or
    // one below. Each chunk is then read once, whatever order the tree's nodes were
    // written in, and the prefetcher hears of it as soon as a node in it is found.
    PendingByChunk pending;
    std::priority_queue<std::uint64_t> chunks;
    auto add = [&](Ref& r) {
        const std::uint64_t c = r.id / schema::kChunkNodes;
        if (pending.add(c, &r)) {
            chunks.push(c);
            if (prefetcher) prefetcher->add(c);
        }
    };
    // The nodes in memory lead to the first stored ones.
    std::vector<Ref*> resident{&top};
    while (!resident.empty()) {
        Ref& r = *resident.back();
        resident.pop_back();
        if (tag(r.slot) == kTagStored) add(r);
        if (tag(r.slot) != kTagBranch) continue;
        for (Ref& child : branch(r.slot).child) resident.push_back(&child);
    }
    std::array<Ref*, schema::kChunkNodes> in_chunk;
    while (!chunks.empty()) {
        const std::uint64_t c = chunks.top();
        chunks.pop();
        in_chunk.fill(nullptr);
        pending.take(c, [&](Ref* r) { in_chunk[r->id % schema::kChunkNodes] = r; });
        for (std::size_t i = schema::kChunkNodes; i-- > 0;) {
            if (!in_chunk[i]) continue;
            Ref& r = *in_chunk[i];
            if (Status s = load(cx, r); !s) return s;
            if (tag(r.slot) != kTagBranch) continue;
            for (Ref& child : branch(r.slot).child) {
                if (tag(child.slot) != kTagStored) continue;
                if (child.id / schema::kChunkNodes == c) {
                    in_chunk[child.id % schema::kChunkNodes] = &child;
                } else {
                    add(child);
                }
            }
        }
    }
    return {};
}

Status Tree::load_all(NodeReader& reader, NodeReader* helper, ChunkPrefetcher* prefetcher) {
    Context main(0, &reader, 0);
    if (Status s = load(main, *root_); !s) return s;
    if (!helper || !worker_ || !root_splits()) {
        return sweep(main, *root_, prefetcher);
    }
    // The subtrees under the root in the arenas apply() gives them, one per thread.
    Branch& root = branch(root_->slot);
    Context second(1, helper, 0);
    Status right;
    ScopedTask task(*worker_, [&] { right = sweep(second, root.child[1], prefetcher); });
    Status left = sweep(main, root.child[0], prefetcher);
    task.wait();
    return left ? right : left;
}

Result<Tree::Sub> Tree::existing(Context& cx, Ref& ref, int at) {
    if (Status s = load(cx, ref); !s) return std::unexpected(s.error());
    Sub sub;
    sub.at = at;
    sub.ref = ref;
    if (tag(ref.slot) == kTagLeaf) sub.kind = Sub::kLeaf;
    if (tag(ref.slot) == kTagBranch) sub.kind = Sub::kBranch;
    return sub;
}

Result<Hash> Tree::prefix_path(Context& cx, Ref ref) {
    // Any leaf below a branch carries the branch's prefix; take the leftmost. Loads go
    // into the tree itself (through the branch's child links), never into a copy.
    Ref* r = &ref;
    for (;;) {
        if (Status s = load(cx, *r); !s) return std::unexpected(s.error());
        if (tag(r->slot) == kTagLeaf) return leaf(r->slot).path;
        r = &branch(r->slot).child[0];
    }
}

Tree::Sub Tree::pending_copy(Context& cx, const Ref& existing, int at, bool rehash) {
    // An existing branch whose slot moves is rewritten: same children, new top hash.
    const Slot slot = in_arena(kTagBranch, cx.arena, branches_[cx.arena]->alloc(branch(existing.slot)),
                               depth_of(existing.slot));
    cx.fresh.push_back(slot);
    Sub sub;
    sub.kind = Sub::kBranch;
    sub.pending = true;
    sub.at = at;
    sub.ref = Ref{slot, kNoNode, existing.top};
    sub.replaced = existing.slot;
    sub.replaced_id = existing.id;
    if (rehash) {
        hash_children(cx, sub, 1);
    } else if (cx.deferring) {
        sub.job = static_cast<std::uint32_t>(cx.jobs.size());
        cx.jobs.emplace_back().value = existing.top;
    }
    return sub;
}

void Tree::hash_children(Context& cx, Sub& sub, std::uint16_t rank) {
    if (!cx.deferring) {
        const Branch& b = branch(sub.ref.slot);
        sub.ref.top = node(cx, b.child[0].top, b.child[1].top);
        return;
    }
    sub.job = static_cast<std::uint32_t>(cx.jobs.size());
    HashJob& job = cx.jobs.emplace_back();
    job.branch = sub.ref.slot;
    job.rank = rank;
}

void Tree::wrap(Context& cx, Sub& sub, int side) {
    if (sub.job == kNoJob) {
        sub.ref.top = side == 0 ? node(cx, sub.ref.top, kZeroHash) : node(cx, kZeroHash, sub.ref.top);
        return;
    }
    HashJob& job = cx.jobs[sub.job];
    if (side) job.sides[job.wraps >> 6] |= std::uint64_t{1} << (job.wraps & 63);
    ++job.wraps;
}

Tree::Sub Tree::lift(Context& cx, Sub sub, int at, int side) {
    if (sub.kind != Sub::kBranch) return sub;  // a lone leaf moves up; empty stays empty
    assert(at == sub.at - 1);
    if (!sub.pending) sub = pending_copy(cx, sub.ref, sub.at, false);
    wrap(cx, sub, side);
    sub.at = at;
    return sub;
}

Tree::Sub Tree::join(Context& cx, int at, const Sub& left, const Sub& right) {
    Branch b;
    b.child[0] = finalize(cx, left);
    b.child[1] = finalize(cx, right);
    const Slot slot = in_arena(kTagBranch, cx.arena, branches_[cx.arena]->alloc(b), at);
    cx.fresh.push_back(slot);
    Sub sub;
    sub.kind = Sub::kBranch;
    sub.pending = true;
    sub.at = at;
    sub.ref = Ref{slot, kNoNode, {}};
    // A child's put-off top goes into this branch's link once known.
    std::uint16_t rank = 0;
    const Sub* children[2] = {&left, &right};
    for (std::uint8_t side = 0; side < 2; ++side) {
        if (children[side]->job == kNoJob) continue;
        HashJob& job = cx.jobs[children[side]->job];
        job.parent = slot;
        job.side = side;
        rank = std::max(rank, job.rank);
    }
    hash_children(cx, sub, static_cast<std::uint16_t>(rank + 1));
    return sub;
}

Tree::Sub Tree::combine(Context& cx, int at, const Sub& left, const Sub& right) {
    if (left.kind == Sub::kZ && right.kind == Sub::kZ) return Sub{};
    if (left.kind == Sub::kZ) return lift(cx, right, at, 1);
    if (right.kind == Sub::kZ) return lift(cx, left, at, 0);
    return join(cx, at, left, right);
}

Tree::Ref Tree::finalize(Context& cx, const Sub& sub) {
    if (sub.kind == Sub::kZ) return Ref{};
    if (!sub.pending) return sub.ref;
    const Branch& b = branch(sub.ref.slot);
    Ref ref = sub.ref;
    ref.id = cx.writer.add_branch(depth_of(ref.slot), ref.top, b.child[0].id, b.child[1].id);
    if (sub.job != kNoJob) cx.jobs[sub.job].record = ref.id;
    ++cx.stats.new_nodes;
    if (sub.replaced != kEmpty) cx.stale.emplace_back(sub.replaced, sub.replaced_id);
    return ref;
}

Tree::Entry Tree::new_leaf(Context& cx, const TreeChange& c, const Hash& hash) {
    ++cx.stats.new_nodes;
    const NodeId id = cx.writer.add_leaf(c.path, c.value_hash);
    const Slot slot = in_arena(kTagLeaf, cx.arena, leaves_[cx.arena]->alloc(Leaf{c.path}));
    cx.fresh.push_back(slot);
    return {c.path, Ref{slot, id, hash}};
}

Tree::Entry Tree::inserted(Context& cx, const TreeChange& c) {
    ++cx.stats.hashes;
    ++cx.live_key_delta;
    return new_leaf(cx, c, leaf_hash(c.path, c.value_hash));
}

namespace {
// Whether a subtree of `n` changes starts a group whose hashes are put off: one not
// inside a group already, with enough changes to fill the lanes.
bool starts_group(const Tree::Context& cx, std::size_t n) {
    return !cx.deferring && n >= kHashLanes && n <= Tree::kHashGroup;
}
}  // namespace

Tree::Sub Tree::build(Context& cx, int at, std::span<const Entry> entries) {
    if (starts_group(cx, entries.size())) {
        cx.deferring = true;
        Sub sub = build(cx, at, entries);
        cx.deferring = false;
        run_jobs(cx, &sub);
        return sub;
    }
    Sub sub;
    if (entries.empty()) return sub;
    if (entries.size() == 1) {
        sub.kind = Sub::kLeaf;
        sub.ref = entries[0].ref;
        sub.at = at;
        return sub;
    }
    const Hash& first = entries.front().path;
    const int d = common_prefix_bits(first, entries.back().path);
    const auto mid = std::partition_point(entries.begin(), entries.end(),
                                          [d](const Entry& e) { return bit(e.path, d) == 0; });
    const std::size_t m = static_cast<std::size_t>(mid - entries.begin());
    sub = join(cx, d, build(cx, d + 1, entries.first(m)), build(cx, d + 1, entries.subspan(m)));
    for (int j = d - 1; j >= at; --j) sub = lift(cx, sub, j, bit(first, j));
    return sub;
}

Result<Tree::Sub> Tree::retop(Context& cx, const Ref& ref, int at, const Hash& prefix) {
    Branch& b = branch(ref.slot);
    for (Ref& child : b.child) {
        if (Status s = load(cx, child); !s) return std::unexpected(s.error());
    }
    Sub sub = pending_copy(cx, ref, depth_of(ref.slot), true);
    for (int j = depth_of(ref.slot) - 1; j >= at; --j) wrap(cx, sub, bit(prefix, j));
    sub.at = at;
    return sub;
}

// The new content of the subtree at `loc`, seen from depth `at`, after `cs` (all of
// whose paths share the subtree's first `at` bits); nullopt if it does not change.
Result<std::optional<Tree::Sub>> Tree::apply_at(Context& cx, Ref& loc, int at,
                                                std::span<const TreeChange> cs) {
    using R = std::optional<Sub>;
    if (cs.empty()) return R();
    if (starts_group(cx, cs.size())) {
        cx.deferring = true;
        auto r = apply_at(cx, loc, at, cs);
        cx.deferring = false;
        run_jobs(cx, r && *r ? &**r : nullptr);
        return r;
    }
    if (Status s = load(cx, loc); !s) return std::unexpected(s.error());
    std::vector<Entry> entries;

    if (tag(loc.slot) == kEmpty || tag(loc.slot) == kTagLeaf) {
        // The existing leaf, if any, unless a change replaces or deletes it, goes into
        // the new subtree in path order among the inserted leaves.
        const Hash* old = tag(loc.slot) == kTagLeaf ? &leaf(loc.slot).path : nullptr;
        if (old && common_prefix_bits(*old, cs.front().path) < at) {
            return std::unexpected(misplaced(loc.id, at));
        }
        bool placed = old == nullptr;
        bool changed = false;
        entries.reserve(cs.size() + 1);
        for (const TreeChange& c : cs) {
            if (!placed && *old < c.path) {
                entries.push_back({*old, loc});
                placed = true;
            }
            if (!placed && *old == c.path) {
                placed = true;
                if (!c.del) {
                    ++cx.stats.hashes;
                    const Hash h = leaf_hash(c.path, c.value_hash);
                    if (h == loc.top) {
                        entries.push_back({c.path, loc});  // same value: the leaf stays
                        continue;
                    }
                    entries.push_back(new_leaf(cx, c, h));
                } else {
                    --cx.live_key_delta;
                }
                changed = true;
                cx.stale.emplace_back(loc.slot, loc.id);
                continue;
            }
            if (!c.del) {  // deleting an absent path changes nothing
                changed = true;
                entries.push_back(inserted(cx, c));
            }
        }
        if (!placed) entries.push_back({*old, loc});
        if (!changed) return R();
        return R(build(cx, at, entries));
    }

    // A branch. Changes are sorted, so those with bit `at` = 0 come first.
    const auto mid = std::partition_point(
        cs.begin(), cs.end(), [at](const TreeChange& c) { return bit(c.path, at) == 0; });
    const std::size_t m = static_cast<std::size_t>(mid - cs.begin());
    const std::span<const TreeChange> side_cs[2] = {cs.first(m), cs.subspan(m)};
    Branch& b = branch(loc.slot);

    if (depth_of(loc.slot) > at) {
        // A one-sided level above the split: the branch continues on side `s`; changes
        // on the other side hang a new subtree beside it.
        auto prefix = prefix_path(cx, loc);
        if (!prefix) return std::unexpected(prefix.error());
        if (common_prefix_bits(*prefix, cs.front().path) < at) {
            return std::unexpected(misplaced(loc.id, at));
        }
        const int s = bit(*prefix, at);
        for (const TreeChange& c : side_cs[1 - s]) {
            if (!c.del) entries.push_back(inserted(cx, c));
        }
        const Sub other = build(cx, at + 1, entries);
        auto match = apply_at(cx, loc, at + 1, side_cs[s]);
        if (!match) return std::unexpected(match.error());
        if (!*match && other.kind == Sub::kZ) return R();
        Sub mine;
        if (*match) {
            mine = **match;
        } else {
            // Unchanged, but the new subtree beside it moves its slot one level down.
            auto moved = retop(cx, loc, at + 1, *prefix);
            if (!moved) return std::unexpected(moved.error());
            mine = *moved;
        }
        return R(s == 0 ? combine(cx, at, mine, other) : combine(cx, at, other, mine));
    }

    // The right child is fetched from memory while the left subtree is worked on: the
    // walk below the shared top levels is a chain of cache misses, one per level.
    if (!side_cs[0].empty() && !side_cs[1].empty()) prefetch(b.child[1].slot);
    // Where the changes fall into small groups, their paths are walked ahead in lock step.
    if (cs.size() > kWalkAheadGroup) {
        for (int side = 0; side < 2; ++side) {
            if (side_cs[side].size() <= kWalkAheadGroup) walk_ahead(b.child[side].slot, side_cs[side]);
        }
    }
    std::optional<Sub> result[2];
    for (int side = 0; side < 2; ++side) {
        auto r = apply_at(cx, b.child[side], at + 1, side_cs[side]);
        if (!r) return std::unexpected(r.error());
        result[side] = std::move(*r);
    }
    if (!result[0] && !result[1]) return R();
    for (int side = 0; side < 2; ++side) {
        if (result[side]) continue;
        // The child's top and id are in this branch: no need to touch the child
        // itself, unless it has not been loaded yet.
        auto e = existing(cx, b.child[side], at + 1);
        if (!e) return std::unexpected(e.error());
        result[side] = *e;
    }
    cx.stale.emplace_back(loc.slot, loc.id);
    return R(combine(cx, at, *result[0], *result[1]));
}

Result<Tree::Update> Tree::apply(std::span<const TreeChange> changes, std::uint64_t first_chunk) {
    Update u;
    u.first_chunk = first_chunk;
    auto fail = [&](const Error& e) -> Result<Update> {
        // Loads made so far stay: they are part of the current tree.
        abort(std::move(u));
        return std::unexpected(e);
    };
    u.parts.push_back(std::make_unique<Context>(0, &reader_, first_chunk));
    Context& main = *u.parts[0];
    std::optional<Sub> result;
    Context* final_cx = &main;

    bool parallel = worker_ && changes.size() >= kParallelMin;
    if (parallel) {
        if (Status s = load(main, *root_); !s) return fail(s.error());
        parallel = root_splits();
    }
    if (!parallel) {
        // A height of a few changes is one small group (apply_at walks ahead the groups
        // of larger ones).
        if (changes.size() > 1 && changes.size() <= kWalkAheadGroup) walk_ahead(root_->slot, changes);
        auto r = apply_at(main, *root_, 0, changes);
        if (!r) return fail(r.error());
        result = std::move(*r);
    } else {
        // The two subtrees under the root are disjoint: one per thread, each with its
        // own arena, reader and node ids (chunk ranges that cannot overlap: a change
        // writes at most one leaf and one branch per level it crosses, at most 257
        // records), then the root is combined here.
        const auto mid = std::partition_point(
            changes.begin(), changes.end(), [](const TreeChange& c) { return bit(c.path, 0) == 0; });
        const std::span<const TreeChange> left = changes.first(static_cast<std::size_t>(mid - changes.begin()));
        const std::span<const TreeChange> right = changes.subspan(left.size());
        const auto bound = [](std::size_t n) { return n + n / 256 + 2; };
        u.parts.push_back(std::make_unique<Context>(1, helper_, first_chunk + bound(left.size())));
        u.parts.push_back(
            std::make_unique<Context>(0, &reader_, first_chunk + bound(left.size()) + bound(right.size())));
        Context& second = *u.parts[1];
        Context& top = *u.parts[2];
        Branch& root = branch(root_->slot);
        Result<std::optional<Sub>> r1 = std::optional<Sub>();
        ScopedTask task(*worker_, [&] { r1 = apply_at(second, root.child[1], 1, right); });
        auto r0 = apply_at(main, root.child[0], 1, left);
        task.wait();
        if (!r0) return fail(r0.error());
        if (!r1) return fail(r1.error());
        if (*r0 || *r1) {
            std::optional<Sub> side[2] = {std::move(*r0), std::move(*r1)};
            for (int s = 0; s < 2; ++s) {
                if (side[s]) continue;
                auto e = existing(top, root.child[s], 1);
                if (!e) return fail(e.error());
                side[s] = *e;
            }
            top.stale.emplace_back(root_->slot, root_->id);
            result = combine(top, 0, *side[0], *side[1]);
        }
        final_cx = &top;
    }

    *u.root = result ? finalize(*final_cx, *result) : *root_;
    u.root_hash = u.root->slot == kEmpty ? kZeroHash : u.root->top;
    u.root_id = u.root->id;
    u.end_chunk = first_chunk;
    for (const auto& part : u.parts) {
        u.live_key_delta += part->live_key_delta;
        u.stats.node_reads += part->stats.node_reads;
        u.stats.hashes += part->stats.hashes;
        u.stats.new_nodes += part->stats.new_nodes;
        for (const auto& [slot, id] : part->stale) u.stale_ids.push_back(id);
        if (part->writer.nodes() > 0) u.end_chunk = std::max(u.end_chunk, part->writer.end_chunk());
    }
    radix_sort(u.stale_ids);
    return u;
}

void Tree::commit(Update&& update) {
    for (const auto& part : update.parts) {
        for (const auto& [slot, id] : part->stale) release(slot);
    }
    *root_ = *update.root;
    update = Update{};
    for (int a = 0; a < 2; ++a) {
        branches_[a]->order_freed();
        leaves_[a]->order_freed();
    }
}

void Tree::abort(Update&& update) {
    for (const auto& part : update.parts) {
        for (Slot s : part->fresh) release(s);
    }
    update = Update{};
}

}  // namespace stateroot::engine
