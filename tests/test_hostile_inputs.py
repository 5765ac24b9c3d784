"""Hostile inputs: everything vmlab reads from outside is refused early with one clear line,
or handled exactly; nothing outside vmlab's own folders is touched.

One test per defect of issue 16 (test_itemNN_...) and of issue 24 (test_issue24_itemNN_...),
and a home for every new input vmlab accepts: crafted golden exports (traversal, links,
devices, sparse members, missing fields, wrong checksums, another version), hostile config
values, paths with spaces, quotes and non-ASCII, planted folders and links (the CI
rehearsal's work folder, `vmlab init`'s files). The parts are real: tar files (GNU tar's
too), the CLI (`project.invoke`, `vmlab`), OpenSSH's client and rsync against a real sshd
on 127.0.0.1 (standing in for the guest's: the same programs a VM runs), git. What is not
real is said in the test's docstring.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from conftest import INVOKE, Project, prerequisite_missing
from sshd_fixtures import ME  # conftest loads its fixtures: sshd, connect, runtime
from vmlab import __version__, atomic, config, host
from vmlab.config import SuiteConfig, SyncConfig
from vmlab.errors import GuestUnreachable, PrerequisiteMissing, RecipeError, VmlabError
from vmlab.images import apt, golden
from vmlab.images.cache import ArtefactCache, key_of
from vmlab.install import recipe
from vmlab.lab import images
from vmlab.remote import keys
from vmlab.remote.openssh import SharedConnection
from vmlab.remote.ssh import GuestSSH
from vmlab.runs import suites
from vmlab.sync import rsync
from vmlab.sync.rules import Rules
from vmlab.sync.tree import scan

HOSTILE_NAMES = ["with space", "quote's \"double\"", "ünïcødé ☃", "50%d %h", "back\\slash"]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's error: one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmlab: error: "), result.stderr
    return lines[0]


def tree(folder: Path) -> Dict[str, bytes]:
    """Every file under `folder` and its bytes: to show a folder untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(conn: SharedConnection, command: str) -> tuple:
    out = io.BytesIO()
    return conn.stream(command, output=out, timeout=60), out.getvalue()


# --- golden exports: a real golden folder, real tars ---


def make_golden(project: Project, cache: Path, disk_bytes: int = 0) -> golden.Golden:
    """The project's default VM's golden image, in `cache`, from a small real disk.

    Not real: the "clean" snapshot (taking it boots a guest), and the kernel (a few bytes)."""
    lab = project.lab()
    inputs = images.golden_inputs(lab.vm())
    work = cache.parent / "golden-src"
    work.mkdir(exist_ok=True)
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(disk_bytes) if disk_bytes else b"\0" * 2**20)
    disk = work / "disk.qcow2"  # a VM's disk is a qcow2, and golden.make reads it as one
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    (work / "vmlinuz").write_bytes(b"a kernel")
    lab_keys = keys.ensure(work / "keys", "hostile-inputs test")
    return golden.make(ArtefactCache(cache), golden.golden_key(inputs), inputs, disk, {"vmlinuz": work / "vmlinuz"},
                       lab_keys, lambda clean: None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export (by the CLI) of a golden image of the default VM."""
    project = Project(tmp_path_factory.mktemp("exporter"))
    cache = project.root / "cache"
    make_golden(project, cache)
    out = project.root / "golden.tar"
    result = project.invoke("vm.golden-export", "--output", str(out), env={"VMLAB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    return out


def members_of(archive: Path) -> Dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def craft(path: Path, manifest: object, files: Dict[str, bytes], extra: Optional[List[tarfile.TarInfo]] = None,
          ) -> Path:
    """A tar like an export: manifest.json (any JSON, even not an object), the files, then `extra` members."""
    with tarfile.open(path, "w") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path


def real_parts(exported: Path) -> tuple:
    """The manifest and files of the real export, to alter one thing at a time."""
    parts = members_of(exported)
    return json.loads(parts.pop("manifest.json")), parts


@pytest.fixture
def importer(project: Project, tmp_path: Path) -> Callable[[Path], subprocess.CompletedProcess]:
    """Import an archive into a fresh cache with the real CLI; the cache sits beside a victim
    folder that a traversal would reach (<cache>/golden/../../victim)."""
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "precious.txt").write_text("the user's work\n")

    def import_(archive: Path) -> subprocess.CompletedProcess:
        return project.invoke("vm.golden-import", "--input", str(archive),
                              env={"VMLAB_CACHE": str(tmp_path / "cache")})

    return import_


def assert_nothing_imported(tmp_path: Path) -> None:
    """The victim folder as it was; the cache holds at most the golden kind's lock files."""
    assert tree(tmp_path / "victim") == {"precious.txt": b"the user's work\n"}
    cache = tmp_path / "cache"
    assert all(p.parent == cache / "golden" and p.name.endswith(".lock") for p in cache.rglob("*") if p.is_file())


def test_item01_golden_import_refuses_a_key_that_leaves_the_cache(exported: Path, importer, tmp_path: Path) -> None:
    manifest, files = real_parts(exported)
    archive = craft(tmp_path / "evil.tar", dict(manifest, key="../../victim"), files)
    result = importer(archive)
    assert result.returncode == 1
    assert "no valid 'key'" in one_line_error(result) and "nothing was imported" in result.stderr
    assert_nothing_imported(tmp_path)


def test_item01_the_cache_refuses_a_key_that_is_not_hex(tmp_path: Path) -> None:
    """Defence in depth: the cache itself, asked for a key that names another place."""
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "precious.txt").write_text("the user's work\n")
    cache = ArtefactCache(tmp_path / "cache")
    for key in ("../../victim", "/tmp", "ABC", ""):
        with pytest.raises(VmlabError, match="refusing cache entry"):
            cache.get_or_build("golden", key, {}, lambda out: None, "test")
    assert tree(tmp_path / "victim") == {"precious.txt": b"the user's work\n"}


