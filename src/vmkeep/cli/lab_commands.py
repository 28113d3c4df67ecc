"""``vmkeep lab``: disposable test VMs to try vmkeep on without touching production VMs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vmkeep.cli.output import print_json, stdout
from vmkeep.cli.progress import TerminalProgress
from vmkeep.cli.state import services_for
from vmkeep.cli.vm_commands import JsonFlag, render_vm
from vmkeep.domain.errors import LabError
from vmkeep.domain.units import parse_size
from vmkeep.engine import lab

app = typer.Typer(
    help="Create and destroy small lab VMs (TCG, busybox, guest agent).", no_args_is_help=True
)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new lab VM.")],
    disks: Annotated[int, typer.Option(help="Number of virtio disks (vda, vdb, ...).")] = 1,
    disk_size: Annotated[str, typer.Option(help="Virtual size of each disk, e.g. 8G.")] = "8G",
    fill: Annotated[
        list[Path] | None,
        typer.Option(
            help="Fill the next disk with an ext4 filesystem holding a copy of this host "
            "directory. Repeat for vdb, vdc, ...",
        ),
    ] = None,
    memory: Annotated[str, typer.Option(help="Guest RAM, e.g. 256M.")] = "256M",
    vcpus: Annotated[int, typer.Option(help="Virtual CPUs.")] = 1,
    reuse: Annotated[
        bool, typer.Option(help="If the lab VM exists already, start it and reuse it.")
    ] = False,
    boot_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the guest agent after start.")
    ] = 180.0,
    tpm: Annotated[bool, typer.Option(help="Give the VM an emulated TPM 2.0 (swtpm).")] = False,
    heartbeat: Annotated[
        bool,
        typer.Option(
            help="The guest writes its uptime every 10 ms to its second serial port, the Unix "
            "socket heartbeat.sock in the VM's directory (for measuring pauses)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a lab VM, start it and wait until its guest agent answers."""
    options = lab.LabOptions(
        name=name,
        disks=disks,
        disk_size=parse_size(disk_size),
        fill=tuple(fill or ()),
        memory=parse_size(memory),
        vcpus=vcpus,
        boot_timeout=boot_timeout,
        heartbeat=heartbeat,
        tpm=tpm,
    )
    with services_for(ctx) as services:
        deps = services.lab_deps(TerminalProgress())
        root = services.settings.lab_dir
        if reuse:
            vm, created = lab.ensure_lab(deps, root, options)
        else:
            vm, created = lab.create_lab(deps, root, options), True
    if as_json:
        print_json({"created": created, "vm": vm})
        return
    stdout.print(f"Lab VM {'created' if created else 'reused'}:", markup=False)
    render_vm(vm)


@app.command("destroy")
def destroy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the lab VM.")],
    as_json: JsonFlag = False,
) -> None:
    """Power off and undefine a lab VM and delete its files. Refuses VMs lab did not create."""
    with services_for(ctx) as services:
        lab.destroy_lab(services.hypervisor(), services.settings.lab_dir, name)
    if as_json:
        print_json({"destroyed": name})
    else:
        stdout.print(f"Lab VM {name!r} destroyed.", markup=False)


@app.command("exec", context_settings={"ignore_unknown_options": True})
def exec_in_guest(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the lab VM.")],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 120.0,
    as_json: JsonFlag = False,
) -> None:
    """Run a command in a lab VM through the guest agent: `vmkeep lab exec NAME -- sh -c '...'`.

    Exits with the command's exit code; its output goes to stdout and stderr.
    """
    with services_for(ctx) as services:
        hypervisor = services.hypervisor()
        if hypervisor.get_vm(name).lab_dir is None:
            raise LabError(f"{name!r} is not a lab VM; lab exec only runs in lab VMs")
        result = hypervisor.guest_exec(name, command, timeout=timeout)
    if as_json:
        print_json(result)
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
    if result.exit_code != 0:
        raise typer.Exit(result.exit_code)
