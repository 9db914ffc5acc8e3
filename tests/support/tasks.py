"""The tasks alive on the running event loop, asyncio or trio, to catch leaks."""

from __future__ import annotations

import asyncio

import sniffio


def running_tasks() -> dict[object, str]:
    """Every unfinished task of the running loop, mapped to its name."""
    if sniffio.current_async_library() == "trio":
        import trio

        tasks: dict[object, str] = {}
        pending = [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            if task is None:
                continue
            tasks[task] = task.name
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return tasks
    return {task: task.get_name() for task in asyncio.all_tasks()}
