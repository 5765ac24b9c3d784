"""Per-lab SSH keys: the key vmlab logs in with, and the guest's pinned host key.

Both are ed25519, generated on first use into `vm/keys/` with mode 0600. The
guest's host key is made here, not in the guest, so it is known before the guest
ever boots: vmlab pins it and never touches the user's ~/.ssh/known_hosts.

Every file holding a secret (these keys, an exported golden image, a seed CD)
is created by `atomic.private_file`: mode 0600 from its first byte, never half-written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmlab import locks
from vmlab.atomic import private_file
from vmlab.errors import PrerequisiteMissing

if TYPE_CHECKING:
    import paramiko

HOST_ALIAS = "vmlab-guest"  # the name OpenSSH checks the pinned host key under


@dataclass(frozen=True)
class LabKeys:
    dir: Path

    @property
    def client(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def host(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def client_public(self) -> str:
        return self.client.with_suffix(".pub").read_text().strip()

    # The guest's host key is pinned here, for both SSH clients (transport.py): paramiko's
    # (pin) and OpenSSH's (openssh_options) trust this lab's host key and no other, and read
    # nothing of the user's ~/.ssh.

    def host_key(self) -> paramiko.PKey:
        import paramiko  # here, not at the top: most commands use OpenSSH, never paramiko

        return paramiko.Ed25519Key.from_private_key_file(str(self.host))

    def pin(self, client: paramiko.SSHClient, host: str, port: int) -> None:
        """Make a paramiko client trust only this lab's host key at host:port (any other is
        refused: BadHostKeyException, which ssh.py reports as HostKeyMismatch)."""
        import paramiko

        pinned = self.host_key()
        client.get_host_keys().add(f"[{host}]:{port}", pinned.get_name(), pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def openssh_options(self) -> list[str]:
        """Options that make the OpenSSH client (ssh, rsync -e) use this lab's keys only, and
        nothing of the user's ~/.ssh/config or /etc/ssh/ssh_config (-F none)."""
        return [
            "-F", "none",
            "-o", f"IdentityFile={openssh_path(self.client)}",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={openssh_path(self.known_hosts)}",
            "-o", f"HostKeyAlias={HOST_ALIAS}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
        ]


def ensure(keys_dir: Path, comment: str) -> LabKeys:
    """The lab's keys, generated on first use (under a lock: VMs may start at once)."""
    keys = LabKeys(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    with locks.held(keys_dir / ".lock", "the lab's SSH keys"):
        if not keys.client.exists():
            _write_keypair(keys.client, comment)
        if not keys.host.exists():
            _write_keypair(keys.host, f"{comment} guest host key")
            host_pub = keys.host.with_suffix(".pub").read_text().split()[:2]
            with private_file(keys.known_hosts) as f:
                f.write(f"{HOST_ALIAS} {' '.join(host_pub)}\n".encode())
    return keys


def openssh_path(path: Path) -> str:
    """A file path as the value of an OpenSSH option (-o Key=VALUE), which OpenSSH splits at
    spaces and unquotes, then expands %-tokens and ${VARIABLES} in: so it is quoted, its
    quotes and backslashes escaped and its % doubled. ${ has no escape: such a path is refused."""
    value = os.path.abspath(path)
    if "${" in value:
        raise PrerequisiteMissing(f"{value}: OpenSSH would expand '${{...}}' in this path and has no way to "
                                  "escape it; move the project (or the cache) to a path without '${'")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _write_keypair(private: Path, comment: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private.with_suffix(".pub").write_bytes(pub + f" {comment}\n".encode())
    with private_file(private) as f:
        f.write(pem)
