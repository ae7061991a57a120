#!/bin/sh
# Installs the Debian packages the bench compares against (Redis, etcd)
# and a font for the plot.
# Best effort: when one cannot be installed the bench reports that row as
# "unavailable" with the reason, so a failure here does not stop `make bench`.
set -u
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v etcd >/dev/null 2>&1 || need="$need etcd-server"
command -v etcdctl >/dev/null 2>&1 || need="$need etcd-client"
# The plot's labels (drawn without them when no TTF font is installed).
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need="$need fonts-dejavu-core"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "bench: not root, cannot install:$need (those rows will say unavailable)" >&2
    exit 0
fi
echo "bench: installing$need" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' own services from starting: the bench starts its own
# instances on free loopback ports and stops them afterwards.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && made_policy=1
fi
apt-get install -y -q --no-install-recommends $need >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends $need >&2; } \
    || echo "bench: apt-get could not install:$need (those rows will say unavailable)" >&2
[ "$made_policy" = 1 ] && rm -f "$policy"
exit 0
