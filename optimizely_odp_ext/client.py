"""``OdpOptimizely``: the official client, plus ODP events that arrive."""

from __future__ import annotations

import inspect
import threading
import time
from collections import Counter, deque
from typing import Any

from optimizely import logger as sdk_logging
from optimizely.helpers import enums
from optimizely.optimizely import Optimizely

from optimizely_odp_ext import compat
from optimizely_odp_ext.event import DEFAULT_EVENT_TYPE, InvalidEventError, OdpEvent, build_event
from optimizely_odp_ext.integration import IntegrationState, OdpIntegration, mask_key
from optimizely_odp_ext.managers.base import EventManager
from optimizely_odp_ext.managers.batch import BatchEventManager
from optimizely_odp_ext.notifications import OdpNotificationCenter
from optimizely_odp_ext.result import ACCEPTED, DiscardReason, SendResult
from optimizely_odp_ext.sdk_adapter import SdkEventManagerAdapter
from optimizely_odp_ext.settings import odp_disabled_by_environment

HELD_CAPACITY = 10_000
"""Events held while the datafile is not there yet; beyond it, sdkNotReady."""

_BASE_PARAMETERS = inspect.signature(Optimizely.__init__)


class OdpOptimizely(Optimizely):
    """``optimizely.optimizely.Optimizely`` with ODP events that are delivered.

    Takes every argument of the installed SDK's ``Optimizely`` unchanged, plus:

    Args:
        odp_event_manager: what delivers events (an :class:`EventManager`); default a
            :class:`BatchEventManager` configured from ``OPTIMIZELY_ODP_*`` variables.
        odp_disabled: switch ODP off (as do ``OPTIMIZELY_ODP_DISABLED=1`` and, on
            optimizely-sdk 5.x, ``OptimizelySdkSettings(odp_disabled=True)``).

    The ODP integration (host and public key) comes from the datafile and follows its
    updates. ``send_odp_event`` is thread-safe and never blocks or raises.
    """

    def __init__(self, *args: Any, odp_event_manager: EventManager | None = None,
                 odp_disabled: bool = False, **kwargs: Any) -> None:
        arguments = _BASE_PARAMETERS.bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        self._odp_closed = False
        self._datafile_may_come = True
        self._odp_lock = threading.Condition()
        self._odp: tuple[IntegrationState, OdpIntegration | None] = (IntegrationState.UNDETERMINED, None)
        self._held: deque[OdpEvent] = deque()
        self._held_discarded = 0
        self._refused: Counter[str] = Counter()
        self._releasing = 0
        self.odp_enabled = not (odp_disabled or odp_disabled_by_environment()
                                or compat.settings_disable_odp(arguments.get("settings")))
        self.odp_event_manager: EventManager | None = None
        if self.odp_enabled:
            self.odp_event_manager = odp_event_manager or BatchEventManager()
        if arguments.get("notification_center") is None:
            logger = sdk_logging.adapt_logger(arguments.get("logger") or sdk_logging.NoOpLogger())
            arguments["notification_center"] = OdpNotificationCenter(logger)
        if compat.HAS_NATIVE_ODP:
            arguments["settings"] = compat.base_settings(
                arguments.get("settings"), SdkEventManagerAdapter(self), disabled=not self.odp_enabled
            )

        super().__init__(**arguments)

        if not self.is_valid:
            return
        self._datafile_may_come = compat.can_receive_datafile(self.config_manager)
        if not self.odp_enabled:
            self.logger.info("ODP is disabled.")
            return
        config_center = getattr(self.config_manager, "notification_center", None) or self.notification_center
        config_center.add_notification_listener(
            enums.NotificationTypes.OPTIMIZELY_CONFIG_UPDATE, self._on_datafile_update
        )
        assert self.odp_event_manager is not None
        known = self._read_integration_or_log()
        self.odp_event_manager.start(logger=self.logger, notification_center=self.notification_center,
                                     integration=known[1] if known else None)
        if known:
            self._apply_integration(*known)

    # -- the ODP integration -----------------------------------------------------------------
    @property
    def odp_state(self) -> IntegrationState:
        """UNDETERMINED (no datafile yet), INTEGRATED or NOT_INTEGRATED."""
        return self._odp[0]

    @property
    def odp_integration(self) -> OdpIntegration | None:
        """The integration new events go to, or None."""
        return self._odp[1]

    def _read_integration(self) -> tuple[IntegrationState, OdpIntegration | None]:
        """The state and integration of the config manager's current datafile."""
        config = compat.current_project_config(self.config_manager)
        if config is None:
            return (IntegrationState.UNDETERMINED, None)
        integration = compat.integration_of(config)
        return (IntegrationState.INTEGRATED if integration else IntegrationState.NOT_INTEGRATED, integration)

    def _read_integration_or_log(self) -> tuple[IntegrationState, OdpIntegration | None] | None:
        try:
            return self._read_integration()
        except Exception as error:
            self.logger.error(f"ODP integration could not be read from the datafile: {error}")
            return None

    def _on_datafile_update(self) -> None:
        """OPTIMIZELY_CONFIG_UPDATE: pick up an integration added, changed or removed."""
        known = self._read_integration_or_log()
        if known:
            self._apply_integration(*known)

    def _apply_integration(self, state: IntegrationState, integration: OdpIntegration | None) -> None:
        """Make ``integration`` the one new events go to, and hand over held events."""
        if state is IntegrationState.UNDETERMINED:
            return
        manager = self.odp_event_manager
        assert manager is not None
        with self._odp_lock:
            if self._odp == (state, integration):
                return
            self._odp = (state, integration)
            held = list(self._held)
            self._held.clear()
            self._releasing += 1  # flush() waits for these as it waits for held events
        try:
            manager.integration_changed(integration)
            self._release_held(held, integration)  # outside the lock: a manager may send here
        finally:
            with self._odp_lock:
                self._releasing -= 1
                self._odp_lock.notify_all()
        if integration is None:
            self.logger.info("ODP is not integrated in this datafile; ODP events will not be sent.")
        else:
            self.logger.info(f"ODP integration: host {integration.host}, key {mask_key(integration.api_key)}.")
            if integration.is_plain_http_remote:
                self.logger.warning(f"ODP host {integration.host} is plain http:// and not on this machine: "
                                    "events and the API key travel unencrypted.")

    def _release_held(self, held: list[OdpEvent], integration: OdpIntegration | None) -> None:
        if not held:
            return
        if integration is None:
            self._held_discarded += len(held)
            self.logger.error(f"{len(held)} ODP events sent before the datafile was ready are discarded: "
                              "ODP is not integrated (odpNotIntegrated).")
            return
        assert self.odp_event_manager is not None
        for event in held:
            event.integration = integration
            self.odp_event_manager.send(event)

    # -- sending -------------------------------------------------------------------------------
    def send_odp_event(  # type: ignore[override]  # the base returns None; ours a truthy/falsy result
        self, action: str, identifiers: dict[str, str], type: str = DEFAULT_EVENT_TYPE,
        data: dict[str, Any] | None = None,
    ) -> SendResult:
        """Send an event to ODP (same parameters as optimizely-sdk 5.x).

        Returns a result that is truthy when the event was accepted for delivery, and
        otherwise falsy with a ``reason`` (:class:`DiscardReason`); each discard is logged.
        Never raises, never blocks, never changes ``identifiers`` or ``data``. Thread-safe.
        """
        try:
            return self._send(action, identifiers, type, data)
        except Exception as error:  # nothing raises into the host app
            message = f"ODP event could not be sent (internal error: {type_name(error)}: {error})."
            self.logger.error(message)
            return SendResult.discarded(DiscardReason.INTERNAL_ERROR, message)

    def _send(self, action: object, identifiers: object, type: object, data: object) -> SendResult:
        if self._odp_closed:
            return self._discard(DiscardReason.CLOSED, "ODP event discarded: the client is closed.", warn=True)
        if not self.is_valid:
            return self._discard(DiscardReason.SDK_NOT_READY,
                                 enums.Errors.INVALID_OPTIMIZELY.format("send_odp_event"))
        try:
            event = build_event(action, identifiers, type, data)
        except InvalidEventError as invalid:
            return self._discard(invalid.reason, invalid.message)
        manager = self.odp_event_manager
        if manager is None:
            return self._discard(DiscardReason.ODP_NOT_ENABLED, "ODP is not enabled.")
        return self._route(event, manager)

    def _route(self, event: OdpEvent, manager: EventManager) -> SendResult:
        """To the manager with the current integration, held until the datafile, or discarded."""
        state, integration = self._odp
        if integration is not None:
            event.integration = integration
            result = manager.send(event)
            if not result:  # the manager returns its refusals; the client counts and logs them
                assert result.reason is not None
                return self._discard(result.reason, result.message, warn=True)
            return result
        if state is IntegrationState.UNDETERMINED:
            if not self._datafile_may_come:
                return self._discard(DiscardReason.SDK_NOT_READY,
                                     enums.Errors.INVALID_PROJECT_CONFIG.format("send_odp_event"))
            with self._odp_lock:
                if self._odp[0] is IntegrationState.UNDETERMINED:
                    if len(self._held) >= HELD_CAPACITY:
                        return self._discard(
                            DiscardReason.SDK_NOT_READY,
                            f"ODP event discarded: the datafile is not ready and {HELD_CAPACITY} events "
                            "are already held for it.", warn=True)
                    self._held.append(event)
                    return ACCEPTED
            return self._route(event, manager)  # the datafile just arrived
        return self._discard(DiscardReason.ODP_NOT_INTEGRATED, "ODP is not integrated.")

    def _discard(self, reason: DiscardReason, message: str, warn: bool = False) -> SendResult:
        with self._odp_lock:
            self._refused[reason.value] += 1
        (self.logger.warning if warn else self.logger.error)(message)
        return SendResult.discarded(reason, message)

    # -- flush, close, stats -------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Deliver every ODP event accepted so far. True when all of it was delivered or
        finally resolved within ``timeout`` seconds (None: wait as long as it takes,
        including for the datafile of an ``sdk_key`` client). Blocks; thread-safe."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait_for_held(deadline) or self.odp_event_manager is None:
            return self.odp_event_manager is None
        return self.odp_event_manager.flush(_remaining(deadline))

    def close(self, timeout: float | None = None) -> None:
        """Deliver what was accepted (within ``timeout`` seconds, default the manager's
        ``close_timeout``), then stop ODP and everything the base client runs.
        Idempotent. Blocks; thread-safe."""
        if self._odp_closed:
            return
        self._odp_closed = True
        manager = self.odp_event_manager
        if manager is not None:
            limit = getattr(getattr(manager, "settings", None), "close_timeout", 10.0) if timeout is None else timeout
            deadline = time.monotonic() + limit
            if not self._wait_for_held(deadline):
                with self._odp_lock:
                    left = len(self._held)
                    self._held.clear()
                self.logger.error(f"{left} ODP events held for the datafile were not sent: it never arrived.")
            manager.close(_remaining(deadline))
        compat.close_base_client(self, getattr(super(), "close", None))

    def odp_stats(self) -> dict[str, Any]:
        """Counters of the ODP event manager, plus events held for the datafile. Thread-safe."""
        stats = dict(self.odp_event_manager.stats()) if self.odp_event_manager else {}
        stats["held_for_datafile"] = len(self._held)
        with self._odp_lock:
            stats["refused"] = dict(self._refused)
            stats["refused_total"] = sum(self._refused.values())
        stats["discarded_not_integrated"] = self._held_discarded
        return stats

    def _wait_for_held(self, deadline: float | None) -> bool:
        with self._odp_lock:
            while self._held or self._releasing:
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    return False
                self._odp_lock.wait(remaining)
        return True


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def type_name(value: object) -> str:
    return type(value).__name__
