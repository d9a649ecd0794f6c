"""React for the example page, with no build step and no CDN at run time.

The page loads React's UMD builds from this app (``/vendor/react.js``). The first
request fetches the pinned package from the npm registry, checks its published
sha512, and keeps the one file it needs in a cache directory
(``$OUTBOX_EXAMPLE_CACHE``, else ``~/.cache/outbox-admin-example``), so later starts
work offline. When the registry cannot be reached the route redirects to the same
file on unpkg, which a browser with internet access can load.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    member: str  # the file inside the package tarball
    integrity: str  # the registry's dist.integrity of the tarball

    @property
    def tarball_url(self) -> str:
        return f"{REGISTRY}/{self.package}/-/{self.package}-{self.version}.tgz"

    @property
    def cdn_url(self) -> str:
        return f"https://unpkg.com/{self.package}@{self.version}/{self.member}"


ASSETS: dict[str, Asset] = {
    "react.js": Asset(
        "react",
        "18.3.1",
        "umd/react.production.min.js",
        "sha512-wS+hAgJShR0KhEvPJArfuPVN1+Hz1t0Y6n5jLrGQbkb4urgPE/0Rve+1kMB1v/oWgHgm4WIcV+i7F2pTVj+2iQ==",
    ),
    "react-dom.js": Asset(
        "react-dom",
        "18.3.1",
        "umd/react-dom.production.min.js",
        "sha512-5m4nQKp+rZRb09LNH59GM4BxTh9251/ylbKIbpe7TpGxfJ+9kv6BLkLBXIjjspbgbnIBNqlI23tRnTWT0snUIw==",
    ),
}

_lock = threading.Lock()


class AssetUnavailable(Exception):
    """The registry could not be reached, or sent something other than the pinned package."""


def cache_dir() -> Path:
    configured = os.environ.get("OUTBOX_EXAMPLE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "outbox-admin-example"


def asset_path(name: str, timeout: float = 20.0) -> Path:
    """The cached file for ``name`` (a key of ``ASSETS``), fetched and checked on first use."""
    asset = ASSETS[name]
    target = cache_dir() / f"{asset.package}-{asset.version}" / Path(asset.member).name
    with _lock:
        if target.exists():
            return target
        try:
            response = httpx.get(asset.tarball_url, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise AssetUnavailable(f"{asset.tarball_url}: {exc}") from exc
        digest = "sha512-" + base64.b64encode(hashlib.sha512(response.content).digest()).decode()
        if digest != asset.integrity:
            raise AssetUnavailable(f"{asset.tarball_url}: checksum {digest} is not the pinned {asset.integrity}")
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
            member = archive.extractfile(f"package/{asset.member}")
            if member is None:
                raise AssetUnavailable(f"{asset.tarball_url}: no {asset.member}")
            content = member.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(content)
        partial.replace(target)
        return target
