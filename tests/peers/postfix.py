"""A private Postfix instance on a loopback port.

``PostfixInstance`` writes its own ``main.cf``/``master.cf`` into a private
``config_directory`` and runs ``postfix -c <confdir> start``. Everything the
instance owns (queue, data, mailboxes, log, pid file) lives in one runtime
directory; ``/etc/postfix`` is only read (``meta_directory`` for
``dynamicmaps.cf``, the ``postfix-files`` list that ``post-install
create-missing`` uses to create the queue directories).

Roles (both are presets of the same class):

- sender: ``relayhost = [127.0.0.1]:<port>`` (smtpgate's policy port, or any
  SMTP server), ``smtp_tls_security_level`` ``may``/``encrypt``/...; mail is
  submitted over SMTP to the instance's own smtpd port (or with ``sendmail -C``).
- receiver: smtpd with STARTTLS (a test certificate) and ``virtual`` delivery of
  the test domains into one Maildir that tests read.

Why the runtime directory is under ``/tmp`` and not inside pytest's
``tmp_path``: Postfix daemons run as the ``postfix`` user and must traverse the
path, while pytest creates ``/tmp/pytest-of-root`` with mode 0700 (and resets it
to 0700 at the start of every session, so loosening it would race with other
pytest runs); and ``tmp_path`` names are long enough that the UNIX sockets under
``queue/private`` can exceed the 108-byte ``sun_path`` limit. So the instance
runs in ``/tmp/sgpf-XXXXXX`` (mode 0755) and, when it stops, copies its log and
configuration into the test's directory before removing the runtime directory.

Postfix needs root (``master`` binds and switches to ``mail_owner``); CI runs as
root. The instance is stopped by the master's PID (``SIGTERM``, then
``SIGKILL`` to its process group), never by name.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import email.utils
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import PeerMissing, ReservedPort, require_binary, tail, wait_until
from .certs import LeafFiles

__all__ = [
    "POSTFIX",
    "PostfixInstance",
    "TLSLogLine",
    "postfix_receiver",
    "postfix_sender",
    "require_postfix",
]

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
SENDMAIL = "/usr/sbin/sendmail"

QUEUE_SUBDIRS = ("maildrop", "incoming", "active", "deferred", "hold")

# "Untrusted TLS connection established to 127.0.0.1[127.0.0.1]:2525: TLSv1.3 with
#  cipher TLS_AES_256_GCM_SHA384 (256/256 bits) ..."
# "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher ..."
_TLS_LINE = re.compile(
    r"(?P<program>[\w/.-]+)\[\d+\]: (?P<trust>\w+) TLS connection established "
    r"(?P<direction>to|from) (?P<peer>\S+?): (?P<version>TLSv[\d.]+) with cipher (?P<cipher>\S+)"
)

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass(frozen=True)
class TLSLogLine:
    """One "TLS connection established" line from a Postfix log."""

    program: str  # e.g. "postfix-sender/smtp"
    trust: str  # "Anonymous", "Untrusted", "Trusted", "Verified"
    direction: str  # "to" (smtp client) or "from" (smtpd)
    peer: str
    version: str  # "TLSv1.3"
    cipher: str  # OpenSSL name, e.g. "TLS_AES_256_GCM_SHA384"


def require_postfix() -> None:
    """Fail (never skip) when Postfix is missing or we are not root."""
    for binary in (POSTFIX, POSTCONF, POSTQUEUE):
        require_binary(binary, "postfix")
    if os.geteuid() != 0:
        raise PeerMissing(
            "a private Postfix instance needs root (its master daemon switches to the "
            "'postfix' user); CI runs the interop tests as root"
        )
    try:
        pwd.getpwnam("postfix")
    except KeyError as exc:
        raise PeerMissing("the 'postfix' user is missing: reinstall the postfix package") from exc


class PostfixInstance:
    """A private Postfix instance; use as a context manager.

    ``name`` must be unique among instances running at once (it becomes the
    ``syslog_name`` suffix). ``artifacts`` is a directory under the test's
    ``tmp_path`` that receives the log and configuration when the instance stops.
    """

    def __init__(
        self,
        name: str,
        artifacts: Path,
        *,
        hostname: str | None = None,
        port: int | None = None,
        relayhost: str | None = None,
        smtp_tls_security_level: str = "may",
        smtp_tls_ca_file: Path | None = None,
        smtpd_cert: LeafFiles | None = None,
        smtpd_tls_security_level: str = "may",
        virtual_domains: tuple[str, ...] = (),
        main_cf: Mapping[str, str] | None = None,
    ) -> None:
        require_postfix()
        if not re.fullmatch(r"[a-z0-9-]{1,20}", name):
            raise ValueError(f"instance name {name!r}: use [a-z0-9-], at most 20 characters")
        self.name = name
        self.artifacts = Path(artifacts)
        self.hostname = hostname or f"{name}.postfix.test"
        #: Held until smtpd listens (see :class:`ReservedPort`).
        self._reserved = contextlib.ExitStack()
        if port is None:
            port = self._reserved.enter_context(ReservedPort()).port
        self.port = port
        self.relayhost = relayhost
        self.smtp_tls_security_level = smtp_tls_security_level
        self.smtp_tls_ca_file = smtp_tls_ca_file
        self.smtpd_cert = smtpd_cert
        self.smtpd_tls_security_level = smtpd_tls_security_level
        self.virtual_domains = virtual_domains
        self.extra_main_cf = dict(main_cf or {})
        self.runtime: Path | None = None
        self.master_pid: int | None = None

    # -- paths --------------------------------------------------------------

    def _rt(self) -> Path:
        if self.runtime is None:
            raise RuntimeError(f"postfix instance {self.name!r} is not started")
        return self.runtime

    @property
    def config_dir(self) -> Path:
        return self._rt() / "etc"

    @property
    def queue_dir(self) -> Path:
        return self._rt() / "queue"

    @property
    def data_dir(self) -> Path:
        return self._rt() / "data"

    @property
    def mail_dir(self) -> Path:
        """``virtual_mailbox_base``; all virtual recipients share ``vmail/`` (a Maildir)."""
        return self._rt() / "mail"

    @property
    def maildir(self) -> Path:
        return self.mail_dir / "vmail"

    @property
    def log_file(self) -> Path:
        return self._rt() / "maillog"

    @property
    def syslog_name(self) -> str:
        return f"postfix-{self.name}"

    # -- configuration ------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        rt = self._rt()
        owner = pwd.getpwnam("postfix")
        cf: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": self.syslog_name,
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(rt),
            "myhostname": self.hostname,
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_banner": "$myhostname ESMTP $mail_name",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "delay_warning_time": "0h",
            # Fast and bounded: tests poll for seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "20s",
            "smtp_starttls_timeout": "20s",
            "smtp_mail_timeout": "20s",
            "smtp_rcpt_timeout": "20s",
            "smtp_data_init_timeout": "20s",
            "smtp_data_xfer_timeout": "20s",
            "smtp_data_done_timeout": "20s",
            "smtpd_timeout": "20s",
            "smtp_tls_security_level": self.smtp_tls_security_level,
            "smtp_tls_loglevel": "1",
            "smtpd_tls_loglevel": "1",
            "smtp_tls_session_cache_database": "",
            "smtpd_tls_session_cache_database": "",
            # Virtual delivery into one Maildir that tests read.
            "virtual_mailbox_domains": ", ".join(self.virtual_domains),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": "static:vmail/",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "virtual_minimum_uid": "1",
        }
        if self.relayhost:
            cf["relayhost"] = self.relayhost
        if self.smtp_tls_ca_file:
            cf["smtp_tls_CAfile"] = str(self.smtp_tls_ca_file)
        if self.smtpd_cert:
            cf["smtpd_tls_cert_file"] = str(self.smtpd_cert.cert)
            cf["smtpd_tls_key_file"] = str(self.smtpd_cert.key)
            cf["smtpd_tls_security_level"] = self.smtpd_tls_security_level
            cf["smtpd_tls_received_header"] = "yes"
        else:
            cf["smtpd_tls_security_level"] = "none"
        cf.update(self.extra_main_cf)
        return cf

    def _write_config(self) -> None:
        self.config_dir.mkdir(mode=0o755)
        lines = [f"{k} = {v}" for k, v in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        master = MASTER_CF.format(listen=f"127.0.0.1:{self.port}")
        (self.config_dir / "master.cf").write_text(master)
        # `postfix` chdirs into the queue directory before `post-install
        # create-missing` (run by `postfix start`) creates its subdirectories.
        self.queue_dir.mkdir(mode=0o755)
        owner = pwd.getpwnam("postfix")
        self.mail_dir.mkdir(mode=0o700)
        os.chown(self.mail_dir, owner.pw_uid, owner.pw_gid)

    # -- lifecycle ----------------------------------------------------------

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start(self) -> PostfixInstance:
        self.runtime = Path(tempfile.mkdtemp(prefix="sgpf-", dir="/tmp"))
        self.runtime.chmod(0o755)
        try:
            self._write_config()
            proc = self._run(POSTFIX, "-c", str(self.config_dir), "start", timeout=60)
            if proc.returncode != 0:
                raise AssertionError(
                    f"postfix {self.name}: `postfix -c {self.config_dir} start` exited "
                    f"{proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                    f"log:\n{tail(self.log())}"
                )
            self.master_pid = self._read_pid()
            self._wait_listening()
            self._reserved.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_pid(self, timeout: float = 10) -> int:
        pid_file = self.queue_dir / "pid" / "master.pid"

        def pid() -> int | None:
            try:
                return int(pid_file.read_text().split()[0])
            except (FileNotFoundError, IndexError, ValueError):
                return None

        return wait_until(
            pid, lambda: f"postfix {self.name}: no {pid_file} after start", timeout=timeout
        )

    def _wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(
            f"postfix {self.name}: smtpd on 127.0.0.1:{self.port} never answered 220\n"
            f"log:\n{tail(self.log())}"
        )

    def _alive(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError, ProcessLookupError):
            return False
        return state != "Z"

    def stop(self) -> None:
        """Stop the master by PID, save the log and config, remove the runtime dir."""
        self._reserved.close()
        if self.runtime is None:
            return
        pid = self.master_pid
        if pid is None:
            try:
                pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
        if pid is not None and self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(pid):
                # What `postfix stop` does after waiting: the master's process group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.master_pid = None
        try:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            if self.log_file.exists():
                shutil.copyfile(self.log_file, self.artifacts / "maillog")
            for cf in ("main.cf", "master.cf"):
                if (self.config_dir / cf).exists():
                    shutil.copyfile(self.config_dir / cf, self.artifacts / cf)
            if self.maildir.exists():
                shutil.copytree(self.maildir, self.artifacts / "vmail", dirs_exist_ok=True)
        finally:
            if not os.environ.get("SMTPGATE_KEEP_PEERS"):
                shutil.rmtree(self.runtime, ignore_errors=True)
            self.runtime = None

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- mail in ------------------------------------------------------------

    def submit(
        self,
        sender: str,
        recipients: list[str] | str,
        *,
        subject: str = "interop test",
        body: str = "Hello from the smtpgate interop tests.\n",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Submit a message over SMTP to this instance's smtpd; returns its Message-ID."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        msg = build_message(sender, rcpts, subject=subject, body=body, headers=headers)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as smtp:
            smtp.ehlo("submitter.test")
            smtp.send_message(msg, from_addr=sender, to_addrs=rcpts)
        return str(msg["Message-ID"])

    def sendmail(
        self,
        sender: str,
        recipients: list[str] | str,
        *,
        subject: str = "interop test",
        body: str = "Hello from the smtpgate interop tests.\n",
    ) -> str:
        """Submit with ``sendmail -C <confdir>`` (postdrop + pickup); returns its Message-ID."""
        require_binary(SENDMAIL, "postfix")
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        msg = build_message(sender, rcpts, subject=subject, body=body)
        proc = subprocess.run(
            [SENDMAIL, "-C", str(self.config_dir), "-f", sender, "--", *rcpts],
            input=msg.as_bytes(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"sendmail -C {self.config_dir} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')}"
            )
        return str(msg["Message-ID"])

    # -- observing ----------------------------------------------------------

    def log(self) -> str:
        """The instance's maillog so far ("" before the first line)."""
        try:
            return self.log_file.read_text(errors="replace")
        except (FileNotFoundError, RuntimeError):
            saved = self.artifacts / "maillog"
            return saved.read_text(errors="replace") if saved.exists() else ""

    def tls_lines(self, direction: str | None = None) -> list[TLSLogLine]:
        """Parsed "TLS connection established to/from" lines of this instance."""
        out = []
        for m in _TLS_LINE.finditer(self.log()):
            if not m["program"].startswith(self.syslog_name + "/"):
                continue
            if direction is None or m["direction"] == direction:
                out.append(TLSLogLine(**m.groupdict()))
        return out

    def queue_files(self) -> list[Path]:
        files = []
        for sub in QUEUE_SUBDIRS:
            root = self.queue_dir / sub
            for dirpath, _dirs, names in os.walk(root):
                files.extend(Path(dirpath) / n for n in names)
        return files

    def postqueue(self) -> str:
        """``postqueue -p`` output (for diagnostics)."""
        proc = self._run(POSTQUEUE, "-c", str(self.config_dir), "-p")
        return proc.stdout + proc.stderr

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now."""
        self._run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def retry(self, queue_id: str) -> None:
        """``postqueue -i <queue id>``: the deferred message's next attempt, now.

        The flush service moves the file from ``deferred`` to ``incoming`` with a
        current time stamp, which is what the queue manager's deferred-queue scan
        would pick up once the file's time stamp (the next attempt) has passed.
        """
        proc = self._run(POSTQUEUE, "-c", str(self.config_dir), "-i", queue_id)
        if proc.returncode != 0:
            raise AssertionError(
                f"postqueue -c {self.config_dir} -i {queue_id} exited {proc.returncode}: "
                f"{proc.stdout}{proc.stderr}\n{self.diagnostics()}"
            )

    def queue_id(self, message_id: str, timeout: float = 15) -> str:
        """The queue ID that cleanup gave the message with this ``Message-ID``."""
        line = self.wait_log(
            rf"(?P<queue_id>[0-9A-F]+): message-id={re.escape(message_id)}", timeout=timeout
        )
        return line["queue_id"]

    def wait_deferred(self, queue_id: str, timeout: float = 15) -> Path:
        """Wait until the message sits in the ``deferred`` queue; return its file.

        The queue manager moves it there once every recipient of the delivery
        attempt has been tried, with the time of the next attempt as the file's
        modification time (``qmgr_active_done``).
        """
        root = self.queue_dir / "deferred"
        found = wait_until(
            lambda: [p for p in root.rglob(queue_id) if p.is_file()],
            lambda: f"{queue_id} not in the deferred queue\n{self.diagnostics()}",
            timeout=timeout,
            interval=0.1,
        )
        return found[0]

    def diagnostics(self) -> str:
        return (
            f"postfix {self.name} (127.0.0.1:{self.port}) queue:\n{self.postqueue()}\n"
            f"log tail:\n{tail(self.log())}"
        )

    def wait_queue_empty(self, timeout: float = 30) -> None:
        wait_until(
            lambda: not self.queue_files(),
            lambda: f"queue not empty\n{self.diagnostics()}",
            timeout=timeout,
            interval=0.2,
        )

    def wait_queued(self, timeout: float = 15) -> None:
        """Wait until at least one message sits in the queue (e.g. deferred)."""
        wait_until(
            self.queue_files,
            lambda: f"nothing queued\n{self.diagnostics()}",
            timeout=timeout,
            interval=0.1,
        )

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) matches the log; return the match."""
        rx = re.compile(pattern)
        return wait_until(
            lambda: rx.search(self.log()),
            lambda: f"no log line matching {pattern!r}\n{self.diagnostics()}",
            timeout=timeout,
            interval=0.2,
        )

    def delivered(self) -> list[email.message.EmailMessage]:
        """Messages delivered to the Maildir so far, oldest first."""
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        paths = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in paths
        ]

    def wait_delivered(self, count: int = 1, timeout: float = 30) -> list[Any]:
        return wait_until(
            lambda: msgs if len(msgs := self.delivered()) >= count else None,
            lambda: (
                f"{len(self.delivered())} of {count} message(s) delivered\n{self.diagnostics()}"
            ),
            timeout=timeout,
            interval=0.2,
        )


