"""Prometheus metrics of one ``serve``: counted from the log records, so they say
what the log says, plus what records cannot say, read from the gateway at scrape time.

Every metric, its labels and the record it comes from: docs/operations.md#metrics.
:class:`Metrics` owns its :class:`CollectorRegistry` (never prometheus_client's
global one); ``serve`` makes one, feeds it every record through
:meth:`EventLog.observe <smtpgate.logs.EventLog.observe>` and serves it on
``[metrics] listen`` (:mod:`smtpgate.metrics_server`).

Labels take only values from bounded sets (policy and action names, rule
positions, TLS versions and cipher names, reasons by kind), never addresses,
host names or reply texts, so no label can grow without bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from importlib.metadata import version as package_version
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from smtpgate.config.schema import Config

#: Handshakes and upstream setup: loopback is sub-millisecond, a far MX a second or more.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: From the final dot to the upstream's verdict: queueing, content filters, milters.
RELAY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: ``rcpt_rejected`` reasons (docs/logs.md) by kind, the ``reason`` label of
#: ``smtpgate_recipients_refused_total``: the first prefix that matches names it.
REFUSAL_KINDS: tuple[tuple[str, str], ...] = (
    ("the rule requires an encrypted client leg", "client_not_encrypted"),
    ("needs upstream TLS ", "upstream_mode_differs"),
    ("upstream connection lost earlier", "upstream_lost"),
    ("upstream failed during MAIL/RCPT", "upstream_failed"),
    ("upstream refused MAIL", "upstream_refused"),
    ("upstream refused RCPT", "upstream_refused"),
    ("certificate check", "upstream_certificate"),
    ("upstream does not offer STARTTLS", "upstream_no_starttls"),
    ("STARTTLS refused", "upstream_no_starttls"),
    ("TLS handshake failed", "upstream_tls_failed"),
    ("connect ", "upstream_unreachable"),
    ("upstream greeting", "upstream_unreachable"),
    ("upstream dialogue failed", "upstream_unreachable"),
)


def refusal_kind(reason: str) -> str:
    """The kind of a recipient refusal's ``reason``; ``other`` for one not listed."""
    for prefix, kind in REFUSAL_KINDS:
        if reason.startswith(prefix):
            return kind
    return "other"


def verify_result(verdict: str) -> str:
    """``ok``, ``failed`` or ``not-checked`` from an ``upstream_verify`` value."""
    head = verdict.split(":", 1)[0].strip()
    return head if head in ("ok", "failed", "not-checked") else "other"


def rule_position(rule: str) -> str:
    """``3`` from ``3 (partners)``; ``default`` stays."""
    return rule.split(" ", 1)[0]


