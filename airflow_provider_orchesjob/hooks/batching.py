"""One remote ``orchesjob status`` per host per poll tick, however many triggers poll it.

(Reservation and flow polls, whose CLIs have no batch status, share one SSH
session per tick instead: :class:`CommandBatcher`.)

Every deferred task has its own trigger, and each poll of each trigger would be
one ``orchesjob status`` process on the host (~30 ms of CPU). Triggers in one
triggerer event loop that poll the same host with the same edge settings hand
their poll to one :class:`StatusBatcher` instead: the requests that arrive within
``WINDOW`` seconds of the first are sent as one ``orchesjob status --batch -``
call, and every caller gets back its own entry. The triggers sleep to a wall-clock
grid of their poll interval (:func:`until_next_tick`), so their polls arrive
together and one command serves them all. Each host's grid has its own phase
(:func:`tick_phase`), so the hosts' commands spread over the interval.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from ..exceptions import OrchesJobCommandError, OrchesJobConnectionError
from . import commands
from .provision import archive_missing

WINDOW = 0.05  # seconds a poll waits for others to join its batch
MAX_BATCH = 200  # entries per command
# Bytes of log data one command may return: the sum over its entries of what each may
# carry (``max_bytes`` per requested stream, default 64 KiB on the host). base64 and JSON
# escaping can make the reply up to ~2x this; it stays a few MiB however many poll.
MAX_BATCH_LOG_BYTES = 4 << 20
DEFAULT_CHUNK_BYTES = 65536
ENTRY_OVERHEAD = 2048  # the job JSON of an entry without log data, generously
# The least a stream gets when the polls of one tick share MAX_BATCH_LOG_BYTES: what a
# poll does not get now it gets at its next one (a finished job's at once, see the trigger).
MIN_SHARE_BYTES = 16384


def request_cost(request: dict[str, Any]) -> int:
    """The most log bytes the host may put into the entry for ``request``, plus its JSON."""
    per_stream = int(request.get("max_bytes") or DEFAULT_CHUNK_BYTES)
    streams = sum(1 for key in ("stdout_offset", "stderr_offset") if request.get(key) is not None)
    return ENTRY_OVERHEAD + streams * per_stream


def fit_to_budget(requests: list[dict[str, Any]], budget: int | None = None) -> list[dict[str, Any]]:
    """``requests`` with any ``max_bytes`` above a fair share of one command's ``budget`` lowered to it.

    Each poll asks for up to 64 KiB per stream by default, so a tick of 50 polls of one host
    would be split over two commands by its worst case (31 x 2 x 64 KiB fill the 4 MiB) although
    lines-per-second jobs send a few hundred bytes. Sharing the budget instead keeps such a tick
    in one command; the share never drops below ``MIN_SHARE_BYTES`` (then the batch is split).
    Requests within the share are returned as they are; lowered ones are copies.
    """
    budget = MAX_BATCH_LOG_BYTES if budget is None else budget
    if not requests or sum(request_cost(r) for r in requests[:MAX_BATCH]) <= budget:
        return requests
    sharing = min(len(requests), MAX_BATCH)
    share = max(MIN_SHARE_BYTES, (budget // sharing - ENTRY_OVERHEAD) // 2)
    return [{**r, "max_bytes": share} if request_cost(r) > ENTRY_OVERHEAD + 2 * share else r for r in requests]


def split_batches(
    requests: list[Any], *, cost: Any = request_cost, max_entries: int | None = None, max_bytes: int | None = None
) -> list[list[Any]]:
    """Consecutive groups of ``requests``, each at most ``max_entries`` long and ``max_bytes`` in summed cost.

    A single request that alone exceeds ``max_bytes`` still gets a group of its own.
    Defaults: :data:`MAX_BATCH` and :data:`MAX_BATCH_LOG_BYTES`.
    """
    max_entries = MAX_BATCH if max_entries is None else max_entries
    max_bytes = MAX_BATCH_LOG_BYTES if max_bytes is None else max_bytes
    groups: list[list[Any]] = []
    current: list[Any] = []
    spent = 0
    for request in requests:
        c = cost(request)
        if current and (len(current) >= max_entries or spent + c > max_bytes):
            groups.append(current)
            current, spent = [], 0
        current.append(request)
        spent += c
    if current:
        groups.append(current)
    return groups


def until_next_tick(interval: float, now: float | None = None, phase: float = 0.0) -> float:
    """Seconds until the next instant ``phase + k * interval`` on the wall clock (always > 0).

    Triggers with the same poll interval and phase then wake at the same instants, in
    any triggerer process, so their polls land in one batch.
    """
    if interval <= 0:
        return 0.0
    now = time.time() if now is None else now
    return interval - ((now - phase) % interval)


def tick_phase(target: tuple, interval: float) -> float:
    """Where within each ``interval`` the polls of one host fall, from what names it (``target``).

    ``target`` holds plain values (strings, numbers, None) that every trigger polling that
    host with those edge settings has alike, e.g. its connection id, host override and
    state home. The phase is the same for all of them in every triggerer process (a CRC
    of the values, not Python's salted ``hash``), so they still share one command per
    tick; different hosts land at different points of the interval, so a triggerer
    polling many hosts does not send every host its command, and parse every reply, in
    the same instant.
    """
    import zlib

    return zlib.crc32(repr(target).encode()) / 2**32 * interval if interval > 0 else 0.0


class StatusBatcher:
    """Collects status requests for one host and sends them as batched commands.

    ``hook`` is any :class:`~airflow_provider_orchesjob.hooks.orchesjob.OrchesJobHook`
    for that host and those edge settings; its ``arun_cli`` retries connection
    failures, and a failure that survives the retries is raised to every caller of
    that batch, who handle it exactly as they would their own.
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.commands_sent = 0
        self.requests_served = 0

    async def poll(self, request: dict[str, Any]) -> dict[str, Any]:
        """The host's entry for ``request`` (a :func:`commands.status_request`), raw."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((request, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_after_window())
        return await future

    async def _flush_after_window(self) -> None:
        await asyncio.sleep(WINDOW)
        pending, self._pending, self._flusher = self._pending, [], None
        live = [(request, future) for request, future in pending if not future.done()]  # cancelled callers
        fitted = fit_to_budget([request for request, _ in live])
        live = [(request, future) for request, (_, future) in zip(fitted, live, strict=True)]
        groups = split_batches(live, cost=lambda item: request_cost(item[0]), max_entries=MAX_BATCH,
                               max_bytes=MAX_BATCH_LOG_BYTES)  # fmt: skip
        await asyncio.gather(*(self._send(group) for group in groups))

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        self.commands_sent += 1
        try:
            entries = await self.hook.arun_cli(
                commands.job_status_batch(), stdin=json.dumps([request for request, _ in batch]).encode()
            )
            if not isinstance(entries, list) or len(entries) != len(batch):
                raise OrchesJobCommandError(f"orchesjob status --batch answered {len(batch)} lookups with {entries!r}")
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(_copy(exc))
            if not isinstance(exc, Exception):
                raise  # cancellation of the loop: let it through after telling the waiters
            return
        self.requests_served += len(batch)
        for (_, future), entry in zip(batch, entries, strict=True):
            if not future.done():
                future.set_result(entry)


def _copy(exc: BaseException) -> BaseException:
    # Each waiter raises its own copy, so concurrent raises do not share one traceback.
    try:
        return copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is shared instead
        return exc


# Per event loop, like the shared SSH connections (transport.py): weakly keyed by the
# loop, so a finished loop takes its batchers with it.
_BATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, StatusBatcher]] = (
    weakref.WeakKeyDictionary()
)


def _batcher_for(registry: weakref.WeakKeyDictionary, cls: type, hook: Any) -> Any:
    """The ``cls`` batcher of this event loop for the hook's host and edge settings (made on first use)."""
    per_loop = registry.setdefault(asyncio.get_running_loop(), {})
    key = hook.target_key()
    batcher = per_loop.get(key)
    if batcher is None:
        batcher = per_loop[key] = cls(hook)
    return batcher


def status_batcher(hook: Any) -> StatusBatcher:
    """The status batcher of this event loop for the hook's host and edge settings."""
    return _batcher_for(_BATCHERS, StatusBatcher, hook)


MAX_SCRIPT_COMMANDS = 20  # commands per shared session: they run one after another on the host


class CommandBatcher:
    """Runs the read-only CLI calls that arrive within ``WINDOW`` for one host in one SSH session.

    ``orchesjob-reserver status`` and ``orchesjob-flow status`` take one run key
    each and have no batch form, so N pollers still cost N processes on the host;
    what they share is the SSH session (one channel, one shell) per tick, and an
    identical call made by several pollers runs once. Only for commands that are
    safe to resend (reads).
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self._pending: list[tuple[tuple[str, ...], Sequence[int], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.sessions_used = 0
        self.commands_run = 0
        self.calls_served = 0

    async def call(self, argv: Sequence[str], ok_codes: Sequence[int] = (0,)) -> Any:
        """The parsed JSON of ``argv``, or the named exception it raised (a copy per caller)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((tuple(argv), tuple(ok_codes), future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_after_window())
        return await future

    async def _flush_after_window(self) -> None:
        await asyncio.sleep(WINDOW)
        pending, self._pending, self._flusher = self._pending, [], None
        by_call: dict[tuple, list[asyncio.Future]] = {}
        for argv, ok_codes, future in pending:
            if not future.done():
                by_call.setdefault((argv, ok_codes), []).append(future)
        calls = list(by_call.items())
        groups = [calls[i : i + MAX_SCRIPT_COMMANDS] for i in range(0, len(calls), MAX_SCRIPT_COMMANDS)]
        await asyncio.gather(*(self._send(group) for group in groups))

    async def _send(self, group: list[tuple[tuple, list[asyncio.Future]]]) -> None:
        from .orchesjob import check_result
        from .transport import CommandResult

        self.sessions_used += 1
        marker = "OJB" + uuid.uuid4().hex
        try:
            lines = [self.hook.command_line(argv) for (argv, _), _ in group]
            parts = await self._run(commands.batch_script(lines, marker), marker, len(group))
            if any(part is not None and archive_missing(part[0], part[2]) for part in parts):
                # A provisioned host without the runtime archive ran none of these reads: one upload
                # serves every caller of the group, then the group is sent again.
                await self.hook.aprovision_runtime()
                parts = await self._run(commands.batch_script(lines, marker), marker, len(group))
        except BaseException as exc:
            for _, futures in group:
                for future in futures:
                    if not future.done():
                        future.set_exception(_copy(exc))
            if not isinstance(exc, Exception):
                raise
            return
        self.commands_run += len(group)
        for ((argv, ok_codes), futures), part in zip(group, parts, strict=True):
            try:
                if part is None:
                    raise OrchesJobConnectionError(f"the shared session ended before {argv[0]} {argv[1]} finished",
                                                   sent=True)  # fmt: skip
                code, out, err = part
                value: Any = check_result(argv, CommandResult(code, out, err), self.hook.host_label(), ok_codes)
                error: BaseException | None = None
            except Exception as exc:  # noqa: BLE001 - handed to the callers
                value, error = None, exc
            for future in futures:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(_copy(error))
                else:
                    self.calls_served += 1
                    future.set_result(copy.deepcopy(value) if len(futures) > 1 else value)

    async def _run(self, script: str, marker: str, count: int) -> list[tuple[int, bytes, bytes] | None]:
        result = await self.hook.arun_script(script)
        return commands.split_batch_output(result.stdout, result.stderr, marker, count)


_COMMAND_BATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, CommandBatcher]] = (
    weakref.WeakKeyDictionary()
)


def command_batcher(hook: Any) -> CommandBatcher:
    """The command batcher of this event loop for the hook's host and edge settings."""
    return _batcher_for(_COMMAND_BATCHERS, CommandBatcher, hook)
