// Parsing real blocks and reading block files.
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <random>

#include "stateroot/indexer/block_source.hpp"
#include "stateroot/indexer/chain.hpp"
#include "files.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::indexer;

namespace {

using test::read_file;
using test::write_file;
std::string fixture(const std::string& name) { return test::block_fixture(name); }

std::vector<FoundBlock> scan(const std::string& name) {
    auto found = scan_blk_file(fixture(name), Network::kMainnet);
    REQUIRE(found);
    return *found;
}

std::string error_of(const std::vector<std::uint8_t>& bytes, const test::TempDir& dir) {
    const std::string path = dir.sub("bad.blk");
    write_file(path, bytes);
    auto r = scan_blk_file(path, Network::kMainnet);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::kInvalidArgument);
    return r.error().message;
}

}  // namespace

TEST_CASE("blocks: every shipped block parses with its hash and a matching merkle root",
          "[indexer][blocks]") {
    const auto mainnet = scan("mainnet_0-589.blk");
    REQUIRE(mainnet.size() == 590);
    std::size_t txs = 0;
    for (const FoundBlock& fb : mainnet) {
        auto bytes = read_block(fb.location);
        REQUIRE(bytes);
        auto block = parse_block(*bytes);
        REQUIRE(block);
        CHECK(block->header.hash == fb.header.hash);
        txs += block->txs.size();
    }
    CHECK(txs == 605);
    CHECK(display_hex(mainnet[0].header.hash) ==
          "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f");
    CHECK(display_hex(mainnet[1].header.hash) ==
          "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048");
    CHECK(display_hex(mainnet[170].header.hash) ==
          "00000000d1145790a8694403d4063f323d499e655c83426834d4ce2f8dd4a2ee");
    CHECK(display_hex(mainnet[589].header.hash) ==
          "00000000b96305605f1eb5ab800024ff3fa260deedf6005e1e3987daa11d3935");

    const std::vector<std::pair<std::string, std::vector<std::string>>> btcd = {
        {"btcd_reorg_blk_0_to_4.dat",
         {"000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
          "00000000ebe5ec3e94d8dfe18100e5c0f3b1955bc6107fbe24d95732b814551b",
          "00000000952ccb1bf9b799fcd0cc654dd48363f76781f8b1c61dbf1696c39f97",
          "00000000bc3589303953766cc9364130cb97bc3749bae170f476d45f1e23f850",
          "000000002f264d6504013e73b9c913de9098d4d771c1bb219af475d2a01b128e"}},
        {"btcd_reorg_blk_3A.dat",
         {"00000000474284d20067a4d33f6a02284e6ef70764a3a26d6a5b9df52ef663dd"}},
        {"btcd_reorg_blk_4A.dat",
         {"00000000551dc04c148242d1f648802577df8cf7d4e1b469211016280204a2bf"}},
        {"btcd_reorg_blk_5A.dat",
         {"00000000195f85184e77c18914bd0febd11278d950f5e4731a38f71ed79f044e"}},
    };
    for (const auto& [file, hashes] : btcd) {
        const auto found = scan(file);
        REQUIRE(found.size() == hashes.size());
        for (std::size_t i = 0; i < found.size(); ++i) {
            CHECK(display_hex(found[i].header.hash) == hashes[i]);
            auto block = parse_block(read_block(found[i].location).value());
            REQUIRE(block);
        }
    }

    auto raw = scan_raw_file(fixture("mainnet_702861.raw"));
    REQUIRE(raw);
    auto block = parse_block(read_block(raw->location).value());
    REQUIRE(block);
    CHECK(display_hex(block->header.hash) ==
          "000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae");
    CHECK(block->txs.size() == 2500);
    CHECK(bip34_height(block->txs[0]) == 702861u);
}

TEST_CASE("blocks: a BIP34 height is a push of a non-negative script number of at most 4 bytes",
          "[indexer][blocks]") {
    const auto height_of = [](Bytes script) {
        Transaction coinbase;
        coinbase.inputs.push_back({Hash{}, 0xffffffff, std::move(script), {}});
        return bip34_height(coinbase);
    };
    CHECK(height_of({0x53}) == 3u);                          // OP_3
    CHECK(height_of({0x01, 0x7f}) == 127u);
    CHECK(height_of({0x02, 0x80, 0x00}) == 128u);            // 0x80 alone would be -0
    CHECK(height_of({0x03, 0x8d, 0xb9, 0x0a, 0xff}) == 702861u);
    CHECK(height_of({0x04, 0xff, 0xff, 0xff, 0x7f}) == 0x7fffffffu);
    CHECK_FALSE(height_of({0x01, 0x80}));                    // negative
    CHECK_FALSE(height_of({0x04, 0x00, 0x00, 0x00, 0x80}));  // negative
    CHECK_FALSE(height_of({0x05, 1, 2, 3, 4, 5}));           // past a script number
    CHECK_FALSE(height_of({0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}));
    CHECK_FALSE(height_of({0x03, 0x01}));                    // cut short
    CHECK_FALSE(height_of({}));
}

