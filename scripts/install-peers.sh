#!/usr/bin/env bash
# Installs the real SMTP peers the interop tests drive (swaks, openssl,
# HAProxy, Postfix, nftables for the firewall of the transparent-mode tests,
# NSD as the authoritative DNS server of the MX-routing tests),
# the PostgreSQL server the traffic store's tests start, the browser of the
# console tests (Debian's chromium) and the TLS scanner testssl.sh, and checks
# that each can do what the tests need, not only that its binary exists: a
# swaks without Net::SSLeay is installed but cannot say STARTTLS. What gets
# installed is decided by those checks, so a machine with swaks but without
# Net::SSLeay gets fixed, and a second run installs nothing. Needs root only
# when something is missing (CI runs as root).
#
# Installing Postfix does not start or reconfigure a system mail service (the
# tests run their own instances under /tmp), and no package's daemon is started
# by the installation: see without_service_starts.
set -euo pipefail

say() { echo "install-peers: $*" >&2; }

# Each check prints what the peer cannot do (empty output: it can do all of it).
# The Debian packages that give a peer everything its check asks for:
declare -A packages=(
  [swaks]="swaks libnet-ssleay-perl"
  [openssl]="openssl"
  [haproxy]="haproxy"
  [postfix]="postfix libsasl2-modules"
  [postgresql]="postgresql"
  [nft]="nftables iproute2"
  [chromium]="chromium"
  [rsyslog]="rsyslog"
  [logrotate]="logrotate"
  [systemd_analyze]="systemd"
  [testssl]="testssl.sh"
  [nsd]="nsd"
)
# rsyslog receives `[logging] target = "syslog"` (tests/ops/test_log_targets.py);
# logrotate and systemd_analyze check the files in deploy/ (tests/ops/test_deploy.py);
# testssl judges the client leg's TLS (tests/scanners); nsd serves the zones of
# the MX-routing tests (tests/peers/dns.py).
peers=(swaks openssl haproxy postfix postgresql nft chromium rsyslog logrotate systemd_analyze testssl nsd)

check_swaks() {
  # swaks 20201014 (Debian 12) does TLS through Net::SSLeay alone; `--support`
  # lists every optional feature, "=== TLS supported" or "*** TLS not available:
  # requires Net::SSLeay", and exits 0 either way. The AUTH tests use PLAIN and
  # LOGIN ("=== Basic AUTH supported"); nothing else optional (no IPv6, no MX lookups).
  command -v swaks >/dev/null || { echo "no swaks binary"; return; }
  local support
  support=$(swaks --support 2>&1) || true
  grep -q '^=== TLS supported' <<<"$support" ||
    echo "cannot do STARTTLS/TLS ($(grep -m1 'TLS' <<<"$support" || echo 'swaks --support does not list TLS'))"
  grep -q '^=== Basic AUTH supported' <<<"$support" ||
    echo "cannot do AUTH PLAIN/LOGIN ($(grep -m1 'Basic AUTH' <<<"$support" || echo 'swaks --support does not list Basic AUTH'))"
}

check_openssl() {
  command -v openssl >/dev/null || { echo "no openssl binary"; return; }
  local help option
  help=$(openssl s_client -help 2>&1) || true
  # What tests/peers/openssl.py passes to s_client.
  for option in -starttls -name -crlf -ign_eof -tls1_2 -tls1_3 -cipher -ciphersuites \
    -servername -noservername -CAfile; do
    grep -qE -- "^ *$option " <<<"$help" || echo "s_client has no $option option"
  done
  openssl ciphers -s -tls1_3 >/dev/null 2>&1 || echo "cannot do TLS 1.3"
  # tests/interop/test_interop_openssl.py offers an RSA key exchange suite (which
  # a pfs = "required" server must refuse) and an ECDHE one (which it accepts).
  openssl ciphers -s -tls1_2 AES128-GCM-SHA256 >/dev/null 2>&1 ||
    echo "cannot offer AES128-GCM-SHA256 (RSA key exchange) over TLS 1.2"
  openssl ciphers -s -tls1_2 ECDHE >/dev/null 2>&1 || echo "cannot offer ECDHE over TLS 1.2"
}

check_haproxy() {
  command -v haproxy >/dev/null || { echo "no haproxy binary"; return; }
  # Whole outputs are captured before grep -q reads them: with pipefail, a grep
  # that stops at the first match would fail the pipeline with the writer's SIGPIPE.
  local version
  version=$(haproxy -vv 2>&1) || true
  grep -q '^Built with OpenSSL' <<<"$version" || echo "was built without OpenSSL (haproxy -vv)"
  # What tests/peers/haproxy.py runs: mode tcp, a backend with send-proxy(-v2).
  local cfg
  cfg=$(mktemp)
  printf '%s\n' 'defaults' '    mode tcp' '    timeout connect 5s' '    timeout client 5s' \
    '    timeout server 5s' 'frontend f' '    bind 127.0.0.1:1' '    default_backend b' \
    'backend b' '    server v1 127.0.0.1:2 send-proxy' '    server v2 127.0.0.1:3 send-proxy-v2' >"$cfg"
  haproxy -c -q -f "$cfg" >/dev/null 2>&1 || echo "refuses a mode tcp backend with send-proxy/send-proxy-v2 (haproxy -c)"
  rm -f "$cfg"
}

