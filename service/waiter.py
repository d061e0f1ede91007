"""Waiting for jobs to end without a database query per waiting request.

A synchronous sample request holds its connection until its job ends. With many of them at
once, one poller per app reads the states of all awaited jobs in one query per interval, so
the database sees a constant load however many clients wait.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from workers import db
from workers.records import TERMINAL, JobRecord

log = logging.getLogger("service.waiter")


def _finished(job_ids: list[str]) -> dict[str, str]:
    with db.session() as s:
        rows = s.execute(select(JobRecord.id, JobRecord.state).where(
            JobRecord.id.in_(job_ids), JobRecord.state.in_(TERMINAL)))
        return {job_id: state for job_id, state in rows}


class JobWaiter:
    def __init__(self, poll_seconds: float):
        self.poll = poll_seconds
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._task: asyncio.Task | None = None

    async def wait(self, job_id: str, timeout: float) -> str | None:
        """The job's final state, or None if it is still going after ``timeout`` seconds."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiting.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(job_id, None)

    async def _run(self) -> None:
        while self._waiting:
            try:
                done = await run_in_threadpool(_finished, list(self._waiting)[:1000])
            except Exception:  # a database blip: keep waiting, the next poll may succeed
                log.warning("polling job states failed", exc_info=True)
                done = {}
            for job_id, state in done.items():
                for future in self._waiting.pop(job_id, []):
                    if not future.done():
                        future.set_result(state)
            await asyncio.sleep(self.poll)