TEST_CASE("blocks: sizes in a longer form than needed and empty witness records are refused",
          "[indexer][blocks]") {
    const auto found = scan("mainnet_0-589.blk");
    const Bytes block1 = read_block(found[1].location).value();
    REQUIRE(parse_block(block1));
    // The transaction count (byte 80), covered by no hash: 01 written as fd 01 00.
    Bytes longer(block1.begin(), block1.begin() + 80);
    longer.insert(longer.end(), {0xfd, 0x01, 0x00});
    longer.insert(longer.end(), block1.begin() + 81, block1.end());
    auto r = parse_block(longer);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "malformed block at byte 80: size 1 is not in its shortest form");

    // A transaction in the segwit form (marker 00, flag 01) whose one witness is empty.
    Bytes superfluous(block1.begin(), block1.begin() + 80);
    superfluous.insert(superfluous.end(), {0x01, 0x01, 0, 0, 0, 0x00, 0x01, 0x01});
    superfluous.insert(superfluous.end(), 32, 0x11);                       // prevout txid
    superfluous.insert(superfluous.end(), {0, 0, 0, 0, 0x00, 0xff, 0xff, 0xff, 0xff});
    superfluous.insert(superfluous.end(), {0x01, 1, 0, 0, 0, 0, 0, 0, 0, 0x00});  // one output
    superfluous.insert(superfluous.end(), {0x00, 0, 0, 0, 0});            // witness, locktime
    auto w = parse_block(superfluous);
    REQUIRE_FALSE(w);
    CHECK(w.error().message ==
          "malformed transaction 0 at byte 139: segwit serialization with every witness empty");
}

// A two-transaction block: a coinbase, with `commitment` as its second output if given
// and, if `reserved`, in the segwit form with that one witness item; and a spend whose
// witness is one byte, `witness_byte`. Its header commits to the txids.
struct WitnessBlock {
    Bytes bytes;
    Hash spend_wtxid;  // of the spend's whole serialization
};
WitnessBlock witness_block(std::optional<Hash> commitment, std::optional<Hash> reserved, std::uint8_t witness_byte) {
    const auto le32 = [](Bytes& b, std::uint32_t v) {
        for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    };
    Bytes cb_body;  // inputs and outputs
    cb_body.push_back(0x01);
    cb_body.insert(cb_body.end(), 32, 0x00);
    le32(cb_body, 0xffffffff);
    cb_body.insert(cb_body.end(), {0x02, 0x51, 0x51, 0xff, 0xff, 0xff, 0xff});
    cb_body.push_back(commitment ? 0x02 : 0x01);
    cb_body.insert(cb_body.end(), {0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x51});
    if (commitment) {
        cb_body.insert(cb_body.end(), 8, 0x00);
        cb_body.insert(cb_body.end(), {0x26, 0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed});
        cb_body.insert(cb_body.end(), commitment->bytes.begin(), commitment->bytes.end());
    }
    Bytes sp_body;
    sp_body.push_back(0x01);
    sp_body.insert(sp_body.end(), 32, 0x11);
    le32(sp_body, 0);
    sp_body.insert(sp_body.end(), {0x00, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x51});
    const auto tx = [&](const Bytes& body, const std::optional<Bytes>& witness) {
        Bytes t;
        le32(t, 2);
        if (witness) t.insert(t.end(), {0x00, 0x01});
        t.insert(t.end(), body.begin(), body.end());
        if (witness) t.insert(t.end(), witness->begin(), witness->end());
        le32(t, 0);
        return t;
    };
    std::optional<Bytes> cb_witness;
    if (reserved) {
        cb_witness = Bytes{0x01, 0x20};
        cb_witness->insert(cb_witness->end(), reserved->bytes.begin(), reserved->bytes.end());
    }
    const Bytes coinbase = tx(cb_body, cb_witness), spend = tx(sp_body, Bytes{0x01, 0x01, witness_byte});
    const Hash root = merkle_root({double_sha256(tx(cb_body, std::nullopt)), double_sha256(tx(sp_body, std::nullopt))});
    Bytes block;
    le32(block, 0x20000000);
    block.insert(block.end(), 32, 0x00);
    block.insert(block.end(), root.bytes.begin(), root.bytes.end());
    block.insert(block.end(), 12, 0x00);
    block.push_back(0x02);
    block.insert(block.end(), coinbase.begin(), coinbase.end());
    block.insert(block.end(), spend.begin(), spend.end());
    return {block, double_sha256(spend)};
}

