"""Calls a user function the way the host does, with one log line per invocation."""

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("localrun.functions")


class InvocationFailed(Exception):
    """The function raised; the cause is chained and already logged."""


def invoke(function_name: str, user_function: Callable[..., Any], **arguments: Any) -> Any:
    """Runs the function (awaiting it when it is async) and logs `Executed 'Functions.<name>'`."""
    started = time.perf_counter()
    try:
        result = user_function(**arguments)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
    except Exception as exc:
        log.error(_executed(function_name, "Failed", started), exc_info=True)
        raise InvocationFailed(function_name) from exc
    log.info(_executed(function_name, "Succeeded", started))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _executed(function_name: str, outcome: str, started: float) -> str:
    duration_ms = round((time.perf_counter() - started) * 1000)
    return f"Executed 'Functions.{function_name}' ({outcome}, Duration={duration_ms}ms)"
