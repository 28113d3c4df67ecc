"""The CLI's contract with users and scripts: exit codes, one-line errors, --json shapes.
Uses libvirt's in-process test driver (test:///default), so no daemon or VM is needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmkeep import __version__
from vmkeep.cli.main import main

TEST_URI = "test:///default"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, f"vmkeep {__version__}")


def test_vm_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--connect", TEST_URI, "vm", "list", "--json")
    assert code == 0, err
    vms = json.loads(out)
    assert [vm["name"] for vm in vms] == ["test"]
    assert vms[0]["state"] == "running"
    assert vms[0]["disks"][0]["target"] == "vda"


def test_uri_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKEEP_CONNECT", TEST_URI)
    code, out, _ = run(capsys, "vm", "show", "test", "--json")
    assert code == 0
    assert json.loads(out)["name"] == "test"


def test_vm_show_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-c", TEST_URI, "vm", "show", "test")
    assert code == 0
    assert "6695eb01-f6a4-8304-79aa-97f2502e193f" in out
    assert "/guest/diskimage1" in out


def test_unknown_vm_exit_code_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", TEST_URI, "vm", "show", "nope 'x'")
    assert code == 3
    assert out == ""
    assert err.strip().splitlines() == ["error: no VM named \"nope 'x'\""]


def test_unreachable_hypervisor(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-c", "qemu+unix:///system?socket=/nonexistent", "vm", "list")
    assert code == 6
    assert "cannot connect" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lab", "create", "x", "--disk-size", "lots"), "invalid size"),
        (("lab", "create", "x", "--memory", "16M"), "--memory"),
        (("lab", "create", "a/b"), "no '/'"),
    ],
)
def test_bad_lab_input_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "-c", TEST_URI, *args)
    assert code == 2
    assert message in err
    assert not (tmp_path / "lab").exists()  # refused before anything was made


def test_bad_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("connect = [")
    code, _, err = run(capsys, "--config", str(bad), "vm", "list")
    assert code == 2
    assert "not valid TOML" in err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "vm", "list", "--frobnicate")
    assert code == 2
    assert "frobnicate" in err


def test_lab_destroy_refuses_non_lab_vm(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-c", TEST_URI, "lab", "destroy", "test")
    assert code == 9
    assert "not a lab VM" in err


def test_repo_init_refuses_a_non_empty_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not mix backups in here")
    code, _, err = run(capsys, "repo", "init", str(target), "--encryption", "none")
    assert code == 2
    assert "not empty" in err
    assert [p.name for p in target.iterdir()] == ["thesis.txt"]


def test_repo_init_none_warns_and_list_works(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    code, out, err = run(capsys, "repo", "init", repo, "--encryption", "none", "--json")
    assert code == 0
    assert "warning" in err
    assert json.loads(out)["encryption"] == "none"
    code, out, _ = run(capsys, "list", "-r", repo, "--json")
    assert (code, json.loads(out)) == (0, {"backups": [], "unreadable": []})
    code, _, err = run(capsys, "repo", "init", repo, "--encryption", "none")
    assert code == 4 and "exists already" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--chunk-size", "3M"), "power of two"),
        (("--chunk-size", "16K"), "power of two"),
        (("--compression-level", "25"), "1 to 19"),
        (("--encryption", "rot13"), "unknown encryption"),
    ],
)
def test_repo_init_bad_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, "repo", "init", str(tmp_path / "r"), *args)
    assert code == 2
    assert message in err


def test_the_cli_loads_rich_only_when_it_prints_for_people() -> None:
    """Scripts and timers run ``--json`` commands: Rich (0.07 s of a cold start) stays out
    of them, and a human-readable listing of the same thing loads it."""
    probe = (
        "import sys\n"
        "from vmkeep.cli.main import main\n"
        f"assert main(['-v', '--connect', '{TEST_URI}', 'vm', 'list', '--json']) == 0\n"
        "assert not [m for m in sys.modules if m.startswith('rich')], 'rich loaded'\n"
        f"assert main(['--connect', '{TEST_URI}', 'vm', 'list']) == 0\n"
        "assert 'rich.table' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed, _end = json.JSONDecoder().raw_decode(done.stdout)
    assert listed[0]["name"] == "test"
