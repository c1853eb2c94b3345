#!/usr/bin/env bash
# Crash test: kills `stateroot apply` and `stateroot index` with SIGKILL at random
# moments, restarts them, and checks that the roots of every height equal those of an
# uninterrupted run and that `stateroot check` passes at sampled heights.
#
# For each command: an uninterrupted reference run into its own database. Then
# max(4, KILLS / 10) kills during the first run on a new database, each followed by a
# run up to the first height that must print the reference's root. Then a victim
# database, on which the same command is started, killed (kill -9) after a random
# delay, and started again, until KILLS kills have hit a running process (a run that
# ends by itself first is not counted); then one run to completion. Some delays aim at
# startup (opening, recovery), the others spread the kills over the heights (see "Kill
# delays" below). apply restarts read the change file from 2 heights below the tip, as
# an indexer resuming would; its final run reads it all. After every kill the
# victim's tip is read and its root compared with the reference's. A victim that
# finishes between kills is verified, emptied and started over (a new lap).
# Verification: the heights; the root of every height, read through one `stateroot
# serve` (JSON-RPC batches), against the reference's; for apply the `<height> <root>`
# lines of the final run against the reference run's; `stateroot check` at 5 random
# heights and the tip. Inputs are generated here from SEED: a change file (apply) and
# a synthetic regtest chain from make_chain (index).
#
#   ./scripts/crash-test.sh            50 kills of each command, a few minutes on 2 cores
#   KILLS=8 ./scripts/crash-test.sh    the short version, for CI
#
# Environment: KILLS (kills per command, default 50); SEED (inputs, delays and sampled
# heights, default 1); BUILD (build directory, default build, where stateroot and
# make_chain are built first unless SKIP_BUILD=1); WORK (working directory, kept;
# default a new temporary one, removed on success and kept on failure); APPLY_HEIGHTS,
# APPLY_KEYS (changed keys per height, mean), BLOCKS, TXS (transactions per block):
# input sizes, by default scaled with KILLS. Exit 0 only if every root and check
# matched; 1 with the first mismatch otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

for v in KILLS SEED APPLY_HEIGHTS APPLY_KEYS BLOCKS TXS; do
  [[ "${!v:-0}" =~ ^[0-9]+$ ]] || { echo "crash-test: $v must be a non-negative integer" >&2; exit 2; }
done
kills_wanted="${KILLS:-50}"
seed="${SEED:-1}"
build="${BUILD:-build}"
apply_heights="${APPLY_HEIGHTS:-$((30 * kills_wanted))}"
apply_keys="${APPLY_KEYS:-500}"
blocks="${BLOCKS:-$((40 * kills_wanted))}"
txs="${TXS:-60}"
apply_first=100  # the change file's first height (index starts at the genesis block, 0)
create_kills=$((kills_wanted / 10 > 4 ? kills_wanted / 10 : 4))  # kills during database creation
if [ "$kills_wanted" -lt 1 ] || [ "$apply_heights" -lt 2 ] || [ "$blocks" -lt 2 ]; then
  echo "crash-test: KILLS must be at least 1, APPLY_HEIGHTS and BLOCKS at least 2" >&2
  exit 2
fi

if [ -n "${WORK:-}" ]; then
  work="$WORK"; keep_work=1
  mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/crash-test.XXXXXX")"; keep_work=""
fi
work="$(cd "$work" && pwd)"

ok=""
running=""  # the process started in the background, until it is waited for
cleanup() {
  [ -z "$running" ] || kill -KILL "$running" 2>/dev/null || true
  if [ -n "$ok" ]; then
    [ -n "$keep_work" ] || rm -rf "$work"
  else
    echo "crash-test: work directory kept: $work" >&2
  fi
}
trap cleanup EXIT

