#!/usr/bin/env python3
"""Derive drawpipe's table of Draw Things' HTTP API from Draw Things' own source.

    python tools/derive_drawthings_api.py DRAW_THINGS_COMMUNITY COMMUNITY_MODELS \
        [-o drawpipe/drawthings/api_table.json]

DRAW_THINGS_COMMUNITY is a checkout (or a bare git directory) of
github.com/drawthingsai/draw-things-community, COMMUNITY_MODELS one of
github.com/drawthingsai/community-models. The output is the one place drawpipe
lists request keys, their types, ranges, aliases and null rules, the app's error
texts and the model family of every known file; the client's validator and the
simulator both read it (drawpipe/drawthings/api.py). Every entry names the upstream
file and line it came from, and the file is stamped with both commits.

What is read, and why:
- Libraries/Invocation/Sources/Parameters.swift: ``allParameters()`` is the list
  of keys in the order the server decodes them; each parameter's constructor gives
  its type (String/Int/Double/Bool/Enum/JSON), ``commandLineFlag`` (the JSON key,
  "-" -> "_"), ``additionalJsonKeys`` (aliases), ``range`` and title.
- Libraries/Invocation/Sources/ParameterTypes.swift: how each type decodes ``null``,
  and the range and enumeration error texts.
- Libraries/DataModels/PreGeneratedSPM/config_data_model_generated.swift and the
  ``commandLineAbbreviation`` switches of Parameters.swift: enumeration values in
  ``allCases`` order (the order of the app's "options: [...]" text).
- Libraries/HTTPAPIServer/Sources/{ServerModels,HTTPAPIServer}.swift: the two keys
  outside the parameters, the unknown-key, alias and init-image error texts.
- Libraries/Scripting/Sources/ScriptModels.swift: the fields of ``loras`` and
  ``controls`` entries (non-optional fields are required by Swift's decoder).
- Libraries/Invocation/Sources/Invocation.swift: model, file and prompt error texts.
- Libraries/ModelZoo/Sources/{ModelZoo,ControlNetZoo,LoRAZoo,UpscalerZoo}.swift and
  Libraries/SwiftDiffusion/Sources/Samplers/Sampler.swift: built-in files, their
  model family (``ModelVersion`` raw value) and upscale factors;
  ``ModelZoo.isCompatibleRefiner``: which families a refiner may have.
- community-models {models,uncurated_models,loras,controlnets}.txt and each listed
  folder's metadata.json: community files and families, with the quantised variants
  the repository's own utils/*_json.py publish.

Nothing is typed by hand: if upstream changes shape so that a pattern below no
longer matches, this script stops with an error naming the file.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "drawpipe" / "drawthings" / "api_table.json"

PARAMETERS_SWIFT = "Libraries/Invocation/Sources/Parameters.swift"
PARAMETER_TYPES_SWIFT = "Libraries/Invocation/Sources/ParameterTypes.swift"
DATA_MODELS_SWIFT = "Libraries/DataModels/PreGeneratedSPM/config_data_model_generated.swift"
DEFAULTS_SWIFT = "Libraries/DataModels/Sources/Defaults.swift"
SERVER_MODELS_SWIFT = "Libraries/HTTPAPIServer/Sources/ServerModels.swift"
SERVER_SWIFT = "Libraries/HTTPAPIServer/Sources/HTTPAPIServer.swift"
SCRIPT_MODELS_SWIFT = "Libraries/Scripting/Sources/ScriptModels.swift"
INVOCATION_SWIFT = "Libraries/Invocation/Sources/Invocation.swift"
SAMPLER_SWIFT = "Libraries/SwiftDiffusion/Sources/Samplers/Sampler.swift"
ZOO_FOLDER = "Libraries/ModelZoo/Sources"


class DerivationError(Exception):
    """Upstream no longer looks the way this script expects."""


# --------------------------------------------------------------------------- reading sources


class SourceTree:
    """Files of a checkout, or of a bare git directory at its HEAD."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.bare = not (self.path / ".git").exists() and (self.path / "HEAD").is_file()
        if not self.bare and not self.path.is_dir():
            raise DerivationError(f"{path}: not a folder")

    def _git(self, *args: str) -> str:
        where = ["--git-dir", str(self.path)] if self.bare else ["-C", str(self.path)]
        return subprocess.run(["git", *where, *args], check=True, capture_output=True,
                              text=True).stdout

    def commit(self) -> dict:
        line = self._git("log", "-1", "--format=%H %cI").split()
        return {"commit": line[0], "date": line[1]}

    def read(self, relative: str) -> str:
        if self.bare:
            try:
                return self._git("show", f"HEAD:{relative}")
            except subprocess.CalledProcessError:
                raise DerivationError(f"{self.path}: no {relative}") from None
        try:
            return (self.path / relative).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DerivationError(f"{self.path}: no {relative}") from None

    def exists(self, relative: str) -> bool:
        if self.bare:
            return bool(self._git("ls-tree", "HEAD", "--", relative).strip())
        return (self.path / relative).exists()


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def decode_swift_string(literal: str) -> str:
    """The value of a Swift string literal's body (without its quotes), escapes decoded."""
    out, index = [], 0
    while index < len(literal):
        char = literal[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        following = literal[index + 1]
        if following == "u":  # \u{XXXX}
            end = literal.index("}", index)
            out.append(chr(int(literal[index + 3:end], 16)))
            index = end + 1
            continue
        out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(following, following))
        index += 2
    return "".join(out)


