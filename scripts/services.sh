#!/usr/bin/env bash
# Starts PostgreSQL and Redis when they are installed here but not answering.
# With CI=true a service that cannot be reached is an error; otherwise the tests that need it
# report it (they never pass silently without it).
set -uo pipefail

status=0
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "Starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "Starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi

if ! pg_up; then
  echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; status=1
fi
if ! redis_up; then
  echo "Redis is not reachable on 127.0.0.1:6379" >&2; status=1
fi
if [ "$status" -ne 0 ] && [ "${CI:-}" = "true" ]; then
  echo "CI=true: every service must be up." >&2
  exit 1
fi
exit 0
