"""No credential in the repository: tracked files are scanned for AWS keys and private keys."""

import re
import subprocess

from tests.helpers import ROOT

PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b", re.I),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def test_no_credentials_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for label, pattern in PATTERNS.items():
            if pattern.search(text):
                found.append(f"{name}: {label}")
    assert files and not found, found


def test_the_scanner_finds_what_it_looks_for():
    fake_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    fake_key = "-----BEGIN RSA " + "PRIVATE KEY-----"
    assert PATTERNS["AWS access key id"].search(f"key = {fake_id}")
    assert PATTERNS["private key"].search(fake_key)
