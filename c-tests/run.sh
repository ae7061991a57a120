#!/usr/bin/env bash
# C tests of our libo2dlm against Debian's real one (ocfs2-tools-dev).
#
# Uses the staged install (`make stage` at the top level); PKG_CONFIG_PATH
# may point elsewhere. Builds everything from scratch into target/c-tests,
# runs every check, and prints "N passed, M failed" as its last line; exits
# non-zero when anything failed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export PKG_CONFIG_PATH=${PKG_CONFIG_PATH:-$root/target/stage/usr/local/lib/pkgconfig}
OUT=${OUT:-$root/target/c-tests}

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; shift; for l in "$@"; do echo "     $l"; done; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

# --- prerequisites -----------------------------------------------------------
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in comerr-dev ocfs2-tools-dev gcc libc6-dev make pkg-config; do
    have_pkg "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        fail "prerequisites" "missing Debian packages: ${missing[*]} (run as root or install them)"
        finish
    fi
fi
# Debian's ocfs2-tools-dev installs an o2dlm.pc of its own: make sure
# pkg-config finds ours, from PKG_CONFIG_PATH, and not that one.
pcdir=$(pkg-config --variable=pcfiledir o2dlm 2>/dev/null)
case ":$PKG_CONFIG_PATH:" in
*":$pcdir:"*) ;;
*)
    fail "staged install" "pkg-config resolves o2dlm to '$pcdir', not to PKG_CONFIG_PATH=$PKG_CONFIG_PATH" \
        "run 'make stage' first (or point PKG_CONFIG_PATH at our o2dlm.pc)"
    finish
    ;;
esac
libdir=$(pkg-config --variable=libdir o2dlm)
includedir=$(pkg-config --variable=includedir o2dlm)
ours_so=$libdir/libo2dlm.so.1
real_a=/usr/lib/$(gcc -dumpmachine)/libo2dlm.a
[ -f "$real_a" ] || { fail "real libo2dlm.a" "$real_a not found (ocfs2-tools-dev)"; finish; }

rm -rf "$OUT"
mkdir -p "$OUT/tmp"
scratch=$(mktemp -d "$OUT/tmp/run.XXXXXX")
regular_file=$scratch/regular-file
echo x > "$regular_file"

# --- build: one make call per target so each compile is its own check ------
build() {  # build <target> <description>
    if out=$(make -s -C "$here" OUT="$OUT" "$OUT/$1" 2>&1); then
        pass "build: $2"
    else
        mapfile -t lines <<<"$out"
        fail "build: $2" "${lines[@]:0:20}"
    fi
}
build libo2dlm_real.so "shared library from Debian's libo2dlm.a"
build fakedlmfs.so "fakedlmfs.so test shim"
build err_table.real "err_table.c, ocfs2-tools header + ocfs2-tools library"
build err_table.mixed "err_table.c, ocfs2-tools header + our library"
build err_table.ours "err_table.c, our header + our library"
build api_use.real "api_use.c against the ocfs2-tools header"
build api_use.ours "the same api_use.c, unchanged, against our header (pkg-config)"
build api_use.static "api_use.c statically linked with our libo2dlm.a"
build preload_probe "preload_probe.c against the library made from libo2dlm.a"
build c89_use.real "strict C89 client against the ocfs2-tools header"
build c89_use.ours "strict C89 client against our header"
build cxx_use.real "C++ client against the ocfs2-tools header"
build cxx_use.ours "C++ client against our header"

# --- headers and library files ----------------------------------------------
header_of() {  # the o2dlm.h a build included, from its -MD file
    tr ' \\' '\n\n' <"$OUT/$1.d" 2>/dev/null | grep '/o2dlm/o2dlm\.h$' | head -1
}
h_real=$(header_of api_use.real)
h_ours=$(header_of api_use.ours)
if [ "$h_real" = /usr/include/o2dlm/o2dlm.h ] && [ "$h_ours" != "$h_real" ] &&
    [ "$(readlink -f "$h_ours")" = "$(readlink -f "$includedir/o2dlm/o2dlm.h")" ]; then
    pass "header provenance: real build used $h_real, ours used $h_ours"
