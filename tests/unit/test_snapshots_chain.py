"""The image planner: which images a delete or revert removes and which it merges, for
linear chains, branches left by reverts, images shared with other VMs, and re-runs."""

from __future__ import annotations

from collections.abc import Mapping

from vmkeep.domain.snapshot_chain import DiskLayers, DiskPlan, plan_disk


def layers(active: str, backing: Mapping[str, str | None]) -> DiskLayers:
    return DiskLayers("vda", active, dict(backing), {image: "qcow2" for image in backing})


def apply(start: DiskLayers, plan: DiskPlan) -> DiskLayers:
    """What the images look like after the plan ran (as the driver runs it)."""
    backing = {k: v for k, v in start.backing.items() if k not in plan.remove}
    for step in plan.commits:
        for child in step.children:
            backing[child] = step.base
        del backing[step.top]
    return layers(plan.active, backing)


def reads(image: str, backing: Mapping[str, str | None]) -> list[str]:
    chain = []
    current: str | None = image
    while current is not None:
        chain.append(current)
        current = backing.get(current)
    return chain


LINEAR = {"base": None, "ov1": "base", "ov2": "ov1"}
# S1 froze base (overlay ov1), S2 froze ov1 (overlay ov2, the active image).
ANCHORS = ["base", "ov1", "ov1", "ov2"]


def test_deleting_the_older_snapshot_commits_its_overlay_into_the_base() -> None:
    plan = plan_disk(layers("ov2", LINEAR), ANCHORS, keep=["ov1"])
    assert plan.remove == ()
    (step,) = plan.commits
    assert (step.top, step.base) == ("ov1", "base")
    assert not step.top_is_active and step.in_active_chain
    assert step.children == ("ov2",) and step.chain_child == "ov2"
    assert plan.moved == {"ov1": "base"}  # S2's frozen image is now the base
    assert plan.active == "ov2"


def test_deleting_the_newest_snapshot_is_an_active_commit() -> None:
    plan = plan_disk(layers("ov2", LINEAR), ANCHORS, keep=["base"])
    (step,) = plan.commits
    assert (step.top, step.base, step.top_is_active) == ("ov2", "ov1", True)
    assert step.children == ()
    assert plan.active == "ov1"


def test_deleting_the_only_snapshot_returns_to_the_original_disk() -> None:
    plan = plan_disk(layers("ov1", {"base": None, "ov1": "base"}), ["base", "ov1"], keep=[])
    assert [(s.top, s.base) for s in plan.commits] == [("ov1", "base")]
    assert plan.active == "base"


def test_plans_are_idempotent() -> None:
    start = layers("ov2", LINEAR)
    plan = plan_disk(start, ANCHORS, keep=["ov1"])
    after = apply(start, plan)
    again = plan_disk(after, ["base", "ov2"], keep=["base"])
    assert again.remove == () and again.commits == ()


# After reverting to S1: a new overlay ovR on base; the old active image ov2 is abandoned,
# ov1 stays because S2 froze it.
BRANCHED = {"base": None, "ov1": "base", "ov2": "ov1", "ovR": "base"}


def test_revert_removes_only_the_abandoned_state() -> None:
    plan = plan_disk(layers("ovR", BRANCHED), [*ANCHORS, "ovR"], keep=["base", "ov1"])
    assert plan.remove == ("ov2",)
    assert plan.commits == ()


def test_a_branch_point_is_kept_until_one_branch_is_gone() -> None:
    after_revert = {"base": None, "ov1": "base", "ovR": "base"}
    # Delete S1: base is still read by S2 (through ov1) and by the VM (through ovR).
    plan = plan_disk(layers("ovR", after_revert), ["base", "ovR", "ov1", "ov2"], keep=["ov1"])
    assert plan.remove == () and plan.commits == ()
    # Then delete S2: nothing names base any more, but it is the VM's own image: ov1 goes
    # and the VM's overlay merges into base, back to one image.
    plan = plan_disk(layers("ovR", after_revert), ["ov1", "ov2"], keep=[])
    assert plan.remove == ("ov1",)
    assert [(s.top, s.base, s.top_is_active) for s in plan.commits] == [("ovR", "base", True)]
    assert plan.active == "base"


def test_a_shared_template_below_the_vm_is_never_touched() -> None:
    # The VM is a linked clone: its disk A is an overlay on a template other VMs share.
    backing = {"template": None, "A": "template", "ov1": "A"}
    plan = plan_disk(layers("ov1", backing), ["A", "ov1"], keep=[])
    assert [(s.top, s.base) for s in plan.commits] == [("ov1", "A")]
    assert "template" not in plan.remove
    after = apply(layers("ov1", backing), plan)
    assert plan_disk(after, ["A"], keep=[]).commits == ()  # never A into the template


def test_merges_on_another_branch_happen_offline() -> None:
    # The VM runs on ovR (a revert to S1). The other branch holds S2 (froze ov1) and S3
    # (froze ov2, whose overlay ov3 nobody needs). Deleting S2 merges ov2 into ov1 there.
    backing = {"base": None, "ov1": "base", "ov2": "ov1", "ov3": "ov2", "ovR": "base"}
    anchors = ["base", "ovR", "ov1", "ov2", "ov2", "ov3"]
    plan = plan_disk(layers("ovR", backing), anchors, keep=["base", "ov2"])
    assert plan.remove == ("ov3",)
    (step,) = plan.commits
    assert (step.top, step.base) == ("ov2", "ov1")
    assert not step.in_active_chain and not step.top_is_active
    assert plan.moved == {"ov2": "ov1"}


def test_a_merged_image_with_two_children_repoints_both() -> None:
    # C (frozen by S_c) carries the VM's chain (A, active) and another branch (B, frozen by
    # S_b). Deleting S_n, which froze N below C, commits C into N; both A and B then sit on N.
    backing = {"N": None, "C": "N", "A": "C", "B": "C"}
    plan = plan_disk(layers("A", backing), ["N", "C", "C", "B", "A"], keep=["C", "B"])
    (step,) = plan.commits
    assert (step.top, step.base) == ("C", "N")
    assert step.children == ("A", "B") and step.chain_child == "A"
    assert plan.moved == {"C": "N"}


def test_chains_of_merges_resolve_moves_transitively() -> None:
    # Two images nobody needs on top of each other (left by an earlier interrupted delete).
    backing = {"base": None, "x": "base", "y": "x", "top": "y"}
    plan = plan_disk(layers("top", backing), ["base", "x", "y", "top"], keep=["y"])
    assert [(s.top, s.base) for s in plan.commits] == [("x", "base"), ("y", "base")]
    assert plan.moved == {"x": "base", "y": "base"}
    assert plan.active == "top"


def test_reads_are_unchanged_for_the_vm_and_every_kept_snapshot() -> None:
    start = layers("ov2", LINEAR)
    plan = plan_disk(start, ANCHORS, keep=["ov1"])
    after = apply(start, plan)
    # The VM reads ov2 then (what was ov1, now in) base; S2 reads base, which holds ov1's data.
    assert reads("ov2", after.backing) == ["ov2", "base"]
    assert plan.moved["ov1"] == "base"
