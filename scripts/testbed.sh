#!/usr/bin/env bash
# A multi-host testbed on one machine (root): a client and N nodes, each in a network
# namespace of its own, joined by veth pairs through a bridge that lives in one more
# namespace of the testbed's own. The host's network is never touched: every address
# (10.77.0.0/24) exists only inside these namespaces. Each node's link is shaped by `tc
# tbf` in both directions (its namespace's egress and the bridge port's egress towards
# it); `netem` is not on these machines, so no delay is added. Optional CPU quotas (cgroup
# v1 `cpu` or v2 `cpu.max`) make nodes unequal.
#
#   scripts/testbed.sh up NAME NODES [RATE] [QUOTA...]   e.g. up tb 2 100mbit 100 50
#   scripts/testbed.sh exec NAME HOST COMMAND...         HOST: client, node1 .. nodeN
#   scripts/testbed.sh addr NAME HOST                    the host's address
#   scripts/testbed.sh down NAME                         removes all of it (idempotent)
#
# NAME is a short prefix (letters and digits, at most 8) naming the namespaces NAME-br,
# NAME-client, NAME-node1...; RATE is a tc rate (`100mbit`, `1gbit`) or `none`; QUOTA is
# the percent of one core each node's processes may use (100: one core), one per node,
# in order. tests/all/testbed.rs drives this script.
set -eEuo pipefail

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

name_ok() {
    [[ "$1" =~ ^[A-Za-z0-9]{1,8}$ ]] || { echo "testbed: bad name '$1' (letters and digits, at most 8)" >&2; exit 2; }
}

# The address of HOST: the client is .1, node I is .(10+I).
addr_of() {
    case "$1" in
    client) echo 10.77.0.1 ;;
    node[0-9]*) echo "10.77.0.$((10 + ${1#node}))" ;;
    *) echo "testbed: unknown host '$1' (client, node1, node2, ...)" >&2; exit 2 ;;
    esac
}

# Where the CPU quota groups live: cgroup v2's unified tree, or v1's cpu controller.
cgroup_root() {
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        echo /sys/fs/cgroup
    elif [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        echo /sys/fs/cgroup/cpu
    fi
}

# Joins HOST: tbf in the namespace's egress and in the bridge port's egress towards it.
add_host() {
    local name=$1 host=$2 rate=$3 ns="$1-$2" port
    port="p${host#node}"
    [[ $host == client ]] && port=pc
    ip netns add "$ns"
    ip -n "$name-br" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$name-br" link set "$port" master br0 up
    ip -n "$ns" addr add "$(addr_of "$host")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # mDNS (224.0.0.251) goes out on the testbed's link, so discovery crosses the bridge.
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
    if [[ $rate != none && $host != client ]]; then
        # A short queue (5 ms at the rate): the link's queue adds little to its latency.
        for dev in "$name-br $port" "$ns eth0"; do
            set -- $dev
            ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst 32kb latency 5ms
        done
    fi
}

up() {
    local name=$1 nodes=$2 rate=${3:-none}
    shift 3 || shift $#
    name_ok "$name"
    [[ "$nodes" =~ ^[1-9][0-9]?$ ]] || { echo "testbed: bad node count '$nodes'" >&2; exit 2; }
    # A half-made testbed goes away again.
    trap 'down "$name"' ERR
    ip netns add "$name-br"
    ip -n "$name-br" link add br0 type bridge
    ip -n "$name-br" link set br0 up
    add_host "$name" client none
    for i in $(seq 1 "$nodes"); do
        add_host "$name" "node$i" "$rate"
    done
    local i=1 root
    root=$(cgroup_root)
    for quota in "$@"; do
        [[ "$quota" =~ ^[1-9][0-9]*$ ]] || { echo "testbed: bad quota '$quota'" >&2; exit 2; }
        [[ -n $root ]] || { echo "testbed: no cgroup cpu controller here for CPU quotas" >&2; exit 3; }
        mkdir -p "$root/offload-$name-node$i"
        if [[ -f $root/cgroup.controllers ]]; then
            echo "$((quota * 1000)) 100000" >"$root/offload-$name-node$i/cpu.max"
        else
            echo 100000 >"$root/offload-$name-node$i/cpu.cfs_period_us"
            echo "$((quota * 1000))" >"$root/offload-$name-node$i/cpu.cfs_quota_us"
        fi
        i=$((i + 1))
    done
    trap - ERR
}

# Runs COMMAND in HOST's namespace (and its CPU quota group, if it has one); it replaces
# this shell, so its process id is this script's.
run_in() {
    local name=$1 host=$2 root group
    shift 2
    name_ok "$name"
    addr_of "$host" >/dev/null
    root=$(cgroup_root)
    group="$root/offload-$name-$host"
    if [[ -n $root && -d $group ]]; then
        echo $$ >"$group/cgroup.procs"
    fi
    exec ip netns exec "$name-$host" "$@"
}

down() {
    local name=$1 ns root
    name_ok "$name"
    for ns in $(ip netns list | awk '{print $1}'); do
        if [[ $ns == "$name-br" || $ns == "$name-client" || $ns =~ ^$name-node[0-9]+$ ]]; then
            # Whatever still runs in it goes first, so nothing outlives the testbed.
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    root=$(cgroup_root)
    if [[ -n $root ]]; then
        for group in "$root/offload-$name-"node*; do
            [[ -d $group ]] && rmdir "$group" 2>/dev/null || true
        done
    fi
}

case "${1:-}" in
up) [[ $# -ge 3 ]] || usage; shift; up "$@" ;;
exec) [[ $# -ge 4 ]] || usage; shift; run_in "$@" ;;
addr) [[ $# -eq 3 ]] || usage; addr_of "$3" ;;
down) [[ $# -eq 2 ]] || usage; down "$2" ;;
*) usage ;;
esac