def balanced_call(text: str, open_paren: int) -> str:
    """The text between ``text[open_paren] == "("`` and its matching ")", string
    literals skipped (names such as "Tile (SD v1.x)" hold parentheses)."""
    depth, index, in_string = 0, open_paren, False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 2
                continue
            if char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1:index]
        index += 1
    raise DerivationError("unbalanced parentheses")


STRING = r'"((?:[^"\\]|\\.)*)"'


def string_argument(arguments: str, label: str) -> str | None:
    found = re.search(rf"\b{label}:\s*{STRING}", arguments)
    return decode_swift_string(found.group(1)) if found else None


def enum_argument(arguments: str, label: str) -> str | None:
    found = re.search(rf"\b{label}:\s*\.(\w+)", arguments)
    return found.group(1) if found else None


# --------------------------------------------------------------------------- parameters

# Swift constant expressions used in Parameters.swift ranges.
_SWIFT_CONSTANTS = {"Int(UInt32.max)": "4294967295", "UInt32.max": "4294967295"}

# Parameter class -> (our type name, what JSON null does), from ParameterTypes.swift:
# String: ``decode(String?.self)`` -> nil; Int/Double: ``decodeIfPresent(...) ?? value``;
# Bool: ``if let decoded = decodeIfPresent``; JSON: ``guard let ... else { return }``;
# Enum: ``decode(String.self)`` -> a DecodingError (422).
_PARAMETER_CLASSES = {
    "StringParameter": ("string", "sets_nil"),
    "IntParameter": ("int", "keeps"),
    "DoubleParameter": ("double", "keeps"),
    "BoolParameter": ("bool", "keeps"),
    "EnumParameter": ("enum", "rejected"),
    "JSONParameter": ("json", "keeps"),
}


def _check_null_rules(parameter_types: str) -> None:
    """The null rules above, checked against ParameterTypes.swift so that a change
    there stops this script instead of leaving the table wrong."""
    expectations = {
        "StringParameter": "value = try container.decode(String?.self, forKey: key)",
        "IntParameter": "value = try container.decodeIfPresent(Int.self, forKey: key) ?? value",
        "DoubleParameter": "value = try container.decodeIfPresent(Double.self, forKey: key) ?? value",
        "BoolParameter": "if let decodedValue = try container.decodeIfPresent(Bool.self, forKey: key)",
        "EnumParameter": "let string = try container.decode(String.self, forKey: key)",
        "JSONParameter": "guard let value = try container.decodeIfPresent(T.self, forKey: key) else { return }",
    }
    for class_name, statement in expectations.items():
        start = re.search(rf"class {class_name}\b", parameter_types)
        if start is None or statement not in parameter_types[start.end():]:
            raise DerivationError(f"{PARAMETER_TYPES_SWIFT}: {class_name} no longer decodes "
                                  f"with `{statement}`: re-check the null rules")


