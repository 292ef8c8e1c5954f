"""Checks across settings: values that need each other, and rules that name other
settings' values. (Files the settings name are checked by the server.)"""

from __future__ import annotations

from collections.abc import Mapping

from mirror.config.cluster import read_cluster_secret
from mirror.config.errors import ConfigError
from mirror.config.schema import Config


def check_tls(config: Config, sources: Mapping[str, str]) -> None:
    """`tls_cert` and `tls_key` come together; `tls_listen` needs them and its own address.
    Whether the files make a pair that can be served is the server's check."""
    serving = config.serving
    cert, key = serving.tls_cert, serving.tls_key
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if cert is not None else ("tls_key", "tls_cert")
        raise ConfigError(
            f"{given} (from {sources[given]}): needs {missing} as well "
            "(the certificate chain and its private key)"
        )
    if cert is None:
        if serving.tls_listen is not None:
            raise ConfigError(
                f"tls_listen (from {sources['tls_listen']}): needs tls_cert and tls_key"
            )
        return
    if serving.tls_listen == serving.listen:
        raise ConfigError(
            f"tls_listen (from {sources['tls_listen']}): {serving.tls_listen} is `listen` "
            "as well; leave tls_listen empty to serve HTTPS on `listen`"
        )


def check_auth(config: Config, sources: Mapping[str, str]) -> None:
    """Authentication settings only mean something with `htpasswd` (a rule granting push or
    delete without it is named as such: anonymous clients never get either); rules name
    groups that exist and registries that are served."""
    auth = config.auth
    if auth.htpasswd is None:
        for index, rule in enumerate(auth.auth_rules):
            if "push" in rule.actions:
                raise ConfigError(
                    f"auth_rules (from {sources['auth_rules']}): rule {index + 1} grants "
                    f"{rule.access}, but without htpasswd every client is anonymous, and "
                    "anonymous clients never push or delete; set htpasswd"
                )
        for key, value in (
            ("auth_rules", auth.auth_rules),
            ("auth_groups", auth.auth_groups),
            ("metrics_auth", auth.metrics_auth),
        ):
            if value:
                raise ConfigError(
                    f"{key} (from {sources[key]}): needs htpasswd; without it clients are "
                    "not authenticated: anyone may pull and no one may push or delete"
                )
        return
    served = {upstream.host for upstream in config.registries.upstreams}
    for index, rule in enumerate(auth.auth_rules):
        where = f"auth_rules (from {sources['auth_rules']}): rule {index + 1}"
        for group in rule.groups:
            if group not in auth.auth_groups:
                defined = ", ".join(auth.auth_groups) or "none"
                raise ConfigError(f"{where}: unknown group {group!r} (auth_groups: {defined})")
        for host in rule.upstreams:
            if host != "*" and host not in served:
                raise ConfigError(
                    f"{where}: upstream {host!r} is not served (it serves {', '.join(served)})"
                )


def check_deputy(config: Config) -> None:
    """An upstream with credentials needs authenticated clients, or the operator's explicit
    opt-in; otherwise any anonymous client could pull whatever those credentials reach (the
    mirror a confused deputy). Passthrough upstreams use each client's own credentials."""
    for upstream in config.registries.upstreams:
        if upstream.passthrough and upstream.username is not None:
            raise ConfigError(
                f"upstream {upstream.host} (from {upstream.source}): client_credentials = "
                '"passthrough" uses each client\'s own credentials; remove username and '
                "password from this upstream"
            )
        if upstream.passthrough and config.auth.htpasswd is not None:
            raise ConfigError(
                f"upstream {upstream.host} (from {upstream.source}): client_credentials = "
                '"passthrough" cannot be combined with htpasswd yet: clients present their '
                "registry credentials in the same Authorization header the mirror's own "
                "logins use"
            )
        if (
            config.auth.htpasswd is None
            and upstream.username is not None
            and not upstream.passthrough
            and not upstream.anonymous_clients_use_credentials
        ):
            raise ConfigError(
                f"upstream {upstream.host} (from {upstream.source}): has credentials "
                f"(username {upstream.username!r}) but clients are not authenticated, so any "
                "anonymous client could pull whatever those credentials can reach. Either turn "
                "on client authentication (htpasswd), or set "
                "anonymous_clients_use_credentials = true on this upstream if anonymous "
                "clients really may use them"
            )


def check_storage(config: Config, sources: Mapping[str, str]) -> None:
    """S3 storage is shared by replicas, whose records must be shared too: it needs Redis;
    redirecting to the bucket needs a bucket."""
    storage = config.storage
    if storage.storage != "file" and storage.redis_url is None:
        raise ConfigError(
            f"redis_url: needed with storage = {storage.storage} (from {sources['storage']}); "
            "the replicas sharing a bucket share their metadata through Redis"
        )
    if storage.s3_redirect and storage.storage == "file":
        raise ConfigError(
            f"s3_redirect (from {sources['s3_redirect']}): needs storage = s3://...; blobs in "
            "the data dir have no URL to redirect clients to"
        )


def check_cluster(config: Config, sources: Mapping[str, str]) -> None:
    """A replica that advertises itself needs the cluster secret (its replica-to-replica
    endpoint answers nobody without it), which must be readable."""
    cluster = config.cluster
    secret = read_cluster_secret(cluster.cluster_secret, cluster.cluster_secret_file, sources)
    if cluster.advertise_url is not None and secret is None:
        raise ConfigError(
            f"advertise_url (from {sources['advertise_url']}): needs cluster_secret (or "
            "MIRROR_CLUSTER_SECRET, or cluster_secret_file), which authenticates the "
            "requests between replicas"
        )