def _member(name: str, kind: bytes, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.mark.parametrize("replace, extra, expected", [
    ("base.qcow2", _member("base.qcow2", tarfile.SYMTYPE, link="/etc/passwd"), "not a plain file"),
    ("base.qcow2", _member("base.qcow2", tarfile.SYMTYPE, link="../../victim/precious.txt"), "not a plain file"),
    ("base.qcow2", _member("base.qcow2", tarfile.LNKTYPE, link="keys/id_ed25519"), "not a plain file"),
    ("vmlinuz", _member("vmlinuz", tarfile.CHRTYPE), "not a plain file"),
    ("vmlinuz", _member("vmlinuz", tarfile.FIFOTYPE), "not a plain file"),
    (None, _member("keys", tarfile.DIRTYPE), "not a plain file"),
    (None, _member("../victim/precious.txt", tarfile.REGTYPE, size=3), "is not a file its manifest lists"),
    (None, _member("/tmp/evil", tarfile.REGTYPE, size=3), "is not a file its manifest lists"),
    (None, _member("run/console.log", tarfile.REGTYPE, size=3), "is not a file its manifest lists"),
    (None, _member("vmlinuz", tarfile.REGTYPE, size=3), "more than once"),
    ("vmlinuz", None, "vmlinuz is listed in its manifest but is not in it"),
], ids=["symlink-out", "symlink-victim", "hardlink", "device", "fifo", "folder", "traversal", "absolute",
        "unlisted", "twice", "missing"])
def test_item01_golden_import_refuses_members_that_are_not_the_listed_plain_files(
        exported: Path, importer, tmp_path: Path, replace: Optional[str], extra: Optional[tarfile.TarInfo],
        expected: str) -> None:
    manifest, files = real_parts(exported)
    if replace:
        files.pop(replace)
    archive = craft(tmp_path / "evil.tar", manifest, files, [extra] if extra else [])
    result = importer(archive)
    assert result.returncode == 1
    assert expected in one_line_error(result)
    assert_nothing_imported(tmp_path)


@pytest.mark.parametrize("change, expected", [
    (lambda m: [1, 2], "not a JSON object"),
    (lambda m: {k: v for k, v in m.items() if k != "key"}, "no valid 'key'"),
    (lambda m: dict(m, key=m["key"].upper()), "no valid 'key'"),
    (lambda m: {k: v for k, v in m.items() if k != "inputs"}, "no 'inputs' mapping"),
    (lambda m: dict(m, inputs=["a"]), "no 'inputs' mapping"),
    (lambda m: {k: v for k, v in m.items() if k != "files"}, "no 'files' mapping"),
    (lambda m: dict(m, files={**m["files"], "../x": "0" * 64}), "no 'files' mapping"),
    (lambda m: dict(m, files={**m["files"], "vmlinuz": "not a digest"}), "no 'files' mapping"),
    (lambda m: dict(m, files={k: v for k, v in m["files"].items() if k != "keys/known_hosts"}),
     "no sha256 for keys/known_hosts"),
    (lambda m: dict(m, inputs=dict(m["inputs"], cpus=64)), "is not the hash of its recorded inputs"),
], ids=["not-an-object", "no-key", "upper-key", "no-inputs", "inputs-list", "no-files", "files-traversal",
        "bad-digest", "unlisted-key-file", "key-not-inputs"])
def test_item01_golden_import_refuses_a_malformed_manifest(exported: Path, importer, tmp_path: Path, change,
                                                            expected: str) -> None:
    manifest, files = real_parts(exported)
    result = importer(craft(tmp_path / "evil.tar", change(manifest), files))
    assert result.returncode == 1
    assert expected in one_line_error(result)
    assert_nothing_imported(tmp_path)


def test_item01_golden_import_refuses_what_is_not_an_export(importer, tmp_path: Path) -> None:
    for name, data in (("empty.tar", b""), ("text.tar", b"hello\n" * 200)):
        (tmp_path / name).write_bytes(data)
        result = importer(tmp_path / name)
        assert result.returncode == 1 and "not a vmlab golden image export" in one_line_error(result)
    result = importer(tmp_path / "absent.tar")
    assert result.returncode == 1 and "absent.tar" in one_line_error(result)
    assert_nothing_imported(tmp_path)


def test_item01_golden_import_publishes_nothing_when_a_checksum_is_wrong(exported: Path, importer,
                                                                          tmp_path: Path) -> None:
    manifest, files = real_parts(exported)
    files["clean.qcow2"] = files["clean.qcow2"][:-1] + bytes([files["clean.qcow2"][-1] ^ 1])
    result = importer(craft(tmp_path / "damaged.tar", manifest, files))
    assert result.returncode == 1
    assert "clean.qcow2 has sha256" in one_line_error(result) and "damaged" in result.stderr
    assert_nothing_imported(tmp_path)


def test_item01_golden_import_refuses_an_export_of_another_vmlab_version(exported: Path, importer,
                                                                          tmp_path: Path) -> None:
    manifest, files = real_parts(exported)
    other = dict(manifest, vmlab="0.0.9", key=key_of(dict(manifest["inputs"], vmlab="0.0.9", format=1)))
    result = importer(craft(tmp_path / "old.tar", other, files))
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"exported by vmlab 0.0.9, and this is vmlab {__version__}" in line and "never be used" in line
    assert_nothing_imported(tmp_path)


def test_item10_golden_export_and_import_work_on_debian_12s_python(exported: Path, importer,
                                                                   tmp_path: Path) -> None:
    """The venv is Debian 12's python3 (3.11.2): no tarfile API newer than that may be used."""
    result = importer(exported)
    assert result.returncode == 0, result.stderr
    key = json.loads(members_of(exported)["manifest.json"])["key"]
    folder = tmp_path / "cache" / "golden" / key
    assert {k: v for k, v in tree(folder).items() if k != "manifest.json"} == \
        {k: v for k, v in members_of(exported).items() if k != "manifest.json"}
    assert stat.S_IMODE((folder / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "keys" / "id_ed25519").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "base.qcow2").stat().st_mode) == 0o444
    golden.Golden(folder).verify()


# --- golden export ---


def test_item02_golden_export_is_private_from_its_first_byte(project: Project) -> None:
    cache = project.root / "cache"
    make_golden(project, cache)
    umask = os.umask(0o022)  # a usual umask: a plain create would make the file 0644
    try:
        result = project.invoke("vm.golden-export", "--output", "g.tar", env={"VMLAB_CACHE": str(cache)})
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((project.root / "g.tar").stat().st_mode) == 0o600
    assert "keys/id_ed25519" in members_of(project.root / "g.tar")


def test_item02_a_private_file_interrupted_between_any_two_lines_leaves_nothing(tmp_path: Path) -> None:
    """A Ctrl-C reaches Python code between two lines; here a KeyboardInterrupt is raised at
    each line event of atomic.private_file and all it calls (tempfile, contextlib...), in turn,
    by a trace function, since a real SIGINT lands at one such point by chance (CI once caught
    the export between tempfile.mkstemp's open and its return: the file stayed). After each,
    the folder holds nothing, or only the whole file."""
    target = tmp_path / "key"
    for n in range(1, 10_000):
        events = 0

        def interrupt_at_n(frame, event, arg):  # type: ignore[no-untyped-def]
            nonlocal events
            if event == "line":
                events += 1
                if events == n:
                    raise KeyboardInterrupt
            return interrupt_at_n

        sys.settrace(interrupt_at_n)
        try:
            with atomic.private_file(target) as f:
                f.write(b"secret")
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        left = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        assert left in ({}, {"key": b"secret"}), f"interrupted at line event {n}: {left}"
        if events < n:  # it ran to the end without reaching the n-th line: every point was tried
            assert left == {"key": b"secret"} and stat.S_IMODE(target.stat().st_mode) == 0o600
            break
        target.unlink(missing_ok=True)
    assert n > 5, "the trace saw almost no lines; the test tried nothing"


