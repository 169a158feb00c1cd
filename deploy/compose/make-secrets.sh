#!/usr/bin/env bash
# The compose stack's generated secrets (docs/security.md, docs/deploy.md#secrets): the protected scrape's
# and the API token.
#
#   deploy/compose/secrets/mlmon_api_token               the bearer token of the model server (auth.tokens)
#   deploy/compose/secrets/mlmon_ca.key                  the CA's private key (only this script uses it)
#   deploy/compose/secrets/prometheus/mlmon_ca.crt       the CA: Prometheus (tls_config.ca_file), the model server
#   deploy/compose/secrets/mlmon_tls.crt, mlmon_tls.key  the exporter's certificate, for exporter and exporter-2
#   deploy/compose/secrets/prometheus/mlmon_scrape_password  user prometheus's password (basic_auth.password_file)
#   deploy/compose/secrets/mlmon_web_config.yml          deploy/compose/web-config.yml with that password's hash
#
# Run it from anywhere; it keeps files that exist (delete one to make it again). Needs openssl, and Python
# with bcrypt (the repository's .venv has it) or htpasswd (apache2-utils) for the hash.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/secrets"
mkdir -p "$out/prometheus"
chmod 700 "$out"
umask 022
days=825

if [ ! -e "$out/mlmon_ca.key" ] || [ ! -e "$out/prometheus/mlmon_ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=mlmon compose CA" -keyout "$out/mlmon_ca.key" -out "$out/prometheus/mlmon_ca.crt" 2>/dev/null
  chmod 600 "$out/mlmon_ca.key"
  rm -f "$out/mlmon_tls.crt"  # a new CA: a new certificate
  echo "created the CA: $out/prometheus/mlmon_ca.crt"
fi

if [ ! -e "$out/mlmon_tls.crt" ] || [ ! -e "$out/mlmon_tls.key" ]; then
  # The names Prometheus, the model server and the load balancer use, and loopback for the healthcheck.
  sans="DNS:exporter,DNS:exporter-2,DNS:localhost,IP:127.0.0.1"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=exporter" \
    -keyout "$out/mlmon_tls.key" -out "$out/mlmon_tls.csr" 2>/dev/null
  openssl x509 -req -in "$out/mlmon_tls.csr" -CA "$out/prometheus/mlmon_ca.crt" -CAkey "$out/mlmon_ca.key" \
    -CAcreateserial -days "$days" -out "$out/mlmon_tls.crt" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n' "$sans") 2>/dev/null
  rm -f "$out/mlmon_tls.csr" "$out/prometheus/mlmon_ca.srl"
  echo "created the exporter's certificate: $out/mlmon_tls.crt ($sans)"
fi

if [ ! -e "$out/prometheus/mlmon_scrape_password" ]; then
  openssl rand -base64 24 | tr -d '\n' > "$out/prometheus/mlmon_scrape_password"
  rm -f "$out/mlmon_web_config.yml"  # a new password: a new hash
  echo "created the scrape password: $out/prometheus/mlmon_scrape_password"
fi

if [ ! -e "$out/mlmon_web_config.yml" ]; then
  password="$(cat "$out/prometheus/mlmon_scrape_password")"
  hash=""
  for py in "$here/../../.venv/bin/python" python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import bcrypt' 2>/dev/null; then
      hash="$(MLMON_PW="$password" "$py" -c \
        'import bcrypt, os; print(bcrypt.hashpw(os.environ["MLMON_PW"].encode(), bcrypt.gensalt(10)).decode())')"
      break
    fi
  done
  if [ -z "$hash" ] && command -v htpasswd >/dev/null; then
    hash="$(htpasswd -inBC 10 "" <<<"$password" | tr -d ':\n')"
  fi
  if [ -z "$hash" ]; then
    echo "make-secrets.sh: no bcrypt: pip install bcrypt, or apt-get install apache2-utils (htpasswd)" >&2
    exit 1
  fi
  sed -E "s|^(  prometheus: ).*|\1$hash|" "$here/web-config.yml" > "$out/mlmon_web_config.yml"
  echo "created the exporter's web config: $out/mlmon_web_config.yml"
fi

if [ ! -e "$out/mlmon_api_token" ]; then
  openssl rand -hex 32 | tr -d '\n' > "$out/mlmon_api_token"
  echo "created the API token: $out/mlmon_api_token"
fi

# The containers read these files as other users (exporter uid 10001, Prometheus nobody); the folder's 700
# keeps them from other users of this host.
chmod 644 "$out/mlmon_tls.crt" "$out/mlmon_tls.key" "$out/mlmon_web_config.yml" "$out/mlmon_api_token" \
  "$out/prometheus/mlmon_ca.crt" "$out/prometheus/mlmon_scrape_password"
chmod 755 "$out/prometheus"
if command -v promtool >/dev/null; then
  promtool check web-config "$out/mlmon_web_config.yml"
fi
