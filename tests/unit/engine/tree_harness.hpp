// A Tree over a real store, committing each update's node records like the engine does,
// for tests that drive the tree with chosen paths.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <random>

#include "naive_smt.hpp"
#include "stateroot/engine/tree.hpp"
#include "temp_dir.hpp"

namespace stateroot::test {

inline engine::Hash to_hash(const naive::Digest& d) {
    engine::Hash h;
    h.bytes = d;
    return h;
}

inline engine::Hash random_hash(std::mt19937_64& rng) {
    engine::Hash h;
    for (auto& b : h.bytes) b = static_cast<std::uint8_t>(rng());
    return h;
}

class TreeHarness {
  public:
    // With `parallel`, large updates use the tree's second thread.
    explicit TreeHarness(bool parallel = true) {
        auto s = storage::Store::open(dir_.str(), {});
        REQUIRE(s);
        store_ = std::move(*s);
        reader_ = std::make_unique<engine::NodeReader>(*store_);
        helper_ = std::make_unique<engine::NodeReader>(*store_);
        tree_ = std::make_unique<engine::Tree>(*reader_, parallel ? helper_.get() : nullptr);
    }

    // Applies and commits `changes` (sorted here); returns the update's statistics.
    engine::TreeStats apply(std::vector<engine::TreeChange> changes) {
        std::sort(changes.begin(), changes.end(),
                  [](const auto& a, const auto& b) { return a.path < b.path; });
        auto update = tree_->apply(changes, next_chunk_);
        REQUIRE(update);
        storage::WriteBatch batch;
        update->write_records(batch);
        REQUIRE(store_->write(batch));
        next_chunk_ = update->end_chunk;
        const engine::TreeStats stats = update->stats;
        tree_->commit(std::move(*update));
        // Before trim(): the nodes of this height and those it replaced, all at once.
        peak_bytes_ = tree_->memory_bytes();
        tree_->trim();
        return stats;
    }

    // Tree::memory_bytes() at the end of the last apply(), before it trimmed.
    std::size_t peak_bytes() const { return peak_bytes_; }

    // Forgets every node in memory, as a fresh process would.
    void reopen() {
        const engine::NodeId id = tree_->root_id();
        const engine::Hash root = tree_->root_hash();
        reader_->reset();
        helper_->reset();
        tree_->reset(id, root);
    }

    engine::Tree& tree() { return *tree_; }
    engine::NodeReader& reader() { return *reader_; }
    storage::Store& store() { return *store_; }

  private:
    TempDir dir_;
    std::unique_ptr<storage::Store> store_;
    std::unique_ptr<engine::NodeReader> reader_;
    std::unique_ptr<engine::NodeReader> helper_;
    std::unique_ptr<engine::Tree> tree_;
    std::uint64_t next_chunk_ = 0;
    std::size_t peak_bytes_ = 0;
};

inline engine::TreeChange put(const engine::Hash& path, const engine::Hash& value_hash) {
    return {path, false, value_hash};
}
inline engine::TreeChange del(const engine::Hash& path) { return {path, true, {}}; }

}  // namespace stateroot::test
