"""Every difference between optimizely-sdk 4.1.x and 5.x that this package cares about."""

from __future__ import annotations

import copy
from typing import Any

from optimizely import version as _sdk_version

from optimizely_odp_ext.integration import OdpIntegration, integration_from_json

SDK_VERSION: str = _sdk_version.__version__
"""The installed optimizely-sdk version (sent as ``data_source_version``)."""

SDK_MAJOR = int(SDK_VERSION.split(".", 1)[0])
HAS_NATIVE_ODP = SDK_MAJOR >= 5
"""optimizely-sdk 5.x has its own ODP manager; 4.1.x has no ODP at all."""


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


def integration_of(project_config: Any) -> OdpIntegration | None:
    """The ODP integration a ProjectConfig declares, on either SDK line."""
    if hasattr(project_config, "host_for_odp"):  # 5.x parsed it already
        host, key = project_config.host_for_odp, project_config.public_key_for_odp
        return OdpIntegration(host, key) if host and key else None
    return integration_from_json(project_config.to_datafile())


def settings_disable_odp(settings: Any) -> bool:
    """True when 5.x ``OptimizelySdkSettings(odp_disabled=True)`` was given."""
    return bool(getattr(settings, "odp_disabled", False))


def base_settings(settings: Any, event_manager: Any, disabled: bool) -> Any:
    """The ``settings`` to hand the 5.x base class: a copy of the caller's (never mutated)
    whose ODP event manager is ours, so that the base SDK never starts its own sender.
    """
    from optimizely.helpers.sdk_settings import OptimizelySdkSettings

    ours = copy.copy(settings) if isinstance(settings, OptimizelySdkSettings) else OptimizelySdkSettings()
    ours.odp_event_manager = event_manager
    if disabled:
        ours.odp_disabled = True
    return ours


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