// What a coinbase with that witness item commits to, for a block whose other
// transaction has that wtxid.
Hash commitment_of(const Hash& spend_wtxid, const Hash& reserved) {
    const Hash root = merkle_root({Hash{}, spend_wtxid});  // the coinbase counts as zero
    Bytes preimage(root.bytes.begin(), root.bytes.end());
    preimage.insert(preimage.end(), reserved.bytes.begin(), reserved.bytes.end());
    return double_sha256(preimage);
}

TEST_CASE("blocks: witnesses are checked against the coinbase's commitment (BIP141)", "[indexer][blocks]") {
    // A real segwit block: its witnesses hash to what its coinbase commits to.
    auto raw = scan_raw_file(fixture("mainnet_702861.raw"));
    REQUIRE(raw);
    Bytes bytes = read_block(raw->location).value();
    auto block = parse_block(bytes);
    REQUIRE(block);
    std::size_t with_witness = 0;
    for (const Transaction& tx : block->txs) with_witness += tx.has_witness;
    CHECK(with_witness > 1000);
    CHECK(block->txs[0].inputs[0].witness.size() == 1);
    // A byte of the last witness (the last transaction's bytes end with it and the lock
    // time) is covered by no txid, only by the commitment.
    const Transaction& last = block->txs.back();
    REQUIRE((last.has_witness && !last.inputs.back().witness.back().empty()));
    CHECK(last.txid != last.wtxid);
    bytes[bytes.size() - 5] ^= 1;
    auto flipped = parse_block(bytes);
    REQUIRE_FALSE(flipped);
    CHECK(flipped.error().message.starts_with("witness commitment mismatch: the coinbase commits to "));

    // Built ones: a commitment right, wrong, missing, or without the coinbase's item.
    Hash reserved;
    reserved.bytes.fill(0x42);
    const Hash wtxid = witness_block(std::nullopt, reserved, 0x07).spend_wtxid;
    const Hash commitment = commitment_of(wtxid, reserved);
    CHECK(parse_block(witness_block(commitment, reserved, 0x07).bytes));
    const WitnessBlock altered = witness_block(commitment, reserved, 0x08);
    auto other = parse_block(altered.bytes);
    REQUIRE_FALSE(other);
    CHECK(other.error().message ==
          fmt::format("witness commitment mismatch: the coinbase commits to {}, the witnesses give {}",
                      commitment.hex(), commitment_of(altered.spend_wtxid, reserved).hex()));
    auto none = parse_block(witness_block(std::nullopt, reserved, 0x07).bytes);
    REQUIRE_FALSE(none);
    CHECK(none.error().message == "transactions carry witness data but the coinbase commits to none");
    auto no_reserved = parse_block(witness_block(commitment, std::nullopt, 0x07).bytes);
    REQUIRE_FALSE(no_reserved);
    CHECK(no_reserved.error().message ==
          "the coinbase's witness is not one 32-byte item (the witness reserved value)");
}

TEST_CASE("blocks: a flipped byte in a transaction fails the merkle check", "[indexer][blocks]") {
    const auto found = scan("mainnet_0-589.blk");
    Bytes bytes = read_block(found[170].location).value();
    bytes[bytes.size() - 10] ^= 1;  // inside the last transaction's output script
    auto r = parse_block(bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.rfind("merkle root mismatch: header has ", 0) == 0);
}

