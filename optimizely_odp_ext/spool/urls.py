"""Spool URLs as they may be shown: never with their password. Standard library only."""

from __future__ import annotations


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(prefix, userinfo, rest)`` of a URL, found by the last ``@``: generous on purpose, so
    that a password with unescaped ``/``, ``?`` or ``@`` is still found whole."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url, None, ""
    userinfo, _, hostpart = rest.rpartition("@")
    return scheme + sep, userinfo, hostpart


def mask_url(url: str) -> str:
    """``url`` without its password: ``redis://user:***@host:6379/0``.

    A user part without a colon is masked whole (it may be a password written without
    the colon); a ``password=`` query parameter is masked too. Does not block.
    """
    prefix, userinfo, rest = split_userinfo(url)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        keep = colon and not any(c in user for c in "/?#")
        url = f"{prefix}{user if keep else ''}{':' if keep else ''}***@{rest}"
    head, mark, query = url.partition("?")
    if mark:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(f"{name}{eq}{'***' if name.lower() == 'password' else value}" for name, eq, value in pairs)
    return head + mark + query
