"""Reading YAML as marked nodes, so every complaint can name ``file:line``.

The loader never constructs Python objects with PyYAML: it composes the node graph (which keeps the
position of every key and value) and reads scalars from their source text. That also sidesteps
YAML 1.1 surprises: ``language: no`` stays the text ``no`` (Norwegian), ``called: 0988`` stays
``0988``, and a time such as ``22:00`` is never turned into the number 1320.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

#: libyaml's parser when PyYAML was built with it (about ten times faster; same nodes and
#: marks). A file it rejects is parsed again by the pure-Python parser for the error message.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_INT = re.compile(r"[-+]?[0-9]+\Z")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One thing wrong with a rule file; ``line`` is 1-based, ``None`` when it is the whole file."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class RulesError(Exception):
    """The rules could not be loaded; ``problems`` lists every ``file:line: message`` found.

    The running rules stay in force when a reload raises this.
    """

    def __init__(self, problems: Iterable[RuleProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def messages(self) -> list[str]:
        return [str(p) for p in self.problems]


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class FileProblems:
    """Collects the problems of one file: the loader reports all of them, not just the first."""

    def __init__(self, file: str, sink: list[RuleProblem]) -> None:
        self.file = file
        self._sink = sink

    def add(self, node: yaml.Node | None, message: str) -> None:
        self._sink.append(RuleProblem(self.file, None if node is None else line_of(node), message))

    def at_line(self, line: int | None, message: str) -> None:
        self._sink.append(RuleProblem(self.file, line, message))

    def count(self) -> int:
        """How many problems have been reported so far (in every file)."""
        return len(self._sink)

    def where(self, node: yaml.Node) -> str:
        return f"{self.file}:{line_of(node)}"

    # --------------------------------------------------------------------------------- parsing

    def compose(self, text: str) -> yaml.Node | None:
        """The document's root node; ``None`` for an empty file or a syntax error (reported)."""
        if SAFE_LOADER is not yaml.SafeLoader:
            try:
                return yaml.compose(text, Loader=SAFE_LOADER)
            except yaml.YAMLError:
                pass  # parsed again below: PyYAML's own messages say what it found instead
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else int(mark.line) + 1
            what = exc.problem or exc.context or "malformed YAML"
            self.at_line(line, f"YAML syntax error: {what}")
        except yaml.YAMLError as exc:
            self.at_line(None, f"YAML error: {exc}")
        return None

    # --------------------------------------------------------------------------------- shapes

    def mapping(
        self,
        node: yaml.Node,
        what: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """The entries of a mapping node as ``{key: (key_node, value_node)}``.

        Reports (and skips) non-text keys, duplicate keys and keys not in ``allowed`` (with a
        suggestion for a likely typo); reports missing ``required`` keys at the mapping's line.
        Returns ``None`` when ``node`` is not a mapping at all.
        """
        if not isinstance(node, yaml.MappingNode):
            self.add(node, f"{what} must be a mapping (key: value lines), not {kind(node)}")
            return None
        allowed = tuple(allowed)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _TAG + "null":
                self.add(key_node, f"{what}: keys must be plain names")
                continue
            key = str(key_node.value)
            if key in out:
                first = line_of(out[key][0])
                self.add(key_node, f"{what}: duplicate key {key!r} (first given on line {first})")
                continue
            if key not in allowed:
                self.add(key_node, f"{what}: unknown key {key!r}{_suggest(key, allowed)}")
                continue
            out[key] = (key_node, value_node)
        for key in required:
            if key not in out:
                self.add(node, f"{what}: missing required key {key!r}")
        return out

    def items(self, node: yaml.Node, what: str, *, allow_single: bool) -> list[yaml.Node] | None:
        """The items of a sequence node (or ``[node]`` when a single value is allowed)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.add(node, f"{what}: empty list (remove the key instead)")
                return None
            return list(node.value)
        if allow_single and isinstance(node, yaml.ScalarNode) and not _is_null(node):
            return [node]
        expected = "a value or a list" if allow_single else "a list"
        self.add(node, f"{what} must be {expected}, not {kind(node)}")
        return None

    # --------------------------------------------------------------------------------- scalars

    def text(self, node: yaml.Node, what: str) -> str | None:
        """A scalar's source text (whatever YAML would have resolved it to)."""
        if not isinstance(node, yaml.ScalarNode) or _is_null(node):
            self.add(node, f"{what} must be text, not {kind(node)}")
            return None
        value = str(node.value)
        if not value.strip():
            self.add(node, f"{what} must not be empty")
            return None
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        """Only ``true`` or ``false`` (not yes/no/on/off, not quoted)."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "bool":
            value = str(node.value).lower()
            if value in ("true", "false"):
                return value == "true"
        shown = node.value if isinstance(node, yaml.ScalarNode) else kind(node)
        self.add(node, f"{what} must be true or false, not {shown!r}")
        return None

    def integer(self, node: yaml.Node, what: str) -> int | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "int":
            value = str(node.value)
            if _INT.match(value):
                return int(value)
        self.add(node, f"{what} must be a whole number, not {_shown(node)}")
        return None

    def number(self, node: yaml.Node, what: str) -> float | None:
        if isinstance(node, yaml.ScalarNode) and node.tag in (_TAG + "int", _TAG + "float"):
            value = str(node.value)
            if _NUMBER.match(value):
                return float(value)
        self.add(node, f"{what} must be a number, not {_shown(node)}")
        return None


def _is_null(node: yaml.Node) -> bool:
    return node.tag == _TAG + "null"


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if _is_null(node):
        return "nothing"
    return repr(str(node.value))


def _shown(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "str":
        return f"the text {str(node.value)!r}"
    return kind(node)


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(allowed)})"
