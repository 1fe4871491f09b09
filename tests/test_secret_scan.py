"""Secret scan of the repository: no credentials, private hostnames or machine paths in any file git tracks.

Every file ``git ls-files`` lists (binary files skipped, a symlink's target checked as its text) is searched for the
shapes in ``PATTERNS``; a finding names the file, the line and the match. The only exceptions are the exact strings
in ``ALLOWED``: sentinels the tests themselves use, each with the reason it is there. A second test feeds the scanner
synthetic secrets built at run time (so the repository never holds a real-looking one) and proves each shape is
caught, and that the near misses the repository is full of (version pins, loopback addresses) are not.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import string
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN = Path(__file__).resolve().relative_to(REPO).as_posix()

# Each pattern's ``value`` group is what a finding reports and what ``ALLOWED`` is compared with (exact match).
PATTERNS: dict[str, re.Pattern[str]] = {
    "aws-access-key-id": re.compile(r"(?<![A-Z0-9])(?P<value>(?:AKIA|ASIA)[A-Z0-9]{16})(?![A-Z0-9])"),
    "aws-secret-access-key": re.compile(
        r"(?i)aws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
    ),
    "private-key-block": re.compile(r"(?P<value>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"),
    "hf-token": re.compile(r"(?<![A-Za-z0-9_])(?P<value>hf_[A-Za-z0-9]{30,})(?![A-Za-z0-9])"),
    # a name with a word token/secret/password/api key/credential (not "tokenizer"; "hf_token", "accessToken" and
    # "secret_key" are), then = or :, then a long value with letters and digits (random-looking:
    # "neucodec_tokens.parquet" or "hf_fake_test_token" are names, not secrets)
    "secret-assignment": re.compile(
        r"(?i)(?<![A-Za-z0-9])[A-Za-z0-9_.-]*(?:token|secret|passw(?:or)?d|pwd|api_?key|access_?key|credential)s?"
        r"(?:(?-i:[_A-Z])[A-Za-z0-9_]*)?[\"']?\s*[:=]\s*[\"']?"
        r"(?P<value>(?=[A-Za-z0-9_+/=.~-]*[0-9])(?=[A-Za-z0-9_+/=.~-]*[A-Za-z])[A-Za-z0-9_+/=.~-]{16,})"
        r"(?![A-Za-z0-9_+/=.~-])"
    ),
    "url-credentials": re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://(?P<value>[^\s/:@\"'<>]+:[^\s/@\"'<>]+@)"),
    "machine-path": re.compile(
        r"(?<![\w.~-])(?P<value>(?:/home/[A-Za-z0-9._-]+/|/Users/[A-Za-z0-9._-]+/|/(?:root|work)/|/tmp/pytest[-]of-"
        r"|[A-Za-z]:\\Users\\[A-Za-z0-9._-]+\\)[^\s\"'`<>()\[\]]*)"
    ),
    # a host name under a private-use suffix; not an attribute (``threading.local()``, ``x.internal.y``)
    "private-hostname": re.compile(
        r"(?i)(?<![\w.-])(?P<value>(?:[a-z0-9-]+\.)+(?:internal|local|localdomain|corp|lan|intranet|home\.arpa))"
        r"(?![\w(.-])"
    ),
    # an IPv4 literal that is not a version pin (==13.1.0.3) nor a part of a longer dotted number
    "ip-address": re.compile(r"(?<![\w.=<>~^-])(?P<value>(?:\d{1,3}\.){3}\d{1,3})(?![\w.-])"),
}

# Addresses that name no machine: loopback, "any", and the documentation ranges (RFC 5737).
SAFE_IPS = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("0.0.0.0")}
DOC_NETWORKS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]

# Exact strings a finding may be, and why. Test fixtures only: never a real credential, host or path.
ALLOWED: dict[str, str] = {
    # tests/test_s3.py SECRET: the S3 secret key sentinel, grepped for in every log, output and object after a run
    "SENTINEL-s3cret-do-not-print-7f3a9c": "S3 secret sentinel (tests/test_s3.py)",
    # tests/test_record.py HF_TOKEN_SENTINEL: the HF token sentinel, grepped for after pushes to the loopback Hub
    "hf_SENTINELdoNotPrintLoopback7f3a9c2e": "HF token sentinel (tests/test_record.py)",
}
# Machine paths a file may name on purpose (a finding starting with one is allowed), and why. None today; never a
# home directory.
ALLOWED_PATHS: dict[str, str] = {}


def _ip_is_safe(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return True  # 999.1.2.3 is no address
    return ip in SAFE_IPS or any(ip in net for net in DOC_NETWORKS)


def scan_text(text: str, name: str, allowed_seen: set[str] | None = None) -> Iterator[str]:
    """Findings in ``text`` (the contents of file ``name``), one ``name:line: kind: match`` each; the allowlisted
    matches skipped are added to ``allowed_seen``."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.group("value")
                allowed = value if value in ALLOWED else None
                if kind == "machine-path":
                    allowed = next((p for p in ALLOWED_PATHS if value.startswith(p)), None)
                if allowed is not None:
                    if allowed_seen is not None and name != OWN:
                        allowed_seen.add(allowed)
                    continue
                if kind == "ip-address" and _ip_is_safe(value):
                    continue
                yield f"{name}:{lineno}: {kind}: {value}"