def _range(arguments: str, kind: str) -> list | None:
    found = re.search(r"\brange:\s*(.+?)\.\.\.(\S+?),", arguments + ",")
    if found is None:
        return None
    bounds = []
    for text in found.groups():
        text = text.strip()
        text = _SWIFT_CONSTANTS.get(text, text)
        number = ast.literal_eval(text)
        bounds.append(float(number) if kind == "double" else int(number))
    return bounds


def _enumeration_cases(data_models: str, enum_name: str) -> list[str]:
    found = re.search(rf"public enum {enum_name}\b[^{{]*\{{(.*?)\n\}}", data_models, re.S)
    if found is None:
        raise DerivationError(f"{DATA_MODELS_SWIFT}: no enum {enum_name}")
    return re.findall(r"^\s*case (\w+) = -?\d+", found.group(1), re.M)


def _abbreviations(parameters_swift: str, enum_name: str) -> dict[str, str]:
    found = re.search(rf"extension {enum_name}: CommandLineAbbreviatable \{{(.*?)\n\}}",
                      parameters_swift, re.S)
    if found is None:
        raise DerivationError(f"{PARAMETERS_SWIFT}: no commandLineAbbreviation for {enum_name}")
    pairs = re.findall(rf"case \.(\w+):\s*return {STRING}", found.group(1))
    return {case: decode_swift_string(value) for case, value in pairs}


def derive_parameters(tree: SourceTree) -> tuple[list[dict], dict]:
    """(parameters in allParameters() order, enumerations {Swift type: values})."""
    source = tree.read(PARAMETERS_SWIFT)
    _check_null_rules(tree.read(PARAMETER_TYPES_SWIFT))
    data_models = tree.read(DATA_MODELS_SWIFT)

    declared_json_types = dict(re.findall(r"let (\w+Parameter): JSONParameter<\[(\w+)\]>", source))
    constructors = {}
    for found in re.finditer(r"\n\s+(\w+Parameter) = (\w+Parameter)(?:<(\w+)>)?\(", source):
        variable, class_name, generic = found.groups()
        if class_name not in _PARAMETER_CLASSES:
            raise DerivationError(f"{PARAMETERS_SWIFT}:{line_of(source, found.start(1))}: "
                                  f"unknown parameter class {class_name}")
        arguments = balanced_call(source, found.end() - 1)
        constructors[variable] = (class_name, generic, arguments, line_of(source, found.start(1)))

    body = re.search(r"func allParameters\(\) -> \[Parameter\] \{\s*return \[(.*?)\]", source, re.S)
    if body is None:
        raise DerivationError(f"{PARAMETERS_SWIFT}: no allParameters()")
    order = re.findall(r"(\w+Parameter)", body.group(1))

    enumerations: dict[str, list[str]] = {}
    parameters = []
    for variable in order:
        class_name, generic, arguments, line = constructors[variable]
        kind, null_rule = _PARAMETER_CLASSES[class_name]
        flag = string_argument(arguments, "commandLineFlag")
        aliases_text = re.search(r"additionalJsonKeys:\s*\[([^\]]*)\]", arguments)
        aliases = ([decode_swift_string(a) for a in re.findall(STRING, aliases_text.group(1))]
                   if aliases_text else [])
        title = string_argument(arguments, "title")
        title_key = string_argument(arguments, "titleKey")
        entry = {
            "key": flag.replace("-", "_"),
            "type": kind,
            "null": null_rule,
            "aliases": aliases,
            # The app's error texts use the title; a titleKey is looked up in the app's
            # localisation tables, which are not public: the key stands in for it.
            "title": title if title is not None else title_key,
            "title_is_localized": title is None,
            "source": f"{PARAMETERS_SWIFT}:{line}",
        }
        if kind in ("int", "double"):
            entry["range"] = _range(arguments, kind)
            if entry["range"] is None:
                raise DerivationError(f"{PARAMETERS_SWIFT}:{line}: {variable} has no range")
        if kind == "enum":
            cases = _enumeration_cases(data_models, generic)
            names = _abbreviations(source, generic)
            enumerations[generic] = [names[case] for case in cases]
            entry["enumeration"] = generic
        if kind == "json":
            entry["entries"] = declared_json_types[variable]
        parameters.append(entry)
    return parameters, enumerations