check_postfix() {
  [ -x /usr/sbin/postfix ] || { echo "no /usr/sbin/postfix"; return; }
  local binary
  for binary in postconf postqueue sendmail postdrop; do
    [ -x "/usr/sbin/$binary" ] || echo "no /usr/sbin/$binary"
  done
  [ -x /usr/sbin/postconf ] || return 0
  getent passwd postfix >/dev/null || echo "no 'postfix' user"
  getent group postdrop >/dev/null || echo "no 'postdrop' group"
  # TLS on both sides (smtp and smtpd): `postconf -T` answers only when Postfix
  # was built with TLS support.
  postconf -T compile-version >/dev/null 2>&1 || echo "was built without TLS (postconf -T compile-version fails)"
  # tests/peers/postfix.py delivers with virtual_mailbox_maps = static:vmail/.
  # Debian's "No configuration" install leaves no /etc/postfix/main.cf, so ask
  # with an empty configuration directory.
  local confdir tables
  confdir=$(mktemp -d)
  : >"$confdir/main.cf"
  tables=$(postconf -c "$confdir" -m 2>/dev/null) || true
  rm -rf "$confdir"
  grep -qx static <<<"$tables" || echo "has no 'static' lookup table (postconf -m)"
  # tests/interop/test_interop_auth.py: the SMTP client authenticates (smtp_sasl_auth_enable)
  # through Cyrus SASL, whose PLAIN mechanism is a plugin of libsasl2-modules.
  postconf -A 2>/dev/null | grep -qx cyrus || echo "has no Cyrus SASL client (postconf -A)"
  compgen -G '/usr/lib/*/sasl2/libplain.so*' >/dev/null ||
    echo "has no SASL PLAIN client plugin (libsasl2-modules)"
}

check_postgresql() {
  # tests/peers/postgres.py runs initdb, pg_ctl and createdb from the newest
  # /usr/lib/postgresql/N/bin (Debian does not put them on PATH), as the
  # 'postgres' user when the tests run as root (PostgreSQL refuses root).
  local bindir="" dir binary
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && bindir=$dir
  done
  [ -n "$bindir" ] || { echo "no /usr/lib/postgresql/N/bin/initdb"; return; }
  for binary in initdb pg_ctl postgres createdb; do
    [ -x "$bindir/$binary" ] || echo "no $bindir/$binary"
  done
  "$bindir/postgres" --version >/dev/null 2>&1 || echo "$bindir/postgres --version fails"
  getent passwd postgres >/dev/null || echo "no 'postgres' user"
}

check_nft() {
  command -v nft >/dev/null || { echo "no nft binary"; return; }
  # The tests build their namespaces and veths with ip (netns, link, addr, route, rule) and ss.
  command -v ip >/dev/null || { echo "no ip binary (iproute2) for the test's namespaces"; return; }
  command -v ss >/dev/null || { echo "no ss binary (iproute2)"; return; }
  # The kind of ruleset tests/interop/test_transparent_netns.py loads: tproxy and
  # redirect in an inet table. Checked (nft -c: nothing is applied) in a network
  # namespace of its own; where the machine allows none, those tests skip and
  # there is nothing more to ask.
  unshare --net true 2>/dev/null || return 0
  local ruleset='table inet smtpgate_check {
    chain tproxy_prerouting {
      type filter hook prerouting priority mangle; policy accept;
      meta nfproto ipv4 tcp dport 587 tproxy ip to :2587 meta mark set 1 accept
    }
    chain nat_prerouting {
      type nat hook prerouting priority dstnat; policy accept;
      meta nfproto ipv6 tcp dport 25 redirect to :2535
    }
  }'
  unshare --net nft -c -f - <<<"$ruleset" >/dev/null 2>&1 ||
    echo "cannot load a ruleset with tproxy and redirect in an inet table (nft -c, in a new network namespace)"
}

check_chromium() {
  # tests/browser drives Debian's chromium through Playwright (executable_path; no
  # browser is ever downloaded): it must start headless as the tests' user (root in
  # CI, hence --no-sandbox, as Playwright passes it) and render a page.
  # A profile folder of its own: the user running this may have no writable home.
  [ -x /usr/bin/chromium ] || { echo "no /usr/bin/chromium"; return; }
  local dom profile
  profile=$(mktemp -d)
  dom=$(HOME=$profile timeout 60 /usr/bin/chromium --headless --no-sandbox --disable-gpu \
    --user-data-dir="$profile" --dump-dom 'data:text/html,<p>smtpgate</p>' 2>/dev/null) || true
  rm -rf "$profile"
  grep -q '<p>smtpgate</p>' <<<"$dom" || echo "does not render a page headless (chromium --headless --dump-dom)"
}

