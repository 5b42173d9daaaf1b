"""Revisions of a product tile, and which run makes each one.

What goes into a tile (its PUs' committed layers, the product parameters, the code version) is
summed up in its *content key*. Each distinct key a tile has had is one revision, R00 for the
first, R01 for the next...; a published revision is never overwritten, so a changed tile is
delivered under the next revision's file names.

The revision log is one small object per revision, ``{products}/{year}/{code}/revisions/R{nn}.json``,
created with a create-if-absent write (an exclusive link on ``file://``, ``If-None-Match`` on
S3): of several runs claiming the same number, exactly one succeeds. The object names the key,
the PU whose run claimed it (the one that assembles the tile) and the claim's date (the
revision's date in the metadata, so a rerun gives the same bytes).

Two PUs finishing together both see every layer committed and both compute the same key: one
claims the revision and assembles the tile, the other finds the claim and leaves the tile to it
(:class:`ClaimedElsewhere`). Once the claimant has committed the tile, any run may go on with
it (its stages are current and skip; publishing the same bytes again is a no-op).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from clcplus_ops.errors import ClcplusError
from clcplus_ops.store import Store, canonical_json, join

log = logging.getLogger(__name__)

FOLDER = "revisions"
MAX_REVISION = 99  # two digits in the file names


class ClaimedElsewhere(ClcplusError):
    """Another PU's run claimed this revision and has not committed the tile yet."""


class RevisionsExhausted(ClcplusError):
    """A tile would need a revision beyond R99."""


@dataclass(frozen=True)
class Revision:
    number: int
    key: str
    claimed_by: str
    date: dt.date

    def to_dict(self) -> dict:
        return {"revision": self.number, "key": self.key, "claimed_by": self.claimed_by, "date": self.date.isoformat()}


def revision_url(tile_base: str, number: int) -> str:
    return join(tile_base, FOLDER, f"R{number:02d}.json")


def _read(store: Store, url: str) -> Revision | None:
    try:
        data = store.read_json(url)
    except FileNotFoundError:
        return None
    return Revision(int(data["revision"]), data["key"], data["claimed_by"], dt.date.fromisoformat(data["date"]))


def revisions(store: Store, tile_base: str) -> list[Revision]:
    """The tile's revisions in order (an unbroken sequence R00, R01, ...)."""
    out = []
    while (found := _read(store, revision_url(tile_base, len(out)))) is not None:
        out.append(found)
    return out


def claim(store: Store, tile_base: str, key: str, claimant: str, today: dt.date | None = None) -> Revision:
    """The revision of content ``key``: the existing one if the tile already had this content,
    else the next number, claimed for ``claimant`` (exactly one of racing claimants gets it)."""
    number = 0
    while True:
        url = revision_url(tile_base, number)
        found = _read(store, url)
        if found is None:
            if number > MAX_REVISION:
                raise RevisionsExhausted(f"{tile_base}: a revision beyond R{MAX_REVISION} would be needed; "
                                         "raise products.version and start again from R00")
            mine = Revision(number, key, claimant, today or dt.datetime.now(dt.timezone.utc).date())
            if store.write_bytes_if_absent(url, canonical_json(mine.to_dict()).encode()):
                log.info("%s: revision R%02d claimed by %s", tile_base, number, claimant)
                return mine
            continue  # another run took this number in the meantime: read what it wrote
        if found.key == key:
            return found
        number += 1