def derive_entry_fields(tree: SourceTree) -> dict:
    """{"JSLoRA": {field: {"type", "required"}}, "JSControl": {...}}: Swift's synthesised
    Decodable requires every non-optional stored property."""
    source = tree.read(SCRIPT_MODELS_SWIFT)
    swift_types = {"String": "string", "Float32": "double", "Bool": "bool", "[String]": "strings"}
    result = {}
    for class_name in ("JSLoRA", "JSControl"):
        found = re.search(rf"public final class {class_name}: Codable \{{(.*?)\n  public init",
                          source, re.S)
        if found is None:
            raise DerivationError(f"{SCRIPT_MODELS_SWIFT}: no class {class_name}")
        fields = {}
        for name, swift_type, optional in re.findall(r"let (\w+): (\[?\w+\]?)(\?)?", found.group(1)):
            fields[name] = {"type": swift_types[swift_type], "required": not optional,
                            "source": f"{SCRIPT_MODELS_SWIFT}:"
                                      f"{line_of(source, found.start(1) + found.group(1).index(name))}"}
        result[class_name] = fields
    return result


def derive_control_inputs(tree: SourceTree) -> list[str]:
    """inputOverride values the app recognises (case-insensitively): the descriptions
    of ControlInputType, "" (unspecified) first."""
    source = tree.read(DEFAULTS_SWIFT)
    found = re.search(r"extension ControlInputType: CustomStringConvertible \{(.*?)\n\}", source, re.S)
    if found is None:
        raise DerivationError(f"{DEFAULTS_SWIFT}: no ControlInputType descriptions")
    names = dict(re.findall(rf"case \.(\w+):\s*return {STRING}", found.group(1)))
    cases = _enumeration_cases(tree.read(DATA_MODELS_SWIFT), "ControlInputType")
    return [decode_swift_string(names[case]) for case in cases]


# --------------------------------------------------------------------------- messages

# Swift interpolations in the error texts -> the placeholder the reader fills in.
_INTERPOLATIONS = {
    "title": "title",
    "parameter.title": "title",
    "range.lowerBound": "lower",
    "range.upperBound": "upper",
    "value": "value",
    "key.stringValue": "key",
    "T.allCases.map(\\.commandLineAbbreviation)": "options",
    "keyStrings": "keys",
    "keysRemaining.map(\\.stringValue)": "keys",
    "firstImage.shape[1]": "image",
    "firstImage.shape[2]": "image",
    "parameters.heightParameter.value": "request",
    "parameters.widthParameter.value": "request",
    "model": "model",
    "file": "file",
}

# message name -> (file, a regular expression matching the start of its literal)
_MESSAGES = {
    "out_of_range": (PARAMETER_TYPES_SWIFT, r'"Value for \\\('),
    "invalid_enumeration": (PARAMETER_TYPES_SWIFT, r'"Invalid value for \\\('),
    "more_than_one_key": (SERVER_MODELS_SWIFT, r'"More than one key for '),
    "unrecognized_keys": (SERVER_MODELS_SWIFT, r'"Unrecognized keys: '),
    "invalid_init_image": (SERVER_MODELS_SWIFT, r'"Data in init_images did not'),
    "init_height_mismatch": (SERVER_SWIFT, r'"init_images height doesn'),
    "init_width_mismatch": (SERVER_SWIFT, r'"init_images width doesn'),
    "init_images_txt2img": (SERVER_SWIFT, r'"init_images is not supported'),
    "missing_model": (INVOCATION_SWIFT, r'"Missing \'model\''),
    "unrecognized_model": (INVOCATION_SWIFT, r'"Unrecognized model name'),
    "file_name_with_slash": (INVOCATION_SWIFT, r'"Model names may not'),
    "missing_file": (INVOCATION_SWIFT, r'"Missing file: '),
    "missing_model_files": (INVOCATION_SWIFT, r'"Missing files for model'),
    "missing_prompt": (INVOCATION_SWIFT, r'"Missing prompt"'),
}


