"""Opening the spool a manager's settings name, with the rules a user who asked for durability
needs: a spool that cannot be used is an error at construction, not a silent fallback.

- ``spool_path``: an embedded :class:`~optimizely_odp_ext.spool.sqlite.SqliteSpool`. A missing
  directory is created (0700). A path that cannot be written, or a file that is some other
  SQLite database (left byte for byte as it is), raises :class:`SettingError` naming the path
  and the cause. A damaged spool file is renamed aside (kept byte for byte) and a fresh one
  opened; the manager logs it and shows it in ``odp_stats()["spool"]``.
- A spool held by another process (one process per SQLite spool) is not an error of the
  settings: the manager keeps events in memory, logs it, and shows it as ``locked``.
- ``spool_url``: a :class:`~optimizely_odp_ext.spool.redis_streams.RedisStreamSpool` a fleet
  shares. A bad URL or a missing ``[redis]`` extra raises :class:`SettingError`; Redis itself
  is not reached here (a Redis that is down shows in the spool's state, and events wait in
  memory within the usual limits until it is back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optimizely_odp_ext.settings import ManagerSettings, SettingError
from optimizely_odp_ext.spool.base import Spool, SpoolError, SpoolLockedError


@dataclass(frozen=True)
class SpoolProblem:
    """A configured spool the manager runs without, and why."""

    kind: str
    description: str
    state_name: str
    """``locked`` (another process holds it) or ``lost_in_fork`` (a forked child)."""
    message: str

    def state(self) -> dict[str, Any]:
        """What ``odp_stats()["spool"]`` shows."""
        return {"kind": self.kind, "state": self.state_name, "description": self.description,
                "last_error": self.message}

    @classmethod
    def lost_in_fork(cls) -> SpoolProblem:
        return cls("sqlite", "", "lost_in_fork", "ODP spool belongs to the parent process; this forked process "
                   "keeps its events in memory only.")


def open_configured_spool(settings: ManagerSettings) -> tuple[Spool | None, SpoolProblem | None]:
    """The spool ``settings`` name (or None), or the problem that keeps the manager from it.

    Blocks for opening the store.

    Raises:
        SettingError: the spool cannot be used at all (see the module docstring).
    """
    if settings.spool_url:
        from optimizely_odp_ext.spool.redis_streams import RedisStreamSpool

        return RedisStreamSpool(settings.spool_url, stream=settings.spool_stream, group=settings.spool_group,
                                claim_after=settings.claim_after), None
    path = settings.spool_path
    if not path:
        return None, None
    from optimizely_odp_ext.spool.sqlite import SqliteSpool

    try:
        return SqliteSpool(path), None
    except SpoolLockedError as error:
        return None, SpoolProblem("sqlite", path, "locked",
                                  f"ODP spool disabled, events are kept in memory only: {error}")
    except SpoolError as error:
        raise SettingError(f"spool_path {path!r}: {error}") from None
