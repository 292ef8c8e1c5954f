"""`mirror check-config`: the effective config as TOML, secrets masked, each line saying
where its value came from."""

from __future__ import annotations

from mirror.config.loading import LoadedConfig
from mirror.config.schema import FIELDS
from mirror.config.toml import toml_str, toml_value
from mirror.config.upstreams import UpstreamSettings


def render(loaded: LoadedConfig) -> str:
    """The settings in section order (each under a comment naming its section), then one
    `[[upstream]]` table per registry served. The keys stay flat, as a file gives them."""
    lines: list[str] = []
    section = None
    for item in FIELDS:
        if item.section != section:
            section = item.section
            lines += [*([""] if lines else []), f"# {section}"]
        value = getattr(getattr(loaded.config, item.section), item.key)
        text = '"********"' if item.setting.secret and value else toml_value(value)
        explain = item.setting.explain
        note = explain(value) if explain is not None else None
        where = loaded.sources[item.key] + (f"; {note}" if note else "")
        lines.append(f"{item.key} = {text}  # {where}")
    for upstream in loaded.config.registries.upstreams:
        lines += ["", f"[[upstream]]  # {upstream.source}", *_upstream_lines(upstream)]
    return "\n".join(lines) + "\n"


def _upstream_lines(upstream: UpstreamSettings) -> list[str]:
    lines = [f"host = {toml_str(upstream.host)}", f"url = {toml_str(upstream.url)}"]
    if upstream.username is not None:
        lines.append(f"username = {toml_str(upstream.username)}")
        lines.append(f'password = "********"  # from {upstream.password_source}')
    lines.append(f"library_prefix = {toml_value(upstream.library_prefix)}")
    if upstream.tag_ttl is not None:
        lines.append(f"tag_ttl = {upstream.tag_ttl!r}")
    if upstream.negative_ttl is not None:
        lines.append(f"negative_ttl = {upstream.negative_ttl!r}")
    if upstream.tag_rules:
        lines.append(f"tag_rules = {toml_value(upstream.tag_rules)}")
    if upstream.ca_file is not None:
        lines.append(f"ca_file = {toml_str(str(upstream.ca_file))}")
    if upstream.insecure:
        lines.append("insecure = true")
    if upstream.token_hosts:
        lines.append(f"token_hosts = {toml_value(upstream.token_hosts)}")
    if upstream.anonymous_clients_use_credentials:
        lines.append("anonymous_clients_use_credentials = true")
    if upstream.passthrough:
        lines.append('client_credentials = "passthrough"')
        lines.append(f"passthrough_ttl = {upstream.passthrough_ttl!r}")
    return lines
