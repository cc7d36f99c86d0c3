"""Untrusted values stay small: bounded YAML, bounded messages, bounded object graphs.

Every file relpos reads may come from someone else (an upload, a run folder, a config). A small
file can *declare* or *share* far more than it stores, and the damage happens when that is
believed or walked. This module bounds values; :mod:`relpos._file_limits` bounds binary files
(torch archives, safetensors, images) the same way.

- YAML (:func:`load_yaml`): ``yaml.safe_load`` semantics (no Python tags), plus limits on the
  document's bytes, nesting depth and *expanded* size. PyYAML builds an alias as a shared
  reference, so a 500-byte "billion laughs" document loads into a few kilobytes, and then a
  ``repr`` (an error message), ``copy``, JSON dump or ``to_plain`` walks it as 10^9 nodes. The
  expansion is counted as the nodes are composed, before the constructor builds anything; a
  recursive alias (``&a [*a]``) has no finite expansion and is refused too.
- Any loaded value (:func:`check_object_size`): the same expanded-size and depth limits for a
  value that did not come from YAML, e.g. the config stored in a checkpoint (a pickle memo makes
  the same shared graph).
- Messages (:func:`short_repr`, :func:`short_text`): a ``repr`` cut at ``limit`` characters,
  computed in ``O(limit)`` whatever the value is (shared, recursive, a 10^5-digit int).

The limits are fixed ceilings far above any real input: a resolved config has about 60 nodes and
3 levels, a sweep spec a few hundred nodes. Refusals name the source and the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from relpos.guards import ResourceLimitError

__all__ = [
    "MAX_OBJECT_DEPTH",
    "MAX_OBJECT_NODES",
    "MAX_REPR",
    "MAX_YAML_BYTES",
    "check_object_size",
    "load_yaml",
    "short_repr",
    "short_text",
]

#: Largest YAML document read (bytes). Configs are about 2 KB, sweep specs about 10 KB.
MAX_YAML_BYTES = 1024 * 1024
#: Largest expanded size of a YAML document or loaded value, in nodes (see :func:`check_object_size`).
MAX_OBJECT_NODES = 100_000
#: Deepest nesting of a YAML document or loaded value (a config nests 3 levels).
MAX_OBJECT_DEPTH = 64
#: Characters one value may take in an error message.
MAX_REPR = 200
# A string or bytes value counts one node per this many characters (so aliases of a long string
# are bounded like aliases of a long list: what a repr or a dump writes).
_CHARS_PER_NODE = 100


# --------------------------------------------------------------------------- messages


def short_repr(value: Any, limit: int = MAX_REPR) -> str:
    """``repr(value)``, cut to at most ``limit`` characters, in time and memory ``O(limit)``.

    Containers are walked only as far as the text allows (a list of 10^9 shared items, a recursive
    list or a 4300-digit int all print a bounded prefix); a cut text ends in ``"..."``.
    """
    limit = max(int(limit), 8)
    parts: list[str] = []
    room = [limit + 1]  # one more than allowed: a cut can be detected

    def emit(text: str) -> None:
        text = text[: room[0]]
        parts.append(text)
        room[0] -= len(text)

    def walk(v: Any, depth: int) -> None:
        if room[0] <= 0:
            return
        if depth > 8:
            emit("...")
            return
        if isinstance(v, dict):
            pairs, opening, closing = iter(v.items()), "{", "}"
        elif isinstance(v, (list, tuple, set, frozenset)):
            pairs = ((None, x) for x in v)
            opening, closing = (
                ("[", "]") if isinstance(v, list) else ("(", ")") if isinstance(v, tuple)
                else ("frozenset({", "})") if isinstance(v, frozenset) else ("{", "}")
            )
        else:
            emit(_scalar_repr(v, room[0]))
            return
        if isinstance(v, (set, frozenset)) and not v:
            emit(f"{type(v).__name__}()")
            return
        emit(opening)
        for i, (k, x) in enumerate(pairs):
            if room[0] <= 0:
                return
            if i:
                emit(", ")
            if k is not None or isinstance(v, dict):
                walk(k, depth + 1)
                emit(": ")
            walk(x, depth + 1)
        if isinstance(v, tuple) and len(v) == 1:
            emit(",")
        emit(closing)

    walk(value, 0)
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_text(text: str, limit: int = MAX_REPR) -> str:
    """``text`` cut to at most ``limit`` characters (a cut text ends in ``"..."``)."""
    text = str(text)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _scalar_repr(v: Any, room: int) -> str:
    if isinstance(v, (str, bytes, bytearray)):
        return repr(v[: max(room, 1)])
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 4 * max(room, 64):
        return f"<int of {v.bit_length()} bits>"  # Python refuses str() of ints over 4300 digits
    try:
        return repr(v)[: max(room, 1)]
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return f"<{type(v).__name__}>"


def _weight(value: Any) -> int:
    """Nodes one scalar counts for: 1, plus one per ``_CHARS_PER_NODE`` characters or digits."""
    if isinstance(value, (str, bytes, bytearray)):
        return 1 + len(value) // _CHARS_PER_NODE
    if isinstance(value, int) and not isinstance(value, bool):
        return 1 + value.bit_length() // (_CHARS_PER_NODE * 3)
    return 1


# --------------------------------------------------------------------------- YAML


def load_yaml(
    data: str | bytes,
    source: str,
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_nodes: int = MAX_OBJECT_NODES,
    max_depth: int = MAX_OBJECT_DEPTH,
    error: type[Exception] = ValueError,
) -> Any:
    """``yaml.safe_load(data)`` with bounded size, depth and alias expansion.

    Args:
        data: the document, as text or as bytes (decoded as UTF-8, a BOM allowed).
        source: what to call it in messages (a file name, ``"override 'x=1'"``).
        max_bytes: largest document, in UTF-8 bytes.
        max_nodes: largest expanded size (aliases counted as often as they are used; a string
            counts one node per 100 characters).
        max_depth: deepest nesting of sequences and mappings.
        error: the exception class raised for every refusal (e.g. ``ConfigError``).

    Returns:
        The document's value (``None`` for an empty document).

    Raises:
        error: not UTF-8, too large, too deep, expanding past ``max_nodes``, a recursive alias,
            not valid YAML, a Python tag, or a value the constructor refuses (an invalid date, an
            integer of more than 4300 digits). The message names ``source`` and the limit.
    """
    too_big = f"{source} is over {max_bytes} bytes; YAML documents are read up to {max_bytes} bytes"
    if isinstance(data, (bytes, bytearray)):
        if len(data) > max_bytes:
            raise error(too_big)
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise error(f"{source} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    elif isinstance(data, str):
        text = data
        if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise error(too_big)
    else:
        raise TypeError(f"data must be str or bytes, got {type(data).__name__}")
    loader = None
    try:
        loader = _BoundedLoader(text, source, max_nodes, max_depth)  # the reader checks characters here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise error(
            f"{source} is not valid YAML (or uses a tag that is not allowed): {short_text(str(exc), 400)}"
        ) from None
    except _LimitRefusal as exc:
        raise error(str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # the constructor's own errors: an invalid date, an int over 4300 digits, ...
        raise error(f"{source} holds a value YAML cannot construct: {short_text(str(exc), 300)}") from None
    finally:
        if loader is not None:
            loader.dispose()


class _LimitRefusal(Exception):
    """A YAML document over a limit (converted to the caller's error class)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that measures every node as it is composed, before anything is built.

    A node's expanded size is summed bottom-up (a collection is 1 + its children; an alias is the
    node it names, already measured), so the check is linear in the document's length and refuses
    a bomb before the constructor runs. Depth is checked before descending, so a deeply nested
    document never reaches the composer's recursion. An alias to a collection still being composed
    is recursive (its expansion is infinite) and is refused.
    """

    def __init__(self, text: str, source: str, max_nodes: int, max_depth: int) -> None:
        super().__init__(text)
        self._source, self._max_nodes, self._max_depth = source, max_nodes, max_depth
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size (every node lives until the load ends)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            node = self.anchors.get(anchor)
            if node is not None and id(node) not in self._sizes:
                raise _LimitRefusal(f"{self._source} has a recursive alias *{short_repr(anchor, 60)} "
                                    "(its value would be infinite); refused")
            return super().compose_node(parent, index)  # the anchored node, measured already
        if self._depth >= self._max_depth and self.check_event(yaml.CollectionStartEvent):
            raise _LimitRefusal(f"{self._source} nests deeper than {self._max_depth} levels; refused")
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        sizes = self._sizes
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(sizes[id(k)] + sizes[id(v)] for k, v in node.value)
        else:
            size = _weight(node.value)
        if size > self._max_nodes:
            raise _LimitRefusal(
                f"{self._source} expands to more than {self._max_nodes} nodes (aliases counted each "
                "time they are used: a 'billion laughs' document); refused"
            )
        sizes[id(node)] = size
        return node


# --------------------------------------------------------------------------- any loaded value

_END = object()  # end of a child iterator


def check_object_size(
    value: Any,
    what: str,
    *,
    max_nodes: int = MAX_OBJECT_NODES,
    max_depth: int = MAX_OBJECT_DEPTH,
) -> int:
    """Refuse a value whose expansion (shared references counted each time) is over the limits.

    Containers are dicts, lists, tuples and sets (keys and values both count); a string counts one
    node per 100 characters. Each distinct container is measured once, so the check is linear in
    what is in memory, and it stops as soon as a limit is passed.

    Args:
        value: e.g. the config stored in a checkpoint.
        what: what to call it in messages, e.g. ``"the config in best.pt"``.

    Returns:
        The expanded size in nodes.

    Raises:
        ResourceLimitError: the expansion is over ``max_nodes``, the nesting deeper than
            ``max_depth``, or the value contains itself.
    """
    memo: dict[int, int] = {}
    on_path: set[int] = set()

    def children(c: Any) -> Iterator[Any]:
        if isinstance(c, dict):
            for k, v in c.items():
                yield k
                yield v
        else:
            yield from c

    def too_big() -> ResourceLimitError:
        return ResourceLimitError(
            f"{what} expands to more than {max_nodes} nodes (shared references counted each time "
            "they are used); refused"
        )

    containers = (dict, list, tuple, set, frozenset)
    if not isinstance(value, containers):
        return _weight(value)
    # Iterative post-order walk: frames of [container, child iterator, size so far].
    stack: list[list[Any]] = [[value, children(value), 1]]
    on_path.add(id(value))
    while stack:
        frame = stack[-1]
        child = next(frame[1], _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(frame[0]))
            memo[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > max_nodes:
                    raise too_big()
            continue
        if not isinstance(child, containers):
            frame[2] += _weight(child)
        elif id(child) in memo:
            frame[2] += memo[id(child)]
        elif id(child) in on_path:
            raise ResourceLimitError(f"{what} contains itself (a recursive reference); refused")
        else:
            if len(stack) >= max_depth:
                raise ResourceLimitError(f"{what} nests deeper than {max_depth} levels; refused")
            on_path.add(id(child))
            stack.append([child, children(child), 1])
            continue
        if frame[2] > max_nodes:
            raise too_big()
    return memo[id(value)]
