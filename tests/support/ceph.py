"""A real S3 server for tests: Ceph's RADOS Gateway on a one-node cluster on 127.0.0.1, over HTTPS.

``with LoopbackCeph(root, access_key=..., secret_key=...) as ceph: ceph.endpoint, ceph.ca_bundle``

Debian's Ceph 16 (``make ceph``: ``apt-get install radosgw ceph-mon ceph-osd``) has no standalone backend for radosgw
(its SQLite ``dbstore`` came with Ceph 17), so this runs the smallest real cluster: one ``ceph-mon``, one ``ceph-osd``
(BlueStore on a sparse file under ``root``) and one ``radosgw``, each a child process in the foreground, with one
``ceph.conf``: messenger v2 only, no cephx, one replica, every socket on 127.0.0.1 (checked with ``ss -ltnp``), free
ports picked at start (the OSD takes free ones from Ceph's 6800-7300 range). radosgw serves S3 over HTTP and over HTTPS
with a self-signed certificate (``ca_bundle``: the certificate clients trust through ``AWS_CA_BUNDLE``). Nothing is
installed here: a missing binary raises ``CephUnavailable``. On exit every process is stopped by its PID and ``root`` is
removed; should the test process die first, the daemons get SIGTERM (``setpriv --pdeathsig``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import IO

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")
INSTALL_HINT = "`make ceph` installs Debian's radosgw, ceph-mon and ceph-osd as root with apt"
LOOPBACK = "127.0.0.1"


class CephUnavailable(RuntimeError):
    """The Ceph binaries are not installed."""


class CephError(RuntimeError):
    """The cluster did not come up (the message carries the tails of its logs)."""


def find_binaries() -> dict[str, str]:
    """Paths of the binaries the cluster needs; ``CephUnavailable`` names any that are missing."""
    found: dict[str, str] = {}
    for name in BINARIES:
        path = shutil.which(name) or next(
            (str(p) for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin") if (p := Path(d, name)).is_file()), None
        )
        if path:
            found[name] = path
    missing = [n for n in BINARIES if n not in found]
    if missing:
        raise CephUnavailable(f"Ceph binaries not found: {', '.join(missing)}; {INSTALL_HINT}")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together while picked, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_self_signed(cert_path: Path, pem_path: Path, days: int = 7) -> None:
    """A self-signed certificate for 127.0.0.1 / localhost: the certificate alone at ``cert_path`` (the CA bundle of
    clients), certificate and private key at ``pem_path`` (radosgw's ``ssl_certificate``; mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path.write_bytes(cert_pem)
    pem_path.touch(mode=0o600)
    pem_path.write_bytes(cert_pem + key_pem)


def listening_sockets(pids: set[int]) -> list[tuple[int, str]]:
    """``(pid, local address)`` of every listening TCP socket of ``pids`` (``ss -ltnpH``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                found.append((pid, fields[3]))
    return found


class LoopbackCeph:
    """A one-node Ceph cluster with radosgw on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        access_key: str = "AKIACEPHLOOPBACK",
        secret_key: str = "ceph-loopback-secret",
        uid: str = "loopback-test",
        start_timeout: float = 180.0,
    ):
        self.root = Path(root)
        self.access_key, self.secret_key, self.uid = access_key, secret_key, uid
        self.start_timeout = start_timeout
        self.bin = find_binaries()
        self.conf = self.root / "ceph.conf"
        self.ca_bundle = self.root / "ca.pem"
        self.server_pem = self.root / "rgw.pem"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.mon_port = self.http_port = self.https_port = 0
        self.started_in: float | None = None
        self.listening: list[tuple[int, str]] = []

    # -- addresses ---------------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> LoopbackCeph:
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _start(self) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise CephError(f"{self.root} is not empty")
        for d in ("mon-a", "osd-0", "rgw", "run", "log", "crash"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.mon_port, self.http_port, self.https_port = free_ports(3)
        write_self_signed(self.ca_bundle, self.server_pem)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._conf_text(fsid))
        deadline = time.monotonic() + self.start_timeout

        monmap = self.root / "monmap"
        self._run(
            "monmaptool",
            "--create",
            "--fsid",
            fsid,
            "--addv",
            "a",
            f"[v2:{LOOPBACK}:{self.mon_port}]",
            "--enable-all-features",
            "--set-min-mon-release",
            "pacific",
            str(monmap),
        )
        self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._spawn("ceph-mon", "ceph-mon", "-f", "-c", str(self.conf), "-i", "a")

        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("osd", "new", osd_uuid, deadline=deadline).strip()
        if osd_id != "0":
            raise CephError(f"ceph osd new gave id {osd_id!r}, expected 0")
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._spawn("ceph-osd", "ceph-osd", "-f", "-c", str(self.conf), "-i", "0")
        self._spawn("radosgw", "radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw.a")
        self._wait_for_s3(deadline)
        self._run(
            "radosgw-admin",
            "-c",
            str(self.conf),
            "user",
            "create",
            f"--uid={self.uid}",
            f"--display-name={self.uid}",
            f"--access-key={self.access_key}",
            f"--secret={self.secret_key}",
            quiet=True,
        )
        self.listening = listening_sockets(set(self.pids.values()))
        wrong = [(pid, addr) for pid, addr in self.listening if not addr.startswith(f"{LOOPBACK}:")]
        if wrong or not self.listening:
            raise CephError(f"sockets not on {LOOPBACK} only: {self.listening}")

    def _conf_text(self, fsid: str) -> str:
        r = self.root
        return f"""[global]
fsid = {fsid}
mon_host = [v2:{LOOPBACK}:{self.mon_port}]
public_addr = {LOOPBACK}
cluster_addr = {LOOPBACK}
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
run_dir = {r}/run
admin_socket = {r}/run/$cluster-$name.asok
pid_file =
log_file = {r}/log/$cluster-$name.log
mon_cluster_log_file = {r}/log/$cluster.log
crash_dir = {r}/crash
keyring = {r}/keyring
log_to_stderr = false
err_to_stderr = false

[mon]
mon_data = {r}/mon-$id

[osd]
osd_data = {r}/osd-$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = {20 * 1024**3}
osd_memory_target = {1024**3}

[client.rgw.a]
rgw_data = {r}/rgw
rgw_frontends = beast endpoint={LOOPBACK}:{self.http_port} ssl_endpoint={LOOPBACK}:{self.https_port} ssl_certificate={self.server_pem}
"""

    def _stop(self) -> None:
        """SIGTERM to each process by PID (radosgw, osd, mon), SIGKILL after 15 s; then remove the data."""
        for name in ("radosgw", "ceph-osd", "ceph-mon"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}

    def _spawn(self, name: str, binary: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # closed in _stop
        self._logs.append(log)
        # setpriv execs the daemon (same PID) with SIGTERM as its parent-death signal: a killed test run leaves none
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        self.procs[name] = subprocess.Popen(
            [*prefix, self.bin[binary], *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            cwd=self.root,
            start_new_session=True,
        )

    def _run(self, binary: str, *args: str, timeout: float = 60, quiet: bool = False) -> str:
        """Run a Ceph command to completion; its output is returned, never logged when ``quiet`` (a secret)."""
        proc = subprocess.run(
            [self.bin[binary], *args], capture_output=True, text=True, env=self._env(), cwd=self.root, timeout=timeout
        )
        if proc.returncode != 0:
            detail = "(output withheld)" if quiet else (proc.stdout + proc.stderr)[-2000:]
            raise CephError(f"{binary} {args[:3]} failed ({proc.returncode}): {detail}\n{self.log_tails()}")
        return proc.stdout

    def _ceph(self, *args: str, deadline: float) -> str:
        """The ``ceph`` CLI, retried until the monitor answers."""
        while True:
            self._check_alive()
            try:
                return self._run("ceph", "-c", str(self.conf), "--connect-timeout", "10", *args, timeout=30)
            except (CephError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _wait_for_s3(self, deadline: float) -> None:
        """Until radosgw answers over HTTPS, verifying its certificate against ``ca_bundle``."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        while True:
            self._check_alive()
            try:
                urllib.request.urlopen(self.endpoint + "/", context=context, timeout=5).close()
                return
            except urllib.error.HTTPError:  # an S3 error document: the server answers
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError) as e:
                if isinstance(getattr(e, "reason", None), ssl.SSLCertVerificationError):
                    raise CephError(f"radosgw's certificate does not verify: {e}") from e
                if time.monotonic() > deadline:
                    raise CephError(f"radosgw did not answer at {self.endpoint}: {e}\n{self.log_tails()}") from e
                time.sleep(0.5)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise CephError(f"{name} exited with {proc.returncode}\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            if f.is_file():
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)