TEST_CASE(
    "blocks: a block with its last transaction repeated (same merkle root) is refused as mutated",
    "[indexer][blocks]") {
    const auto found = scan("mainnet_0-589.blk");
    Bytes bytes = read_block(found[586].location).value();  // three transactions
    auto block = parse_block(bytes);
    REQUIRE(block);
    REQUIRE(block->txs.size() == 3);
    REQUIRE(bytes[80] == 3);
    // The last transaction runs to the end of the block: find where its txid starts.
    std::size_t start = bytes.size();
    while (start > 81 && double_sha256(ByteView(bytes).subspan(start)) != block->txs[2].txid)
        --start;
    REQUIRE(start > 81);
    const Bytes last(bytes.begin() + static_cast<std::ptrdiff_t>(start), bytes.end());
    bytes.insert(bytes.end(), last.begin(), last.end());
    bytes[80] = 4;
    auto r = parse_block(bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == fmt::format("mutated: the merkle root {} matches, but only with "
                                           "transactions repeated (a copy of the "
                                           "block with duplicates appended)",
                                           display_hex(block->header.merkle_root)));
}

TEST_CASE("blocks: a malformed transaction is reported with its index and byte offset",
          "[indexer][blocks]") {
    const auto found = scan("mainnet_0-589.blk");
    Bytes bytes = read_block(found[1].location).value();
    // Block 1's coinbase: version at 81, one input (86..133), the output count at 134.
    bytes[134] = 0xfd;  // a two-byte count follows: 0xf200
    auto r = parse_block(bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error().message ==
          "malformed transaction 0 at byte 134: output count 61952 exceeds the 78 bytes left");
    Bytes truncated = read_block(found[1].location).value();
    truncated.resize(150);  // cut inside the output script
    CHECK(parse_block(truncated).error().message ==
          "malformed transaction 0 at byte 143: script length 67 exceeds the 6 bytes left");
    Bytes no_tx(truncated.begin(), truncated.begin() + 100);
    CHECK(parse_block(no_tx).error().message ==
          "malformed block at byte 80: transaction count 1 exceeds the 19 bytes left");
}

TEST_CASE("blocks: bad framing is an error naming file and offset", "[indexer][blocks]") {
    test::TempDir dir;
    const Bytes good = read_file(fixture("btcd_reorg_blk_0_to_4.dat"));
    const std::string path = dir.sub("bad.blk");
    const auto blocks = scan("btcd_reorg_blk_0_to_4.dat");
    const std::uint64_t second = blocks[1].location.offset - 8;  // start of the second record

    Bytes truncated(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(second + 50));
    CHECK(
        error_of(truncated, dir) ==
        fmt::format("{}: offset {}: block length {} runs past the end of the file (42 bytes left)",
                    path, second, blocks[1].location.size));

    Bytes wrong = good;
    wrong[second] = 0x0b;
    CHECK(error_of(wrong, dir) ==
          fmt::format("{}: offset {}: wrong magic 0bbeb4d9 (expected f9beb4d9 for mainnet)", path,
                      second));

    Bytes stub(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(second + 5));
    CHECK(error_of(stub, dir) ==
          fmt::format("{}: offset {}: truncated record: 5 bytes left, a record header needs 8",
                      path, second));

    Bytes huge = good;
    huge[second + 7] = 0x7f;  // a length of about 2 GiB
    CHECK(error_of(huge, dir) ==
          fmt::format("{}: offset {}: block length {} exceeds the 4000000-byte limit of a block",
                      path, second, 0x7f000000u | blocks[1].location.size));

    Bytes short_block = good;
    short_block[second + 4] = 10;
    short_block[second + 5] = 0;
    CHECK(
        error_of(short_block, dir) ==
        fmt::format("{}: offset {}: block length 10 is shorter than a block header", path, second));

    // Zero padding between and after records is skipped.
    Bytes padded(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(second));
    padded.insert(padded.end(), 100, 0);
    padded.insert(padded.end(), good.begin() + static_cast<std::ptrdiff_t>(second), good.end());
    padded.insert(padded.end(), 5000, 0);
    write_file(path, padded);
    auto r = scan_blk_file(path, Network::kMainnet);
    REQUIRE(r);
    CHECK(r->size() == 5);
}

