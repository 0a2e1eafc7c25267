#!/usr/bin/env bash
# The head node of a `ray up` cluster (cluster.yaml, cluster.gcp.yaml): Redis, Ray, then dash-ray.
#
# Reads ~/.dash-ray/cluster/env (mounted from your machine; see docs/deploy.md): DASH_TOKEN_SECRET,
# and optionally REDIS_URL (a managed Redis: then none is started here), DASH_ARTIFACTS_URL, DASH_*.
set -euo pipefail
export RAY_AUTH_MODE=token  # this script's own Ray clients (dash-ray up) use the cluster's token too
mkdir -p ~/.dash-ray && chmod 700 ~/.dash-ray
if [ -f ~/.dash-ray/cluster/env ]; then set -a; . ~/.dash-ray/cluster/env; set +a; fi
: "${DASH_TOKEN_SECRET:?set DASH_TOKEN_SECRET in ~/.dash-ray/cluster/env (docs/deploy.md)}"
private_ip=$(hostname -I | awk '{print $1}')

if [ -z "${REDIS_URL:-}" ]; then
  # Our own Redis on the head: password (made once, 0600), append-only file, bound to the private
  # address and loopback only, dangerous commands renamed away. It keeps running across `ray up`s.
  if ! { [ -f ~/.dash-ray/redis.pid ] && kill -0 "$(cat ~/.dash-ray/redis.pid)" 2>/dev/null; }; then
    rm -f ~/.dash-ray/redis.env
    nohup dash-ray redis --host "$private_ip" --port 6379 --data-dir ~/.dash-ray/redis \
      --env-file ~/.dash-ray/redis.env > ~/.dash-ray/redis.log 2>&1 &
    echo $! > ~/.dash-ray/redis.pid
  fi
  for _ in $(seq 100); do [ -s ~/.dash-ray/redis.env ] && break; sleep 0.2; done
  set -a; . ~/.dash-ray/redis.env; set +a
fi

# Ray: token authentication on every node, the dashboard on 127.0.0.1 (ray dashboard cluster.yaml
# tunnels to it); the gateway replicas and GPU workers at niceness 0 (they are the workload).
# Ray GCS fault tolerance: with a managed Redis, also export RAY_REDIS_ADDRESS=host:port (and
# RAY_REDIS_PASSWORD) here, so a restarted head keeps the cluster's actors (docs/deploy.md).
ray stop
RAY_worker_niceness=0 ray start --head --port=6380 --object-manager-port=8076 \
  --autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1 --disable-usage-stats

# The gateway (on :8000, every interface of the head) and the scheduler, detached: it keeps
# running after this script, and the autoscaler adds GPU nodes for the queues' backlog.
DASH_HOST=0.0.0.0 dash-ray up --address auto --detach