def config_digest(config: Config) -> str:
    """The configuration in force, as 16 hex digits of SHA-256 over its canonical JSON:
    two instances with the same digest run the same configuration."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


class Pool(Protocol):
    def __len__(self) -> int: ...


class GatewayState(Protocol):
    """What the scrape reads from the running gateway (:class:`~smtpgate.proxy.gateway.Gateway`)."""

    @property
    def config(self) -> Config: ...

    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def open_connections(self) -> int: ...

    async def refresh(self) -> None:
        """Before a scrape: bring the gauges up to date (a supervisor asks its workers,
        whose records before the answer are then counted too)."""


class _GatewayCollector(Collector):
    """Gauges read at scrape time: what no record says."""

    def __init__(self, gateway: GatewayState) -> None:
        self._gateway = gateway
        self._digest_of: Config | None = None
        self._digest = ""

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway
        connections = GaugeMetricFamily(
            "smtpgate_connections_current",
            "Client connections open now (also those still reading a PROXY header or "
            "doing the TLS handshake of an implicit-TLS listener).",
        )
        connections.add_metric([], gateway.open_connections)
        yield connections
        pool = GaugeMetricFamily(
            "smtpgate_upstream_pool_connections",
            "Idle upstream connections parked for the next session, per policy.",
            labels=["policy"],
        )
        for name, parked in sorted(gateway.pools.items()):
            pool.add_metric([name], len(parked))
        yield pool
        config = gateway.config
        if config is not self._digest_of:
            self._digest_of, self._digest = config, config_digest(config)
        info = InfoMetricFamily(
            "smtpgate_config", "The configuration in force (digest: docs/operations.md)."
        )
        info.add_metric([], {"digest": self._digest})
        yield info
        policies = GaugeMetricFamily(
            "smtpgate_config_policies", "Policies (listeners) in the configuration in force."
        )
        policies.add_metric([], len(config.policies))
        yield policies


class Metrics:
    """The metrics of one ``serve``; :meth:`observe` is its EventLog observer."""

    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry()
        r = self.registry
        self._build_info = Gauge(
            "smtpgate_build_info", "The running smtpgate.", ["version"], registry=r
        )
        self._build_info.labels(package_version("smtpgate")).set(1)
        self.records = Counter(
            "smtpgate_log_records_total", "Log records written, by event.", ["event"], registry=r
        )
        self.sessions = Counter(
            "smtpgate_sessions_total", "Sessions started (session_start).", ["policy"], registry=r
        )
        self.sessions_current = Gauge(
            "smtpgate_sessions_current",
            "Sessions started and not ended (session_start minus session_end).",
            registry=r,
        )
        self.sessions_ended = Counter(
            "smtpgate_sessions_ended_total", "Sessions ended, by reason.", ["reason"], registry=r
        )
        self.connections_failed = Counter(
            "smtpgate_connections_failed_total",
            "Connections closed before a session began, by what failed "
            "(proxy_header_error, tls_handshake_failed).",
            ["policy", "stage"],
            registry=r,
        )
        self.connections_refused = Counter(
            "smtpgate_connections_refused_total",
            "Connections refused by a limit (connection_refused records), by the limit.",
            ["policy", "limit"],
            registry=r,
        )
        self.transactions = Counter(
            "smtpgate_transactions_total",
            "Transactions ended, by policy and outcome.",
            ["policy", "outcome"],
            registry=r,
        )
        self.message_bytes = Counter(
            "smtpgate_message_bytes_total",
            "Message content the clients sent, in bytes (transaction size).",
            ["policy"],
            registry=r,
        )
        self.recipients_refused = Counter(
            "smtpgate_recipients_refused_total",
            "Recipients refused (rcpt_rejected), by policy and kind of reason.",
            ["policy", "reason"],
            registry=r,
        )
        self.auths = Counter(
            "smtpgate_auth_total",
            "AUTH exchanges relayed (auth records), by policy, mechanism and outcome "
            "(authenticated, failed, cancelled, tempfail).",
            ["policy", "mechanism", "outcome"],
            registry=r,
        )
        self.senders_refused = Counter(
            "smtpgate_senders_refused_total",
            "MAIL FROM refused by the rules (mail_rejected).",
            registry=r,
        )
        self.transaction_tls = Counter(
            "smtpgate_transaction_tls_total",
            "Transactions by leg (client, upstream), TLS version and cipher.",
            ["leg", "version", "cipher"],
            registry=r,
        )
        self.upstream_connections = Counter(
            "smtpgate_upstream_connections_total",
            "Upstream connections opened (upstream_connected), by TLS mode asked and got.",
            ["mode", "version"],
            registry=r,
        )
        self.upstream_verify = Counter(
            "smtpgate_upstream_verify_total",
            "Upstream certificate checks on new upstream connections, by result "
            "(ok, failed, not-checked).",
            ["result"],
            registry=r,
        )
        self.upstream_fallbacks = Counter(
            "smtpgate_upstream_fallbacks_total",
            "Upstream connections that went in clear although TLS was preferred.",
            registry=r,
        )
        self.upstream_reused = Counter(
            "smtpgate_upstream_reused_total",
            "Transactions relayed on an upstream connection taken from the pool.",
            ["policy"],
            registry=r,
        )
        self.rule_hits = Counter(
            "smtpgate_rule_hits_total",
            "Transactions by the encryption rule that decided them: its proxy action "
            "and 1-based position (or default).",
            ["action", "rule"],
            registry=r,
        )
        self.handshake = Histogram(
            "smtpgate_tls_handshake_seconds",
            "TLS handshakes: the client's STARTTLS, the upstream's STARTTLS.",
            ["leg"],
            buckets=HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.upstream_setup = Histogram(
            "smtpgate_upstream_setup_seconds",
            "Opening an upstream connection up to its last EHLO (connect, greeting, "
            "STARTTLS, handshake).",
            buckets=HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.relay = Histogram(
            "smtpgate_relay_seconds",
            "From the final dot relayed to the upstream's verdict, per policy.",
            ["policy"],
            buckets=RELAY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "smtpgate_reloads_total",
            "Reloads, by result (applied: reloaded, failed: reload_failed).",
            ["result"],
            registry=r,
        )
        self.config_warnings = Counter(
            "smtpgate_config_warnings_total", "config_warning records.", registry=r
        )
        self.last_reload = Gauge(
            "smtpgate_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was applied (start or reload), Unix time.",
            registry=r,
        )
        self.last_reload.set_to_current_time()
        for result in ("applied", "failed"):  # both shown from the start, as 0
            self.reloads.labels(result)
        ProcessCollector(registry=r)
        r.register(_GatewayCollector(gateway))
        self._handlers = {
            "session_start": self._session_start,
            "session_end": self._session_end,
            "proxy_header_error": self._connection_failed,
            "tls_handshake_failed": self._connection_failed,
            "connection_refused": self._connection_refused,
            "transaction": self._transaction,
            "rcpt_rejected": self._rcpt_rejected,
            "mail_rejected": self._mail_rejected,
            "auth": self._auth,
            "starttls": self._starttls,
            "upstream_connected": self._upstream_connected,
            "reloaded": self._reloaded,
            "reload_failed": self._reload_failed,
            "config_warning": self._config_warning,
        }

    def observe(self, record: dict[str, Any]) -> None:
        """Count one log record (an :class:`~smtpgate.logs.EventLog` observer)."""
        event = record.get("event", "")
        self.records.labels(event).inc()
        handler = self._handlers.get(event)
        if handler is not None:
            handler(record)

    # -- one handler per event ---------------------------------------------------------------

    def _session_start(self, record: dict[str, Any]) -> None:
        self.sessions.labels(record.get("policy", "")).inc()
        self.sessions_current.inc()

    def _session_end(self, record: dict[str, Any]) -> None:
        self.sessions_ended.labels(record.get("reason", "")).inc()
        self.sessions_current.dec()

    def _connection_failed(self, record: dict[str, Any]) -> None:
        self.connections_failed.labels(record.get("policy", ""), record["event"]).inc()

    def _connection_refused(self, record: dict[str, Any]) -> None:
        # One record stands for ``refused`` refusals (the log is rate-limited); ``reason``
        # names the limit (max_connections, max_connections_per_client, open_files).
        self.connections_refused.labels(record.get("policy", ""), record.get("reason", "")).inc(
            record.get("refused") or 1
        )

    def _transaction(self, record: dict[str, Any]) -> None:
        policy = record.get("policy", "")
        self.transactions.labels(policy, record.get("outcome", "")).inc()
        self.message_bytes.labels(policy).inc(record.get("size") or 0)
        self.transaction_tls.labels(
            "client", record.get("client_tls", "none"), record.get("client_cipher", "none")
        ).inc()
        self.transaction_tls.labels(
            "upstream", record.get("upstream_tls", "none"), record.get("upstream_cipher", "none")
        ).inc()
        if record.get("upstream_reused"):
            self.upstream_reused.labels(policy).inc()
        self.rule_hits.labels(
            self._action_of(policy), rule_position(str(record.get("rule", "default")))
        ).inc()
        relay_ms = record.get("relay_ms")
        if relay_ms is not None:
            self.relay.labels(policy).observe(relay_ms / 1000)

    def _action_of(self, policy: str) -> str:
        """The proxy action of ``policy`` in the configuration in force ("" if it is gone)."""
        found = self.gateway.config.policies_by_name.get(policy)
        return found.proxy_action if found is not None else ""

    def _rcpt_rejected(self, record: dict[str, Any]) -> None:
        # After several next hops, ``reason`` names them all; the last one's own
        # reason says what kind of failure the recipient finally met.
        reason = record.get("last_hop_reason") or record.get("reason", "")
        self.recipients_refused.labels(record.get("policy", ""), refusal_kind(str(reason))).inc()

    def _auth(self, record: dict[str, Any]) -> None:
        self.auths.labels(
            record.get("policy", ""), record.get("mechanism", ""), record.get("outcome", "")
        ).inc()

    def _mail_rejected(self, record: dict[str, Any]) -> None:
        self.senders_refused.inc()

    def _starttls(self, record: dict[str, Any]) -> None:
        handshake_ms = record.get("handshake_ms")
        if handshake_ms is not None:
            self.handshake.labels("client").observe(handshake_ms / 1000)

    def _upstream_connected(self, record: dict[str, Any]) -> None:
        self.upstream_connections.labels(
            record.get("mode", ""), record.get("upstream_tls", "none")
        ).inc()
        self.upstream_verify.labels(verify_result(str(record.get("upstream_verify", "")))).inc()
        if record.get("upstream_fallback"):
            self.upstream_fallbacks.inc()
        handshake_ms = record.get("handshake_ms")
        if handshake_ms is not None:
            self.handshake.labels("upstream").observe(handshake_ms / 1000)
        setup_ms = record.get("setup_ms")
        if setup_ms is not None:
            self.upstream_setup.observe(setup_ms / 1000)

    def _reloaded(self, record: dict[str, Any]) -> None:
        self.reloads.labels("applied").inc()
        self.last_reload.set_to_current_time()

    def _reload_failed(self, record: dict[str, Any]) -> None:
        self.reloads.labels("failed").inc()

    def _config_warning(self, record: dict[str, Any]) -> None:
        self.config_warnings.inc()
