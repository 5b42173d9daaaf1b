"""S3 settings from an Airflow connection, through the Amazon provider's S3 hook.

The connection named by ``airflow.aws_conn_id`` (default ``aws_default``) gives the credentials
(through :class:`~airflow.providers.amazon.aws.hooks.s3.S3Hook`, which also masks the secret
key and token in task logs), the endpoint (the connection's extra ``endpoint_url``, e.g.
a MinIO or Ceph S3 API) and the region (the connection's, else ``store.s3_region``). The library
receives them as a plain :class:`~clcplus_ops.store.S3Settings`; it never imports Airflow.

No code here reads AWS keys from environment variables. Without the connection the configured
endpoint is used with no credentials: boto3's own chain applies (instance role, profile...).
"""

from __future__ import annotations

import logging

from clcplus_ops.config import Config
from clcplus_ops.store import S3Settings

log = logging.getLogger(__name__)
_reported_missing: set[str] = set()


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        Connection.get(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def s3_settings(config: Config) -> S3Settings:
    """The S3 settings of ``config`` with the endpoint, region and credentials of its Airflow
    connection (see the module documentation)."""
    conn_id = config.airflow.aws_conn_id
    if not _connection_exists(conn_id):
        if conn_id not in _reported_missing:  # once per process, not once per task
            _reported_missing.add(conn_id)
            log.info("Airflow connection %r does not exist: S3 at %s with boto3's own credential chain",
                     conn_id, config.store.s3_endpoint_url or "AWS")
        return S3Settings(endpoint_url=config.store.s3_endpoint_url, region=config.store.s3_region,
                          max_attempts=config.store.s3_max_attempts)

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    # Every store access of a task (stages' inputs and outputs, publishing) uses these settings.
    hook = S3Hook(aws_conn_id=conn_id)
    connection = hook.conn_config
    region = connection.region_name or config.store.s3_region
    try:
        credentials = hook.get_credentials(region_name=region)  # masks the secret key and token
    except AttributeError:  # neither the connection nor boto3's chain has credentials
        credentials = None
    return S3Settings(
        endpoint_url=connection.get_service_endpoint_url("s3") or config.store.s3_endpoint_url,
        region=region,
        max_attempts=config.store.s3_max_attempts,
        access_key_id=credentials.access_key if credentials else None,
        secret_access_key=credentials.secret_key if credentials else None,
        session_token=credentials.token if credentials else None,
    )
