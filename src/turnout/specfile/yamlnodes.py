"""YAML read with line numbers: composed nodes (which keep their marks) turned into plain
data by hand, recording the line of every field path, duplicate keys, and aliases that
refer back to themselves.
"""

from __future__ import annotations

from typing import Any

import yaml

from turnout.errors import SpecError
from turnout.specfile.problems import Origin, Problems
from turnout.spectext import FieldPath, show


def read_yaml(text: str, name: str, problems: Problems) -> dict[str, Any]:
    """The top-level mapping of `text`, recording the line of each field path in `problems`;
    YAML that cannot be read raises SpecError at once."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        hint = " (YAML indents with spaces, not tabs)" if "\\t" in str(exc.problem) else ""
        raise SpecError([f"{where}: invalid YAML: {exc.problem or exc.context}{hint}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{name}: invalid YAML: {exc}"]) from None
    if root is None:
        raise SpecError(
            [f"{name}: the file is empty; a spec needs at least service and run.command"]
        )
    reader = _NodeReader(name, problems)
    problems.root = problems.origins[()] = reader.origin(root)
    data = reader.build(root, (), 0)
    if not isinstance(data, dict):
        raise SpecError(
            [
                f"{problems.root.label}: the top level must be a mapping of fields such as "
                f"`service:` and `run:`, got {show(data)}"
            ]
        )
    return data


class _NodeReader:
    """Turns composed YAML nodes into plain data, noting each path's line and duplicate keys."""

    def __init__(self, name: str, problems: Problems) -> None:
        self.name = name
        self.problems = problems
        self.constructor = yaml.SafeLoader("")
        self.open: set[int] = set()  # collections being built: an alias back to one is a cycle

    def origin(self, node: yaml.Node) -> Origin:
        line = node.start_mark.line + 1
        return Origin(f"{self.name}:{line}", (0, line))

    def build(self, node: yaml.Node, path: FieldPath, depth: int) -> Any:
        self.problems.origins.setdefault(path, self.origin(node))
        if id(node) in self.open or depth > 50:
            self.problems.add(path, "refers to itself through a YAML alias or is nested too deeply")
            self.problems.broken.add(path)
            return None
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path, depth)
                items = enumerate(node.value)
                return [self.build(item, (*path, i), depth + 1) for i, item in items]
            finally:
                self.open.discard(id(node))
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.problems.add(path, f"invalid value: {problem}", self.origin(node))
            self.problems.broken.add(path)
            return None

    def _mapping(self, node: yaml.MappingNode, path: FieldPath, depth: int) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self._scalar(key_node, (*path, "?"))
            line = key_node.start_mark.line + 1
            if key in seen:
                self.problems.add(
                    (*path, key),
                    f"duplicate key; it is already set on line {seen[key]}",
                    self.origin(key_node),
                )
            seen.setdefault(key, line)
        try:
            self.constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.problems.add(path, f"invalid merge: {getattr(exc, 'problem', exc)}")
            self.problems.broken.add(path)
            return {}
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.add(path, "keys must be plain names", self.origin(key_node))
                self.problems.broken.add(path)
                continue
            key = self._scalar(key_node, (*path, "?"))
            self.problems.origins[(*path, key)] = self.origin(key_node)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result