log() { echo "crash-test: $*" >&2; }
die() { echo "crash-test: FAILED: $*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
ms_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
# rand N: sets r to a random integer in [0, N], from bash's generator seeded with SEED
# (not in a subshell: bash reseeds it there).
RANDOM="$seed"
rand() { r=$(((RANDOM * 32768 + RANDOM) % ($1 + 1))); }

if [ -z "${SKIP_BUILD:-}" ]; then
  ./scripts/setup.sh
  [ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j "$(nproc)" --target stateroot make_chain >/dev/null
fi
bin="$(cd "$build/tools" && pwd)/stateroot"
make_chain="$(cd "$build/tests" && pwd)/make_chain"
started=$(date +%s.%N)

# ---------------------------------------------------------------------------- inputs

log "seed $seed, $kills_wanted kills per command, work directory $work"
log "generating $apply_heights heights of changes (about $apply_keys keys each) and a chain of $blocks blocks ($txs transactions each)"
python3 - "$apply_first" "$apply_heights" "$apply_keys" "$seed" >"$work/changes.jsonl" <<'PY'
# Puts of new keys, updates and deletes of live ones, with 1 to 2 * mean changes per height.
import json, random, sys
first, heights, mean, seed = map(int, sys.argv[1:5])
rng = random.Random(seed)
live, where = [], {}  # live keys, and each one's position in `live`
def add(k):
    where[k] = len(live)
    live.append(k)
def remove(k):
    i = where.pop(k)
    last = live.pop()
    if i < len(live):
        live[i] = last
        where[last] = i
for h in range(first, first + heights):
    puts, deletes, seen = [], [], set()
    for _ in range(rng.randint(1, 2 * mean)):
        r = rng.random()
        if live and r < 0.45:
            k = live[rng.randrange(len(live))]
            if k in seen:
                continue
            seen.add(k)
            if r < 0.15:
                deletes.append(k)
                remove(k)
            else:
                puts.append([k, rng.randbytes(rng.randint(1, 120)).hex()])
        else:
            k = rng.randbytes(rng.randint(4, 40)).hex()
            if k in seen or k in where:
                continue
            seen.add(k)
            puts.append([k, rng.randbytes(rng.randint(1, 120)).hex()])
            add(k)
    line = {"height": h, "puts": puts, "deletes": deletes}
    if h % 3 == 0:
        line["block_hash"] = rng.randbytes(32).hex()
    print(json.dumps(line, separators=(",", ":")))
PY
"$make_chain" "$work/chain.blk" "$blocks" "$txs" "$seed"

# run_bg DB FROM OUT ERR: starts the command of this kind on database DB in the
# background (its pid in pid). apply reads the change file from its line for height
# FROM (a number, or - for all of it) on stdin, as an indexer resuming from its last
# height would; index always reads the whole chain.
run_bg() {
  case $kind in
    apply)
      if [ "$2" = "-" ]; then
        "$bin" apply --db "$1" "$work/changes.jsonl" >"$3" 2>>"$4" &
      else
        tail -n "+$(($2 - apply_first + 1))" "$work/changes.jsonl" | "$bin" apply --db "$1" - >"$3" 2>>"$4" &
      fi ;;
    index) "$bin" index --db "$1" --blocks "$work/chain.blk" --network regtest >"$3" 2>>"$4" & ;;
  esac
  pid=$!
  running=$pid
}

# run DB FROM OUT ERR: the same in the foreground; its exit status in status.
run() {
  run_bg "$@"
  status=0
  { wait "$pid" || status=$?; } 2>/dev/null
  running=""
}

# run_first DB OUT ERR: the command of this kind on database DB in the foreground, up to
# the first height only; its exit status in status.
run_first() {
  case $kind in
    apply) head -n 1 "$work/changes.jsonl" | "$bin" apply --db "$1" - >"$2" 2>>"$3" & ;;
    index) "$bin" index --db "$1" --blocks "$work/chain.blk" --network regtest --exit-at 0 >"$2" 2>>"$3" & ;;
  esac
  pid=$!
  running=$pid
  status=0
  { wait "$pid" || status=$?; } 2>/dev/null
  running=""
}

# ------------------------------------------------------------------------- reading

# "<first> <tip> <root>" of database $1 ("- - -" when empty or not created yet); $2
# says when, for a failure.
tip_of() {
  local out
  if ! out=$("$bin" info --db "$1" 2>"$work/info.err"); then
    grep -qE "no database at|no format row" "$work/info.err" && { echo "- - -"; return; }
    die "$kind: ${2:-}stateroot info --db $1 failed: $(cat "$work/info.err")"
  fi
  python3 -c 'import json, sys
j = json.load(sys.stdin)
print(*(("-" if j[k] is None else j[k]) for k in ("first", "tip", "root")))' <<<"$out"
}