def test_records_written_by_two_commands_at_once_are_always_whole(tmp_path: Path) -> None:
    """Two vmlab commands may write one record at once (a watch and a quick both write the
    sync record): with one temporary name for both, one rename took the other's half-written
    file into place and the other's failed. Here 3 processes each write 150 versions while
    the test reads: every read is one whole version, and no writer fails."""
    record = tmp_path / "state.json"
    writer = (f"import sys; from pathlib import Path; from vmlab import atomic\n"
              f"for i in range(150): atomic.write_text(Path({str(record)!r}), sys.argv[1] * (20000 + i))")
    procs = [subprocess.Popen([sys.executable, "-c", writer, c], stderr=subprocess.PIPE, text=True) for c in "abc"]
    seen = set()
    while any(p.poll() is None for p in procs):
        if record.exists():
            text = record.read_text()
            assert len(set(text)) == 1 and 20000 <= len(text) < 20150, f"a mixed or cut record: {len(text)} bytes"
            seen.add(text[0])
    assert [(p.returncode, p.stderr.read()) for p in procs] == [(0, "")] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"] and seen


def test_item02_golden_export_to_a_missing_folder_is_exit_2_naming_it(project: Project) -> None:
    cache = project.root / "cache"
    make_golden(project, cache)
    result = project.invoke("vm.golden-export", "--output", "no such dir/g.tar", env={"VMLAB_CACHE": str(cache)})
    assert result.returncode == 2
    assert "there is no folder no such dir" in one_line_error(result)
    assert not (project.root / "no such dir").exists()
    assert not [p for p in project.root.rglob("*") if "partial" in p.name]


def stopped(proc: subprocess.Popen) -> None:
    """SIGSTOP `proc` and wait until it is stopped (the signal lands a moment after kill returns)."""
    proc.send_signal(signal.SIGSTOP)
    stat_file = Path(f"/proc/{proc.pid}/stat")
    while stat_file.read_text().rpartition(")")[2].split()[0] != "T":
        time.sleep(0.0002)


def test_item02_an_interrupted_golden_export_leaves_nothing_behind(project: Project) -> None:
    """Ctrl-C (SIGINT) while the tar is being written. The export runs in steps, stopped
    (SIGSTOP) between them and looked at while stopped, so it is caught with its temporary
    file there and the tar not done, however busy the machine (a free-running export could
    finish while the test waited for a core)."""
    cache = project.root / "cache"
    make_golden(project, cache, disk_bytes=96 << 20)
    out = project.root / "out"
    out.mkdir()
    proc = subprocess.Popen([INVOKE, "vm.golden-export", "--output", str(out / "g.tar")], cwd=project.root,
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, VMLAB_CACHE=str(cache)))
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        stopped(proc)
        if list(out.iterdir()):
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    assert not (out / "g.tar").exists(), "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr
    assert list(out.iterdir()) == []


# --- SSH: names and paths OpenSSH must read as data ---


