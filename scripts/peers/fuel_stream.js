// Applies a change file to @fuel-ts/merkle's SparseMerkleTree (in memory) and prints
// "<height> <root>" per height, like `stateroot apply`, then the time it took on stderr.
// Keys use the hashed convention (path = SHA-256 of the key), as stateroot does; an empty
// value is a delete (the package would store H("") instead, docs/smt-spec.md section 9).
//
//   node fuel_stream.js CHANGE_FILE     (run where @fuel-ts/merkle is installed)
const fs = require("fs");
const crypto = require("crypto");
const { SparseMerkleTree } = require("@fuel-ts/merkle");

const lines = fs.readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l.trim());
const path = (hex) => "0x" + crypto.createHash("sha256").update(Buffer.from(hex, "hex")).digest("hex");
const tree = new SparseMerkleTree();
const out = [];
let ops = 0;
const start = process.hrtime.bigint();
for (const line of lines) {
  const c = JSON.parse(line);
  for (const [k, v] of c.puts || []) {
    if (v === "") tree.delete(path(k));
    else tree.update(path(k), "0x" + v);
    ops++;
  }
  for (const k of c.deletes || []) {
    tree.delete(path(k));
    ops++;
  }
  out.push(`${c.height} ${tree.root.slice(2).toLowerCase()}`);
}
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
process.stdout.write(out.join("\n") + "\n");
process.stderr.write(`fuel: ${ops} operations in ${seconds.toFixed(2)} s\n`);
