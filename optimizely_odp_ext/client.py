"""``OdpOptimizely``: the official client, plus ODP events that arrive."""

from __future__ import annotations

import inspect
import itertools
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from optimizely import logger as sdk_logging
from optimizely.helpers import enums
from optimizely.optimizely import Optimizely

from optimizely_odp_ext import compat, notifications
from optimizely_odp_ext.event import DEFAULT_EVENT_TYPE, InvalidEventError, OdpEvent, build_event
from optimizely_odp_ext.integration import IntegrationEntry, IntegrationState, OdpIntegration, mask_key
from optimizely_odp_ext.logs import LogRateLimiter, count_value
from optimizely_odp_ext.managers import lifecycle  # see below
from optimizely_odp_ext.managers.base import DEFAULT_FLUSH_TIMEOUT, EventManager, wait_limit
from optimizely_odp_ext.notifications import OdpNotificationCenter
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.sdk_adapter import OfficialEventManagerBridge, SdkEventManagerAdapter
from optimizely_odp_ext.settings import ManagerSettings, SettingError, odp_disabled_by_environment

if TYPE_CHECKING:
    from optimizely_odp_ext.managers.batch import BatchEventManager

HELD_CAPACITY = 10_000
"""Events held while the datafile is not there yet; beyond it, sdkNotReady."""

STATS_KEYS = ("accepted", "delivered", "dropped", "dropped_total", "refused", "refused_total", "queued",
              "queued_bytes", "in_flight", "held_for_datafile", "requests", "batches_sent", "retries")
"""The keys ``odp_stats()`` always has (plus ``spool`` with a spool), as the README documents them."""

# optimizely-sdk 5.x's wording for refusals that come from the event manager, kept as the start
# of our lines (users grep for them), with the official level.
_OFFICIAL_PREFIXES = {
    DiscardReason.QUEUE_FULL: "ODP event send failed (Queue is full).",
    DiscardReason.CLOSED: "ODP event queue is shutdown, not accepting events.",
}
_WARNING_REASONS = frozenset({DiscardReason.QUEUE_FULL, DiscardReason.CLOSED})
"""Refusals the official client logs at WARNING; every other refusal is an ERROR, as there."""
_NOT_INTEGRATED = "ODP is not integrated."
_NOT_ENABLED = "ODP is not enabled."

_BASE_PARAMETERS = inspect.signature(Optimizely.__init__)

# ``lifecycle`` is imported above, not with the manager it serves (built on first use): its
# ``atexit`` hook, which delivers what managers hold at exit, must be registered before any the
# application registers, so that it runs after them (atexit runs the last registered first) and
# an event an application's own exit hook sends is still delivered.


