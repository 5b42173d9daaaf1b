"""GDAL access to store URLs: ``file://`` paths, ``s3://`` objects (through GDAL's /vsis3/ with
the store's endpoint, e.g. a local S3 API) and ``https://`` assets (/vsicurl/).

S3 credentials come from the :class:`~clcplus_ops.store.S3Settings` handed in (on Airflow: from
the connection, through the Amazon provider's hook), never from this process's environment
variables. Settings without credentials fall back to boto3's chain (instance role, profile...),
as the store does; where that finds none either, requests to AWS go unsigned (public archives
such as Earth Search's). Credentials are handed to GDAL as configuration options and are never
logged.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from urllib.parse import urlparse

import boto3
import rasterio
from rasterio.session import AWSSession

from clcplus_ops.store import S3Settings

# GDAL's block cache for one task; reads are window-by-window, so a modest cache suffices.
GDAL_CACHE_MB = 256


def gdal_path(url: str) -> str:
    """What rasterio.open takes for a store or asset URL."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if url.startswith(("s3://", "http://", "https://")) or "://" not in url:
        return url
    raise ValueError(f"unsupported raster URL {url!r}")


def _chain_session(region: str) -> boto3.session.Session | None:
    """A boto3 session on boto3's own credential chain, or None if the chain finds nothing.
    Resolved once per region and chain configuration (the lookup may query the instance
    metadata service); a change of the chain's own settings resolves again."""
    chain_settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _resolve_chain(region, hash(chain_settings))


@functools.lru_cache(maxsize=8)
def _resolve_chain(region: str, _chain_key: int) -> boto3.session.Session | None:
    session = boto3.session.Session(region_name=region)
    return session if session.get_credentials() is not None else None


def aws_session(s3: S3Settings) -> AWSSession:
    """The rasterio session for ``s3``: its own credentials, else boto3's chain, else unsigned."""
    endpoint = urlparse(s3.endpoint_url).netloc if s3.endpoint_url else None
    if s3.access_key_id and s3.secret_access_key:
        return AWSSession(aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key,
                          aws_session_token=s3.session_token, region_name=s3.region, endpoint_url=endpoint)
    chain = _chain_session(s3.region)
    if chain is None:
        return AWSSession(aws_unsigned=True, region_name=s3.region, endpoint_url=endpoint)
    return AWSSession(session=chain, endpoint_url=endpoint)


@contextlib.contextmanager
def gdal_env(s3: S3Settings | None = None) -> Iterator[rasterio.Env]:
    """A rasterio environment that can read the store's URLs with the settings ``s3``."""
    s3 = s3 or S3Settings()
    options = {
        "GDAL_CACHEMAX": GDAL_CACHE_MB,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # COGs need no sidecar lookups
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2",
        "GDAL_HTTP_MAX_RETRY": "0",  # retries are ours (ingest), so they are counted and logged
    }
    if s3.endpoint_url:
        options["AWS_HTTPS"] = "YES" if urlparse(s3.endpoint_url).scheme == "https" else "NO"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE" if s3.addressing_style == "path" else "TRUE"
    with rasterio.Env(session=aws_session(s3), **options) as env:
        yield env
