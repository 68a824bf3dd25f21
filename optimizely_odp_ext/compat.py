"""Every difference between the optimizely-sdk releases this package supports (4.1.0 to 5.x).

- 4.1.x: no ODP code at all, no ``OptimizelySdkSettings``, no ``Optimizely.close``.
- 5.0 to 5.5: the base client calls its ODP event manager's ``identify_user(user_id)``
  with the user id string on every ``create_user_context``.
- 5.6 and later: ``identify_user(identifiers)`` with a dict, sent only when it holds two
  or more non-empty identifiers.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

from optimizely import version as _sdk_version

from optimizely_odp_ext.integration import (
    IntegrationEntry,
    OdpIntegration,
    integration_from_entry,
    integration_from_json,
)

SDK_VERSION: str = _sdk_version.__version__
"""The installed optimizely-sdk version (sent as ``data_source_version``)."""


def _version_info(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


SDK_VERSION_INFO = _version_info(SDK_VERSION)
SDK_MAJOR = SDK_VERSION_INFO[0]
HAS_NATIVE_ODP = SDK_MAJOR >= 5
"""optimizely-sdk 5.x has its own ODP manager; 4.1.x has no ODP at all."""
IDENTIFY_TAKES_USER_ID = HAS_NATIVE_ODP and SDK_VERSION_INFO < (5, 6)
"""5.0 to 5.5 identify a user context by its user id string; 5.6+ pass a dict of identifiers."""


def current_project_config(config_manager: Any) -> Any:
    """The config manager's current ProjectConfig, or None, without blocking.

    ``PollingConfigManager.get_config`` waits for the first datafile, and the SDK sends
    OPTIMIZELY_CONFIG_UPDATE before it sets its ready flag, so read ``_config`` where
    the SDK's own managers keep it (as optimizely-sdk 5.x does for ODP).
    """
    if config_manager is None:
        return None
    if hasattr(config_manager, "_config"):
        return config_manager._config
    return config_manager.get_config()


def can_receive_datafile(config_manager: Any) -> bool:
    """False for a static config manager: if it has no datafile now, it never will."""
    from optimizely.config_manager import PollingConfigManager, StaticConfigManager

    return isinstance(config_manager, PollingConfigManager) or not isinstance(config_manager, StaticConfigManager)


def integration_entry_of(project_config: Any) -> IntegrationEntry:
    """The ODP integration a ProjectConfig declares, checked, on either SDK line: usable, or
    the problem of a malformed entry. Never raises on a malformed entry
    (``skip_json_validation=True`` lets any value through)."""
    if hasattr(project_config, "host_for_odp"):  # 5.x parsed it already
        return integration_from_entry(project_config.host_for_odp, project_config.public_key_for_odp)
    return integration_from_json(project_config.to_datafile())


def integration_of(project_config: Any) -> OdpIntegration | None:
    """The usable ODP integration a ProjectConfig declares, or None (none, or malformed)."""
    return integration_entry_of(project_config).integration


class SdkOdpSettings(NamedTuple):
    """The ODP fields of the caller's ``OptimizelySdkSettings`` (5.x), as the official client
    reads them; all unset on 4.1 or when ``settings`` is not an ``OptimizelySdkSettings``."""

    disabled: bool = False
    flush_interval: Any = None
    """``odp_event_flush_interval``: seconds; 0 sends each event at once."""
    request_timeout: Any = None
    """``odp_event_request_timeout``: seconds; None or 0 means the default (as official)."""
    event_manager: Any = None
    """``odp_event_manager``: the caller's own official-style event manager."""


def sdk_odp_settings(settings: Any) -> SdkOdpSettings:
    """Read the ODP fields of ``settings`` that exist on the installed SDK."""
    if not HAS_NATIVE_ODP or settings is None:
        return SdkOdpSettings()
    from optimizely.helpers.sdk_settings import OptimizelySdkSettings

    if not isinstance(settings, OptimizelySdkSettings):  # the official client ignores it too
        return SdkOdpSettings()
    return SdkOdpSettings(
        disabled=bool(getattr(settings, "odp_disabled", False)),
        flush_interval=getattr(settings, "odp_flush_interval", None),
        request_timeout=getattr(settings, "odp_event_timeout", None),
        event_manager=getattr(settings, "odp_event_manager", None),
    )


def manager_arguments(sdk: SdkOdpSettings) -> dict[str, Any]:
    """``BatchEventManager`` arguments from the SDK's ODP settings, with the official meaning:
    a flush interval of 0 (or less) sends each event at once; a request timeout of None or 0
    is the default."""
    arguments: dict[str, Any] = {}
    if sdk.flush_interval is not None:
        arguments["flush_interval"] = max(0.0, sdk.flush_interval) if _is_number(sdk.flush_interval) \
            else sdk.flush_interval
    if sdk.request_timeout:
        arguments["request_timeout"] = sdk.request_timeout
    return arguments


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def base_settings(settings: Any, event_manager: Any, disabled: bool) -> Any:
    """The ``settings`` to hand the 5.x base class: a copy of the caller's (never mutated).

    ``event_manager`` None keeps the caller's own official-style manager (the base client
    then validates and drives it as it always did); otherwise ours replaces it, so that
    the base SDK never starts a sender of its own.
    """
    from optimizely.helpers.sdk_settings import OptimizelySdkSettings

    ours = copy.copy(settings) if isinstance(settings, OptimizelySdkSettings) else OptimizelySdkSettings()
    if event_manager is not None:
        ours.odp_event_manager = event_manager
    if disabled:
        ours.odp_disabled = True
    return ours


def sync_base_odp_config(client: Any) -> None:
    """Let the 5.x base client read a new datafile's ODP config now (it listens on a
    notification center that hears about it after ours). Idempotent; no-op on 4.1."""
    update = getattr(client, "_update_odp_config_on_datafile_update", None)
    if callable(update):
        update()


def close_base_client(client: Any, base_close: Any) -> None:
    """Stop what the base client runs. optimizely-sdk 4.1 has no ``Optimizely.close``."""
    if base_close is not None:
        base_close()
        return
    processor_stop = getattr(client.event_processor, "stop", None)
    if callable(processor_stop):
        processor_stop()
    manager_stop = getattr(client.config_manager, "stop", None)
    if callable(manager_stop):
        manager_stop()
