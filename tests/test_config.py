"""vmlab.yaml: defaults without a file, and every wrong key, type or value refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlab import config
from vmlab.errors import ConfigError


def load_text(tmp_path: Path, text: str) -> config.LabConfig:
    (tmp_path / "vmlab.yaml").write_text(text)
    return config.load(cwd=tmp_path)


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    return str(e.value)


def test_no_file_gives_working_defaults(tmp_path: Path) -> None:
    lab = config.load(cwd=tmp_path)
    vm = lab.vm()
    assert lab.source == "built-in defaults"
    assert (vm.name, vm.profile, vm.memory_mib, vm.cpus, vm.accel, vm.ssh_port) == \
        ("default", "debian", 1024, 2, "auto", 0)
    assert lab.state_dir == tmp_path.resolve() / "vm"


def test_defaults_apply_to_every_vm_and_vms_override(tmp_path: Path) -> None:
    lab = load_text(tmp_path, "defaults: {memory: 2G, cpus: 1}\nvms:\n  a: {}\n  b: {memory: 512}\n")
    assert [v.name for v in lab.vms.values()] == ["a", "b"]
    assert (lab.vm("a").memory_mib, lab.vm("a").cpus) == (2048, 1)
    assert (lab.vm("b").memory_mib, lab.vm("b").cpus) == (512, 1)
    assert lab.vm().name == "a"  # the first VM when none is named


def test_unknown_key_names_file_line_key_and_allowed(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "vms:\n  default:\n    memory: 1G\n    memroy: 2G\n")
    assert f"{tmp_path / 'vmlab.yaml'}:4: vms.default.memroy: unknown key" in msg
    assert "memory" in msg and "disk_size" in msg  # what is allowed


def test_memory_lots_is_refused_with_what_is_allowed(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "defaults:\n  memory: lots\n")
    assert ":2: defaults.memory: 'lots' is not allowed" in msg
    assert "'2G'" in msg


def test_missing_profile_lists_the_known_ones(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "vms:\n  x: {profile: freebsd}\n")
    assert "vms.x.profile: 'freebsd' is not allowed" in msg
    assert "debian" in msg and "dragonfly" in msg


@pytest.mark.parametrize("text, where", [
    ("defaults: {cpus: two}\n", "defaults.cpus"),
    ("defaults: {cpus: 0}\n", "defaults.cpus"),
    ("defaults: {accel: hvf}\n", "defaults.accel"),
    ("defaults: {disk_size: 8}\n", "defaults.disk_size"),  # no unit: never eight bytes
    ("defaults: {ssh_port: 22}\n", "defaults.ssh_port"),
    ("vms:\n  Bad_Name: {}\n", "vms.Bad_Name"),
    ("vms: [a, b]\n", "vms"),
    ("colour: blue\n", "colour"),
    ("profiles:\n  debian: {mirror: ftp.example}\n", "profiles.debian.mirror"),
    ("profiles:\n  dragonfly: {release: latest}\n", "profiles.dragonfly.release"),
])
def test_wrong_values_are_refused_naming_the_key(tmp_path: Path, text: str, where: str) -> None:
    assert f": {where}:" in error_for(tmp_path, text)


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "vms:\n  default: {memory: 1G\n")
    assert "not valid YAML" in msg and str(tmp_path / "vmlab.yaml") in msg


def test_unknown_vm_name_lists_configured_ones(tmp_path: Path) -> None:
    lab = load_text(tmp_path, "vms:\n  a: {}\n  b: {}\n")
    with pytest.raises(ConfigError, match="no VM named 'c'; configured VMs: a, b"):
        lab.vm("c")


def test_config_path_from_option_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere.yaml"
    other.write_text("vms:\n  fromenv: {}\n")
    monkeypatch.setenv("VMLAB_CONFIG", str(other))
    assert config.load(cwd=tmp_path).vm().name == "fromenv"
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("vms:\n  fromoption: {}\n")
    assert config.load(str(explicit), cwd=tmp_path).vm().name == "fromoption"  # --config wins
    monkeypatch.setenv("VMLAB_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml: no such config file \\(from VMLAB_CONFIG\\)"):
        config.load(cwd=tmp_path)


def test_cli_refuses_bad_config_with_exit_2_and_starts_nothing(project) -> None:
    project.write_config("defaults:\n  memory: lots\n")
    result = project.invoke("vm.start")
    assert result.returncode == 2
    assert "vmlab.yaml:2: defaults.memory: 'lots' is not allowed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "vm").exists()  # refused before anything was made
