#!/usr/bin/env bash
# The README's main command (`make demo`): build, stage an install, build a
# C client with pkg-config against it and run it, then run a three-node
# engine cluster (heartbeat + o2net) on loopback for a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/install-test-deps.sh >/dev/null
make -s stage >/dev/null 2>&1
stage="$PWD/target/stage/usr/local"
export PKG_CONFIG_PATH="$stage/lib/pkgconfig"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== C client built with: pkg-config --cflags --libs o2dlm"
gcc -Wall -o "$work/demo" tools/demo.c $(pkg-config --cflags --libs o2dlm) -Wl,-rpath,"$stage/lib"
"$work/demo" /dlm demo

if "$stage/bin/o2dlm" node --help >/dev/null 2>&1; then
    echo
    echo "== three engine nodes on 127.0.0.1-3 sharing $work/hb.img"
    truncate -s 1M "$work/hb.img"
    {
        printf 'cluster:\n\tnode_count = 3\n\theartbeat_mode = local\n\tname = demo\n\n'
        for n in 1 2 3; do
            printf 'node:\n\tip_port = 27%d77\n\tip_address = 127.0.0.%d\n\tnumber = %d\n\tname = n%d\n\tcluster = demo\n\n' "$n" "$n" "$n" "$n"
        done
    } > "$work/cluster.conf"
    for n in 1 2 3; do
        O2DLM_CLUSTER_CONF="$work/cluster.conf" O2DLM_NODE="n$n" \
        O2DLM_HEARTBEAT_DEVICE="$work/hb.img" O2CB_HEARTBEAT_THRESHOLD=7 \
            "$stage/bin/o2dlm" node 2>&1 | sed "s/^/[n$n] /" &
    done
    sleep "${O2DLM_DEMO_SECONDS:-12}"
fi
