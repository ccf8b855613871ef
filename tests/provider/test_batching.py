"""Batched polling (hooks/batching.py) against the real CLIs on this machine (local transport)."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_orchesjob.exceptions import OrchesJobNotFound, OrchesJobRuntimeMissing
from airflow_provider_orchesjob.hooks import OrchesJobHook, batching
from airflow_provider_orchesjob.hooks.batching import status_batcher, tick_phase, until_next_tick
from tests.conftest import BIN_DIR


@pytest.mark.parametrize(
    ("interval", "now", "expected"),
    [(5, 12.25, 2.75), (5, 15.0, 5.0), (0.5, 100.1, 0.4), (30, 0.0, 30.0), (0, 7.0, 0.0)],
)
def test_until_next_tick_lands_on_the_wall_clock_grid(interval, now, expected):
    wait = until_next_tick(interval, now)
    assert wait == pytest.approx(expected)
    if interval:
        assert 0 < wait <= interval and (now + wait) % interval == pytest.approx(0, abs=1e-9)


def test_each_host_polls_on_its_own_phase_of_the_grid_the_same_in_every_process():
    hosts = [("ssh", "edge", "edge", 2200 + i, "airflow", None, None, None, None) for i in range(40)]
    phases = [tick_phase(h, 5.0) for h in hosts]
    assert all(0 <= p < 5.0 for p in phases)
    assert tick_phase(hosts[3], 5.0) == phases[3], "one host, one phase"
    assert len({round(p, 6) for p in phases}) == 40, "hosts spread over the interval"
    assert max(phases) - min(phases) > 2.5
    # Stable across processes (not Python's salted hash): another interpreter agrees.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "from airflow_provider_orchesjob.hooks.batching import tick_phase; "
         f"print(repr(tick_phase({hosts[7]!r}, 5.0)))"],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert float(out.stdout) == phases[7]
    wait = until_next_tick(5.0, now=1000.0, phase=phases[7])
    assert 0 < wait <= 5.0 and (1000.0 + wait - phases[7]) % 5.0 == pytest.approx(0, abs=1e-9)


@pytest.fixture
def local_hook(tmp_path):
    def make(home=tmp_path / "edge", bin_dir=BIN_DIR):
        return OrchesJobHook(None, orchesjob_home=str(home), bin_dir=str(bin_dir))

    return make


def test_concurrent_polls_share_one_command_and_get_their_own_entries(local_hook):
    hook = local_hook()
    ids = {key: hook.start_job(key, ["sh", "-c", f"printf {key}"], sync=True)["job_id"] for key in ("a", "b", "c")}

    async def scenario():
        hooks = [local_hook() for _ in range(12)]  # like 12 triggers for one host in one triggerer
        polls = [h.ajob_poll(key, stdout_offset=1) for h, key in zip(hooks, "abcabcabcabc", strict=True)]
        polls.append(hooks[0].ajob_poll(job_id=ids["b"]))
        polls.append(hooks[1].ajob_poll("missing"))
        results = await asyncio.gather(*polls, return_exceptions=True)
        return results, status_batcher(hooks[0])

    results, batcher = asyncio.run(scenario())
    assert batcher.commands_sent == 1 and batcher.requests_served == 14
    for key, job in zip("abcabcabcabc", results[:12], strict=True):
        assert job["job_id"] == ids[key] and job["status"] == "SUCCEEDED"
        assert job["stdout_chunk"]["data"] == key[1:] and job["stdout_chunk"]["next_offset"] == 1
    assert results[12]["run_key"] == "b" and "stdout_chunk" not in results[12]
    # A missing job fails only its own caller, with the same exception as an unbatched status.
    assert isinstance(results[13], OrchesJobNotFound) and "missing" in str(results[13])


def test_batches_are_per_target_and_split_above_max_batch(local_hook, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "MAX_BATCH", 4)
    one, other = local_hook(tmp_path / "one"), local_hook(tmp_path / "other")
    one.start_job("k", ["true"], sync=True)
    other.start_job("k", ["false"], sync=True)

    async def scenario():
        polls = [local_hook(tmp_path / "one").ajob_poll("k") for _ in range(10)]
        polls += [local_hook(tmp_path / "other").ajob_poll("k") for _ in range(3)]
        results = await asyncio.gather(*polls)
        return results, status_batcher(one), status_batcher(other)

    results, b_one, b_other = asyncio.run(scenario())
    assert [r["status"] for r in results] == ["SUCCEEDED"] * 10 + ["FAILED"] * 3
    assert (b_one.commands_sent, b_one.requests_served) == (3, 10)  # 4 + 4 + 2
    assert (b_other.commands_sent, b_other.requests_served) == (1, 3)


def test_a_failed_command_fails_every_caller_with_its_own_exception(local_hook, tmp_path):
    empty = tmp_path / "no-runtime"
    empty.mkdir()

    async def scenario():
        return await asyncio.gather(*(local_hook(bin_dir=empty).ajob_poll("k") for _ in range(3)),
                                    return_exceptions=True)  # fmt: skip

    errors = asyncio.run(scenario())
    assert all(isinstance(e, OrchesJobRuntimeMissing) for e in errors)
    assert len({id(e) for e in errors}) == 3


def test_a_cancelled_caller_does_not_disturb_the_batch(local_hook):
    local_hook().start_job("k", ["true"], sync=True)

    async def scenario():
        hooks = [local_hook() for _ in range(3)]
        doomed = asyncio.ensure_future(hooks[0].ajob_poll("k"))
        others = [asyncio.ensure_future(h.ajob_poll("k")) for h in hooks[1:]]
        await asyncio.sleep(0)
        doomed.cancel()
        results = await asyncio.gather(*others)
        return doomed.cancelled(), results, status_batcher(hooks[1])

    cancelled, results, batcher = asyncio.run(scenario())
    assert cancelled and [r["status"] for r in results] == ["SUCCEEDED", "SUCCEEDED"]
    assert batcher.commands_sent == 1 and batcher.requests_served == 2


def test_each_event_loop_has_its_own_batcher(local_hook):
    local_hook().start_job("k", ["true"], sync=True)

    async def one_poll():
        await local_hook().ajob_poll("k")
        return status_batcher(local_hook())

    first, second = asyncio.run(one_poll()), asyncio.run(one_poll())
    assert first is not second and first.commands_sent == second.commands_sent == 1


def test_a_crowded_tick_shares_the_byte_budget_in_one_command(local_hook):
    # 50 polls asking for 64 KiB per stream each: by their worst case (50 x 2 x 64 KiB) two commands,
    # but lines-per-second jobs send a few bytes. One command, each poll getting a fair share.
    hook = local_hook()
    big = "x\n" * 32768
    hook.start_job("big", ["sh", "-c", f"yes x | head -c {len(big)}"], sync=True)
    hook.start_job("small", ["sh", "-c", "echo tick"], sync=True)
    share = (batching.MAX_BATCH_LOG_BYTES // 50 - batching.ENTRY_OVERHEAD) // 2
    assert batching.MIN_SHARE_BYTES <= share < len(big)

    async def scenario():
        polls = [local_hook().ajob_poll("big", stdout_offset=0, stderr_offset=0)]
        polls += [local_hook().ajob_poll("small", stdout_offset=0, stderr_offset=0) for _ in range(49)]
        results = await asyncio.gather(*polls)
        return results, status_batcher(hook)

    results, batcher = asyncio.run(scenario())
    assert (batcher.commands_sent, batcher.requests_served) == (1, 50)
    chunk = results[0]["stdout_chunk"]
    assert (chunk["next_offset"], chunk["size"], chunk["data"]) == (share, len(big), big[:share])
    assert all(r["stdout_chunk"]["data"] == "tick\n" for r in results[1:])
    # The rest comes with the next poll, from where this one stopped.
    rest = asyncio.run(local_hook().ajob_poll("big", stdout_offset=share, stderr_offset=0))
    assert rest["stdout_chunk"]["data"] == big[share:]


def test_fit_to_budget_lowers_only_what_exceeds_the_share_and_never_below_the_floor():
    plain = {"run_key": "k"}  # no log streams: nothing to lower
    asks = [{"run_key": "k", "stdout_offset": 0, "stderr_offset": 0, "max_bytes": b} for b in (1000, 65536)]
    assert batching.fit_to_budget([*asks, plain]) == [*asks, plain]  # within budget: unchanged
    fitted = batching.fit_to_budget([asks[1]] * 10 + [asks[0], plain], budget=600_000)
    share = (600_000 // 12 - batching.ENTRY_OVERHEAD) // 2
    assert [r.get("max_bytes") for r in fitted] == [share] * 10 + [1000, None]
    assert asks[1]["max_bytes"] == 65536  # the callers' requests are not changed
    floor = batching.fit_to_budget([asks[1]] * 100, budget=100_000)
    assert {r["max_bytes"] for r in floor} == {batching.MIN_SHARE_BYTES}
    assert len(batching.split_batches(floor, max_bytes=100_000)) > 1  # the floor holds: split instead
