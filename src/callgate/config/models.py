"""The whole config file, and the checks that span its sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, model_validator

from callgate.config.approvals import ApprovalConfig
from callgate.config.connections import ConnectionConfig
from callgate.config.fields import ConfigModel, path_error
from callgate.config.gateway import GatewayConfig
from callgate.config.identity import IdentityConfig
from callgate.config.listeners import ListenerConfig
from callgate.config.policies import PolicyConfig

#: stands for every connection in ``policies[].connections`` and ``approvals[].connections``
ALL_CONNECTIONS = "*"


class Config(ConfigModel):
    gateway: GatewayConfig = GatewayConfig()
    listeners: tuple[ListenerConfig, ...] = ()
    identity: IdentityConfig = IdentityConfig()
    connections: tuple[ConnectionConfig, ...] = ()
    policies: tuple[PolicyConfig, ...] = ()
    approvals: tuple[ApprovalConfig, ...] = ()
    # Not a key of the file: set by load_config, so it can never come from YAML.
    _source_path: Path | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file this config was read from, or ``None`` when built in code."""
        return self._source_path

    def with_source_path(self, path: Path | None) -> Config:
        copy = self.model_copy()
        copy._source_path = path
        return copy

    @model_validator(mode="before")
    @classmethod
    def _gateway_in_context(cls, data: Any) -> Any:
        # The default store path is relative to the config file, so an absent gateway section
        # is validated here (with the context's base_dir), not taken from the class default.
        if isinstance(data, dict) and data.get("gateway") is None:
            data = {**data, "gateway": {}}
        return data

    def connection(self, name: str) -> ConnectionConfig | None:
        for connection in self.connections:
            if connection.name == name:
                return connection
        return None

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        self._check_listeners()
        self._check_connections()
        names = {connection.name for connection in self.connections}
        named = [(f"policies[{i}]", p.connections) for i, p in enumerate(self.policies)]
        named += [(f"approvals[{i}]", a.connections) for i, a in enumerate(self.approvals)]
        for owner, connections in named:
            for position, name in enumerate(connections):
                if name != ALL_CONNECTIONS and name not in names:
                    raise path_error(
                        f"{owner}.connections[{position}]",
                        f"connection {name!r} named by {owner}.connections does not exist",
                    )
        seen: dict[str, int] = {}
        for index, policy in enumerate(self.policies):
            if policy.name in seen:
                raise path_error(
                    f"policies[{index}].name",
                    f"policy name {policy.name!r} is already used by policies[{seen[policy.name]}]",
                )
            seen[policy.name] = index
        return self

    def _check_listeners(self) -> None:
        binds: dict[tuple[str, int], int] = {}
        tls = self.gateway.tls
        for index, listener in enumerate(self.listeners):
            key = (listener.host.lower(), listener.port)
            # Port 0 asks the OS for a free port, so two such binds never collide.
            if listener.port != 0 and key in binds:
                raise path_error(
                    f"listeners[{index}].bind",
                    f"{listener.bind} is already used by listeners[{binds[key]}]",
                )
            binds[key] = index
            if listener.protocol != "api" and tls is None and not listener.allow_plaintext:
                raise path_error(
                    f"listeners[{index}]",
                    f"a {listener.protocol} listener needs gateway.tls (a certificate and key; "
                    "`callgate certs dev` writes a local pair) or allow_plaintext: true",
                )
            if listener.client_ca is not None and tls is None:
                raise path_error(
                    f"listeners[{index}].client_ca",
                    "client_ca needs gateway.tls: client certificates are only asked for in TLS",
                )

    def _check_connections(self) -> None:
        names: dict[str, int] = {}
        hosts: dict[str, int] = {}
        for index, connection in enumerate(self.connections):
            if connection.name in names:
                raise path_error(
                    f"connections[{index}].name",
                    f"connection name {connection.name!r} is already used by "
                    f"connections[{names[connection.name]}]",
                )
            names[connection.name] = index
            for position, host in enumerate(connection.hosts):
                if host.lower() in hosts:
                    raise path_error(
                        f"connections[{index}].hosts[{position}]",
                        f"host {host!r} already routes to connections[{hosts[host.lower()]}]",
                    )
                hosts[host.lower()] = index