def tracked_files() -> list[str]:
    """The files git tracks in this repository, plus this file (scanned before it is first committed, too)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to scan")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [p for p in listing.decode().split("\0") if p]
    return files if OWN in files else [*files, OWN]


def scan_files(root: Path, names: Iterable[str], allowed_seen: set[str] | None = None) -> list[str]:
    findings: list[str] = []
    for name in names:
        path = root / name
        if path.is_symlink():
            findings.extend(scan_text(os.readlink(path), f"{name} (symlink target)", allowed_seen))
            continue
        if not path.is_file():
            continue  # deleted in the work tree, or a submodule
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        findings.extend(scan_text(data.decode("utf-8", errors="replace"), name, allowed_seen))
    return findings


def test_no_secrets_hosts_or_machine_paths_in_tracked_files():
    allowed_seen: set[str] = set()
    findings = scan_files(REPO, tracked_files(), allowed_seen)
    assert not findings, "secret scan findings (allowlist only test fixtures, in ALLOWED):\n" + "\n".join(findings)
    stale = (ALLOWED.keys() | ALLOWED_PATHS.keys()) - allowed_seen
    assert not stale, f"allowlisted but found in no file but this one (remove them): {sorted(stale)}"


def test_the_scanner_catches_each_shape():
    """Synthetic secrets, built here at run time: each is found on its own line; the near misses are not."""
    rng = random.Random(7)

    def rand(chars: str, n: int) -> str:
        return "".join(rng.choice(chars) for _ in range(n))

    upper, alnum = string.ascii_uppercase + string.digits, string.ascii_letters + string.digits
    user = "al" + "ice"
    caught = {
        "aws-access-key-id": [f'key = "{"AK" + "IA" + rand(upper, 16)}"', f"ASIA{rand(upper, 16)} in a log line"],
        "aws-secret-access-key": [
            f"aws_secret_access_key = {rand(alnum + '/+', 40)}",
            f'"AWS_SECRET_ACCESS_KEY": "{rand(alnum, 40)}"',
        ],
        "private-key-block": [
            "-----" + "BEGIN RSA " + "PRIVATE KEY-----",
            "-----BEGIN " + "PRIVATE KEY-----",
            "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
        ],
        "hf-token": [f"HF_TOKEN={'hf' + '_' + rand(alnum, 34)}"],
        "secret-assignment": [
            f'api_token = "{rand(alnum, 24)}7"',
            f"password: {rand(alnum, 20)}1x",
            f'client_secret="{rand(alnum + "-_", 30)}9"',
            f"accessToken: '{rand(alnum, 16)}5'",
            f"secretKey={rand(alnum, 18)}2",
        ],
        "url-credentials": [f"https://{user}:{rand(alnum, 12)}@example.com/x", f"s3://{user}:" + "pw@bucket/key"],
        "machine-path": [
            f"see /home/{user}/data",
            f'"/Users/{user}/src"',
            "cp x /" + "root/.aws/",
            "venv at /" + "work/main/.venv",
            "/tmp/" + "pytest-of-" + user + "/pytest-3",
            "C:" + "\\Users\\" + user + "\\repo",
        ],
        "private-hostname": [
            "endpoint: http://minio." + "corp:9000",
            "ip-10-0-0-5.ec2." + "internal",
            f"ssh {user}-laptop." + "local",
            "svc.cluster." + "local/x",
        ],
        "ip-address": ["http://10." + "0.0.5:9000/bucket", "host 192.168." + "1.20", "172.16.0." + "1"],
    }
    not_caught = [
        "endpoint http://127.0.0.1:9000 and bind 0.0.0.0",
        "docs use 192.0.2.10, 198.51.100.7 and 203.0.113.99",
        "nvidia-cublas==13.1.0.3 and pandas-stubs==3.1.0.261029",
        "local = threading.local()",
        "self.internal.value = 3",
        'TOKENS = "neucodec_tokens.parquet"',
        "tokenizer: Scicom-intl/Multilingual-TTS-1.7B-Base",
        "-----BEGIN PUBLIC KEY-----",
        'FAKE_TOKEN = "hf_fake_test_token"',
        "token=os.environ['HF_TOKEN']",
        'ACCESS_KEY = "AKIALOOPBACKTEST"',
        "pip install ~/.local/bin and src/root/x",
        "git+ssh://git@github.com/org/repo",
        "/home/$USER/ and /home/<you>/",
        f"SECRET = {next(iter(ALLOWED))!r}",
    ]
    for kind, lines in caught.items():
        text = "\n".join(["nothing here", *lines])
        findings = list(scan_text(text, "synthetic.txt"))
        for lineno, line in enumerate(lines, start=2):
            mine = [f for f in findings if f.startswith(f"synthetic.txt:{lineno}: ")]
            assert any(f": {kind}: " in f for f in mine), f"{kind} missed in {line!r}: {findings}"
    for line in not_caught:
        assert not list(scan_text(line, "near-miss.txt")), line


def test_a_finding_names_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "doc.md").write_text("fine\nalso fine\npath /home/" + "bob" + "/x\n")
    (tmp_path / "blob.bin").write_bytes(b"\0/home/" + b"bob/x")
    (tmp_path / "link").symlink_to("/home/" + "bob" + "/elsewhere")
    assert scan_files(tmp_path, ["doc.md", "blob.bin", "link", "gone.txt"]) == [
        "doc.md:3: machine-path: /home/" + "bob/x",
        "link (symlink target):1: machine-path: /home/" + "bob/elsewhere",
    ]
    monkeypatch.setitem(ALLOWED_PATHS, "/home/" + "bob/else", "a path allowed by prefix")
    assert scan_files(tmp_path, ["link"]) == []