def _as_format(literal_body: str) -> str:
    """A Swift literal's body with ``\\(expr)`` turned into ``{name}`` (str.format)."""
    out, index = [], 0
    while index < len(literal_body):
        if literal_body.startswith("\\(", index):
            expression = balanced_call(literal_body, index + 1)
            if expression not in _INTERPOLATIONS:
                raise DerivationError(f"unknown interpolation \\({expression}) in an error text")
            out.append("{" + _INTERPOLATIONS[expression] + "}")
            index += len(expression) + 3
            continue
        char = literal_body[index]
        if char == "\\":
            out.append(decode_swift_string(literal_body[index:index + 2]))
            index += 2
            continue
        out.append("{{" if char == "{" else "}}" if char == "}" else char)
        index += 1
    return "".join(out)


def _string_literal_at(text: str, start: int) -> str:
    """The body of the string literal starting at ``text[start] == '"'``; a literal may
    be split over lines only by interpolation, never here."""
    index = start + 1
    while True:
        char = text[index]
        if char == "\\":
            if text[index + 1] == "(":
                index = index + 1 + len(balanced_call(text, index + 1)) + 2
                continue
            index += 2
            continue
        if char == '"':
            return text[start + 1:index]
        index += 1


def derive_messages(tree: SourceTree) -> dict:
    messages = {}
    for name, (relative, pattern) in _MESSAGES.items():
        source = tree.read(relative)
        found = re.search(pattern, source)
        if found is None:
            raise DerivationError(f"{relative}: the error text '{name}' was not found")
        body = _string_literal_at(source, found.start())
        messages[name] = {"format": _as_format(body),
                          "source": f"{relative}:{line_of(source, found.start())}"}
    return messages


# --------------------------------------------------------------------------- model families


def derive_versions(tree: SourceTree) -> dict[str, str]:
    """ModelVersion case -> raw value, e.g. sdxlBase -> "sdxl_base_v0.9"."""
    source = tree.read(SAMPLER_SWIFT)
    found = re.search(r"public enum ModelVersion: String, Codable \{(.*?)\n\}", source, re.S)
    if found is None:
        raise DerivationError(f"{SAMPLER_SWIFT}: no enum ModelVersion")
    return {case: decode_swift_string(raw)
            for case, raw in re.findall(rf"case (\w+) = {STRING}", found.group(1))}


def _builtin_specifications(tree: SourceTree, zoo: str) -> list[tuple[str, int]]:
    """(arguments, line) of every ``Specification(...)`` in ``zoo``'s builtinSpecifications."""
    relative = f"{ZOO_FOLDER}/{zoo}.swift"
    source = tree.read(relative)
    start = re.search(r"static let builtinSpecifications: \[Specification\] = \[", source)
    if start is None:
        raise DerivationError(f"{relative}: no builtinSpecifications")
    end = source.index("\n  ]\n", start.end())
    found = []
    for match in re.finditer(r"\bSpecification\(", source[start.end():end]):
        offset = start.end() + match.end() - 1
        found.append((balanced_call(source, offset), line_of(source, offset)))
    if not found:
        raise DerivationError(f"{relative}: builtinSpecifications is empty")
    return found


