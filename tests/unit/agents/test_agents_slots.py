"""FairSlots: model slots handed out round-robin over tenants, FIFO within a tenant."""

from __future__ import annotations

import asyncio

import pytest

from agents.slots import FairSlots


async def _holder(slots: FairSlots, tenant: str, name: str, order: list[str], release: asyncio.Event) -> None:
    async with slots.slot(tenant):
        order.append(name)
        await release.wait()


async def test_a_flood_of_one_tenant_does_not_queue_another_behind_it() -> None:
    slots = FairSlots(1)
    order: list[str] = []
    gates = {name: asyncio.Event() for name in ["a0", "a1", "a2", "a3", "b0"]}
    tasks = [asyncio.create_task(_holder(slots, "a", name, order, gates[name])) for name in ["a0", "a1", "a2", "a3"]]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_holder(slots, "b", "b0", order, gates["b0"])))
    await asyncio.sleep(0)
    assert (order, slots.busy, slots.waiting("a"), slots.waiting("b")) == (["a0"], 1, 3, 1)
    for name in ["a0", "a1", "b0", "a2", "a3"]:
        gates[name].set()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == ["a0", "a1", "b0", "a2", "a3"]
    assert (slots.busy, slots.waiting()) == (0, 0)


async def test_a_cancelled_waiter_gives_up_its_place_and_a_granted_one_passes_the_slot_on() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.waiting() == 0
    granted = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    slots.release()  # grants c's future ...
    granted.cancel()  # ... and c is cancelled before it runs: the slot must not be lost
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert slots.busy == 0
    await asyncio.wait_for(slots.acquire("d"), 1)
    assert slots.busy == 1


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairSlots(0)
