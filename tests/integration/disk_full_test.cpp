// Running out of disk space, on a size-limited tmpfs the test mounts (needs root, as in
// CI): a clear error, no corruption, and a re-run after space is freed ends with the
// roots of a run that never ran out.
#include <fmt/format.h>
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "cli.hpp"

namespace {

using stateroot::test::lines;
using stateroot::test::Run;

// A tmpfs of `size` mounted on `dir` for the guard's life.
class Tmpfs {
public:
    Tmpfs(const std::string& dir, const std::string& size) : dir_(dir) {
        std::filesystem::create_directories(dir);
        mounted_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
        error_ = errno;
    }
    ~Tmpfs() {
        if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    }
    bool mounted() const { return mounted_; }
    int error() const { return error_; }

private:
    std::string dir_;
    bool mounted_ = false;
    int error_ = 0;
};

// Heights of random puts and deletes, as a change file.
std::string write_changes(const std::string& path, int heights, int keys_per_height) {
    std::mt19937_64 rng(7);
    std::ofstream out(path);
    auto hex = [&](std::size_t n) {
        std::string s;
        for (std::size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", static_cast<unsigned>(rng() & 0xff));
        return s;
    };
    for (int h = 0; h < heights; ++h) {
        out << fmt::format(R"({{"height":{},"puts":[)", h);
        for (int k = 0; k < keys_per_height; ++k) {
            out << (k ? "," : "") << fmt::format(R"(["{}","{}"])", hex(8), hex(100));
        }
        out << "]}\n";
    }
    return path;
}

}  // namespace

TEST_CASE("disk full: a clear error, no corruption, and a re-run after freeing space ends right",
          "[cli][diskfull]") {
    stateroot::test::TempDir scratch;
    stateroot::test::Cli cli;
    const std::string mnt = scratch.sub("small");
    Tmpfs fs(mnt, "128m");
    if (!fs.mounted()) {
        // Mounting needs CAP_SYS_ADMIN. CI runs as root and sets STATEROOT_REQUIRE_MOUNT so
        // this cannot pass unseen there.
        if (std::getenv("STATEROOT_REQUIRE_MOUNT") != nullptr) FAIL("cannot mount a tmpfs: " << std::strerror(fs.error()));
        WARN("skipped: cannot mount a tmpfs here (" << std::strerror(fs.error()) << "); run as root");
        return;
    }
    const std::string changes = write_changes(scratch.sub("changes.jsonl"), 300, 400);

    const std::string ref_db = scratch.sub("ref");
    const Run ref = cli.run(fmt::format("apply --db {} {}", ref_db, changes));
    REQUIRE(ref.code == 0);
    const auto ref_roots = lines(ref.out);
    REQUIRE(ref_roots.size() == 300);

    // The whole run needs ~62 MiB; leave it ~28 MiB so it fills up part way.
    const std::string filler = mnt + "/filler";
    {
        std::ofstream f(filler, std::ios::binary);
        const std::string mib(1 << 20, 'x');
        for (int i = 0; i < 100; ++i) f << mib;
    }
    const std::string db = mnt + "/db";
    const Run full = cli.run(fmt::format("apply --db {} {}", db, changes));
    INFO(full.err);
    CHECK(full.code == 2);
    CHECK(full.err.find("No space left on device") != std::string::npos);
    const auto done = lines(full.out);
    REQUIRE(done.size() < ref_roots.size());
    CHECK(done.size() > 10);
    // The error names the height that could not be committed, the one after the last printed.
    CHECK(full.err.find(fmt::format("height {}", done.size())) != std::string::npos);
    for (std::size_t h = 0; h < done.size(); ++h) CHECK(done[h] == ref_roots[h]);

    // Space freed: the database opens at its last good height and checks out.
    std::filesystem::remove(filler);
    if (!done.empty()) {
        const Run root = cli.run(fmt::format("root --db {}", db));
        CHECK(root.code == 0);
        CHECK(root.out == done.back().substr(done.back().find(' ') + 1) + "\n");
        const Run check = cli.run(fmt::format("check --db {}", db));
        INFO(check.out << check.err);
        CHECK(check.code == 0);
    }
    // A re-run continues from there and ends with the uninterrupted run's roots.
    const Run again = cli.run(fmt::format("apply --db {} {}", db, changes));
    INFO(again.err);
    CHECK(again.code == 0);
    CHECK(lines(again.out) == ref_roots);
    const Run check = cli.run(fmt::format("check --db {} --height 150", db));
    CHECK(check.code == 0);
}
