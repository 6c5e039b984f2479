#!/usr/bin/env bash
# Start the gateway on the quickstart config, in front of real upstream servers,
# after printing how to connect with a ready session token for research-bot.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gw="$root/.venv/bin/mcp-gateway"
cfg="$here/gateway.yaml"

# A demo repository the git server may read (research-bot's grant allows only this tree).
demo=/tmp/mcp-gateway-quickstart/repos/demo
if [ ! -d "$demo/.git" ]; then
    mkdir -p "$demo"
    git -C "$demo" init -q
    echo "A repository for the quickstart." > "$demo/README.md"
    git -C "$demo" add README.md
    git -C "$demo" -c user.name=quickstart -c user.email=quickstart@example.com commit -qm "First commit"
fi

"$gw" manifests validate --config "$cfg"
token=$("$gw" sessions open --config "$cfg" --agent research-bot --task quickstart --ttl 8h)

cat <<MSG

MCP identity gateway (quickstart)
  MCP endpoint      http://127.0.0.1:8765/mcp            (every granted server, tools named <server>__<tool>)
  one server        http://127.0.0.1:8765/servers/time/mcp
  agent             research-bot, on behalf of alice@example.com's grant
  Authorization     Bearer $token

Try it from another terminal:
  $root/.venv/bin/python $root/examples/agent.py --url http://127.0.0.1:8765/mcp --token $token
Audit stream:       $here/.state/audit.jsonl     (mcp-gateway audit tail --follow --config $cfg)

MSG
exec "$gw" serve --config "$cfg"
