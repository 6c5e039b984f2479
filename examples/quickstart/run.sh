#!/usr/bin/env bash
# Start the gateway on the quickstart config, in front of real upstream servers,
# after printing how to connect with a ready session token for research-bot.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gw="$root/.venv/bin/mcp-gateway"
py="$root/.venv/bin/python"
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

# The demo identity provider for sign-in, on the port gateway.yaml's login names; the gateway's
# callback is its public_url + /oauth/callback.
read -r idp_port public_url < <("$py" -c 'import sys, yaml; from urllib.parse import urlsplit
c = yaml.safe_load(open(sys.argv[1]))
print(urlsplit(c["login"]["identity_provider"]).port, c["public_url"])' "$cfg")
idp_password=${IDP_PASSWORD:-$("$py" -c 'import secrets; print(secrets.token_urlsafe(9))')}
idp_log="$here/.state/idp.log"
mkdir -p "$here/.state"
if [ -d "$root/node_modules/oidc-provider" ]; then
    IDP_PORT=$idp_port IDP_REDIRECT_URI="$public_url/oauth/callback" IDP_CLIENT_SECRET=quickstart-idp-secret \
        IDP_PASSWORD="$idp_password" node "$here/idp.mjs" >"$idp_log" 2>&1 &
    idp=$!
else
    idp=""
    echo "npm ci has not been run: no demo identity provider, so sign-in will not work (tokens still do)" >&2
fi

# A run that was killed before it could close its session leaves it active: close those first, so
# repeated starts never pile up against research-bot's max_active_sessions.
leftover=$("$gw" sessions list --config "$cfg" --agent research-bot --state active --json |
    "$py" -c 'import json, sys; print(" ".join(s["sid"] for s in json.load(sys.stdin) if s["task"] == "quickstart"))')
for sid in $leftover; do
    "$gw" sessions close "$sid" --config "$cfg" >/dev/null
done

opened=$("$gw" sessions open --config "$cfg" --agent research-bot --task quickstart --ttl 8h --json)
sid=$("$py" -c 'import json, sys; print(json.load(sys.stdin)["session_id"])' <<<"$opened")
token=$("$py" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' <<<"$opened")

cat <<MSG

MCP identity gateway (quickstart)
  MCP endpoint      http://127.0.0.1:8765/mcp            (every granted server, tools named <server>__<tool>;
                    http://localhost:8765/mcp works too)
  one server        http://127.0.0.1:8765/servers/time/mcp
  agent             research-bot, on behalf of alice@example.com's grant
  Authorization     Bearer $token
  session           $sid (closed when this script exits)

Try it from another terminal:
  $root/.venv/bin/python $root/examples/agent.py --url http://127.0.0.1:8765/mcp --token $token
Your own tokens (client_credentials): research-bot's secret is shown once by
  $gw agents rotate research-bot --config $cfg
  then: curl -u research-bot:SECRET -d grant_type=client_credentials http://127.0.0.1:8765/oauth/token
Audit stream:       $here/.state/audit.jsonl     ($gw audit tail --follow --config $cfg)

Sign in from an IDE instead of pasting a token (examples/ide/README.md has each IDE's steps):
  add the server URL $public_url/mcp (no headers) to VS Code, Claude Code or Cursor;
  it opens a browser at the demo identity provider http://127.0.0.1:$idp_port:
  sign in as alice@example.com (or bob@example.com) with the password  $idp_password
  and allow the consent page; the IDE gets its own agent, e.g. ide:alice@example.com:vscode.dev.

MSG

"$gw" serve --config "$cfg" &
server=$!
# However this script ends, the gateway stops and the quickstart's session is closed.
trap 'kill -TERM "$server" $idp 2>/dev/null; wait "$server" 2>/dev/null || true; "$gw" sessions close "$sid" --config "$cfg" >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait "$server"
