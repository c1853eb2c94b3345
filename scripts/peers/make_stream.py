#!/usr/bin/env python3
"""Writes a change file (JSON lines, one height each) for scripts/bench-peers.sh:
HEIGHTS heights of OPS operations, from a fixed seed. The first tenth of the heights
only insert; then 60 % updates, 25 % inserts, 15 % deletes (a few empty-value puts,
which delete). Keys are 32 random bytes, values 32 to 64.

    make_stream.py OUT_FILE [HEIGHTS] [OPS] [SEED]
"""
import json
import random
import sys


def main():
    out = sys.argv[1]
    heights = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    ops = int(sys.argv[3]) if len(sys.argv) > 3 else 600
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    live = []
    with open(out, "w") as f:
        for h in range(heights):
            puts, deletes, used = [], [], set()

            def fresh():
                k = rng.randbytes(32).hex()
                live.append(k)
                return k

            for _ in range(ops):
                roll = rng.random()
                value = rng.randbytes(rng.randint(32, 64)).hex()
                if h < heights // 10 or not live or roll < 0.25:
                    puts.append([fresh(), value])
                    used.add(puts[-1][0])
                    continue
                i = rng.randrange(len(live))
                k = live[i]
                if k in used:
                    continue
                used.add(k)
                if roll < 0.85:
                    puts.append([k, value])
                else:
                    live[i] = live[-1]
                    live.pop()
                    if roll < 0.87:
                        puts.append([k, ""])  # an empty put deletes
                    else:
                        deletes.append(k)
            f.write(json.dumps({"height": h, "puts": puts, "deletes": deletes}) + "\n")


if __name__ == "__main__":
    main()
