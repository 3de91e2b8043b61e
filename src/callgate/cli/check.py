"""``callgate check``: validate the config file, its TLS files and its secret references."""

from __future__ import annotations

from urllib.parse import urlsplit

import typer

from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.config import Config, DatabaseUpstream, HttpUpstream, iter_secret_refs, load_config
from callgate.errors import ConfigError
from callgate.tls import client_context, server_context


def _check_tls_files(config: Config) -> None:
    """Load every certificate, key and CA bundle the way serving would."""
    tls = config.gateway.tls
    if tls is not None:
        server_context(tls)
        for index, listener in enumerate(config.listeners):
            if listener.client_ca is not None:
                server_context(
                    tls, listener.client_ca, client_ca_key=f"listeners[{index}].client_ca"
                )
    for index, connection in enumerate(config.connections):
        upstream = connection.upstream
        where = f"connections[{index}].upstream"
        if isinstance(upstream, DatabaseUpstream):
            client_context(upstream.tls, upstream.ca_file, upstream.host, key_path=where)
        elif isinstance(upstream, HttpUpstream) and upstream.ca_file is not None:
            host = urlsplit(upstream.url).hostname or ""
            client_context("verify-full", upstream.ca_file, host, key_path=where)


def _check_secrets(config: Config) -> int:
    """Resolve every secret reference (and throw the value away); return how many there are."""
    count = 0
    for path, reference in iter_secret_refs(config):
        try:
            reference.resolve()
        except ConfigError as exc:  # SecretError: names the reference, never a value
            raise ConfigError(path, exc.message) from None
        count += 1
    return count


def check(config: ConfigOption = DEFAULT_CONFIG, json_: JsonOption = False) -> None:
    """Validate the config file and exit: non-zero with the key path of the first problem."""
    try:
        loaded = load_config(config)
        _check_tls_files(loaded)
        secrets = _check_secrets(loaded)
    except ConfigError as exc:
        if json_:
            print_json({"ok": False, "path": exc.path, "error": exc.message})
        fail(exc.message)
    summary = {
        "ok": True,
        "config": str(loaded.source_path),
        "listeners": len(loaded.listeners),
        "connections": len(loaded.connections),
        "policies": len(loaded.policies),
        "approvals": len(loaded.approvals),
        "secrets": secrets,
    }
    if json_:
        print_json(summary)
        return
    typer.echo(
        f"config OK: {len(loaded.listeners)} listeners, {len(loaded.connections)} connections, "
        f"{len(loaded.policies)} policies"
    )