check_rsyslog() {
  command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ] || { echo "no rsyslogd binary"; return; }
  # What the test's configuration loads: TCP and UDP inputs, a file output.
  local conf
  conf=$(mktemp)
  printf '%s\n' 'module(load="imtcp")' 'module(load="imudp")' \
    'input(type="imtcp" address="127.0.0.1" port="1")' \
    'input(type="imudp" address="127.0.0.1" port="1")' \
    'action(type="omfile" file="/dev/null")' >"$conf"
  PATH="$PATH:/usr/sbin" rsyslogd -N1 -f "$conf" >/dev/null 2>&1 || echo "cannot load imtcp/imudp (rsyslogd -N1)"
  rm -f "$conf"
}

check_logrotate() {
  command -v logrotate >/dev/null || [ -x /usr/sbin/logrotate ] || { echo "no logrotate binary"; return; }
}

check_systemd_analyze() {
  command -v systemd-analyze >/dev/null || { echo "no systemd-analyze binary"; return; }
  # `security` of a unit file that is not installed needs --offline (systemd 250+).
  local help
  help=$(systemd-analyze --help 2>&1) || true
  grep -q -- '--offline' <<<"$help" || echo "systemd-analyze has no --offline (systemd older than 250)"
}

check_testssl() {
  # tests/peers/scanners.py: `testssl -t smtp` with these options (Debian's testssl.sh
  # package names its script /usr/bin/testssl).
  command -v testssl >/dev/null || { echo "no testssl binary"; return; }
  local help option
  help=$(testssl --help 2>&1) || true
  grep -q 'smtp' <<<"$(grep -A1 -- '--starttls' <<<"$help")" || echo "cannot do STARTTLS for smtp (-t smtp)"
  for option in --jsonfile --add-ca --nodns --openssl-timeout --connect-timeout --quiet \
    --protocols --std --renegotiation --compression --server-defaults; do
    grep -q -- "$option" <<<"$help" || echo "has no $option option"
  done
}

check_nsd() {
  # tests/peers/dns.py runs `nsd -d -c <conf>` as an authoritative server for the
  # zones a test writes, on a loopback port, with no control socket and no database
  # file; nsd-checkconf must accept exactly that shape.
  [ -x /usr/sbin/nsd ] || { echo "no /usr/sbin/nsd"; return; }
  local checkconf=/usr/sbin/nsd-checkconf dir
  [ -x "$checkconf" ] || { echo "no $checkconf"; return; }
  dir=$(mktemp -d)
  printf '%s\n' 'server:' '    ip-address: 127.0.0.1@1' "    zonesdir: \"$dir\"" \
    '    username: ""' '    database: ""' "    pidfile: \"$dir/nsd.pid\"" 'remote-control:' \
    '    control-enable: no' 'zone:' '    name: "a.test"' '    zonefile: "a.test.zone"' >"$dir/nsd.conf"
  /usr/sbin/nsd-checkconf "$dir/nsd.conf" >/dev/null 2>&1 ||
    echo "nsd-checkconf refuses a loopback server without database and control socket"
  rm -rf "$dir"
}

# check_all: sets problems to a "peer: what it cannot do" line per failed
# check, and missing_packages to the packages of the peers that failed one.
check_all() {
  local peer problem
  missing_packages=()
  problems=()
  for peer in "${peers[@]}"; do
    local found=0
    while IFS= read -r problem; do
      [ -n "$problem" ] || continue
      problems+=("$peer: $problem")
      found=1
    done < <("check_$peer")
    # shellcheck disable=SC2206 # the package list is split on purpose
    [ $found -eq 0 ] || missing_packages+=(${packages[$peer]})
  done
}

# Debian starts a package's service on installation unless policy-rc.d says
# no (exit 101). The tests run their own HAProxy and Postfix on loopback ports:
# no system-wide daemon is wanted. An existing policy-rc.d is left alone.
created_policy=
without_service_starts() {
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    created_policy=$policy
    # Removed on any exit, also when apt-get fails or the run is interrupted.
    trap 'rm -f "$created_policy"' EXIT
    printf '#!/bin/sh\n# scripts/install-peers.sh: no service starts while it installs.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
  fi
  "$@"
  if [ -n "$created_policy" ]; then
    rm -f "$created_policy"
    created_policy=
  fi
}

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

check_all
if [ ${#problems[@]} -eq 0 ]; then
  say "ok: ${peers[*]} can do what the interop tests need"
  exit 0
fi
printf 'install-peers: %s\n' "${problems[@]}" >&2
if [ "$(id -u)" != 0 ]; then
  say "need root to apt-get install ${missing_packages[*]}"
  exit 1
fi
say "installing ${missing_packages[*]}"
without_service_starts install_packages "${missing_packages[@]}"

check_all
if [ ${#problems[@]} -ne 0 ]; then
  printf 'install-peers: still: %s\n' "${problems[@]}" >&2
  say "installed ${missing_packages[*]}, but the peers above still cannot do what the tests need"
  exit 1
fi
say "ok: ${peers[*]} can do what the interop tests need"
