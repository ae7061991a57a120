#!/usr/bin/env bash
# The README's main command (`make demo`): build and stage an install, build
# a C client with pkg-config against it, then run a live three-node cluster
# on the embedded engine: three `o2dlm client` processes on 127.0.0.1-3
# sharing a heartbeat file in a temporary directory, contending for a few
# locks and printing grants, BASTs and LVB values as they happen, then
# leaving cleanly. Only the staged install and loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/install-test-deps.sh >/dev/null
echo "== building and staging an install (target/stage/usr/local)"
make -s stage >/dev/null 2>&1
stage="$PWD/target/stage/usr/local"
o2dlm="$stage/bin/o2dlm"
export PKG_CONFIG_PATH="$stage/lib/pkgconfig"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "== a C client built with: pkg-config --cflags --libs o2dlm"
gcc -Wall -o "$work/demo" tools/demo.c $(pkg-config --cflags --libs o2dlm) -Wl,-rpath,"$stage/lib"
"$work/demo" /dlm demo | sed 's/^/   /'

echo
echo "== three engine nodes n1..n3 on 127.0.0.1-3, heartbeat file $work/hb.img"
truncate -s 1M "$work/hb.img"
{
    printf 'cluster:\n\tnode_count = 3\n\tname = demo\n\n'
    for n in 1 2 3; do
        printf 'node:\n\tip_port = 27%d77\n\tip_address = 127.0.0.%d\n\tnumber = %d\n\tname = n%d\n\tcluster = demo\n\n' "$n" "$n" "$n" "$n"
    done
} > "$work/cluster.conf"

# What each node does once it has joined (one o2dlm client command a line;
# the sleeps stagger the nodes so the contention is easy to follow).
count() {
    echo 'echo counting: 10 increments of "counter" under EX, all nodes at once'
    for _ in 1 2 3 4 5 6 7 8 9 10; do printf 'incr counter\nsleep 200\n'; done
    printf 'sleep 1500\nlock counter pr\nread counter\nunlock counter\n'
}
script_n1() {
    cat <<'EOF'
echo takes "config" EX with a BAST handler and sets its LVB
bast config ex
write config v1 (set by n1)
sleep 3000
echo n2 has been waiting for "config" since the BAST: releasing it
unlock config
sleep 2500
bast job ex release
read job
write job n1 was here
sleep 2500
EOF
    count
}
script_n2() {
    cat <<'EOF'
sleep 1000
echo asks for "config" PR: blocks until n1 lets go
lock config pr
read config
unlock config
sleep 3500
bast job ex release
read job
write job n2 was here
sleep 1500
EOF
    count
}
script_n3() {
    cat <<'EOF'
sleep 2000
echo tries "config" PR without waiting while n1 holds EX
lock config pr try
sleep 1500
echo takes "job" EX and releases it whenever another node asks (BAST)
bast job ex release
write job n3 was here
sleep 4000
lock job pr
read job
unlock job
sleep 500
EOF
    count
}

# Result lines carry the wall time; show them relative to the start, with
# the node name, leaving out the pauses. (A shell loop rather than awk:
# mawk reads a pipe in blocks, which would hold lines back.)
start=$(date +%s%3N)
show() {
    local line ts ms rel
    while IFS= read -r line; do
        case "$line" in
            t=*) ;;
            *) printf '         [%s] %s\n' "$1" "$line"; continue ;;
        esac
        ts=${line%% *}
        ts=${ts#t=}
        ms=$(( ${ts%.*} * 1000 + 10#${ts#*.} - start ))
        line=${line#* }
        case "$line" in
            op=sleep*) continue ;;
            op=echo*) line="-- ${line#*text=}" ;;
        esac
        printf '%4d.%02ds [%s] %s\n' $((ms / 1000)) $((ms % 1000 / 10)) "$1" "$line"
    done
}

for n in 1 2 3; do
    "script_n$n" | O2DLM_CLUSTER_CONF="$work/cluster.conf" O2DLM_NODE="n$n" \
        O2DLM_HEARTBEAT_DEVICE="$work/hb.img" O2CB_HEARTBEAT_THRESHOLD=7 \
        O2DLM_O2CB_SYSCONFIG= O2CB_IDLE_TIMEOUT_MS=10000 O2CB_KEEPALIVE_DELAY_MS=2000 \
        O2DLM_LOG=error \
        "$o2dlm" client demo 2>&1 | tee "$work/n$n.out" | show "n$n" &
    pids+=($!)
done
echo "   (each node's first o2dlm_initialize waits ~10 s for the heartbeat to settle)"
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

echo
fail=0
for n in 1 2 3; do
    if ! grep -q 'op=read name=counter rc=OK .* text=30$' "$work/n$n.out"; then
        echo "n$n did not read counter=30"; fail=1
    fi
    if ! grep -q 'op=destroy rc=OK' "$work/n$n.out"; then
        echo "n$n did not leave cleanly"; fail=1
    fi
done
grep -q 'op=lock name=config rc=O2DLM_ET_TRYLOCK_FAILED' "$work/n3.out" || { echo "n3's trylock was not refused"; fail=1; }
grep -q 'event=bast name=config' "$work/n1.out" || { echo "n1 saw no BAST"; fail=1; }
if [ "$fail" = 0 ]; then
    echo "== demo OK: 30 increments from three nodes, counter=30 everywhere; every node left cleanly"
else
    echo "== demo FAILED"
    exit 1
fi