else
    fail "header provenance" "real build: '$h_real' (want /usr/include/o2dlm/o2dlm.h)" \
        "our build: '$h_ours' (want $includedir/o2dlm/o2dlm.h)"
fi

macro_names() {  # every public macro name the header set defines
    echo '#include <o2dlm/o2dlm.h>' | gcc -E -dM "$@" -x c - |
        awk '{print $2}' | sed 's/(.*//' |
        grep -E '^(O2DLM_|ERROR_TABLE_BASE_o2dl$|o2dl_err_base$|init_o2dl_err_tbl$)' | sort -u
}
macro_names >"$scratch/macros.real"
macro_names $(pkg-config --cflags o2dlm) >"$scratch/macros.ours"
if [ -s "$scratch/macros.real" ] && diff -q "$scratch/macros.real" "$scratch/macros.ours" >/dev/null; then
    pass "our headers define the same $(wc -l <"$scratch/macros.real") public macros as ocfs2-tools'"
else
    mapfile -t d < <(diff "$scratch/macros.real" "$scratch/macros.ours")
    fail "public macro names (< ocfs2-tools, > ours)" "${d[@]}"
fi

prototypes() {  # every function the o2dlm headers declare, as gcc normalises it
    echo '#include <o2dlm/o2dlm.h>' >"$scratch/aux.c"
    gcc "$@" -aux-info "$scratch/aux.out" -c "$scratch/aux.c" -o /dev/null &&
        grep '/o2dlm/' "$scratch/aux.out" | sed 's|^/\*[^*]*\*/ ||' | sort
}
prototypes >"$scratch/protos.real"
prototypes $(pkg-config --cflags o2dlm) >"$scratch/protos.ours"
if [ -s "$scratch/protos.real" ] && diff "$scratch/protos.real" "$scratch/protos.ours" >"$scratch/protos.diff"; then
    pass "our headers declare exactly the ocfs2-tools functions, with identical prototypes ($(wc -l <"$scratch/protos.real"))"
else
    mapfile -t d <"$scratch/protos.diff"
    fail "function declarations (< ocfs2-tools, > ours)" "${d[@]}"
fi

exported() { nm -D --defined-only "$1" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort; }
if [ -f "$OUT/libo2dlm_real.so" ] && [ -f "$ours_so" ] &&
    diff <(exported "$OUT/libo2dlm_real.so") <(exported "$ours_so") >"$scratch/syms.diff" 2>&1; then
    pass "our .so exports exactly the real library's $(exported "$ours_so" | wc -l) symbols"
else
    mapfile -t d < <(cat "$scratch/syms.diff" 2>/dev/null; [ -f "$ours_so" ] || echo "$ours_so missing")
    fail "exported symbols (< real, > ours)" "${d[@]}"
fi