def test_item03_an_ssh_user_that_is_an_option_is_refused_where_config_is_read(project: Project,
                                                                              tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    project.write_config(f"""\
        defaults:
          ssh_user: "-oProxyCommand=touch {marker}"
        """)
    result = project.invoke("vm.status")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "vmlab.yaml:2: defaults.ssh_user:" in line and "a user name" in line
    assert not marker.exists()


def test_item03_openssh_gets_the_user_as_a_name_never_as_an_option(connect, tmp_path: Path) -> None:
    """Past the config's check (a profile's user, a future caller), -l keeps it a name."""
    marker = tmp_path / "pwned"
    conn = connect(tmp_path / "project", user=f"-oProxyCommand=touch {marker}")
    with pytest.raises(GuestUnreachable):
        run(conn, "true")
    assert not list(tmp_path.glob("pwned*"))  # as user@host, ssh would have run `touch .../pwned@127.0.0.1`


@pytest.mark.parametrize("make_unsafe", ["open to others", "owned by another user", "a symlink"])
def test_item04_an_unsafe_control_socket_folder_is_refused(runtime: Path, tmp_path: Path, make_unsafe: str) -> None:
    folder = runtime / f"vmlab-{os.getuid()}"
    if make_unsafe == "open to others":
        folder.mkdir(mode=0o700)
        folder.chmod(0o777)
    elif make_unsafe == "owned by another user":
        if os.geteuid() != 0:
            pytest.skip("making a folder owned by another user needs root")
        folder.mkdir(mode=0o700)
        os.chown(folder, pwd.getpwnam("nobody").pw_uid, -1)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    conn = SharedConnection(tmp_path / "vm", 1, ME, keys.ensure(tmp_path / "keys", "test"))
    conn.close()  # what vm.stop does: it must still stop the VM
    with pytest.raises(PrerequisiteMissing) as refused:
        conn.run("true")
    message = str(refused.value)
    assert refused.value.exit_code == 2 and len(message.splitlines()) == 1
    assert f"{folder} is unsafe" in message and "XDG_RUNTIME_DIR" in message
    assert not list(runtime.rglob("*.ctl")) and not list(tmp_path.rglob("*.ctl"))


def test_item04_the_control_socket_folder_is_made_private(connect, runtime: Path, tmp_path: Path) -> None:
    assert run(connect(tmp_path / "project"), "echo ok") == (0, b"ok\n")
    folder = runtime / f"vmlab-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_item11_ssh_and_rsync_work_from_a_project_path_with_spaces_quotes_and_non_ascii(
        connect, tmp_path: Path, name: str) -> None:
    project_dir = tmp_path / name / "project"
    (project_dir / "src").mkdir(parents=True)
    (project_dir / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    conn = connect(project_dir)
    assert run(conn, "echo ok") == (0, b"ok\n")
    guest = tmp_path / "guest" / name
    done = rsync.run(conn, project_dir, Rules(SyncConfig(guest_dir=str(guest))))
    assert done.files_transferred == 1
    assert (guest / "src" / "main.c").read_text() == "int main(void) { return 0; }\n"
    # the interactive `vm.ssh` argv: the lab's options, -l, then the host
    interactive = [host.which("ssh"), *conn.keys.openssh_options(), "-p", str(conn.port), "-l", ME,
                   "127.0.0.1", "echo ok"]
    assert subprocess.run(interactive, capture_output=True, stdin=subprocess.DEVNULL).stdout == b"ok\n"


def test_item11_a_path_openssh_would_expand_is_refused_in_one_line(tmp_path: Path) -> None:
    lab_keys = keys.ensure(tmp_path / "${HOME}" / "vm" / "keys", "test")
    with pytest.raises(PrerequisiteMissing) as refused:
        lab_keys.openssh_options()
    assert "has no way to escape it" in str(refused.value) and len(str(refused.value).splitlines()) == 1


def test_small_the_users_ssh_config_does_not_apply(connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSH reads ~/.ssh/config from the passwd entry's home, not $HOME, so the real ssh
    runs in a mount namespace (unshare -m) where that home is a folder holding a hostile
    config; the rest of the machine is untouched."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("giving ssh another home needs root and unshare -m")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n  ProxyCommand /bin/false\n  Port 1\n")
    shim = tmp_path / "bin" / "ssh"
    shim.parent.mkdir()
    real, own_home = host.which("ssh"), pwd.getpwuid(os.getuid()).pw_dir
    shim.write_text("#!/bin/sh\n# the real ssh, where the home in the passwd entry is the test's folder\n"
                    "exec unshare -m sh -c 'mount --bind \"$1\" \"$2\" && shift 2 && exec \"$0\" \"$@\"' "
                    f"{shlex.quote(real)} {shlex.quote(str(home))} {shlex.quote(own_home)} \"$@\"\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    assert host.which("ssh") == str(shim)
    conn = connect(tmp_path / "project")
    assert run(conn, "echo ok") == (0, b"ok\n")


def test_small_ssh_c_gives_a_binary_sink_the_bytes_untouched(sshd, tmp_path: Path) -> None:
    """`vm.ssh -c` runs through GuestSSH.run (paramiko) with the CLI's stdout; here the sink is
    a binary stream, as sys.stdout.buffer is. The last byte comes after the exit status."""
    lab_keys = keys.ensure(tmp_path / "keys", "test")
    data = bytes(range(256)) * 64 + "ünï\r\n".encode()
    (tmp_path / "blob").write_bytes(data)
    out, err = io.BytesIO(), io.BytesIO()
    with GuestSSH(sshd(lab_keys), ME, lab_keys) as session:
        result = session.run(f"cat '{tmp_path}/blob'; (sleep 0.5; printf '\\377' >&2) &", stdout=out, stderr=err)
        assert result.exit_status == 0
        assert out.getvalue() == data and err.getvalue() == b"\xff"
        started = time.monotonic()
        assert session.run("sleep 12 &").exit_status == 0  # a daemon holding the output open
        assert time.monotonic() - started < 8


def test_small_a_junit_file_left_by_an_earlier_run_is_not_taken_for_this_runs(connect, tmp_path: Path) -> None:
    conn = connect(tmp_path / "project")
    guest_dir = tmp_path / "guest"
    guest_dir.mkdir()
    (guest_dir / "report.xml").write_text('<testsuite tests="1" failures="1"><testcase name="old">'
                                          '<failure message="from last week"/></testcase></testsuite>\n')
    run_dir = tmp_path / "results"
    run_dir.mkdir()
    suite = SuiteConfig(name="unit", command="true", junit="report.xml", timeout=60)
    result = suites.run(conn, suite, str(guest_dir), run_dir, echo=io.BytesIO())
    assert result.junit is None and not result.cases  # not last week's "old" case
    assert result.status == "failed" and "exit 0, but it wrote no JUnit file" in (result.note or "")
    assert not (guest_dir / "report.xml").exists()


def git_project(root: Path) -> Path:
    """A git checkout whose .gitignore re-includes (!) and whose ignored folder holds a tracked file."""
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n")
    for name in ("a.log", "keep.log", "main.c", "build/out.o", "sub/deep.log", "sub/keep.log", "st*r.log",
                 "tracked/t.log", "bra[c]ket.c", "bra[c]ket.log", "bracket.c"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    subprocess.run(["git", "add", "-f", "tracked/t.log"], cwd=root, check=True)
    return root


def test_small_gitignore_follows_gits_own_rules(connect, tmp_path: Path) -> None:
    project_dir = git_project(tmp_path / "project")
    guest = tmp_path / "guest"
    settings = SyncConfig(guest_dir=str(guest), gitignore=True)
    rsync.run(connect(project_dir), project_dir, Rules.read(project_dir, settings))
    sent = sorted(str(p.relative_to(guest)) for p in guest.rglob("*") if p.is_file())
    assert sent == [".gitignore", "bra[c]ket.c", "bracket.c", "keep.log", "main.c", "sub/keep.log", "tracked/t.log"]


def host_digest(project_dir: Path, settings: SyncConfig) -> str:
    """The digest of the host's side of the project as the loop's turn reads it: equal, nothing to send."""
    return scan(project_dir, Rules.read(project_dir, settings)).digest


def test_small_the_sync_digest_sees_what_git_ignores_as_rsync_does(tmp_path: Path) -> None:
    project_dir = git_project(tmp_path / "project")
    settings = SyncConfig(gitignore=True)
    first = host_digest(project_dir, settings)
    (project_dir / "build" / "out.o").write_text("rebuilt")  # ignored: rsync would send nothing
    (project_dir / "a.log").write_text("more log")
    assert host_digest(project_dir, settings) == first
    (project_dir / ".git" / "info").mkdir(exist_ok=True)
    (project_dir / ".git" / "info" / "exclude").write_text("main.c\n")  # now main.c is not sent
    assert host_digest(project_dir, settings) != first


def test_small_gitignore_outside_a_git_checkout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(VmlabError) as refused:
        host_digest(tmp_path / "plain", SyncConfig(gitignore=True))
    assert refused.value.exit_code == 2 and "must be a git checkout" in str(refused.value)


# --- config values ---


@pytest.mark.parametrize("text, where", [
    (b"suites:\n  s1: {command: 'true'}\nquick: [s1]\n", b"vmlab.yaml:3: quick:"),
    (b"defaults:\n  memory: 1024\n  ssh_user: r\xe9ot\n", b"vmlab.yaml:3: defaults.ssh_user: byte 0xe9 is not UTF-8"),
    (b"suites:\n  s1:\n    command: |\n      echo \xff\n", b"vmlab.yaml:4: suites.s1.command: byte 0xff"),
    (b"suites:\n  s1:\n    command: 'true'\n    timeout: .inf\n", b"vmlab.yaml:4: suites.s1.timeout:"),
    (b"suites:\n  s1:\n    command: 'true'\n    timeout: .nan\n", b"vmlab.yaml:4: suites.s1.timeout:"),
    (b"defaults:\n  boot_timeout: -.inf\n", b"vmlab.yaml:2: defaults.boot_timeout:"),
    (b"defaults:\n  boot_timeout: 1.0e+999\n", b"vmlab.yaml:2: defaults.boot_timeout:"),
    (b"defaults:\n  memory: .inf\n", b"vmlab.yaml:2: defaults.memory:"),
    (b"defaults:\n  ssh_user: r\x00ot\n", b"vmlab.yaml:2: not valid YAML"),
    (b"defaults: &a\n  memory: 1024\n  again: *a\n", b"vmlab.yaml:3: defaults.again: unknown key"),
], ids=["quick-list", "latin1-byte", "bad-byte-in-block", "timeout-inf", "timeout-nan", "boot-minus-inf",
        "float-overflow", "memory-inf", "nul-byte", "alias-cycle"])
def test_item13_config_mistakes_are_one_line_errors_naming_file_line_and_key(project: Project, text: bytes,
                                                                             where: bytes) -> None:
    (project.root / "vmlab.yaml").write_bytes(text)
    result = project.invoke("vm.status")
    assert result.returncode == 2
    assert where.decode("latin-1") in one_line_error(result)


@pytest.mark.parametrize("setting, key", [
    ("suites: {s1: {command: 'true', workdir: ..}}", "suites.s1.workdir"),
    ("suites: {s1: {command: 'true', junit: ../../x.xml}}", "suites.s1.junit"),
    ("sync: {guest_dir: src/../..}", "sync.guest_dir"),
    ("sync: {guest_dir: -delete}", "sync.guest_dir"),
    ("suites: {s1: {command: 'true', workdir: --help}}", "suites.s1.workdir"),
], ids=["workdir-dotdot", "junit-dotdot", "guest-dir-dotdot", "guest-dir-option", "workdir-option"])
def test_small_a_guest_path_that_leaves_its_folder_or_is_an_option_is_refused(project: Project, setting: str,
                                                                              key: str) -> None:
    project.write_config(setting + "\n")
    result = project.invoke("vm.status")
    assert result.returncode == 2
    assert f"vmlab.yaml:1: {key}:" in one_line_error(result) and "without '..'" in result.stderr


# --- install recipes ---


@pytest.mark.parametrize("line, problem", [
    ("echo ${d}", "unknown placeholder {d}"),
    ("awk '{print $1}' f", "unknown placeholder {print $1}"),
    ("echo {}", "Replacement index 0"),
    ("echo { x", "expected '}'"),
], ids=["shell-variable", "awk", "positional", "lone-brace"])
def test_small_a_recipe_placeholder_the_lab_does_not_fill_is_refused_at_load(tmp_path: Path, line: str,
                                                                             problem: str) -> None:
    path = tmp_path / "install.yaml"
    path.write_text(f"steps:\n  - name: ok\n    line: 'echo {{vm}} {{{{literal}}}}'\n"
                    f"  - name: partition\n    run: {json.dumps(line)}\n")
    with pytest.raises(RecipeError) as refused:
        recipe.load(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: step 2 (partition): run: {problem}")
    assert "write a literal brace twice" in message and refused.value.exit_code == 2


def test_small_a_recipe_with_doubled_braces_and_the_lab_placeholders_loads(tmp_path: Path) -> None:
    path = tmp_path / "install.yaml"
    path.write_text("steps:\n  - name: s\n    run: \"awk '{{print $1}}' /etc/{vm}\"\n")
    assert recipe.load(path).steps[0].run is not None
    assert recipe.load(path).steps[0].run.format(vm="w1") == "awk '{print $1}' /etc/w1"  # type: ignore[union-attr]


@pytest.mark.parametrize("text, problem", [
    ("steps: []\nwait: 3\n", "unknown key 'wait'; allowed:"),
    ("steps:\n  - name: s\n    typo: x\n    expect: y\n", "step 1 (s): unknown key 'typo'"),
    ("steps:\n  - {name: s}\n", "step 1 (s): it does nothing; give one of"),
    ("steps:\n  - expect: y\n", "step 1: each step is a mapping with a 'name'"),
    ("steps:\n  - {name: s, expect: y, idle: -1}\n", "step 1: idle: -1 is not a number of seconds"),
    ("steps:\n  - {name: s, expect: y, idle: soon}\n", "step 1: idle: 'soon' is not a number of seconds"),
    ("steps:\n  - {name: s, expect: y, powered_off: false}\n", "powered_off: False; it can only be true"),
    ("steps:\n  - {name: s, watch: 'exit \\d+'}\n", "needs a group, (\\d+), that captures"),
    ("steps: []\n", "the recipe has no steps"),
    ("seed: [missing.sh]\nsteps:\n  - {name: s, expect: y}\n", "seed file 'missing.sh' is not in"),
    ("boot: floppy\nsteps:\n  - {name: s, expect: y}\n", "boot: 'floppy'; allowed: cdrom, disk"),
    ("- just a list\n", "a recipe is a mapping with 'steps'"),
    ("steps: [\n", "cannot read the recipe"),
], ids=["unknown-key", "unknown-step-key", "no-action", "no-name", "negative-idle", "idle-word",
        "powered-off-false", "watch-without-group", "no-steps", "missing-seed", "bad-boot", "not-a-mapping",
        "bad-yaml"])
def test_small_a_recipe_mistake_is_refused_at_load_naming_where(tmp_path: Path, text: str, problem: str) -> None:
    """Before anything boots: exit code 2 (the recipe must be fixed), the file and the step named."""
    path = tmp_path / "install.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as refused:
        recipe.load(path)
    assert str(refused.value).startswith(f"{path}: ") and problem in str(refused.value), str(refused.value)
    assert refused.value.exit_code == 2


# --- issue 24: the second round (a test per item, named for it) ---


def rehearsal_repo(root: Path) -> Path:
    """A repository whose workflow has one job of one `run:` step (bash, as GitHub's)."""
    repo = root / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "w.yml").write_text(
        "env: {VM: default}\njobs:\n  one:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo the step ran\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def planted(folder: Path, marker: Path, owner: Optional[int] = None) -> Path:
    """A work folder another user made first (mode 0777) with a `bin/bash` that leaves `marker`."""
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "bash").write_text(f"#!/bin/sh\necho ran as uid $(id -u) > {shlex.quote(str(marker))}\n"
                                         "exec /bin/bash \"$@\"\n")
    (folder / "bin" / "bash").chmod(0o755)
    for path in (folder, folder / "bin", folder / "bin" / "bash"):
        if owner is not None:
            os.chown(path, owner, -1)
    folder.chmod(0o777)
    return folder


def rehearse_ci(repo: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """scripts/rehearse-ci's program (tools/ci_rehearsal, found on PYTHONPATH as that script sets it)."""
    return subprocess.run([sys.executable, "-m", "ci_rehearsal.rehearsal", "--repo", str(repo), "--workflow",
                           str(repo / ".github" / "workflows" / "w.yml"), "--runs", "1", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "tools"), **(env or {})))


@pytest.mark.parametrize("how", ["open to others", "owned by another user", "a symlink"])
def test_issue24_item01_a_rehearsal_work_folder_someone_else_can_write_is_refused(tmp_path: Path, how: str) -> None:
    """`--work` naming a folder another user made first (0777, with a `bin/bash` in it): the
    steps run with WORK/bin first on PATH, so its `bash` ran as root. Now refused, exit 2, one
    line naming the folder, nothing of it run."""
    repo, marker = rehearsal_repo(tmp_path), tmp_path / "planted-bash-ran"
    work = tmp_path / "work"
    if how == "owned by another user":
        if os.geteuid() != 0:
            prerequisite_missing("root, to make a folder owned by another user")
        planted(work, marker, owner=pwd.getpwnam("nobody").pw_uid)
        work.chmod(0o700)  # private, but not ours
    elif how == "open to others":
        planted(work, marker)
    else:
        planted(tmp_path / "elsewhere", marker).chmod(0o700)
        work.symlink_to(tmp_path / "elsewhere")
    done = rehearse_ci(repo, "--work", str(work))
    assert not marker.exists(), marker.read_text()
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"rehearse-ci: error: {work} is unsafe for the CI rehearsal's work") and "--work" in line


def test_issue24_item01_the_default_rehearsal_work_folder_is_private_and_a_planted_one_is_refused(
        tmp_path: Path) -> None:
    """With no --work: the old default, TMPDIR/vmlab-ci-rehearsal, was used whoever made it.
    The default is now the user's own TMPDIR/vmlab-ci-rehearsal-UID, made 0700; planted first
    by someone else, it is refused like any other."""
    repo, marker = rehearsal_repo(tmp_path), tmp_path / "planted-bash-ran"
    temp = tmp_path / "tmp"
    temp.mkdir()
    planted(temp / "vmlab-ci-rehearsal", marker)  # the old default name
    done = rehearse_ci(repo, env={"TMPDIR": str(temp)})
    assert not marker.exists(), marker.read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    own = temp / f"vmlab-ci-rehearsal-{os.getuid()}"
    assert f"in {own}" in done.stdout and "[one] the step ran" in done.stdout
    assert stat.S_IMODE(own.lstat().st_mode) == 0o700 and own.lstat().st_uid == os.getuid()
    shutil.rmtree(own)
    planted(own, marker)
    again = rehearse_ci(repo, env={"TMPDIR": str(temp)})
    assert not marker.exists() and again.returncode == 2
    assert f"{own} is unsafe" in again.stderr


def gnu_tar_export(archive: Path, manifest: Dict[str, object], files: Dict[str, bytes], sparse: str,
                   apparent: int, tar_format: str) -> Path:
    """An export written by GNU tar --sparse: the manifest, the files, and `sparse` as a file of
    holes (as `truncate -s` makes) of `apparent` bytes, which takes a few KiB in the archive."""
    folder = archive.parent / f"parts-{tar_format}"
    for name, data in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with open(folder / sparse, "wb") as f:
        f.truncate(apparent)
        f.seek(apparent // 2)
        f.write(b"data in the middle")
    subprocess.run(["tar", "--sparse", f"--format={tar_format}", "-cf", str(archive), "-C", str(folder),
                    "manifest.json", *files, sparse], check=True)
    return archive


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_issue24_item02_golden_import_refuses_a_sparse_member_before_writing_it(
        exported: Path, importer, tmp_path: Path, tar_format: str) -> None:
    """A sparse member (GNU's old format, or PAX's GNU.sparse) takes a few KiB in the archive
    and unpacks to as much as its header says: 64 MiB here, 512 MiB of real blocks in the
    report from one 10 KiB archive. Refused before a byte of it is written."""
    manifest, files = real_parts(exported)
    files.pop("vmlinuz")
    archive = gnu_tar_export(tmp_path / "sparse.tar", manifest, files, "vmlinuz", 64 << 20, tar_format)
    assert archive.stat().st_size < 1 << 20
    with tarfile.open(archive) as tar:
        assert tar.getmember("vmlinuz").issparse()  # what tarfile itself makes of it: a sparse regular file
    result = importer(archive)
    assert result.returncode == 1
    assert "member 'vmlinuz' is a sparse file" in one_line_error(result)
    assert_nothing_imported(tmp_path)


def test_issue24_item02_golden_import_writes_no_member_past_the_size_its_manifest_states(
        exported: Path, importer, tmp_path: Path) -> None:
    """A member larger than its manifest says (its sha256 right: the manifest is the attacker's
    too) is refused before anything is written; an export without sizes, made before they were
    recorded, is refused saying to export it again."""
    manifest, files = real_parts(exported)
    files["vmlinuz"] = b"k" * (4 << 20)
    grown = dict(manifest, files=dict(manifest["files"], vmlinuz=hashlib.sha256(files["vmlinuz"]).hexdigest()),
                 sizes={**{n: len(data) for n, data in files.items()}, "vmlinuz": len(b"a kernel")})
    result = importer(craft(tmp_path / "grown.tar", grown, files))
    assert result.returncode == 1
    assert f"member 'vmlinuz' is {4 << 20} bytes, its manifest says 8" in one_line_error(result)
    assert_nothing_imported(tmp_path)
    manifest, files = real_parts(exported)
    del manifest["sizes"]
    result = importer(craft(tmp_path / "no-sizes.tar", manifest, files))
    assert result.returncode == 1 and "no 'sizes' mapping" in one_line_error(result)
    assert_nothing_imported(tmp_path)


@pytest.mark.parametrize("pattern", ["!", "!keep.log", "+ *", "- *.o"], ids=["clear", "negation", "include", "exclude"])
def test_issue24_item03_an_exclude_rsync_reads_as_a_rule_is_refused_where_config_is_read(project: Project,
                                                                                          pattern: str) -> None:
    """`!` alone clears rsync's exclude list (vmlab's own `.git` and `/vm/` with it); `+ ` and
    `- ` are rule prefixes; a leading `!` negates nothing in rsync (gitignore's `!` does)."""
    project.write_config(f"sync:\n  guest_dir: p\n  excludes:\n    - '*.tmp'\n    - {json.dumps(pattern)}\n")
    result = project.invoke("vm.status")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "vmlab.yaml:3: sync.excludes:" in line and f"{pattern!r} is an rsync rule, not a pattern" in line


def test_issue24_item03_the_labs_keys_and_git_never_reach_the_guest_whatever_the_excludes(connect,
                                                                                          tmp_path: Path) -> None:
    """Past the config's check (a SyncConfig made in code): with `excludes: ["!"]` rsync copied
    vm/<name>/keys/, vm/keys/ (the lab's private keys) and .git/config into the guest. vmlab's
    own excludes now come after every other rule, where a `!` cannot clear them."""
    project_dir = tmp_path / "project"
    for name in ("src/main.c", ".git/config", "vm/default/keys/id_ed25519", "sub/.git/HEAD"):
        (project_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (project_dir / name).write_text(name)
    conn = connect(project_dir)  # its keys are the lab's: project/vm/keys/
    guest = tmp_path / "guest"
    rsync.run(conn, project_dir, Rules(SyncConfig(guest_dir=str(guest), excludes=("*.o", "!"))))
    assert sorted(str(p.relative_to(guest)) for p in guest.rglob("*") if not p.is_dir()) == ["src/main.c"]


@pytest.mark.parametrize("config, where", [
    ('vms:\n  "abc\\n": {profile: debian}\n', "vmlab.yaml:2: vms.'abc\\n': a VM name is"),
    ('profiles:\n  debian: {mirror: "http://mirror.example/debian\\n"}\n', "vmlab.yaml:2: profiles.debian.mirror:"),
    ('profiles:\n  dragonfly: {mirrors: ["https://mirror.example/dfly\\n"]}\n',
     "vmlab.yaml:2: profiles.dragonfly.mirrors:"),
], ids=["vm-name", "debian-mirror", "dragonfly-mirror"])
def test_issue24_item05_a_value_ending_in_a_newline_is_refused_where_config_is_read(project: Project, config: str,
                                                                                    where: str) -> None:
    """The name patterns were used with re.match and `$`, which also matches before a final
    newline: `golden-key` printed a key for VM "abc\\n". Every value is now matched whole."""
    project.write_config(config)
    result = project.invoke("vm.golden-key")
    assert result.returncode == 2 and result.stdout == ""
    assert where in one_line_error(result)


def test_issue24_item05_a_vm_or_snapshot_name_ending_in_a_newline_is_refused_on_the_command_line(
        project: Project) -> None:
    """A new VM name clones the first VM once it has a golden image (`vm.start --vm shard-1`):
    "shard\\n" was taken for one (a folder vm/shard<newline>/); a snapshot named "clean\\n" too."""
    cache = project.root / "cache"
    make_golden(project, cache)
    env = {"VMLAB_CACHE": str(cache)}
    assert "shard-1" in project.invoke("vm.status", "--vm", "shard-1", env=env).stdout  # a clone's name: fine
    refused = project.invoke("vm.status", "--vm", "shard\n", env=env)
    assert refused.returncode == 2 and "there is no VM named 'shard\\n'" in one_line_error(refused)
    refused = project.invoke("vm.snapshot", "--name", "clean\n", env=env)
    assert refused.returncode == 2 and "snapshot name 'clean\\n'" in one_line_error(refused)
    assert not [p for p in project.root.rglob("*") if "\n" in p.name]


@pytest.mark.parametrize("options, key", [
    ('{suite: "--print-debs"}', "profiles.debian.suite"),
    ('{suite: "bookworm --foreign"}', "profiles.debian.suite"),
    ('{mirror: "http://mirror.example/debian;touch${IFS}/tmp/x"}', "profiles.debian.mirror"),
    ('{mirror: "http://mirror.example/debian --keyring=/tmp/k"}', "profiles.debian.mirror"),
    ('{packages: ["make", "lib-ünï"]}', "profiles.debian.packages"),
], ids=["suite-option", "suite-two-words", "mirror-shell", "mirror-space", "package-non-ascii"])
def test_issue24_item06_a_profile_value_that_reaches_debootstrap_is_checked_where_config_is_read(
        project: Project, options: str, key: str) -> None:
    """`suite: --print-debs` was accepted and passed to debootstrap, as root (build-image.sh).
    The suite, the mirror and the packages reach its command line: each is refused unless it is
    only a name, a URL, a package name."""
    project.write_config(f"profiles:\n  debian: {options}\n")
    result = project.invoke("vm.golden-key")
    assert result.returncode == 2 and result.stdout == ""
    assert f"vmlab.yaml:2: {key}:" in one_line_error(result)


def test_issue24_item06_the_usual_suites_and_mirrors_are_accepted(project: Project) -> None:
    """The mirror this machine's apt uses (read from its configuration), and other usual shapes."""
    mirror, codename = apt.host_debian_mirror()
    for options in (f'{{suite: {codename}, mirror: "{mirror}"}}',
                    '{suite: stable, mirror: "https://[::1]:8080/debian"}', '{mirror: "file:///srv/mirror"}',
                    '{suite: bookworm-updates, packages: [g++, libc6-dev, python3.11]}'):
        project.write_config(f"profiles:\n  debian: {options}\n")
        result = project.invoke("vm.golden-key")
        assert result.returncode == 0, (options, result.stderr)


# --- vmlab init in a project folder that holds links, folders, odd names ---

VMLAB = str(Path(INVOKE).parent / "vmlab")


def vmlab_init(project_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`vmlab init --guest debian` as a user types it in the project (stdin not a terminal: no one answers)."""
    return subprocess.run([VMLAB, "init", "--guest", "debian", *args], cwd=project_dir, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


INIT_FILES = ["vmlab.yaml", "vmlab.mk", "Makefile", ".gitignore"]


@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "to-a-file"])
@pytest.mark.parametrize("name", INIT_FILES)
def test_issue24_item04_init_never_writes_through_a_link(tmp_path: Path, name: str, target_exists: bool) -> None:
    """A project's vmlab.yaml, vmlab.mk, Makefile or .gitignore that is a link to a file outside
    it: init made the file a dangling link names, appended to one a link names, and with --yes
    replaced precious.yaml through vmlab.yaml. Now nothing outside is touched: without an
    answer the link is kept; --yes replaces a vmlab.yaml or vmlab.mk link by a file of its own
    and leaves a Makefile or .gitignore link alone, saying which line to add."""
    outside, project_dir = tmp_path / "outside", tmp_path / "project"
    outside.mkdir()
    project_dir.mkdir()
    if target_exists:
        (outside / "precious").write_text("the user's own file\n")
    (project_dir / name).symlink_to(outside / "precious")
    before = tree(outside)
    first = vmlab_init(project_dir)
    assert first.returncode == 0, first.stderr
    assert tree(outside) == before and (project_dir / name).is_symlink()
    answered = vmlab_init(project_dir, "--yes")
    assert answered.returncode == 0, answered.stderr
    assert tree(outside) == before and sorted(p.name for p in outside.iterdir()) == sorted(before)
    if name in ("vmlab.yaml", "vmlab.mk"):
        assert not (project_dir / name).is_symlink() and (project_dir / name).is_file()
        assert f"wrote {project_dir / name}" in answered.stdout
    else:
        assert (project_dir / name).is_symlink() and "is a symbolic link" in answered.stdout
    config.load(cwd=project_dir)


@pytest.mark.parametrize("name, make", [
    ("Makefile", lambda p: p.mkdir()),
    (".gitignore", lambda p: os.mkfifo(p)),
    ("vmlab.mk", lambda p: p.mkdir()),
], ids=["makefile-folder", "gitignore-fifo", "fragment-folder"])
def test_issue24_item04_init_checks_every_file_before_it_writes_any(tmp_path: Path, name: str, make) -> None:
    """A Makefile that is a folder gave IsADirectoryError after vmlab.yaml and vmlab.mk were
    written (a .gitignore that is a fifo: init waited for ever). Now exit 2 in one line naming
    it, and nothing written."""
    make(tmp_path / name)
    result = vmlab_init(tmp_path)
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"vmlab: error: {tmp_path / name} is a ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_init_never_overwrites_a_file_without_asking(tmp_path: Path) -> None:
    """README and ADOPTING.md promise it: a vmlab.yaml or vmlab.mk of the user's is replaced only
    when the user says so (--yes, or y at the prompt); with no one to answer, both are kept."""
    own_config, own_fragment = "vms: {mine: {profile: debian}}\n", "vm-mine:\n\techo mine\n"
    (tmp_path / "vmlab.yaml").write_text(own_config)
    (tmp_path / "vmlab.mk").write_text(own_fragment)
    kept = vmlab_init(tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "vmlab.yaml").read_text() == own_config and (tmp_path / "vmlab.mk").read_text() == own_fragment
    assert f"kept {tmp_path / 'vmlab.yaml'} as it is" in kept.stdout and f"kept {tmp_path / 'vmlab.mk'}" in kept.stdout
    replaced = vmlab_init(tmp_path, "--yes")
    assert replaced.returncode == 0, replaced.stderr
    assert (tmp_path / "vmlab.yaml").read_text() != own_config and (tmp_path / "vmlab.mk").read_text() != own_fragment


def test_init_leaves_out_the_include_when_the_makefile_already_has_vm_targets(tmp_path: Path) -> None:
    """A Makefile with a vm-* target of its own: including vmlab.mk would give make two recipes
    for one target (it warns and keeps one): the Makefile is left as it is, saying why."""
    makefile = "all:\n\ttrue\n\nvm-quick:\n\t./my-own-vm-script\n"
    (tmp_path / "Makefile").write_text(makefile)
    result = vmlab_init(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "Makefile").read_text() == makefile
    assert f"did not include vmlab.mk in {tmp_path / 'Makefile'}: it has targets of its own with vmlab's names " \
           "(vm-quick)" in result.stdout
    assert "next: `vmlab quick`" in result.stdout  # not `make vm-quick`: that is the project's own


@pytest.mark.parametrize("project_name, guest_dir", [
    ("yes", "yes"), ("on", "on"), ("null", "null"), ("1.5", "1.5"), ("-dash", "dash"), ("..dots", "dots"),
    ("with space", "with-space")])
def test_issue24_item09_init_writes_a_config_vmlab_loads_whatever_the_folder_names(
        tmp_path: Path, project_name: str, guest_dir: str) -> None:
    """A project named `yes` (YAML's true), `null`, `1.5` or `-dash` (an option), or a venv
    folder named `a,b`, `x]y` or `x #y` (YAML's flow and comment syntax): init wrote a
    vmlab.yaml vmlab then refused to load. Names are now quoted, the guest folder is never an
    option, and the excludes leave out exactly the venvs (real rsync says so)."""
    project_dir = tmp_path / project_name
    venvs = ["a,b", "x]y", "x #y", "x[1]", "q'uote", ".venv"]
    for venv in venvs:
        (project_dir / venv).mkdir(parents=True)
        (project_dir / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project_dir / "main.c").write_text("int main(void) { return 0; }\n")
    result = vmlab_init(project_dir)
    assert result.returncode == 0, result.stderr
    loaded = config.load(cwd=project_dir)
    assert loaded.sync.guest_dir == guest_dir
    copy = tmp_path / "copy"
    subprocess.run(["rsync", "-a", *Rules(loaded.sync).rsync_options(), f"{project_dir}/", f"{copy}/"],
                   check=True)
    assert sorted(p.name for p in copy.iterdir()) == [".gitignore", "Makefile", "main.c", "vmlab.mk", "vmlab.yaml"]


# --- "0600 from the first byte": the mode of a secret seen from its creation on ---

_FIRST_BYTES: Dict[str, object] = {"folder": None, "busy": False, "created": [], "seen": []}


def _observe_created_files(event: str, args: tuple) -> None:
    """An audit hook (sys.addaudithook; it cannot be removed, so it does nothing unless a test
    set a folder). Every file opened with O_CREAT under the folder is remembered, and at every
    audited operation after it (a write is not one; a chmod, a rename, an open are) the mode of
    each remembered file is recorded: a file made 0644 and then chmod'ed is seen 0644 at the chmod."""
    folder = _FIRST_BYTES["folder"]
    if folder is None or _FIRST_BYTES["busy"]:
        return
    _FIRST_BYTES["busy"] = True
    try:
        created, seen = _FIRST_BYTES["created"], _FIRST_BYTES["seen"]
        assert isinstance(created, list) and isinstance(seen, list)
        for path in created:
            try:
                seen.append((path, event, stat.S_IMODE(os.lstat(path).st_mode)))
            except OSError:
                pass
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and isinstance(args[2], int) \
                and args[2] & os.O_CREAT:
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(f"{folder}{os.sep}") and path not in created:
                created.append(path)
    finally:
        _FIRST_BYTES["busy"] = False


def test_secrets_are_0600_from_their_first_byte(project: Project, tmp_path: Path) -> None:
    """security.md: every file holding a secret (the lab's keys, known_hosts, a golden export)
    is mode 0600 from its first byte. A file made 0644 and chmod'ed 0600 before its rename has
    the same final mode, so the mode is watched from the file's creation (an audit hook, in
    this process: keys.ensure and golden.export run here, as the CLI runs them), with the usual
    umask 022, under which a plain create is 0644."""
    if not _FIRST_BYTES.get("hooked"):
        sys.addaudithook(_observe_created_files)
        _FIRST_BYTES["hooked"] = True
    cache = tmp_path / "cache"
    gold = make_golden(project, cache)
    watched = tmp_path / "watched"
    watched.mkdir()
    secrets = ("id_ed25519", "ssh_host_ed25519_key", "known_hosts", "export.tar")
    umask = os.umask(0o022)
    _FIRST_BYTES.update(folder=str(watched), created=[], seen=[])
    try:
        keys.ensure(watched / "keys", "first-byte test")
        golden.export(gold, watched / "export.tar")
    finally:
        _FIRST_BYTES["folder"] = None
        os.umask(umask)
    created, seen = _FIRST_BYTES["created"], _FIRST_BYTES["seen"]
    assert isinstance(created, list) and isinstance(seen, list)

    def secret_of(path: str) -> Optional[str]:
        name = os.path.basename(path)
        return next((s for s in secrets if name == s or name.startswith(f".{s}.")), None)

    watched_secrets = {secret_of(path) for path, _, _ in seen} - {None}
    assert watched_secrets == set(secrets), f"the hook saw only {watched_secrets}: the test tried nothing"
    loose = [(os.path.basename(path), event, f"{mode:04o}") for path, event, mode in seen
             if secret_of(path) and mode != 0o600]
    assert not loose, f"a secret was not 0600 when seen: {loose[:5]}"
    for name in ("keys/id_ed25519", "keys/ssh_host_ed25519_key", "keys/known_hosts", "export.tar"):
        assert stat.S_IMODE((watched / name).stat().st_mode) == 0o600
