"""``vmkeep snapshot``'s contract with users and scripts, through libvirt's in-process test
driver: usage errors exit 2 before anything happens, unknown things exit 3, JSON shapes."""

from __future__ import annotations

import json

import pytest

from vmkeep.cli.main import main

TEST_URI = "test:///default"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-c", TEST_URI, "snapshot", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "test", "--expire", "soon"), "invalid duration"),
        (("create", "test", "--name", "a/b"), "'/'"),
        (("create", "test", "--memory", "--quiesce"), "--quiesce does not apply"),
        (("revert", "test", "s", "--running", "--paused"), "not both"),
        (("prune",), "give at least one of --older-than, --keep-last and --expired"),
        (("prune", "--keep-last", "-1"), "--keep-last must be 0 or more"),
        (("prune", "--older-than", "soon"), "invalid duration"),
        (("usage", "--max-age", "soon"), "invalid duration"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert message in err
    assert out == ""


def test_unknown_vm_and_snapshot_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "list", "no such vm")
    assert code == 3 and "no VM named 'no such vm'" in err
    code, _, err = run(capsys, "revert", "test", "nope $(x)")
    assert code == 3
    assert err.strip().splitlines() == [
        "error: 'test' has no snapshot named 'nope $(x)' (it has: none)"
    ]
    code, _, err = run(capsys, "delete", "test", "nope")
    assert code == 3


def test_list_json_and_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and json.loads(out) == []  # no VM has snapshots
    code, out, _ = run(capsys, "list", "test", "--json")
    (vm,) = json.loads(out)
    assert (vm["vm"], vm["state"], vm["snapshots"]) == ("test", "running", [])
    assert vm["disks"][0]["target"] == "vda"
    code, out, _ = run(capsys, "list", "test", "--tree")
    assert code == 0 and out.strip() == "test: no snapshots"


def test_upkeep_json_without_snapshots(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--json")
    assert code == 0, err
    assert json.loads(out) == {"vms": [], "filesystems": [], "warnings": []}
    code, out, err = run(capsys, "prune", "--expired", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out) == {"dry_run": True, "snapshots": []}
    code, _, err = run(capsys, "repair", "no such vm")
    assert code == 3 and "no VM named" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--check", "  ", "--", "true"), "--check must not be empty"),
        (("--check", "true", "--timeout", "soon", "--", "true"), "invalid duration"),
    ],
)
def test_try_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code = main(["-c", TEST_URI, "try", "test", *args])
    _out, err = capsys.readouterr()
    assert code == 2 and message in err
