#!/usr/bin/env bash
# Installs the real SMTP peers the interop tests drive. Idempotent; needs root
# (CI runs as root). Installing Postfix does not start or reconfigure a system
# mail service: the tests run their own instances under a temporary directory.
set -euo pipefail
need=()
command -v swaks >/dev/null || need+=(swaks)
command -v openssl >/dev/null || need+=(openssl)
command -v haproxy >/dev/null || need+=(haproxy)
[ -x /usr/sbin/postfix ] || need+=(postfix)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-peers: need root to apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
