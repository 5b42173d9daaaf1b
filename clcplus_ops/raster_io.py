"""GDAL access to store URLs: ``file://`` paths, ``s3://`` objects (through GDAL's /vsis3/ with
the store's endpoint, e.g. a local S3 API) and ``https://`` assets (/vsicurl/)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from urllib.parse import urlparse

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


@contextlib.contextmanager
def gdal_env(s3: S3Settings | None = None) -> Iterator[rasterio.Env]:
    """A rasterio environment that can read the store's URLs."""
    options = {
        "GDAL_CACHEMAX": GDAL_CACHE_MB,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # COGs need no sidecar lookups
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2",
        "GDAL_HTTP_MAX_RETRY": "0",  # retries are ours (ingest), so they are counted and logged
    }
    session = None
    s3 = s3 or S3Settings()
    if s3.endpoint_url:
        endpoint = urlparse(s3.endpoint_url)
        options["AWS_HTTPS"] = "YES" if endpoint.scheme == "https" else "NO"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE" if s3.addressing_style == "path" else "TRUE"
        session = AWSSession(
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region_name=s3.region,
            endpoint_url=endpoint.netloc,
        )
    elif "AWS_ACCESS_KEY_ID" not in os.environ and not os.path.exists(os.path.expanduser("~/.aws")):
        options["AWS_NO_SIGN_REQUEST"] = "YES"  # public archives (Earth Search's bucket)
    with rasterio.Env(session=session, **options) as env:
        yield env