class OdpOptimizely(Optimizely):
    """``optimizely.optimizely.Optimizely`` with ODP events that are delivered.

    Takes every argument of the installed SDK's ``Optimizely`` unchanged, plus:

    Args:
        odp_event_manager: what delivers events (an :class:`EventManager`); default a
            :class:`BatchEventManager` configured from ``OptimizelySdkSettings`` (5.x:
            ``odp_event_flush_interval``, ``odp_event_request_timeout``), then the
            ``OPTIMIZELY_ODP_*`` variables. Wins over ``OptimizelySdkSettings(odp_event_manager=...)``.
            Without a spool the default manager is built on first use (the first event sent,
            ``odp_stats()`` or reading ``odp_event_manager``): construction checks its settings
            and loads none of its code.
        odp_disabled: switch ODP off (as do ``OPTIMIZELY_ODP_DISABLED=1`` and, on
            optimizely-sdk 5.x, ``OptimizelySdkSettings(odp_disabled=True)``; any one suffices).

    A caller's official-style manager in ``OptimizelySdkSettings(odp_event_manager=...)`` is
    used as the official client uses it, behind this package's validation.

    The ODP integration (host and public key) comes from the datafile and follows its
    updates. ``send_odp_event`` is thread-safe and never blocks or raises.
    """

    def __init__(self, *args: Any, odp_event_manager: EventManager | None = None,
                 odp_disabled: bool = False, **kwargs: Any) -> None:
        arguments = _BASE_PARAMETERS.bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        self._odp_closed = False
        self._datafile_may_come = True
        self._odp: tuple[IntegrationState, OdpIntegration | None] = (IntegrationState.UNDETERMINED, None)
        self._odp_problem: str | None = None
        self._start_counting()
        lifecycle.track(self, exits_first=True)
        startup_notes: list[str] = []

        sdk = compat.sdk_odp_settings(arguments.get("settings"))
        self.odp_enabled = not (odp_disabled or odp_disabled_by_environment() or sdk.disabled)
        self._manager: EventManager | None = None
        self._unbuilt: ManagerSettings | None = None
        """The default manager's settings until it is built (see :attr:`odp_event_manager`)."""
        self._build_closed = False
        """close() found the default manager unbuilt: one built later is closed at once."""
        base_manager: Any = None  # what the 5.x base client's OdpManager gets (None: the caller's own)
        if odp_event_manager is not None:
            if sdk.event_manager is not None:
                startup_notes.append("OptimizelySdkSettings.odp_event_manager is not used: the odp_event_manager "
                                     "given to OdpOptimizely wins.")
            if sdk.flush_interval is not None or sdk.request_timeout is not None:
                startup_notes.append("OptimizelySdkSettings odp_event_flush_interval/odp_event_request_timeout "
                                     "do not apply to the odp_event_manager given to OdpOptimizely.")
        if self.odp_enabled:
            if odp_event_manager is not None:
                self._manager = odp_event_manager
            elif sdk.event_manager is not None:
                self._manager = OfficialEventManagerBridge(sdk.event_manager)
            else:
                self._unbuilt = _default_settings(sdk, startup_notes)
                if self._unbuilt.spool_path or self._unbuilt.spool_url:  # its backlog is delivered from now
                    self._manager, self._unbuilt = _build_default(self._unbuilt), None
        if odp_event_manager is not None or sdk.event_manager is None:
            base_manager = SdkEventManagerAdapter(self)
        if arguments.get("notification_center") is None:
            logger = sdk_logging.adapt_logger(arguments.get("logger") or sdk_logging.NoOpLogger())
            arguments["notification_center"] = OdpNotificationCenter(logger)
        if compat.HAS_NATIVE_ODP:
            arguments["settings"] = compat.base_settings(arguments.get("settings"), base_manager,
                                                         disabled=not self.odp_enabled)

        super().__init__(**arguments)

        if not self.is_valid:
            return
        for note in startup_notes:
            self.logger.warning(note)
        self._datafile_may_come = compat.can_receive_datafile(self.config_manager)
        if not self.odp_enabled:
            if not compat.HAS_NATIVE_ODP:  # 5.x's own OdpManager says it once already
                self.logger.info("ODP is disabled.")
            return
        config_center = getattr(self.config_manager, "notification_center", None) or self.notification_center
        config_center.add_notification_listener(
            enums.NotificationTypes.OPTIMIZELY_CONFIG_UPDATE, self._on_datafile_update
        )
        known = self._read_integration_or_log()
        if self._manager is not None:
            self._manager.start(logger=self.logger, notification_center=self.notification_center,
                                integration=known[1].integration if known else None)
        if known:
            self._apply_integration(*known)

    def _start_counting(self) -> None:
        """The client's own state of held and counted events, from nothing."""
        self._odp_lock = threading.Condition()
        self._held: deque[OdpEvent] = deque()
        self._releasing = 0
        self._accepted = itertools.count()
        """``next()`` on it is atomic under the GIL: the accepting path takes no lock."""
        self._refused = {reason: itertools.count() for reason in DiscardReason}
        self._dropped: Counter[str] = Counter()
        """Held events this client gave up, by reason (under ``_odp_lock``)."""
        self._parked = 0
        """Held events a spool kept at close for the next start (a datafile never came)."""
        self._refusal_log = LogRateLimiter()

    # -- fork and interpreter exit (managers/lifecycle.py) ---------------------------------------
    def after_fork_in_child(self) -> None:
        """A forked child counts from nothing, as its manager starts afresh: what was accepted
        before the fork, events held for the datafile included, is the parent's to deliver."""
        self._start_counting()

    def at_exit(self, started: float) -> None:
        """At interpreter exit without ``close()``, before the managers deliver what they hold:
        events still held for a datafile that never came are offered to the manager's ``park``,
        the rest dropped (``sdkNotReady``), counted, announced and logged, as ``close()`` does."""
        if not self._odp_closed:
            self._give_up_held(self._manager)

    # -- the event manager ---------------------------------------------------------------------
    @property
    def odp_event_manager(self) -> EventManager | None:
        """What delivers this client's ODP events; None when ODP is off. The default manager
        without a spool is built here on first use, started with the SDK's logger and
        notification center and the current integration. Thread-safe."""
        if self._unbuilt is not None:  # read first: a build sets _manager, then clears _unbuilt
            return self._build_manager()
        return self._manager

    def _build_manager(self) -> EventManager:
        """Build and start the default manager, then keep it unless another thread kept one
        first. Under the lock only attributes change: loading the manager's code, or its logger,
        may switch green threads, and a lock made before monkey-patching (``gunicorn --preload``)
        does not keep other green threads out of a block that switches."""
        settings = self._unbuilt
        if settings is not None:
            seen = state, integration = self._odp
            built = _build_default(settings)
            built.start(logger=self.logger, notification_center=self.notification_center, integration=integration)
            if state is not IntegrationState.UNDETERMINED:
                built.integration_changed(integration)
            with self._odp_lock:
                kept = self._manager is None
                if kept:
                    self._manager, self._unbuilt = built, None
                now, closed = self._odp, self._build_closed
            if not kept or closed:  # another one was kept (this one got no event), or asked for after close()
                built.close(0)
            elif now != seen:  # the datafile changed meanwhile: _apply_integration saw no manager
                self._tell_integration(built)
        manager = self._manager
        assert manager is not None
        return manager

    def _manager_or_none(self) -> EventManager | None:
        """:attr:`odp_event_manager`, or None (logged) where the default one could not be built:
        for the paths that must go on without it (releasing held events, close, stats)."""
        try:
            return self.odp_event_manager
        except Exception as error:
            self.logger.error(f"ODP event manager could not be built: {type_name(error)}.")
            return None

    # -- the ODP integration -----------------------------------------------------------------
    @property
    def odp_state(self) -> IntegrationState:
        """UNDETERMINED (no datafile yet), INTEGRATED or NOT_INTEGRATED."""
        return self._odp[0]

    @property
    def odp_integration(self) -> OdpIntegration | None:
        """The integration new events go to, or None."""
        return self._odp[1]

    def _read_integration(self) -> tuple[IntegrationState, IntegrationEntry]:
        """The state and integration of the config manager's current datafile."""
        config = compat.current_project_config(self.config_manager)
        if config is None:
            return (IntegrationState.UNDETERMINED, IntegrationEntry(None))
        entry = compat.integration_entry_of(config)
        return (IntegrationState.INTEGRATED if entry.integration else IntegrationState.NOT_INTEGRATED, entry)

    def _read_integration_or_log(self) -> tuple[IntegrationState, IntegrationEntry] | None:
        try:
            return self._read_integration()
        except Exception as error:
            self.logger.error(f"ODP integration could not be read from the datafile: {type(error).__name__}.")
            return None

    def _on_datafile_update(self) -> None:
        """OPTIMIZELY_CONFIG_UPDATE: pick up an integration added, changed or removed."""
        if isinstance(self._manager, OfficialEventManagerBridge):
            try:  # the caller's manager must know the new config before held events reach it
                compat.sync_base_odp_config(self)
            except Exception as error:
                self.logger.error(f"ODP config could not be updated: {type(error).__name__}.")
        known = self._read_integration_or_log()
        if known:
            self._apply_integration(*known)

    def _apply_integration(self, state: IntegrationState, entry: IntegrationEntry) -> None:
        """Make ``entry``'s integration the one new events go to, and hand over held events."""
        if state is IntegrationState.UNDETERMINED:
            return
        integration = entry.integration
        with self._odp_lock:
            if self._odp == (state, integration) and self._odp_problem == entry.problem:
                return
            self._odp = (state, integration)
            manager = self._manager  # not built yet: it is built with this integration
            self._odp_problem = entry.problem
            held = list(self._held)
            self._held.clear()
            self._releasing += 1  # flush() waits for these as it waits for held events
        try:
            if manager is not None:
                self._tell_integration(manager)
            self._release_held(held, integration)  # outside the lock: a manager may send here
        finally:
            with self._odp_lock:
                self._releasing -= 1
                self._odp_lock.notify_all()
        if entry.problem is not None:
            self.logger.error(f"ODP integration in the datafile is malformed ({entry.problem}); "
                              "ODP counts as not integrated and events will not be sent.")
        elif integration is None:
            self.logger.info("ODP is not integrated in this datafile; ODP events will not be sent.")
        else:
            self.logger.info(f"ODP integration: host {integration.host}, key {mask_key(integration.api_key)}.")
            if integration.is_plain_http_remote:
                self.logger.warning(f"ODP host {integration.host} is plain http:// and not on this machine: "
                                    "events and the API key travel unencrypted.")

    def _tell_integration(self, manager: EventManager) -> None:
        """Tell ``manager`` the integration new events go to now. Two threads may tell it at
        once (a datafile update and the first event building the manager), and the one that
        read the older integration may be heard last: each tells the current one, and again
        while it changed meanwhile, so the last one the manager hears is the current one. No
        lock is held while the manager is told (it may log, and switch green threads)."""
        told = self._odp[1]
        manager.integration_changed(told)
        while self._odp[1] != told:
            told = self._odp[1]
            manager.integration_changed(told)

    def _release_held(self, held: list[OdpEvent], integration: OdpIntegration | None) -> None:
        """Held events go to ``integration``; with none, or where the manager refuses them, they
        are dropped (they were accepted): counted, announced and logged."""
        if not held:
            return
        if integration is None:
            self._drop_held(DiscardReason.ODP_NOT_INTEGRATED, len(held),
                            "sent before the datafile was ready are dropped: ODP is not integrated")
            return
        manager = self._manager_or_none()
        if manager is None:  # the default one could not be built: these are accounted for
            self._drop_held(DiscardReason.INTERNAL_ERROR, len(held), "held for the datafile had no event manager")
            return
        refused: Counter[DiscardReason] = Counter()
        for event in held:
            event.integration = integration
            try:
                result = manager.send(event)
            except Exception:  # a custom manager that raises loses this event, not the rest
                result = SendResult.discarded(DiscardReason.INTERNAL_ERROR, "")
            if not result.accepted:
                refused[result.reason or DiscardReason.INTERNAL_ERROR] += 1
        for reason, count in refused.items():
            self._drop_held(reason, count, "held for the datafile were refused by the event manager")

    def _drop_held(self, reason: DiscardReason, count: int, what: str) -> None:
        with self._odp_lock:
            self._dropped[reason.value] += count
        self.logger.error(f"{count} ODP events {what} ({reason.value}).")
        notifications.fire(self.notification_center, [(notifications.ODP_EVENTS_DROPPED, (reason.value, count))])

    # -- sending -------------------------------------------------------------------------------
    def send_odp_event(  # type: ignore[override]  # the base returns None; ours a truthy/falsy result
        self, action: str, identifiers: dict[str, Any], type: str = DEFAULT_EVENT_TYPE,
        data: dict[str, Any] | None = None,
    ) -> SendResult:
        """Send an event to ODP (same parameters as optimizely-sdk 5.x).

        Returns a result that is truthy when the event was accepted for delivery, and
        otherwise falsy with a ``reason`` (:class:`DiscardReason`) and the full ``message``.
        Every refusal is counted in ``odp_stats()["refused"]`` and logged, repeated lines
        of one reason at most once per 10 s plus a count. Never raises, never blocks, never
        changes ``identifiers`` or ``data``. Thread-safe.
        """
        try:
            result = self._send(action, identifiers, type, data)
        except Exception as error:  # nothing raises into the host app
            result = SendResult.discarded(
                DiscardReason.INTERNAL_ERROR, f"ODP event could not be sent (internal error: {type_name(error)}).")
        if result.accepted:
            next(self._accepted)
            return result
        return self._refuse(result)

    def _send(self, action: object, identifiers: object, type: object, data: object) -> SendResult:
        if self._odp_closed:
            return _client_closed()
        if not self.is_valid:
            return SendResult.discarded(DiscardReason.SDK_NOT_READY,
                                        enums.Errors.INVALID_OPTIMIZELY.format("send_odp_event"))
        try:
            event = build_event(action, identifiers, type, data)
        except InvalidEventError as invalid:
            return SendResult.discarded(invalid.reason, invalid.message)
        unbuilt = self._unbuilt  # read first: a build sets _manager, then clears _unbuilt
        manager = self._manager
        if manager is None and unbuilt is None:
            return SendResult.discarded(DiscardReason.ODP_NOT_ENABLED, _NOT_ENABLED)
        state, integration = self._odp
        if integration is not None:
            event.integration = integration
            return (manager if manager is not None else self._build_manager()).send(event)
        return self._hold_or_refuse(event, state)

    def _hold_or_refuse(self, event: OdpEvent, state: IntegrationState) -> SendResult:
        """No integration: hold the event until the datafile, or say why not."""
        if state is IntegrationState.UNDETERMINED:
            if not self._datafile_may_come:
                return SendResult.discarded(DiscardReason.SDK_NOT_READY,
                                            enums.Errors.INVALID_PROJECT_CONFIG.format("send_odp_event"))
            with self._odp_lock:
                if self._odp_closed:  # close() began since _send looked: it gives up the held events
                    return _client_closed()
                if self._odp[0] is IntegrationState.UNDETERMINED:
                    if len(self._held) >= HELD_CAPACITY:
                        return SendResult.discarded(
                            DiscardReason.SDK_NOT_READY,
                            f"{enums.Errors.INVALID_PROJECT_CONFIG.format('send_odp_event')} The datafile is not "
                            f"ready and {HELD_CAPACITY} ODP events are already held for it.")
                    self._held.append(event)
                    return ACCEPTED
            state, integration = self._odp  # the datafile just arrived
            manager = self.odp_event_manager if integration is not None else None  # built only to send
            if manager is not None:
                event.integration = integration
                return manager.send(event)
        if self._odp_problem is not None:
            return SendResult.discarded(DiscardReason.ODP_NOT_INTEGRATED,
                                        f"{_NOT_INTEGRATED} The datafile's ODP integration is malformed: "
                                        f"{self._odp_problem}.")
        return SendResult.discarded(DiscardReason.ODP_NOT_INTEGRATED, _NOT_INTEGRATED)

    def _refuse(self, result: SendResult) -> SendResult:
        """The one place a falsy result is counted and logged (rate-limited per reason)."""
        reason = result.reason if isinstance(result.reason, DiscardReason) else DiscardReason.INTERNAL_ERROR
        next(self._refused[reason])
        prefix = _OFFICIAL_PREFIXES.get(reason)
        if prefix is not None and not result.message.startswith(prefix):
            result = SendResult.discarded(reason, f"{prefix} {result.message}".rstrip())
        elif not result.message:
            result = SendResult.discarded(reason, f"ODP event discarded ({reason.value}).")
        log = self.logger.warning if reason in _WARNING_REASONS else self.logger.error
        self._refusal_log.log(log, f"ODP events refused ({reason.value})", result.message)
        return result

    # -- flush, close, stats -------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Deliver every ODP event accepted so far, waiting at most ``timeout`` seconds
        (None, the default: :data:`DEFAULT_FLUSH_TIMEOUT`, 30 s; no call waits forever),
        including for the datafile of an ``sdk_key`` client. True when all of it was
        delivered or finally resolved in time, False when the time ran out first.
        Blocks; thread-safe."""
        deadline = time.monotonic() + wait_limit(timeout, DEFAULT_FLUSH_TIMEOUT)
        self._refusal_log.flush()
        if not self._wait_for_held(deadline):
            return False
        manager = self._manager  # not built: no event reached it
        return manager is None or manager.flush(_remaining(deadline))

    def close(self, timeout: float | None = None) -> None:
        """Deliver what was accepted (within ``timeout`` seconds, default the manager's
        ``close_timeout``), then stop ODP and everything the base client runs. Events still
        held for a datafile that never came are offered to the manager's ``park`` (a spool
        keeps them for the next start); the rest are dropped (``sdkNotReady``), counted,
        announced and logged. Idempotent. Blocks; thread-safe."""
        requested = None if timeout is None else wait_limit(timeout, 0.0)  # a non-number raises before any change
        with self._odp_lock:  # an event being held now sees it (see _hold_or_refuse)
            if self._odp_closed:
                return
            self._odp_closed = True
        try:
            self._close_odp(requested)
        except Exception as error:  # a custom manager that raises: the base client is closed all the same
            self.logger.error(f"ODP event manager could not be closed: {type_name(error)}.")
        finally:
            self._refusal_log.flush()
            compat.close_base_client(self, getattr(super(), "close", None))

    def _close_odp(self, requested: float | None) -> None:
        manager = self._manager_to_close()
        if manager is None:  # none to deliver through (off, unused, or not buildable): held events are dropped
            self._give_up_held(None)
            return
        if requested is None:
            requested = wait_limit(getattr(getattr(manager, "settings", None), "close_timeout", None), 10.0)
        deadline = time.monotonic() + requested
        if not self._wait_for_held(deadline):
            self._give_up_held(manager)
        manager.close(_remaining(deadline))

    def _manager_to_close(self) -> EventManager | None:
        """The manager ``close()`` delivers through. A default one not built yet stays unbuilt
        when no held event needs it (no event reached it); built later, it is built closed."""
        with self._odp_lock:
            if self._manager is None and self._unbuilt is not None and not (self._held or self._releasing):
                self._build_closed = True
                return None
        return self._manager_or_none()

    def _give_up_held(self, manager: EventManager | None) -> None:
        with self._odp_lock:
            held = list(self._held)
            self._held.clear()
        if not held:
            return
        park = getattr(manager, "park", None)
        try:
            kept = min(len(held), max(0, int(park(held)))) if callable(park) else 0
        except Exception as error:
            self.logger.error(f"ODP events held for the datafile could not be parked: {type_name(error)}.")
            kept = 0
        if kept:
            with self._odp_lock:
                self._parked += kept
            self.logger.warning(f"{kept} ODP events held for a datafile that never arrived are kept by the event "
                                "manager for the next start.")
        if len(held) > kept:
            self._drop_held(DiscardReason.SDK_NOT_READY, len(held) - kept,
                            "held for a datafile that never arrived are dropped at close")

    def odp_stats(self) -> dict[str, Any]:
        """Counters of this client and its event manager; the README lists every key.
        Non-blocking; thread-safe.

        ``accepted``, ``refused`` and ``held_for_datafile`` are the client's; ``dropped``
        adds the events the client gave up (held ones) to the manager's; the rest is the
        manager's (0 when it does not count it). Keys the manager adds are passed through.
        """
        manager = self._manager_or_none()
        stats: dict[str, Any] = dict(manager.stats()) if manager is not None else {}
        with self._odp_lock:
            dropped = Counter(self._dropped)
            held = len(self._held)
            parked = self._parked
        dropped.update({str(reason): int(count) for reason, count in (stats.get("dropped") or {}).items()})
        refused = {reason.value: n for reason, counter in self._refused.items() if (n := count_value(counter))}
        stats.pop("discarded_not_integrated", None)
        stats.update(
            accepted=count_value(self._accepted),
            dropped=dict(dropped),
            dropped_total=sum(dropped.values()),
            refused=refused,
            refused_total=sum(refused.values()),
            held_for_datafile=held,
        )
        if parked:
            stats["parked"] = parked
        for key in STATS_KEYS:
            stats.setdefault(key, 0)
        return {key: stats[key] for key in (*STATS_KEYS, *(k for k in stats if k not in STATS_KEYS))}

    def _wait_for_held(self, deadline: float) -> bool:
        with self._odp_lock:
            while self._held or self._releasing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._odp_lock.wait(remaining)
        return True

    # -- asyncio (optimizely_odp_ext.aio) -----------------------------------------------------
    async def flush_async(self, timeout: float | None = None) -> bool:
        """``flush(timeout)`` for asyncio code: runs on a thread, never blocks the event loop.
        Cancelling the await stops waiting, not delivery. Thread-safe."""
        from optimizely_odp_ext import aio

        return await aio.flush_async(self, timeout)

    async def close_async(self, timeout: float | None = None) -> None:
        """``close(timeout)`` for asyncio code: runs on a thread, never blocks the event loop.
        Cancelling the await does not undo the close; awaiting it again waits for it. Thread-safe."""
        from optimizely_odp_ext import aio

        await aio.close_async(self, timeout)


def _default_settings(sdk: compat.SdkOdpSettings, notes: list[str]) -> ManagerSettings:
    """The settings of the default :class:`BatchEventManager`, from the SDK's ODP settings
    (which win over the environment); a value it cannot take is logged and left to its
    default, as the official client never fails on these. Raises :class:`SettingError` for
    a bad ``OPTIMIZELY_ODP_*`` variable, as the manager's constructor does."""
    try:
        return ManagerSettings.resolve(compat.manager_arguments(sdk))
    except SettingError as error:
        notes.append(f"OptimizelySdkSettings ODP setting ignored: {error}.")
        return ManagerSettings.resolve({})


def _build_default(settings: ManagerSettings) -> BatchEventManager:
    """The default manager (its code is loaded here, on first use)."""
    from optimizely_odp_ext.managers.batch import BatchEventManager

    return BatchEventManager.from_settings(settings)


def _client_closed() -> SendResult:
    prefix = _OFFICIAL_PREFIXES[DiscardReason.CLOSED]
    return SendResult.discarded(DiscardReason.CLOSED, f"{prefix} The client is closed.")


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def type_name(value: object) -> str:
    return type(value).__name__