soname=$(readelf -d "$ours_so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
chain="$(readlink "$libdir/libo2dlm.so") $(readlink "$libdir/libo2dlm.so.1")"
if [ "$soname" = libo2dlm.so.1 ] && [ "$chain" = "libo2dlm.so.1 libo2dlm.so.1.8.9" ] &&
    [ -f "$libdir/libo2dlm.a" ]; then
    pass "soname libo2dlm.so.1, links libo2dlm.so -> .so.1 -> .so.1.8.9, libo2dlm.a present"
else
    fail "library files" "soname '$soname' (want libo2dlm.so.1)" "links: '$chain'"
fi

pc_version=$(pkg-config --modversion o2dlm)
pc_requires=$(pkg-config --print-requires o2dlm | tr -d ' ')
pc_libs=$(pkg-config --libs o2dlm)
if [ "$pc_version" = 1.8.9 ] && [ "$pc_requires" = com_err ] &&
    [[ " $pc_libs " == *" -lo2dlm "* ]] && [[ " $pc_libs " == *" -lcom_err "* ]]; then
    pass "pkg-config: version 1.8.9, Requires com_err, libs '$pc_libs'"
else
    fail "pkg-config" "version '$pc_version' requires '$pc_requires' libs '$pc_libs'"
fi

# --- the error table ----------------------------------------------------------
run_prog() {  # run_prog <name> <out-file> [args...]: exit status of the program
    local name=$1 out=$2
    shift 2
    [ -x "$OUT/$name" ] || { echo "(not built)" >"$out"; return 127; }
    "$OUT/$name" "$@" >"$out" 2>"$out.err"
}
for v in real mixed ours; do
    if run_prog "err_table.$v" "$scratch/err_table.$v"; then
        pass "err_table.$v: self-checks"
    else
        mapfile -t e < <(cat "$scratch/err_table.$v.err" "$scratch/err_table.$v" | grep -E 'FAIL|not built' | head -20)
        fail "err_table.$v: self-checks" "${e[@]}"
    fi
done
# Keep what the real header/library give, for the record.
cp "$scratch/err_table.real" "$OUT/err_table.reference.txt" 2>/dev/null
codes=$(grep -c '^code ' "$scratch/err_table.real")
for v in mixed ours; do
    if [ "$codes" -eq 32 ] && diff "$scratch/err_table.real" "$scratch/err_table.$v" >"$scratch/et.$v.diff"; then
        pass "err_table.$v: all 32 values, table, error_message/com_right/com_err texts identical to ocfs2-tools"
    else
        mapfile -t d < <(head -40 "$scratch/et.$v.diff")
        fail "err_table.$v identical to ocfs2-tools (< real, > $v; $codes codes)" "${d[@]}"
    fi
done

# --- the same client against both libraries ----------------------------------
preload_fake="$OUT/fakedlmfs.so"
for v in real ours static; do
    fake=$(mktemp -d "$scratch/fake.XXXXXX")
    if FAKE_DLMFS_ROOT=$fake LD_PRELOAD=$preload_fake \
        run_prog "api_use.$v" "$scratch/api_use.$v" "$fake" "$regular_file"; then
        pass "api_use.$v: every call gives the expected result ($(grep -c . "$scratch/api_use.$v") checks)"
    else
        mapfile -t e < <(grep -B1 'FAIL' "$scratch/api_use.$v" | head -30; head -5 "$scratch/api_use.$v.err")
        fail "api_use.$v" "${e[@]}"
    fi
    if [ -z "$(ls -A "$fake")" ]; then
        pass "api_use.$v: destroy left the fake dlmfs root empty"
    else
        fail "api_use.$v: destroy left files behind" "$(ls -A "$fake")"
    fi
done
for v in ours static; do
    if diff "$scratch/api_use.real" "$scratch/api_use.$v" >"$scratch/au.$v.diff"; then
        pass "api_use.$v transcript identical to the ocfs2-tools library's"
    else
        mapfile -t d < <(head -40 "$scratch/au.$v.diff")
        fail "api_use.$v transcript (< real, > $v)" "${d[@]}"
    fi
    if [ ! -s "$scratch/api_use.$v.err" ]; then
        pass "api_use.$v: nothing on stderr without O2DLM_LOG"
    else
        fail "api_use.$v: stderr without O2DLM_LOG" "$(head -3 "$scratch/api_use.$v.err")"
    fi
done
if [ -x "$OUT/api_use.static" ] && ! readelf -d "$OUT/api_use.static" | grep -q 'NEEDED.*libo2dlm'; then
    pass "api_use.static does not need libo2dlm.so"
else
    fail "api_use.static" "missing, or dynamically linked to libo2dlm"
fi

for p in c89_use cxx_use; do
    for v in real ours; do
        if run_prog "$p.$v" "$scratch/$p.$v"; then
            pass "$p.$v runs: $(cat "$scratch/$p.$v")"
        else
            fail "$p.$v" "$(cat "$scratch/$p.$v" "$scratch/$p.$v.err" 2>/dev/null | head -5)"
        fi
    done
done

# --- LD_PRELOAD drop-in ---------------------------------------------------------
probe=$OUT/preload_probe
if [ -x "$probe" ] && readelf -d "$probe" | grep -q 'NEEDED.*\[libo2dlm_real\.so\]' &&
    ! nm --defined-only "$probe" | grep -q ' T o2dlm_'; then
    pass "preload_probe is linked against libo2dlm_real.so and defines no o2dlm_ function"
else
    fail "preload_probe linkage" "$(readelf -d "$probe" 2>&1 | grep NEEDED)"
fi
real_so=$(readlink -f "$OUT/libo2dlm_real.so")
ours_real=$(readlink -f "$ours_so")
probe_run() {  # probe_run <label> <preload or ""> <args...>
    local label=$1 pre=$2
    shift 2
    O2DLM_LOG=debug LD_PRELOAD="$pre" "$probe" "$@" >"$scratch/probe.$label" 2>"$scratch/probe.$label.err"
}
field() { sed -n "s/^$1 //p" "$scratch/probe.$2"; }
check_probe() {  # check_probe <label> <field> <want> <description>
    local got
    got=$(field "$2" "$1")
    [ "$2" = provider ] && [ -n "$got" ] && got=$(readlink -f "$got")
    if [ "$got" = "$3" ]; then pass "$4"; else fail "$4" "want '$3'" "got '$got'"; fi
}
O2DLM_BACKEND=engine probe_run engine.real "" engine
O2DLM_BACKEND=engine probe_run engine.ours "$ours_so" engine
fake=$(mktemp -d "$scratch/fake.XXXXXX")
FAKE_DLMFS_ROOT=$fake probe_run fake.real "$preload_fake" fake "$fake"
FAKE_DLMFS_ROOT=$fake probe_run fake.ours "$preload_fake $ours_so" fake "$fake"

check_probe engine.real provider "$real_so" "without LD_PRELOAD, o2dlm_initialize comes from libo2dlm_real.so"
check_probe engine.ours provider "$ours_real" "with LD_PRELOAD, o2dlm_initialize comes from our library"
check_probe engine.real engine "ocfs2_dlmfs file system was not found" \
    "without LD_PRELOAD, O2DLM_BACKEND=engine is ignored (real library: NO_FS on /proc)"
check_probe engine.ours engine "Unable to access cluster service" \
    "with LD_PRELOAD, O2DLM_BACKEND=engine answers SERVICE_UNAVAILABLE (ours)"
check_probe fake.real flags "ok" "without LD_PRELOAD, undefined lock flag 0x2 is silently masked (real)"
check_probe fake.ours flags "Invalid arguments passed to function" \
    "with LD_PRELOAD, undefined lock flag 0x2 is refused with INVALID_ARGS (ours)"
check_probe fake.real level "Invalid locking level" "without LD_PRELOAD, level 5 -> INVALID_LOCK_LEVEL"
check_probe fake.ours level "Invalid locking level" "with LD_PRELOAD, level 5 -> INVALID_LOCK_LEVEL"
check_probe fake.ours destroy "ok" "with LD_PRELOAD, destroy on the fake dlmfs succeeds"
if [ ! -s "$scratch/probe.engine.real.err" ] && [ ! -s "$scratch/probe.fake.real.err" ]; then
    pass "without LD_PRELOAD, O2DLM_LOG=debug prints nothing (real library)"
else
    fail "real library wrote to stderr" "$(head -3 "$scratch/probe.engine.real.err" "$scratch/probe.fake.real.err")"
fi
if grep -q '^o2dlm\[' "$scratch/probe.engine.ours.err" && grep -q '^o2dlm\[' "$scratch/probe.fake.ours.err"; then
    pass "with LD_PRELOAD, O2DLM_LOG=debug prints our o2dlm[...] log lines"
else
    fail "with LD_PRELOAD, no o2dlm[ log lines on stderr" "$(head -3 "$scratch/probe.engine.ours.err")"
fi

rm -rf "$scratch"
finish
