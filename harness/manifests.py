"""Kubernetes manifests read as the API server reads them: YAML documents, and the JSON schema a
CustomResourceDefinition declares for a version, made as strict as `kubectl apply` is."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Document = dict[str, Any]

# Go's regexp takes a flag group such as `(?i)` anywhere: it applies from there to the end of
# the group it is in. Python's re takes one only at the very start of the pattern.
GO_FLAG_GROUP = re.compile(r"\(\?([imsU]+)\)")


def load_documents(path: Path) -> list[Document]:
    """The non-empty documents of a YAML file."""
    return load_documents_text(path.read_text())


def load_documents_text(text: str) -> list[Document]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [document for document in yaml.load_all(text, Loader=loader) if document]


def crd_schema(crd_path: Path, version: str = "v1") -> Document:
    """The openAPIV3Schema of one version of the CRD in `crd_path`, strict as `kubectl apply`
    is (its server-side field validation rejects a field the schema does not declare; plain
    JSON Schema would let it through), with Go's regular expressions made Python's."""
    [crd] = load_documents(crd_path)
    [served] = [entry for entry in crd["spec"]["versions"] if entry["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    forbid_undeclared_fields(schema)
    translate_go_patterns(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def schema_errors(schema: Document, document: Document) -> list[str]:
    """Every place `document` breaks `schema`, as `dotted.path: message`."""
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def forbid_undeclared_fields(schema: Document) -> None:
    open_by_design = "additionalProperties" in schema or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "properties" in schema and not open_by_design:
        schema["additionalProperties"] = False
    for child in schema.get("properties", {}).values():
        forbid_undeclared_fields(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            forbid_undeclared_fields(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for child in schema.get(key, []):
            forbid_undeclared_fields(child)


def translate_go_patterns(node: Any) -> None:
    """Every `pattern` below `node` rewritten so that Python's re reads it as Go's regexp
    does (the Prometheus Operator's CRDs have `^(?i)(abort|warn)?$`)."""
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "pattern" and isinstance(child, str):
                node[key] = python_pattern(child)
            else:
                translate_go_patterns(child)
    elif isinstance(node, list):
        for child in node:
            translate_go_patterns(child)


def python_pattern(go_pattern: str) -> str:
    """`go_pattern` with each flag group `(?i)` turned into a scoped `(?i:...)` that runs to
    the end of the group holding it, which is where Go's flag stops applying."""
    match = GO_FLAG_GROUP.search(go_pattern)
    if match is None:
        return go_pattern
    start, rest = match.start(), match.end()
    end = _group_end(go_pattern, rest)
    scoped = f"(?{match[1]}:{python_pattern(go_pattern[rest:end])})"
    return go_pattern[:start] + scoped + python_pattern(go_pattern[end:])


def _group_end(pattern: str, position: int) -> int:
    """Where the group open at `position` closes (the index of its `)`), or the pattern's end;
    escapes and bracket expressions skipped."""
    depth, index, in_class = 0, position, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                return index
            depth -= 1
        index += 1
    return len(pattern)
