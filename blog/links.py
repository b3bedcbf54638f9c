"""Where a relative link in a notebook's Markdown goes once the notebook is a post.

Links are relative in the notebook (to the notebooks/ folder) and stay relative in the post (to the
post's URL), so the site works under any baseurl without Liquid (posts set render_with_liquid: false):

* another numbered notebook -> that notebook's post;
* an image file in the repository -> copied beside the post's own images under assets/;
* any other file or folder of the repository -> its page on GitHub;
* URLs with a scheme, `#anchors` and site-absolute `/paths` -> unchanged.

A link to a missing file or to a place outside the repository is an error, not a broken page.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"})


def relative_url(target: str, page: str) -> str:
    """The relative URL from the page at site path `page` (a folder URL like /moe/01-x/) to `target`."""
    return posixpath.relpath(target, page.rstrip("/") or "/")


@dataclass
class LinkResolver:
    root: Path  # the repository
    notebook: Path  # the notebook whose links are resolved
    permalink: str  # its post's URL path, e.g. /moe/01-config/
    assets: str  # site path of its post's images, e.g. /assets/notebooks/01-config
    post_permalinks: dict[Path, str]  # resolved notebook path -> its post's URL path
    github: str  # https://github.com/OWNER/REPO
    branch: str
    copied: dict[str, Path] = field(default_factory=dict)  # image file name under `assets` -> source file

    def __call__(self, target: str) -> str:
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path or target.startswith("/"):
            return target
        suffix = (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        path = (self.notebook.parent / unquote(parts.path)).resolve()
        root = self.root.resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{self.notebook.name}: link {target!r} points outside the repository ({path})")
        if path in self.post_permalinks:
            return relative_url(self.post_permalinks[path], self.permalink) + "/" + suffix
        if not path.exists():
            raise ValueError(f"{self.notebook.name}: link {target!r} points to {path.relative_to(root)}, "
                             "which does not exist")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if self.copied.setdefault(path.name, path) != path:
                raise ValueError(f"{self.notebook.name}: two linked images are both named {path.name!r}: "
                                 f"{self.copied[path.name]} and {path}; rename one")
            return relative_url(f"{self.assets}/{quote(path.name)}", self.permalink) + suffix
        kind = "tree" if path.is_dir() else "blob"
        return f"{self.github}/{kind}/{self.branch}/{quote(path.relative_to(root).as_posix())}{suffix}"