TEST_CASE("blocks: a Bitcoin Core directory is read with its XOR key, in file order, up to its "
          "preallocated zeros",
          "[indexer][blocks]") {
    test::TempDir dir;
    const Bytes plain = read_file(fixture("mainnet_0-589.blk"));
    std::mt19937_64 rng(42);
    XorKey key;
    for (auto& b : key) b = static_cast<std::uint8_t>(rng());
    // Split into two files: the later blocks first, as a node that fetched them out of
    // order would store them.
    const auto blocks = scan("mainnet_0-589.blk");
    const std::size_t cut = blocks[300].location.offset - 8;
    auto obfuscate = [&](Bytes b) {
        for (std::size_t i = 0; i < b.size(); ++i) b[i] ^= key[i % 8];
        return b;
    };
    write_file(dir.sub("blk00000.dat"),
               obfuscate(Bytes(plain.begin() + static_cast<std::ptrdiff_t>(cut), plain.end())));
    // The newest file ends in Bitcoin Core's preallocation: zeros as stored, not obfuscated.
    Bytes newest = obfuscate(Bytes(plain.begin(), plain.begin() + static_cast<std::ptrdiff_t>(cut)));
    newest.resize(newest.size() + 100'000, 0);
    write_file(dir.sub("blk00001.dat"), newest);
    write_file(dir.sub("xor.dat"), key);
    write_file(dir.sub("rev00000.dat"), Bytes{1, 2, 3});  // undo data: not a block file

    auto found = scan_blocks_dir(dir.str(), Network::kMainnet);
    REQUIRE(found);
    REQUIRE(found->size() == 590);
    CHECK((*found)[0].header.hash == blocks[300].header.hash);
    CHECK((*found)[290].header.hash == blocks[0].header.hash);
    for (const FoundBlock& fb : *found) {
        auto block = parse_block(read_block(fb.location).value());
        REQUIRE(block);
    }
}

TEST_CASE("chain: work follows the compact target", "[indexer][chain]") {
    // Difficulty 1 (mainnet genesis): 2^256 / (0xffff * 2^208 + 1) = 0x100010001.
    CHECK(Work::from_bits(0x1d00ffff) == Work{{0x100010001ull, 0, 0, 0}});
    CHECK(Work::from_bits(0x1d00ffff) + Work::from_bits(0x1d00ffff) ==
          Work{{0x200020002ull, 0, 0, 0}});
    CHECK(Work::from_bits(0x1b0404cb) > Work::from_bits(0x1d00ffff));
    CHECK(Work::from_bits(0x00800000) == Work{});  // negative
    CHECK(Work::from_bits(0) == Work{});
    // Regtest's easiest target: 2^256 / (0x7fffff * 2^232 + 1) = 2.
    CHECK(Work::from_bits(0x207fffff) == Work{{2, 0, 0, 0}});
}

TEST_CASE("chain: proof of work is checked against the header's target and the network's limit",
          "[indexer][chain]") {
    BlockHeader h;  // its hash all zeros: below any valid target
    const auto why = [&](Network n) {
        const Status s = check_work(h, n);
        return s ? std::string() : s.error().message;
    };
    h.bits = 0x1d00ffff;  // mainnet's limit itself
    CHECK(why(Network::kMainnet).empty());
    h.bits = 0x1d010000;  // just easier
    CHECK(why(Network::kMainnet) ==
          "its target (bits 1d010000) is easier than mainnet's limit (bits 1d00ffff)");
    CHECK(why(Network::kSignet).empty());
    h.bits = 0x207fffff;
    CHECK(why(Network::kRegtest).empty());
    CHECK(why(Network::kTestnet4) ==
          "its target (bits 207fffff) is easier than testnet4's limit (bits 1d00ffff)");
    h.bits = 0;
    CHECK(why(Network::kRegtest) == "its bits 00000000 encode no valid target");
    h.bits = 0x1d00ffff;  // target 0xffff * 2^208 (little-endian bytes 26 and 27): 2^224 is above
    h.hash.bytes[28] = 1;
    CHECK(why(Network::kMainnet) == "its hash is above the target its bits 1d00ffff encode");
    CHECK_FALSE(meets_target(h, Network::kMainnet));
    h.hash.bytes[28] = 0;
    h.hash.bytes[27] = 0xff;
    h.hash.bytes[26] = 0xff;
    CHECK(meets_target(h, Network::kMainnet));  // exactly the target
    h.hash.bytes[0] = 1;
    CHECK_FALSE(meets_target(h, Network::kMainnet));  // one above
}

TEST_CASE("networks: names and magics", "[indexer][blocks]") {
    CHECK(parse_network("mainnet") == Network::kMainnet);
    CHECK(parse_network("testnet4") == Network::kTestnet4);
    CHECK_FALSE(parse_network("litecoin"));
    CHECK(to_hex(network_magic(Network::kRegtest)) == "fabfb5da");
    CHECK(to_hex(network_magic(Network::kSignet)) == "0a03cf40");
}