def build_message(
    sender: str,
    recipients: list[str],
    *,
    subject: str,
    body: str,
    headers: Mapping[str, str] | None = None,
) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="interop.test")
    msg["Date"] = email.utils.formatdate(localtime=False)
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg


def postfix_sender(
    name: str, artifacts: Path, relay_port: int, *, tls_level: str = "may", **kw: Any
) -> PostfixInstance:
    """A sending MTA that relays everything to ``[127.0.0.1]:relay_port``."""
    return PostfixInstance(
        name,
        artifacts,
        relayhost=f"[127.0.0.1]:{relay_port}",
        smtp_tls_security_level=tls_level,
        **kw,
    )


def postfix_receiver(
    name: str,
    artifacts: Path,
    cert: LeafFiles | None,
    *,
    domains: tuple[str, ...] = ("receiver.test",),
    **kw: Any,
) -> PostfixInstance:
    """A receiving server: smtpd with STARTTLS (when ``cert``), virtual delivery."""
    return PostfixInstance(name, artifacts, smtpd_cert=cert, virtual_domains=domains, **kw)


def iter_tls_lines(text: str) -> Iterator[TLSLogLine]:
    """All TLS lines in an arbitrary Postfix log text."""
    for m in _TLS_LINE.finditer(text):
        yield TLSLogLine(**m.groupdict())
