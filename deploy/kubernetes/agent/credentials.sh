#!/bin/sh
# Writes the helper agent's credentials into base/credentials/ (README "Helper agent"):
#   ca.crt, ca.key     a CA of its own, valid 10 years (keep ca.key out of the cluster)
#   tls.crt, tls.key   the agent's serving certificate, for the Service's DNS names and any
#                      extra subjectAltName given as arguments (e.g. DNS:agent.example.com,
#                      IP:10.0.0.5)
#   tokens.csv         the token podgate serve presents (the agent's --token-file)
#   kubeconfig         serve's side: the agent's URL, the CA and the token, as context
#                      "podgate-agent" (serve --agent-kubeconfig, --default-agent-context)
# Needs openssl. Refuses to overwrite: delete base/credentials/ to make new ones.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${PODGATE_AGENT_CREDENTIALS:-$here/base/credentials}
if [ -e "$out/kubeconfig" ]; then
    echo "$out already has credentials; delete it to make new ones" >&2
    exit 1
fi
umask 077
mkdir -p "$out"
sans="DNS:podgate-agent.podgate.svc,DNS:podgate-agent.podgate.svc.cluster.local"
for extra in "$@"; do sans="$sans,$extra"; done
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=podgate-agent-ca" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=podgate-agent" \
    -keyout "$out/tls.key" -out "$out/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" > "$out/tls.ext"
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -days 825 -extfile "$out/tls.ext" -out "$out/tls.crt" 2>/dev/null
rm -f "$out/tls.csr" "$out/tls.ext" "$out/ca.srl"
token=$(openssl rand -hex 32)
printf '%s,podgate-serve,podgate-serve\n' "$token" > "$out/tokens.csv"
ca=$(base64 < "$out/ca.crt" | tr -d '\n')
cat > "$out/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: podgate-agent
    cluster:
      server: https://podgate-agent.podgate.svc:10250
      certificate-authority-data: $ca
users:
  - name: podgate-agent
    user:
      token: $token
contexts:
  - name: podgate-agent
    context: {cluster: podgate-agent, user: podgate-agent}
current-context: podgate-agent
KUBECONFIG
echo "credentials written to $out"