def derive_builtin_files(tree: SourceTree, versions: dict[str, str]) -> dict:
    """Built-in files of the app's zoos: {kind: {file: {...}}}."""
    families: dict[str, dict] = {"models": {}, "controlnets": {}, "loras": {}, "upscalers": {}}
    for zoo, kind in (("ModelZoo", "models"), ("ControlNetZoo", "controlnets"),
                      ("LoRAZoo", "loras"), ("UpscalerZoo", "upscalers")):
        for arguments, line in _builtin_specifications(tree, zoo):
            file = string_argument(arguments, "file")
            entry = {"name": string_argument(arguments, "name"),
                     "source": f"{ZOO_FOLDER}/{zoo}.swift:{line}"}
            if kind == "upscalers":
                # UpscalerZoo.Specification: scaleFactor defaults to .x4
                entry["scale_factor"] = int((enum_argument(arguments, "scaleFactor") or "x4")[1:])
            else:
                entry["version"] = versions[enum_argument(arguments, "version")]
            if kind == "controlnets":
                entry["modifier"] = enum_argument(arguments, "modifier")
                entry["type"] = enum_argument(arguments, "type")
            families[kind][file] = entry
    return families


# Quantised variants published next to a community file, as the community-models
# repository's own utils/{models,controlnets}_json.py list them: (suffix of the file,
# groups of (suffix, name suffix) of which the first present is published).
_VARIANT_RULES = {
    "models": [
        ("_f16.ckpt", [[("_q6p_q8p.ckpt", " (8-bit)"), ("_q8p.ckpt", " (8-bit)")],
                       [("_i8x.ckpt", " (8-bit S)")]]),
        ("_bf16_q8p.ckpt", [[("_bf16_q5p.ckpt", " (BF16, 5-bit)"),
                             ("_bf16_q5p_svd.ckpt", " (BF16, 5-bit, SVDQuant)"),
                             ("_bf16_q6p.ckpt", " (BF16, 6-bit)"),
                             ("_bf16_q6p_svd.ckpt", " (BF16, 6-bit, SVDQuant)")],
                            [("_bf16_i8x.ckpt", " (BF16, 8-bit S)")]]),
        ("_q8p.ckpt", [[("_q5p.ckpt", " (5-bit)"), ("_q5p_svd.ckpt", " (5-bit, SVDQuant)"),
                        ("_q6p.ckpt", " (6-bit)"), ("_q6p_svd.ckpt", " (6-bit, SVDQuant)")],
                       [("_i8x.ckpt", " (8-bit S)")], [("_i6x.ckpt", " (6-bit S)")]]),
    ],
    "controlnets": [
        ("_f16.ckpt", [[("_q6p_q8p.ckpt", " (8-bit)"), ("_q8p.ckpt", " (8-bit)")]]),
        ("_q8p.ckpt", [[("_q5p.ckpt", " (5-bit)"), ("_q6p.ckpt", " (6-bit)")]]),
    ],
    "loras": [],
}


def published_files(kind: str, metadata: dict) -> list[tuple[str, str]]:
    """(file, display name) of the file a community metadata.json names and of its
    published quantised variants."""
    file, name = metadata["file"], metadata.get("name") or metadata["file"]
    converted = metadata.get("converted") or {}
    files = [(file, name)]
    for suffix, groups in _VARIANT_RULES[kind]:
        if file.endswith(suffix):
            stem = file[:-len(suffix)]
            for group in groups:
                present = [(stem + candidate, name + name_suffix)
                           for candidate, name_suffix in group if stem + candidate in converted]
                files += present[:1]
            break
    if kind == "models" and metadata.get("version") == "flux1" and file.endswith("_f16.ckpt"):
        # models_json.py names FLUX.1's _q8p variant without the " (8-bit)" suffix.
        flux_q8p = file[:-len("_f16.ckpt")] + "_q8p.ckpt"
        files = [(f, name if f == flux_q8p else n) for f, n in files]
    return files


