#!/usr/bin/env python3
"""Writes the seed inputs of one fuzz target into a directory, from the shipped data.

    make_seeds.py TARGET OUT_DIR

TARGET is block_parser, blk_reader, change_line, proof_json or rpc_request. The files
committed in tests/fuzz/seeds/TARGET/ are copied; the rest is cut from
tests/fixtures/blocks (real blocks and blk files), configs/examples/changes.jsonl and
tests/fuzz/state.jsonl, so that no fixture is stored twice.
"""
import hashlib
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BLOCKS = os.path.join(REPO, "tests", "fixtures", "blocks")
MAINNET_MAGIC = bytes.fromhex("f9beb4d9")
REGTEST_MAGIC = bytes.fromhex("fabfb5da")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def blk_records(data):
    """The blocks of a blk-framed file (no padding in the shipped ones)."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 4] == MAINNET_MAGIC, "unexpected framing"
        (size,) = struct.unpack_from("<I", data, pos + 4)
        out.append(data[pos + 8:pos + 8 + size])
        pos += 8 + size
    return out


def frame(blocks, magic=MAINNET_MAGIC):
    return b"".join(magic + struct.pack("<I", len(b)) + b for b in blocks)


def sha256d(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def compact(data, pos):
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    n = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1:pos + 1 + n], "little"), pos + 1 + n


def put_compact(n):
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def split_txs(block):
    """(raw tx, txid) for each transaction of a block, segwit included."""
    count, pos = compact(block, 80)
    txs = []
    for _ in range(count):
        start = pos
        pos += 4
        segwit = block[pos] == 0 and block[pos + 1] == 1
        if segwit:
            pos += 2
        body = pos
        n_in, pos = compact(block, pos)
        for _ in range(n_in):
            pos += 36
            n, pos = compact(block, pos)
            pos += n + 4
        n_out, pos = compact(block, pos)
        for _ in range(n_out):
            pos += 8
            n, pos = compact(block, pos)
            pos += n
        body_end = pos
        if segwit:
            for _ in range(n_in):
                items, pos = compact(block, pos)
                for _ in range(items):
                    n, pos = compact(block, pos)
                    pos += n
        stripped = block[start:start + 4] + block[body:body_end] + block[pos:pos + 4]
        pos += 4
        txs.append((block[start:pos], sha256d(stripped)))
    assert pos == len(block)
    return txs


def merkle(hashes):
    while len(hashes) > 1:
        if len(hashes) % 2:
            hashes.append(hashes[-1])
        hashes = [sha256d(hashes[i] + hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


COMMITMENT = bytes.fromhex("6a24aa21a9ed")


def small_block(block, picks):
    """A block of some of `block`'s transactions (the coinbase first), its coinbase's
    witness commitment (BIP141) and its header's merkle root made to match."""
    txs = [t for i, t in enumerate(split_txs(block)) if i in picks]
    coinbase, _ = txs[0]
    at = coinbase.rfind(COMMITMENT)
    if at >= 0:
        # The coinbase's one witness item, the reserved value, ends 4 bytes from its end.
        assert coinbase[-38:-36] == b"\x01\x20"
        reserved = coinbase[-36:-4]
        wtxids = [bytes(32)] + [sha256d(raw) if raw[4] == 0 else txid for raw, txid in txs[1:]]
        start = at + len(COMMITMENT)
        coinbase = coinbase[:start] + sha256d(merkle(wtxids) + reserved) + coinbase[start + 32:]
        txs[0] = split_txs(bytes(80) + b"\x01" + coinbase)[0]
    root = merkle([txid for _, txid in txs])
    return block[:36] + root + block[68:80] + put_compact(len(txs)) + b"".join(raw for raw, _ in txs)


def interesting_mainnet(records):
    """Blocks with more than one transaction, and a few others from along the file."""
    return [b for i, b in enumerate(records) if b[80] > 1 or i % 100 == 0]


def segwit_blocks():
    """Small valid blocks cut from mainnet 702,861: its coinbase and a few segwit and
    legacy transactions (the file itself is 1.4 MB, too big a seed)."""
    block = read(os.path.join(BLOCKS, "mainnet_702861.raw"))
    txs = split_txs(block)
    segwit = [i for i, (raw, _) in enumerate(txs) if raw[4] == 0][:6]
    legacy = [i for i, (raw, _) in enumerate(txs) if raw[4] != 0 and i > 0][:2]
    return [small_block(block, {0}), small_block(block, {0, *segwit[:3]}),
            small_block(block, {0, *segwit[3:], *legacy})]


def btcd_blocks():
    names = ["btcd_reorg_blk_0_to_4.dat", "btcd_reorg_blk_3A.dat", "btcd_reorg_blk_4A.dat",
             "btcd_reorg_blk_5A.dat"]
    return [b for n in names for b in blk_records(read(os.path.join(BLOCKS, n)))]


def seeds(target):
    mainnet = blk_records(read(os.path.join(BLOCKS, "mainnet_0-589.blk")))
    if target == "block_parser":
        blocks = interesting_mainnet(mainnet) + btcd_blocks() + segwit_blocks()
        return {f"block-{i:03}": b for i, b in enumerate(blocks)}
    if target == "blk_reader":
        # Mode byte: bit 0 = obfuscated (an 8-byte key follows), bits 1-3 = network.
        key = bytes.fromhex("3c5a9b0e71d2f468")
        btcd = read(os.path.join(BLOCKS, "btcd_reorg_blk_0_to_4.dat"))
        first = frame(mainnet[:12])
        spends = frame([b for b in mainnet if b[80] > 1][:3])
        padded = frame(mainnet[:2]) + bytes(40) + frame(mainnet[2:4]) + bytes(300)
        return {
            "plain-btcd": b"\x00" + btcd,
            "plain-side-branch": b"\x00" + read(os.path.join(BLOCKS, "btcd_reorg_blk_3A.dat")),
            "plain-mainnet-0-11": b"\x00" + first,
            "plain-spends": b"\x00" + spends,
            "plain-padded": b"\x00" + padded,
            "plain-segwit": b"\x00" + frame(segwit_blocks()[1:2]),
            "xor-btcd": b"\x01" + key + btcd,
            "xor-padded": b"\x01" + key + padded,
            "xor-zero-key": b"\x01" + bytes(8) + first[:2000],
            "regtest": bytes([4 << 1]) + frame(btcd_blocks()[:3], REGTEST_MAGIC),
            "truncated": b"\x00" + first[:700],
        }
    if target == "change_line":
        out = {}
        for name in ("configs/examples/changes.jsonl", "tests/fuzz/state.jsonl"):
            with open(os.path.join(REPO, name), "rb") as f:
                for i, line in enumerate(f):
                    out[f"{os.path.basename(name)}-{i}"] = line.rstrip(b"\n")
        return out
    if target in ("proof_json", "rpc_request"):
        return {}
    sys.exit(f"make_seeds.py: unknown target {target}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    target, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    committed = os.path.join(HERE, "seeds", target)
    if os.path.isdir(committed):
        for name in sorted(os.listdir(committed)):
            shutil.copy(os.path.join(committed, name), os.path.join(out, name))
    for name, data in seeds(target).items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
