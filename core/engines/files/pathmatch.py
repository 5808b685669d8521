"""Glob patterns that choose which files a files backup takes.

Patterns are matched against the path relative to the backup root, with ``/``
separators and no leading ``./`` (``etc/app.conf``, ``cache/img/1.png``):

- ``*`` matches any run of characters except ``/``, ``?`` one such character,
  ``[abc]`` / ``[!abc]`` a character class, all within one path component.
- ``**`` as a whole component matches any number of components: ``**/x.log``
  matches ``x.log`` at any depth, ``a/**/b`` matches ``a/b`` and ``a/x/y/b``,
  and a trailing ``cache/**`` matches everything *below* ``cache`` (but not
  ``cache`` itself, so excluding ``cache/**`` keeps an empty ``cache``
  directory while excluding ``cache`` drops it).
- A pattern without ``/`` matches the last component at any depth (``*.log``
  matches ``a/b/x.log``); a pattern containing ``/`` is anchored at the root
  (a leading ``/`` or ``./`` is ignored).
- A trailing ``/`` (``logs/``) matches directories only.
- A pattern that matches a directory applies to everything below it.

How the engine uses them: an entry is left out if it or any directory above it
matches an exclude pattern (exclude wins; an excluded directory is not even
read). If include patterns are given, a file or symlink is taken only if it or
a directory above it matches one; directories are still traversed, and a
directory is archived when it matches itself or holds something taken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class _Pattern:
    text: str
    regex: re.Pattern[str]
    dir_only: bool

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.fullmatch(rel) is not None


def _component(part: str) -> str:
    """Regex for one path component (no ``/`` may match inside it)."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] == "!":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            j = part.find("]", j)
            if j < 0:
                out.append(re.escape("["))
                continue
            body = part[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            # A negated class must still never match the separator.
            out.append(f"(?!/)[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def compile_pattern(text: str) -> _Pattern:
    """Compile one glob pattern (see the module docstring for the syntax)."""
    pattern = text.strip()
    dir_only = pattern.endswith("/") and pattern != "/"
    pattern = pattern.rstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    if not pattern:
        raise ConfigError(f"files pattern {text!r} is empty; give a glob such as '*.log' or 'cache/**'")
    parts = pattern.split("/")
    rx = "" if anchored else "(?:.*/)?"
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            rx += ".+" if last else "(?:.*/)?"
            continue
        rx += _component(part)
        if not last:
            rx += "/"
    return _Pattern(text=text, regex=re.compile(rx, re.DOTALL), dir_only=dir_only)


class PathFilter:
    """Include/exclude decision for paths relative to the backup root."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self.include = [compile_pattern(p) for p in include]
        self.exclude = [compile_pattern(p) for p in exclude]

    @property
    def has_include(self) -> bool:
        return bool(self.include)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """True if ``rel`` itself matches an exclude pattern.

        Callers prune excluded directories, so ancestors need no re-check.
        """
        return any(p.matches(rel, is_dir) for p in self.exclude)

    def included(self, rel: str, is_dir: bool) -> bool:
        """True if ``rel`` itself matches an include pattern (or none are set).

        Callers carry an "ancestor matched" flag down the tree, so a matching
        directory includes its whole subtree.
        """
        return not self.include or any(p.matches(rel, is_dir) for p in self.include)
