#!/bin/bash
# .nar streaming, A/B of buildmesh node binaries vs harmonia vs nginx, 1 and 4 connections,
# interleaved rounds (wrk on loopback). Each node binary is started fresh on DATA each round, warmed
# by one full GET (its first download is the verified one; its time is printed as "cold"), then wrk.
# Each cell: GB/s (10^9 B/s) and the server's CPU seconds per GB sent (utime+stime of its
# processes over the cell, from /proc: robust against other load on the machine).
# Usage: scripts/nar-serve-bench.sh DATA ROUNDS SECS name=/path/to/buildmesh [name=bin ...]
# Env: HARMONIA_URL, NGINX_URL (empty to skip), HARMONIA_PID, NGINX_PIDS, ZST=1 (also .nar.zst).
# DATA: the data dir of `buildmesh bench gateway --paths 1 --no-wrk --no-clients --keep` (it holds
# the 256 MiB `bench-big` NAR below). Setup of the servers it compares with (docs/benchmarks.md):
#   mkdir -p /tmp/narconn/www /tmp/narconn/nginx
#   nix-store --dump /nix/store/5sk27f9fcv9c77cpxplirsxk0gc58qkh-bench-big > /tmp/narconn/www/big.nar
#   printf 'bind = "127.0.0.1:5077"\nworkers = 2\n' > /tmp/narconn/harmonia.toml
#   CONFIG_FILE=/tmp/narconn/harmonia.toml harmonia-cache & echo $! > /tmp/narconn/harmonia.pid
#   nginx -c /tmp/narconn/nginx.conf -p /tmp/narconn/  # worker_processes 2; pid /tmp/narconn/nginx/nginx.pid;
#                                                     # sendfile on; listen 127.0.0.1:5079; root /tmp/narconn/www
set -u
mkdir -p /tmp/narconn
DATA=$1; ROUNDS=$2; D=$3; shift 3
NH=0qpk97584fjh42r9kfds5vji7pxlzssv1xxyjag1g3lpjs6c2j3q
HURL=${HARMONIA_URL-http://127.0.0.1:5077/nar/$NH.nar?hash=5sk27f9fcv9c77cpxplirsxk0gc58qkh}
NURL=${NGINX_URL-http://127.0.0.1:5079/big.nar}
HPIDS=${HARMONIA_PID:-$(cat /tmp/narconn/harmonia.pid 2>/dev/null)}
NPIDS=${NGINX_PIDS:-$(cat /tmp/narconn/nginx/nginx.pid 2>/dev/null) $(pgrep -P "$(cat /tmp/narconn/nginx/nginx.pid 2>/dev/null)" 2>/dev/null)}
TCK=$(getconf CLK_TCK)
ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
cell() { # URL CONNS PIDS -> "GB/s (CPU s/GB)"
  local t=$(( $2 < 2 ? 1 : 2 )) c0=$(ticks "$3")
  local out=$(wrk -c$2 -t$t -d${D}s "$1")
  local c1=$(ticks "$3")
  echo "$out" | awk -v cpu=$(( c1 - c0 )) -v tck=$TCK -v d=$D '/Transfer\/sec/ {v=$2; u=v; gsub(/[0-9.]/,"",u); gsub(/[A-Za-z]/,"",v);
     m=(u=="GB")?1073741824:(u=="MB")?1048576:(u=="KB")?1024:1; gbs=v*m/1e9; printf "%.2f (%.3f CPU s/GB)", gbs, (cpu/tck)/(gbs*d)} /Non-2xx/ {print " ERR"}'
}
for r in $(seq 1 $ROUNDS); do
  echo "== round $r $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for nb in "$@"; do
    name=${nb%%=*}; bin=${nb#*=}
    BUILDMESH_LOG=warn $bin node --data-dir $DATA --http 127.0.0.1:5078 --slots 1 --mdns false --listen /ip4/127.0.0.1/tcp/0 > /tmp/narconn/node.out 2> /tmp/narconn/node-$name.log & NPID=$!
    for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:5078/health && break; sleep 0.2; done
    cold=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' http://127.0.0.1:5078/nar/$NH.nar)
    u=http://127.0.0.1:5078/nar/$NH.nar
    line="$name .nar: 1c $(cell $u 1 $NPID) 4c $(cell $u 4 $NPID) (cold GET $cold s)"
    if [ "${ZST:-0}" = 1 ]; then line="$line | .nar.zst: 1c $(cell $u.zst 1 $NPID) 4c $(cell $u.zst 4 $NPID)"; fi
    echo "$line"
    kill $NPID; wait $NPID 2>/dev/null
  done
  [ -n "$HURL" ] && echo "harmonia: 1c $(cell "$HURL" 1 "$HPIDS") 4c $(cell "$HURL" 4 "$HPIDS")"
  [ -n "$NURL" ] && echo "nginx: 1c $(cell "$NURL" 1 "$NPIDS") 4c $(cell "$NURL" 4 "$NPIDS")"
done