def derive_community_files(tree: SourceTree, families: dict) -> None:
    """Add community-models' files to ``families`` (built-in entries win, as in the app:
    specificationMapping before fallbackMapping)."""
    for list_file, folder, kind in (("models.txt", "models", "models"),
                                    ("uncurated_models.txt", "uncurated_models", "models"),
                                    ("controlnets.txt", "controlnets", "controlnets"),
                                    ("loras.txt", "loras", "loras")):
        for directory in tree.read(list_file).split():
            relative = f"{folder}/{directory}/metadata.json"
            if not tree.exists(relative):
                continue  # the published lists skip missing folders too
            metadata = json.loads(tree.read(relative))
            if "file" not in metadata or "version" not in metadata:
                continue
            if "converted" not in metadata and kind != "models":
                continue  # controlnets_json.py skips unconverted entries
            for file, name in published_files(kind, metadata):
                if file in families[kind]:
                    continue
                entry = {"name": name, "version": metadata["version"],
                         "source": f"community-models/{relative}"}
                if kind == "controlnets":
                    entry["modifier"] = metadata.get("modifier")
                    entry["type"] = metadata.get("type")
                families[kind][file] = entry


def derive_refiner_groups(tree: SourceTree, versions: dict[str, str]) -> list[list[str]]:
    """Families that may refine each other besides a family itself (isCompatibleRefiner)."""
    relative = f"{ZOO_FOLDER}/ModelZoo.swift"
    source = tree.read(relative)
    found = re.search(r"static func isCompatibleRefiner\(.*?\n  \}", source, re.S)
    if found is None:
        raise DerivationError(f"{relative}: no isCompatibleRefiner")
    live = re.sub(r"/\*.*?\*/", "", found.group(0), flags=re.S)  # commented-out rules
    groups = []
    for first, second in re.findall(r"if \[([^\]]*)\]\.contains\(version\)\s*&& \[([^\]]*)\]"
                                    r"\.contains\(refinerVersion\)", live):
        cases = re.findall(r"\.(\w+)", first)
        if cases != re.findall(r"\.(\w+)", second):
            raise DerivationError(f"{relative}: isCompatibleRefiner is no longer symmetric")
        groups.append([versions[case] for case in cases])
    return groups


# --------------------------------------------------------------------------- output


def derive(draw_things: SourceTree, community_models: SourceTree) -> dict:
    parameters, enumerations = derive_parameters(draw_things)
    versions = derive_versions(draw_things)
    families = derive_builtin_files(draw_things, versions)
    derive_community_files(community_models, families)
    server_models = draw_things.read(SERVER_MODELS_SWIFT)
    extra = re.search(r"let otherKeys = \[([^\]]*)\]", server_models)
    if extra is None:
        raise DerivationError(f"{SERVER_MODELS_SWIFT}: no otherKeys")
    return {
        "about": "Draw Things' HTTP API, derived by tools/derive_drawthings_api.py from "
                 "Draw Things' source; do not edit by hand (README: 'Refreshing the API table').",
        "upstream": {
            "draw-things-community": draw_things.commit(),
            "community-models": community_models.commit(),
        },
        "parameters": parameters,
        "extra_keys": {
            "keys": [decode_swift_string(k) for k in re.findall(STRING, extra.group(1))],
            "source": f"{SERVER_MODELS_SWIFT}:{line_of(server_models, extra.start())}",
        },
        "enumerations": enumerations,
        "entry_types": derive_entry_fields(draw_things),
        "control_inputs": derive_control_inputs(draw_things),
        "messages": derive_messages(draw_things),
        "model_versions": versions,
        "refiner_groups": derive_refiner_groups(draw_things, versions),
        "files": families,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("draw_things_community", type=Path)
    parser.add_argument("community_models", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    try:
        table = derive(SourceTree(arguments.draw_things_community),
                       SourceTree(arguments.community_models))
    except DerivationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(table, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
    arguments.output.write_text(text, encoding="utf-8")
    counts = {kind: len(files) for kind, files in table["files"].items()}
    print(f"{arguments.output}: {len(table['parameters'])} parameters, "
          f"{sum(len(v) for v in table['enumerations'].values())} enumeration values, "
          f"files {counts}, from draw-things-community "
          f"{table['upstream']['draw-things-community']['commit'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
