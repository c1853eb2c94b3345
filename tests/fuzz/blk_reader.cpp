// Fuzz target: the reader of blk-framed files (Bitcoin Core's blk?????.dat), plain and
// obfuscated with an xor.dat key.
//
// Input: one mode byte, then (if bit 0 of the mode is set) an 8-byte XOR key, then the
// file's plain content. Bits 1-3 of the mode pick the network (0 mainnet, 1 testnet3,
// 2 testnet4, 3 signet, 4 regtest, else mainnet), so the file must carry that magic.
//
// The plain content is written to a file and scanned without a key. With a key, it is
// also written obfuscated (each byte XOR key[offset mod 8]) twice: as a lone file scanned
// with the key, and as blk00000.dat beside an xor.dat in a blocks directory. Every scan
// must give the same blocks, or the same error, as the plain one, unless the obfuscated
// content ends in a zero (stored zeros to the end are Bitcoin Core's preallocation);
// after the last record, zeros as stored read as a plain zero tail. Each block found must
// be framed by the magic and its length, and read_block() must return exactly its bytes,
// which then go through parse_block().
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "stateroot/indexer/block_source.hpp"

using namespace stateroot;
using namespace stateroot::indexer;

namespace {

struct Paths {
    std::string plain;      // the plain content
    std::string xored;      // the obfuscated content, read with the key given
    std::string dir;        // a blocks directory: blk00000.dat (obfuscated) and xor.dat
    std::string dir_blk;
    std::string dir_xor;
};

const Paths& paths() {
    static const Paths p = [] {
        const auto& s = fuzz::scratch_dir();
        std::filesystem::create_directories(s / "blocks");
        return Paths{(s / "plain.blk").string(), (s / "xored.blk").string(), (s / "blocks").string(),
                     (s / "blocks" / "blk00000.dat").string(), (s / "blocks" / "xor.dat").string()};
    }();
    return p;
}

// A scan's outcome with the file's name taken out, to compare scans of different files.
struct Outcome {
    bool ok = false;
    ErrorCode code = ErrorCode::kInvalidArgument;
    std::string message;
    std::vector<FoundBlock> blocks;
};

Outcome outcome(const Result<std::vector<FoundBlock>>& r, const std::string& path) {
    Outcome o;
    o.ok = r.has_value();
    if (r) {
        o.blocks = *r;
        return o;
    }
    o.code = r.error().code;
    o.message = r.error().message;
    for (auto at = o.message.find(path); at != std::string::npos; at = o.message.find(path)) {
        o.message.replace(at, path.size(), "FILE");
    }
    return o;
}

bool same_header(const BlockHeader& a, const BlockHeader& b) {
    return a.hash == b.hash && a.prev == b.prev && a.merkle_root == b.merkle_root &&
           a.version == b.version && a.time == b.time && a.bits == b.bits && a.nonce == b.nonce;
}

void check_same(const Outcome& a, const Outcome& b, const char* what) {
    FUZZ_CHECK(a.ok == b.ok, "{}: the plain scan {}, this one {} ({}{})", what, a.ok ? "succeeds" : "fails",
               b.ok ? "succeeds" : "fails", a.message, b.message);
    if (!a.ok) {
        FUZZ_CHECK(a.code == b.code && a.message == b.message, "{}: \"{}\" where the plain scan says \"{}\"",
                   what, b.message, a.message);
        return;
    }
    FUZZ_CHECK(a.blocks.size() == b.blocks.size(), "{}: {} blocks, the plain scan finds {}", what,
               b.blocks.size(), a.blocks.size());
    for (std::size_t i = 0; i < a.blocks.size(); ++i) {
        const FoundBlock& x = a.blocks[i];
        const FoundBlock& y = b.blocks[i];
        FUZZ_CHECK(same_header(x.header, y.header) && x.location.offset == y.location.offset &&
                       x.location.size == y.location.size,
                   "{}: block {} differs from the plain scan's", what, i);
    }
}

// The blocks of a successful scan tile the content as records; read_block returns them.
void check_blocks(const std::vector<FoundBlock>& blocks, ByteView plain, Network network) {
    const auto magic = network_magic(network);
    std::uint64_t end = 0;
    for (const FoundBlock& b : blocks) {
        const std::uint64_t offset = b.location.offset;
        FUZZ_CHECK(offset >= end + 8 && offset + b.location.size <= plain.size(),
                   "block at {} ({} bytes) overlaps the previous record or the end", offset, b.location.size);
        FUZZ_CHECK(std::all_of(plain.begin() + static_cast<std::ptrdiff_t>(end),
                               plain.begin() + static_cast<std::ptrdiff_t>(offset - 8),
                               [](std::uint8_t x) { return x == 0; }),
                   "non-zero bytes skipped before the record at {}", offset - 8);
        const ByteView frame = plain.subspan(static_cast<std::size_t>(offset - 8), 8);
        FUZZ_CHECK(std::equal(magic.begin(), magic.end(), frame.begin()), "no magic before the block at {}",
                   offset);
        const std::uint32_t length = static_cast<std::uint32_t>(frame[4]) | static_cast<std::uint32_t>(frame[5]) << 8 |
                                     static_cast<std::uint32_t>(frame[6]) << 16 |
                                     static_cast<std::uint32_t>(frame[7]) << 24;
        FUZZ_CHECK(length == b.location.size && length >= kHeaderSize, "block at {}: size {}, the record says {}",
                   offset, b.location.size, length);
        const ByteView bytes = plain.subspan(static_cast<std::size_t>(offset), length);
        auto header = parse_header(bytes);
        FUZZ_CHECK(header && same_header(*header, b.header), "block at {}: header differs", offset);

        auto read = read_block(b.location);
        FUZZ_CHECK(read.has_value(), "read_block at {}: {}", offset, read ? "" : read.error().message);
        FUZZ_CHECK(std::equal(read->begin(), read->end(), bytes.begin(), bytes.end()),
                   "read_block at {} returns other bytes", offset);
        auto block = parse_block(*read);
        FUZZ_CHECK(block || block.error().code == ErrorCode::kInvalidArgument, "parse_block: {}",
                   block ? "" : block.error().message);
        if (block) FUZZ_CHECK(same_header(block->header, b.header), "block at {}: parsed header differs", offset);
        end = offset + length;
    }
    FUZZ_CHECK(std::all_of(plain.begin() + static_cast<std::ptrdiff_t>(end), plain.end(),
                           [](std::uint8_t x) { return x == 0; }),
               "non-zero bytes after the last record at {}", end);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::uint8_t mode = data[0];
    const bool obfuscated = (mode & 1) != 0;
    if (obfuscated && size < 9) return 0;
    constexpr Network kNetworks[] = {Network::kMainnet, Network::kTestnet3, Network::kTestnet4, Network::kSignet,
                                     Network::kRegtest};
    const unsigned pick = (mode >> 1) & 7;
    const Network network = pick < 5 ? kNetworks[pick] : Network::kMainnet;
    XorKey key{};
    if (obfuscated) std::copy(data + 1, data + 9, key.begin());
    const ByteView plain(data + (obfuscated ? 9 : 1), size - (obfuscated ? 9 : 1));
    const Paths& p = paths();

    fuzz::write_file(p.plain, plain);
    const Outcome base = outcome(scan_blk_file(p.plain, network), p.plain);
    if (base.ok) {
        check_blocks(base.blocks, plain, network);
    } else {
        FUZZ_CHECK(base.code == ErrorCode::kInvalidArgument && base.message.starts_with("FILE: offset "),
                   "unexpected error: {}", base.message);
    }

    auto raw = scan_raw_file(p.plain);
    FUZZ_CHECK(raw.has_value() == (plain.size() >= kHeaderSize), "scan_raw_file of {} bytes: {}", plain.size(),
               raw ? "ok" : raw.error().message);
    if (raw) {
        FUZZ_CHECK(raw->location.size == plain.size() && same_header(raw->header, *parse_header(plain)),
                   "scan_raw_file");
    }
    if (!obfuscated) return 0;

    Bytes xored(plain.begin(), plain.end());
    for (std::size_t i = 0; i < xored.size(); ++i) xored[i] ^= key[i % 8];
    fuzz::write_file(p.xored, xored);
    fuzz::write_file(p.dir_blk, xored);
    fuzz::write_file(p.dir_xor, key);

    const auto with_key = scan_blk_file(p.xored, network, key);
    const auto dir = scan_blocks_dir(p.dir, network);
    // Stored zeros that reach the end of the file read as Bitcoin Core's preallocation,
    // whatever they deobfuscate to: content whose obfuscated form ends in a zero may scan
    // otherwise than its plain form.
    if (xored.empty() || xored.back() != 0) {
        check_same(base, outcome(with_key, p.xored), "scan_blk_file with the key");
        check_same(base, outcome(dir, p.dir_blk), "scan_blocks_dir with xor.dat");
    }
    // Read the blocks back from the obfuscated files: the same plain bytes come out.
    for (const auto* found : {&with_key, &dir}) {
        if (!*found) continue;
        for (const FoundBlock& b : **found) {
            auto read = read_block(b.location);
            FUZZ_CHECK(read.has_value(), "read_block of an obfuscated file: {}", read ? "" : read.error().message);
            const ByteView expected = plain.subspan(static_cast<std::size_t>(b.location.offset), b.location.size);
            FUZZ_CHECK(std::equal(read->begin(), read->end(), expected.begin(), expected.end()),
                       "read_block of an obfuscated file at {} returns other bytes", b.location.offset);
        }
    }
    // Bitcoin Core preallocates the end of its newest file with zeros as stored, not
    // obfuscated: after the last record, such a tail reads as a plain file's zero tail.
    if (base.ok && (plain.empty() || plain.back() != 0)) {
        constexpr std::size_t kTail = 100;
        Bytes plain_tail(plain.begin(), plain.end());
        plain_tail.resize(plain_tail.size() + kTail, 0);
        xored.resize(xored.size() + kTail, 0);
        fuzz::write_file(p.plain, plain_tail);
        fuzz::write_file(p.xored, xored);
        check_same(outcome(scan_blk_file(p.plain, network), p.plain),
                   outcome(scan_blk_file(p.xored, network, key), p.xored),
                   "an obfuscated file ending in stored zeros");
    }
    return 0;
}
