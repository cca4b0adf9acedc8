#!/usr/bin/env bash
# interop-peers.sh: run `pasv probe` (and optionally `pasv load` next to ftpload.py) against
# established FTP servers started with the peer kit, on loopback.
#
#   scripts/interop-peers.sh --kit DIR [--pasv BIN] [--bench] [--rounds R] [--duration S]
#                            [--k K] [PEER...]
#
# DIR is the peer-server kit (peers.sh, ftpload.py; see its README). PEER is any of
# pyftpdlib vsftpd pure-ftpd proftpd (default: pyftpdlib vsftpd), or pasvd (this workspace's
# server, built in release mode and started here). Each peer is started with
# its own 20-port passive range; the probe must report exactly that range (min_port,
# max_port, 20 ports seen; ProFTPD: one port less, see below) or the script fails. With --bench, each peer is also loaded by
# `pasv load` and by ftpload.py, alternately, R rounds of S seconds with K sessions
# (1 KiB RETR, PASV), and the transfers/s and the CPU each generator used are printed.
#
# Not run in CI: it needs the peer servers installed (`peers.sh install`, root) and takes
# about 10 s per peer without --bench. It stops only the servers it started.
set -euo pipefail

KIT="${PEERS_KIT:-}"
PASV_BIN=""
BENCH=0
ROUNDS=3
DURATION=5
K=8
PEERS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kit) KIT="$2"; shift 2 ;;
        --pasv) PASV_BIN="$2"; shift 2 ;;
        --bench) BENCH=1; shift ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --k) K="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 1 ;;
        *) PEERS+=("$1"); shift ;;
    esac
done
[ ${#PEERS[@]} -gt 0 ] || PEERS=(pyftpdlib vsftpd)
if [ -z "$KIT" ] || [ ! -x "$KIT/peers.sh" ]; then
    echo "give the peer kit with --kit DIR (or PEERS_KIT)" >&2
    exit 1
fi
ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$PASV_BIN" ]; then
    (cd "$ROOT_DIR" && cargo build --release -q -p pasv-tools --bin pasv)
    PASV_BIN="$ROOT_DIR/target/release/pasv"
fi
PASVD_BIN="$(dirname "$PASV_BIN")/pasvd"
for peer in "${PEERS[@]}"; do
    if [ "$peer" = pasvd ] && [ ! -x "$PASVD_BIN" ]; then
        (cd "$ROOT_DIR" && cargo build --release -q -p pasv-tools --bin pasvd)
        PASVD_BIN="$ROOT_DIR/target/release/pasvd"
    fi
done
PASVD_PID=""

WORK="$(mktemp -d)"
export PEERS_RUN="$WORK/run"
DATA="$WORK/data"
mkdir -p "$DATA"
chmod 755 "$WORK" "$DATA"
head -c 1024 /dev/urandom > "$DATA/f1k.bin"
chmod 644 "$DATA/f1k.bin"
cleanup() {
    [ -n "$PASVD_PID" ] && kill "$PASVD_PID" 2>/dev/null || true
    "$KIT/peers.sh" stop all >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cpu_of() { # runs "$@" with stdout to $WORK/out.json; prints user+sys seconds
    /usr/bin/time -f '%U %S' -o "$WORK/time" "$@" > "$WORK/out.json"
    awk '{ printf "%.2f", $1 + $2 }' "$WORK/time"
}

field() { python3 -c "import json,sys; d=json.load(open('$WORK/out.json')); print($1)"; }

status=0
i=0
for peer in "${PEERS[@]}"; do
    ctl=$((2450 + i))
    lo=$((24500 + 100 * i))
    hi=$((lo + 19))
    i=$((i + 1))
    if [ "$peer" = pasvd ]; then
        "$PASVD_BIN" --listen "127.0.0.1:$ctl" --root "$DATA" --pasv-min-port "$lo" \
            --pasv-max-port "$hi" > "$WORK/pasvd.log" 2>&1 &
        PASVD_PID=$!
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$ctl") 2>/dev/null && break
            sleep 0.1
        done
        user=anonymous
        pass=guest
    else
        line="$("$KIT/peers.sh" start "$peer" --port "$ctl" --pasv "$lo-$hi" --root "$DATA" | grep ' listening on ' | tail -1)"
        user="$(sed -n 's/.* user=\([^ ]*\).*/\1/p' <<<"$line")"
        pass="$(sed -n 's/.* pass=\([^ ]*\).*/\1/p' <<<"$line")"
    fi
    url="ftp://$user:$pass@127.0.0.1:$ctl/"
    "$PASV_BIN" probe "$url" --json > "$WORK/out.json"
    got="$(field '"%s-%s %s %s reuse=%s exhaustion=%s" % (d["min_port"], d["max_port"], d["ports_seen"], d["pattern"], d["reuses_closed_ports"], d["on_exhaustion"])')"
    verdict=ok
    # ProFTPD 1.3.8 never offers the top port of its PassivePorts range (not once in 2,000
    # offers), so its observable range is one port shorter.
    want="$lo-$hi 20 "
    [ "$peer" = proftpd ] && want="$lo-$((hi - 1)) 19 "
    case "$got" in
        "$want"*) ;;
        *) verdict=FAIL; status=1 ;;
    esac
    echo "probe $peer (range $lo-$hi): $got  [$verdict]"

    if [ "$BENCH" = 1 ]; then
        for r in $(seq 1 "$ROUNDS"); do
            cpu="$(cpu_of "$PASV_BIN" load "${url}f1k.bin" -k "$K" --duration "$DURATION" \
                --expect-range "$lo-$hi" --json)"
            echo "  round $r pasv load   $(field 'round(d["transfers_per_s"])') transfers/s, cpu ${cpu}s in ${DURATION}s, errors $(field 'd["errors"]')"
            cpu="$(cpu_of python3 "$KIT/ftpload.py" --port "$ctl" --user "$user" --password "$pass" \
                -k "$K" --duration "$DURATION" --pasv-range "$lo-$hi" --file f1k.bin)"
            echo "  round $r ftpload.py  $(field 'round(d["transfers_per_s"])') transfers/s, cpu ${cpu}s in ${DURATION}s, errors $(field 'd["errors_by_text"]')"
        done
    fi
    if [ "$peer" = pasvd ]; then
        kill "$PASVD_PID" 2>/dev/null || true
        wait "$PASVD_PID" 2>/dev/null || true
        PASVD_PID=""
    else
        "$KIT/peers.sh" stop "$peer" >/dev/null
    fi
done
exit $status