# Writes "<height> <root>" for every height of database $1 into file $2, read through
# one `stateroot serve` with JSON-RPC batches.
all_roots() {
  local db="$1" out="$2" first tip root port="" pid i state
  state=$(tip_of "$db")
  read -r first tip root <<<"$state"
  [ "$tip" != "-" ] || die "$kind: $db is empty"
  rm -f "$work/serve.out"  # not to read the port of an earlier server
  "$bin" serve --db "$db" --rpc-addr 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
  pid=$!
  running=$pid
  for ((i = 0; i < 600; i++)); do
    port=$(sed -n 's/^listening .*:\([0-9]*\)$/\1/p' "$work/serve.out" 2>/dev/null || true)
    if [ -n "$port" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  [ -n "$port" ] || die "$kind: stateroot serve --db $db did not start: $(cat "$work/serve.err")"
  python3 - "$port" "$first" "$tip" >"$out" <<'PY' || die "$kind: reading the roots of $db failed"
import json, sys, urllib.request
port, first, tip = map(int, sys.argv[1:4])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for start in range(first, tip + 1, 1000):
    heights = range(start, min(start + 1000, tip + 1))
    body = json.dumps([{"jsonrpc": "2.0", "id": h, "method": "stateroot_getroot", "params": [h]}
                       for h in heights]).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", body, {"Content-Type": "application/json"})
    answers = {a.get("id"): a for a in json.load(opener.open(request, timeout=120))}
    for h in heights:
        if "result" not in answers.get(h, {}):
            sys.exit(f"height {h}: {answers.get(h)}")
        print(h, answers[h]["result"])
PY
  kill -TERM "$pid"
  wait "$pid" || die "$kind: stateroot serve --db $db exited with $?: $(cat "$work/serve.err")"
  running=""
}

# The first line where files $1 and $2 (both "<height> <root>") differ, as a message.
first_difference() {
  python3 - "$1" "$2" <<'PY'
import sys
a, b = (open(p).read().split("\n") for p in sys.argv[1:3])
for x, y in zip(a, b):
    if x != y:
        print(f"at height {(x or y).split()[0]}: victim {x.split()[-1] if x else 'nothing'}, "
              f"reference {y.split()[-1] if y else 'nothing'}")
        break
else:
    if len(a) != len(b):
        print(f"the victim has {len(a) - 1} heights, the reference {len(b) - 1}")
PY
}

# ---------------------------------------------------------------------- verification

roots_compared=0
checks_passed=0

# Verifies victim database $1 against the reference: its heights, the root of every
# height, and check at sampled heights.
verify() {
  local db="$1" first tip root heights=() h out diff state
  state=$(tip_of "$db")
  read -r first tip root <<<"$state"
  [ "$first $tip" = "$ref_first $ref_tip" ] ||
    die "$kind: the victim holds heights $first..$tip, the reference $ref_first..$ref_tip"
  all_roots "$db" "$work/$kind.victim-roots"
  diff=$(first_difference "$work/$kind.victim-roots" "$work/$kind.reference-roots")
  [ -z "$diff" ] || die "$kind: root mismatch $diff"
  roots_compared=$((roots_compared + tip - first + 1))
  for _ in 1 2 3 4 5; do
    rand $((tip - first))
    heights+=($((first + r)))
  done
  heights+=("$tip")
  for h in "${heights[@]}"; do
    if ! out=$("$bin" check --db "$db" --height "$h" 2>"$work/check.err"); then
      die "$kind: stateroot check --db $db --height $h: $out $(cat "$work/check.err")"
    fi
    [ "$out" = "ok $h ${ref_root[$h]}" ] || die "$kind: check at height $h printed \"$out\", the reference root is ${ref_root[$h]}"
    checks_passed=$((checks_passed + 1))
  done
  log "$kind: verified heights $first..$tip: every root equals the reference's; check ok at ${heights[*]}"
}

# ----------------------------------------------------------------------------- runs

declare -A summary

crash_test() {
  kind="$1"
  local t0 ref="$work/$kind.reference" victim="$work/$kind.victim" vlog="$work/$kind.log"
  local ref_ms restart_ms create_ms creations=0 i h late span startup c suggested wanted kills=0 laps=0 ms delay first tip root
  local state last_tip="-" at tip_n stalled=0 start bucket from early msg tenths=(0 0 0 0 0 0 0 0 0 0 0)
  t0=$(date +%s.%N)

  log "$kind: reference run"
  start=$(date +%s.%N)
  run "$ref" - "$work/$kind.reference.out" "$work/$kind.reference.err"
  [ "$status" -eq 0 ] || die "$kind: the reference run failed: $(tail -n 5 "$work/$kind.reference.err")"
  ref_ms=$(ms_since "$start")
  # What a restart on a complete database costs (apply: its last 3 heights again).
  start=$(date +%s.%N)
  run "$ref" "$((apply_first + apply_heights - 3))" "$work/$kind.again.out" "$work/$kind.again.err"
  [ "$status" -eq 0 ] || die "$kind: a run on the complete reference failed: $(tail -n 5 "$work/$kind.again.err")"
  restart_ms=$(ms_since "$start")
  if [ "$kind" = apply ]; then
    cmp -s <(tail -n 3 "$work/apply.reference.out") "$work/apply.again.out" ||
      die "apply: its last 3 heights applied again printed other roots than the first time"
  else
    cmp -s "$work/index.reference.out" "$work/index.again.out" ||
      die "index: a run on the complete reference printed something else than the first"
  fi
  # What creating a database costs (a run with no input on a new one).
  start=$(date +%s.%N)
  "$bin" apply --db "$work/new" /dev/null >/dev/null 2>&1 || die "creating a database failed"
  create_ms=$(ms_since "$start")
  rm -rf "$work/new"
  all_roots "$ref" "$work/$kind.reference-roots"
  state=$(tip_of "$ref")
  read -r ref_first ref_tip root <<<"$state"
  declare -gA ref_root=()
  while read -r h r; do ref_root[$h]=$r; done <"$work/$kind.reference-roots"
  if [ "$kind" = apply ]; then
    cmp -s "$work/apply.reference.out" "$work/apply.reference-roots" ||
      die "apply: the reference run printed other roots than stateroot serve reads back"
  fi
  log "$kind: reference heights $ref_first..$ref_tip in $ref_ms ms (a restart with nothing new: $restart_ms ms, creating a database: $create_ms ms)"

  : >"$vlog"
  # Database creation: kills during the first run on a new database, the i-th of C
  # after a delay uniform in the i-th of C equal parts of [0, the time creating a
  # database took], each followed by a run up to the first height (index: --exit-at),
  # whose root must be the reference's. Counted apart from the KILLS below.
  for ((i = 0; i < create_kills; i++)); do
    rm -rf "$work/new"
    rand $((create_ms / create_kills))
    ms=$((create_ms * i / create_kills + r))
    delay=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    echo "== new database (kill due after $delay s)" >>"$vlog"
    run_bg "$work/new" - /dev/null "$vlog"
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null || true
    status=0
    { wait "$pid" || status=$?; } 2>/dev/null
    running=""
    [ "$status" -eq 137 ] || [ "$status" -eq 0 ] || die "$kind: a run on a new database exited with $status: $(tail -n 5 "$vlog")"
    late=""
    if [ "$status" -eq 0 ]; then late=" (too late: the run had ended)"; else creations=$((creations + 1)); fi
    echo "== restart, first height only" >>"$vlog"
    run_first "$work/new" "$work/$kind.first.out" "$vlog"
    [ "$status" -eq 0 ] ||
      die "$kind: killed $delay s into its first run on a new database, it does not restart: $(tail -n 1 "$vlog") (it left: $(cd "$work/new" 2>/dev/null && echo *))"
    # "<height> <root>" (apply) or "<tip> <block hash> <root>" (index, maybe above the
    # first height if the killed run committed some).
    read -r h _ <"$work/$kind.first.out"
    [ "$(awk 'END { print $NF }' "$work/$kind.first.out")" = "${ref_root[$h]:-}" ] ||
      die "$kind: killed $delay s into its first run on a new database, then restarted, it printed \"$(cat "$work/$kind.first.out")\"; the reference root of height $h is ${ref_root[$h]:-none}"
    log "$kind: creation kill $((i + 1))/$create_kills after $delay s$late: the restart printed height $h with the reference's root"
  done
  rm -rf "$work/new"

  # Kill delays. Every fourth kill (the 1st, 5th, ...): uniform in [0, startup], to
  # land in process start, opening and recovery. The others: startup plus uniform in
  # [0, 2 * share * c / 100], share being the time the reference run took for an even
  # share of the heights left among the kills left (+ 1 for the final run). Both adapt
  # after each kill: c (the victim's time per height against the reference's, in %)
  # grows by a quarter when the kill found fewer new heights than the share and shrinks
  # by a fifth when more; startup (ms), first half a restart with nothing new, becomes
  # the average of itself and what the kill suggests (its delay less the time of the
  # new heights it found).
  span=$((ref_tip - ref_first + 1))
  startup=$((restart_ms / 2))
  c=100
  at=$((ref_first - 1))  # the victim's tip, as a number
  rm -rf "$victim"
  while [ "$kills" -lt "$kills_wanted" ]; do
    wanted=$(((ref_tip - at) / (kills_wanted - kills + 1)))
    if [ $((kills % 4)) -eq 0 ]; then
      early=1
      rand "$startup"
    else
      early=""
      rand $((2 * c * ref_ms * wanted / span / 100))
      r=$((startup + r))
    fi
    ms=$r
    delay=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    # apply resumes 2 heights below the tip, re-applying 3 committed ones.
    from=$([ "$last_tip" = "-" ] && echo "$apply_first" || echo $((last_tip - 2)))
    [ "$from" -ge "$apply_first" ] || from=$apply_first
    echo "== start (kill $((kills + 1)) due after $delay s)" >>"$vlog"
    run_bg "$victim" "$from" "$work/$kind.victim.out" "$vlog"
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null || true
    status=0
    { wait "$pid" || status=$?; } 2>/dev/null
    running=""
    if [ "$status" -eq 0 ]; then
      # It finished before the kill: a lap complete.
      laps=$((laps + 1))
      log "$kind: the victim finished before kill $((kills + 1)) (lap $laps); verifying it, then starting over empty"
      verify "$victim"
      rm -rf "$victim"
      suggested=$((ms - c * ref_ms * (ref_tip - at) / span / 100))
      startup=$(((startup + (suggested > 0 ? suggested : 0)) / 2))
      [ "$c" -le 50 ] || c=$((c - c / 5))
      last_tip="-"
      at=$((ref_first - 1))
      continue
    fi
    [ "$status" -eq 137 ] || die "$kind: a restart exited with $status, not killed: $(tail -n 5 "$vlog")"
    kills=$((kills + 1))
    state=$(tip_of "$victim" "after kill $kills (after $delay s), ")
    read -r first tip root <<<"$state"
    if [ "$tip" != "-" ]; then
      [ "$root" = "${ref_root[$tip]}" ] ||
        die "$kind: after kill $kills the tip $tip has root $root, the reference ${ref_root[$tip]}"
    fi
    [ "$tip" = "$last_tip" ] && stalled=$((stalled + 1))
    bucket=$([ "$tip" = "-" ] && echo 0 || echo $((1 + (tip - ref_first) * 10 / (ref_tip - ref_first + 1))))
    tenths[bucket]=$((tenths[bucket] + 1))
    msg="$kind: kill $kills/$kills_wanted after $delay s${early:+ (aimed at startup)}: tip ${tip/-/none}"
    [ "$tip" != "$last_tip" ] || msg+=" (no new height)"
    [ "$tip" = "-" ] || msg+=", root matches"
    log "$msg"
    last_tip=$tip
    tip_n=${tip/-/$((ref_first - 1))}
    # Nothing new: the startup took longer than the delay.
    suggested=$([ "$tip_n" -gt "$at" ] && echo $((ms - c * ref_ms * (tip_n - at) / span / 100)) || echo $((ms + ms / 4)))
    startup=$(((startup + (suggested > 0 ? suggested : 0)) / 2))
    if [ -z "$early" ] && [ $((tip_n - at)) -lt "$wanted" ]; then
      [ "$c" -ge 400 ] || c=$((c + c / 4))
    elif [ -z "$early" ]; then
      [ "$c" -le 50 ] || c=$((c - c / 5))
    fi
    at=$tip_n
  done

  log "$kind: final run, without kills"
  echo "== final run" >>"$vlog"
  run "$victim" - "$work/$kind.victim.out" "$vlog"
  [ "$status" -eq 0 ] || die "$kind: the final run failed: $(tail -n 5 "$vlog")"
  if [ "$kind" = apply ]; then
    local diff
    diff=$(first_difference "$work/apply.victim.out" "$work/apply.reference.out")
    [ -z "$diff" ] || die "apply: the final run printed a root mismatch $diff"
  else
    cmp -s "$work/index.victim.out" "$work/index.reference.out" ||
      die "index: the final run printed \"$(cat "$work/index.victim.out")\", the reference \"$(cat "$work/index.reference.out")\""
  fi
  verify "$victim"
  summary[$kind]="$creations kills during database creation, each restart printed the reference's root;"
  summary[$kind]+=" then $kills kills delivered to a running process ($stalled before it committed a new height),"
  summary[$kind]+=" laps completed between kills: $laps, heights $ref_first..$ref_tip, $(since "$t0") s"
  summary[$kind]+=$'\n'"         kills by the tip they left: none yet ${tenths[0]}, by tenth of the heights ${tenths[*]:1}"
}

crash_test apply
crash_test index

ok=1
echo "crash test passed (seed $seed)"
echo "  apply: ${summary[apply]}"
echo "  index: ${summary[index]}"
echo "  roots compared: $roots_compared, all equal to the uninterrupted runs'; stateroot check passed: $checks_passed"
echo "  elapsed: $(since "$started") s (after the build)"
