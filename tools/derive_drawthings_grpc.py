#!/usr/bin/env python3
"""Derive drawpipe's gRPC transport from Draw Things' own source: generated code and a table.

    python tools/derive_drawthings_grpc.py DRAW_THINGS_COMMUNITY [--check]

DRAW_THINGS_COMMUNITY is a checkout (or a bare git directory) of
github.com/drawthingsai/draw-things-community. Writes, under drawpipe/drawthings/:

- ``drawthings/generated/imageService_pb2.py`` and ``drawthings/generated/imageService_pb2_grpc.py``: protobuf
  and gRPC code from Libraries/GRPC/Models/Sources/imageService/imageService.proto,
  by grpcio-tools' protoc (the proto is compiled from a folder shaped like the package,
  so the two modules import each other absolutely).
- ``generated/config/*.py``: FlatBuffers code for Libraries/DataModels/Sources/config.fbs
  (``GenerationConfiguration``, the request's ``configuration`` bytes), by ``flatc``
  (Debian: ``apt-get install flatbuffers-compiler``). The schema is compiled with a
  namespace (the package path, so the modules import each other absolutely) and with
  the two attributes Dflat's own compiler declares (``primary``, ``indexed``); neither
  changes a byte of the binary format.
- ``generated/draw_things_root_ca.crt``: Libraries/BinaryResources/Resources/root_ca.crt,
  the root the app's gRPC client trusts (ImageGenerationClientWrapper.swift) and that
  signed the certificate gRPCServerCLI serves by default.
- ``drawthings/generated/__init__.py``: which upstream commit and which tool versions made them.
- ``grpc_table.json``: how each JSON key of a template (the HTTP API's keys,
  drawthings/api_table.json) becomes a ``GenerationConfiguration`` field, read from
  the one place the app itself does that for its HTTP server: the
  ``GenerationConfiguration(...)`` call of ``Invocation.init(... parameters: ...)``
  (Libraries/Invocation/Sources/Invocation.swift), each argument's expression naming
  a ``...Parameter`` whose ``commandLineFlag`` (Parameters.swift) is the key. Also:
  the fields' schema types, defaults and lines (config.fbs); the app's default
  configuration (Defaults.swift ``GenerationConfiguration.default``: what a key left
  out becomes, since no app window stands behind a gRPC request); enumeration words
  to raw values (Parameters.swift abbreviations, ScriptModels.swift ``createLora`` /
  ``createControl``, config_data_model_generated.swift); the face restoration file
  ``restore_faces`` selects (HTTPAPIServer.swift, EverythingZoo.swift).

``--check`` compares instead of writing (exit 1 when anything differs). Nothing is typed
by hand: an argument expression or a construct this script does not know stops it
with an error naming the file and line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derive_drawthings_api import (DATA_MODELS_SWIFT, DEFAULTS_SWIFT, INVOCATION_SWIFT,  # noqa: E402
                                   PARAMETERS_SWIFT, SCRIPT_MODELS_SWIFT, SERVER_SWIFT, STRING,
                                   DerivationError, SourceTree, _abbreviations, balanced_call,
                                   decode_swift_string, line_of, string_argument)

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = "drawpipe.drawthings.generated"
GENERATED = PROJECT / "drawpipe" / "drawthings" / "generated"
TABLE = PROJECT / "drawpipe" / "drawthings" / "grpc_table.json"

PROTO = "Libraries/GRPC/Models/Sources/imageService/imageService.proto"
CONFIG_FBS = "Libraries/DataModels/Sources/config.fbs"
ROOT_CA = "Libraries/BinaryResources/Resources/root_ca.crt"
EVERYTHING_ZOO = "Libraries/ModelZoo/Sources/EverythingZoo.swift"

GENERATED_HEADER = '''"""Code generated from Draw Things' schemas by tools/derive_drawthings_grpc.py: do not edit.

Upstream: draw-things-community {commit} ({date}).
- imageService_pb2.py, imageService_pb2_grpc.py: {proto} by grpcio-tools {grpc_tools} ({protoc}).
- config/: {fbs} by {flatc}, namespace {package}.config.
- draw_things_root_ca.crt: {root_ca}.
"""
'''


# --------------------------------------------------------------------------- config.fbs


def _camel(snake: str) -> str:
    """flatc's field name in Swift: ``stage_2_steps`` -> ``stage2Steps``."""
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def read_schema(fbs: str) -> tuple[dict, dict]:
    """(tables {name: [field]}, enums {name: [value names]}) of config.fbs, in order.
    A field: {"field", "type", "default", "deprecated", "source"} (default: the
    literal, or None)."""
    tables, enums = {}, {}
    for found in re.finditer(r"^enum (\w+)\s*:\s*\w+\s*\{(.*?)\}", fbs, re.S | re.M):
        enums[found.group(1)] = re.findall(r"(\w+)\s*,?", found.group(2))
    for found in re.finditer(r"^table (\w+)\s*\{(.*?)\n\}", fbs, re.S | re.M):
        fields = []
        body_start = found.start(2)
        for field in re.finditer(r"^\s*(\w+)\s*:\s*([\[\]\w]+)\s*(?:=\s*([^;(\s]+))?\s*(\([^)]*\))?\s*;",
                                 found.group(2), re.M):
            fields.append({
                "field": field.group(1),
                "type": field.group(2),
                "default": field.group(3),
                "deprecated": "deprecated" in (field.group(4) or ""),
                "source": f"{CONFIG_FBS}:{line_of(fbs, body_start + field.start(1))}",
            })
        tables[found.group(1)] = fields
    for name in ("GenerationConfiguration", "LoRA", "Control"):
        if name not in tables:
            raise DerivationError(f"{CONFIG_FBS}: no table {name}")
    return tables, enums


# --------------------------------------------------------------------------- Parameters.swift


def parameter_flags(parameters_swift: str) -> dict[str, tuple[str, int]]:
    """``widthParameter`` -> ("width", line): every parameter's JSON key ("-" -> "_")."""
    flags = {}
    for found in re.finditer(r"\n\s+(\w+Parameter) = \w+Parameter(?:<\w+>)?\(", parameters_swift):
        arguments = balanced_call(parameters_swift, found.end() - 1)
        flag = string_argument(arguments, "commandLineFlag")
        if flag is None:
            raise DerivationError(f"{PARAMETERS_SWIFT}:{line_of(parameters_swift, found.start(1))}: "
                                  f"{found.group(1)} has no commandLineFlag")
        flags[found.group(1)] = (flag.replace("-", "_"), line_of(parameters_swift, found.start(1)))
    return flags


# --------------------------------------------------------------------------- Invocation.swift

_P = r"parameters\.(\w+Parameter)"
# An argument's expression -> how the key's value becomes the field's (the reader,
# drawthings/grpc_request.py, implements each name).
_EXPRESSIONS = (
    (rf"^{_P}\.value$", "value"),
    (rf"^{_P}\.uint32Value\(\)$", "uint32"),
    (rf"^{_P}\.int32Value\(\)$", "int32"),
    (rf"^{_P}\.float32Value\(\)$", "float32"),
    (rf"^Int32\({_P}\.value\)$", "int32"),
    (rf"^UInt8\({_P}\.uint32Value\(\)\)$", "uint8"),
    (rf"^UInt16\({_P}\.uint32Value\(\) / 64\)$", "divide_by_64"),
    (rf"^UInt16\({_P}\.value / 64\)$", "divide_by_64"),
    (rf"^{_P}\.int32Value\(\) > 0$", "positive"),
    (rf"^max\({_P}\.int32Value\(\), 0\)$", "at_least_0"),
    (rf"^{_P}\.value\.map \{{ \$0\.createControl\(\) \}}$", "controls"),
    (rf"^{_P}\.value\.map \{{ \$0\.createLora\(\) \}}$", "loras"),
    (rf"^{_P}\.value == -1\s*\? UInt32\(Int\.random\(in: {_P}\.range\)\)\s*: UInt32\({_P}\.value\)$",
     "seed"),
    (rf"^{_P}\.value\.flatMap \{{.*ModelZoo\.specificationForModel.*isModelDownloaded.*\}}$",
     "refiner"),
)


def _split_arguments(arguments: str) -> list[tuple[str, str, int]]:
    """``label: expression`` pairs of a call's argument text, with each one's offset."""
    parts, depth, start, in_string = [], 0, 0, False
    for index, char in enumerate(arguments + ","):
        if in_string:
            in_string = char != '"' or arguments[index - 1] == "\\"
        elif char == '"':
            in_string = True
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            text = arguments[start:index]
            label, _, expression = text.partition(":")
            parts.append((label.strip(), " ".join(expression.split()), start + len(text) - len(text.lstrip())))
            start = index + 1
    return parts


def _local_values(invocation: str, body_start: int, body_end: int) -> dict[str, tuple[str, int]]:
    """``let name = expression`` inside Invocation.init before the configuration call."""
    values = {}
    for found in re.finditer(r"\n\s+let (\w+)(?:: [\w?]+)? =\s*", invocation[body_start:body_end]):
        start = body_start + found.end()
        depth, index = 0, start
        while index < body_end:  # the expression ends at a newline outside brackets
            char = invocation[index]
            if char in "([{":
                depth += 1
            elif char in ")]}":
                depth -= 1
            elif char == "\n" and depth == 0 and not invocation[index + 1:].lstrip().startswith(
                    ("?", ":", ".", "??")):
                break
            index += 1
        values[found.group(1)] = (" ".join(invocation[start:index].split()),
                                  line_of(invocation, body_start + found.start(1)))
    return values


def derive_fields(tree: SourceTree, schema: list[dict], flags: dict) -> list[dict]:
    """Every GenerationConfiguration field, in schema order, with what sets it."""
    invocation = tree.read(INVOCATION_SWIFT)
    init = re.search(r"public init\(\s*faceRestorationModel: String\?,.*?parameters: Parameters", invocation, re.S)
    if init is None:
        raise DerivationError(f"{INVOCATION_SWIFT}: no Invocation.init(faceRestorationModel:..., "
                              "parameters:)")
    call = re.search(r"self\.configuration = GenerationConfiguration\(", invocation[init.end():])
    if call is None:
        raise DerivationError(f"{INVOCATION_SWIFT}: no GenerationConfiguration(...) in Invocation.init")
    open_paren = init.end() + call.end() - 1
    locals_ = _local_values(invocation, init.end(), open_paren)
    arguments = balanced_call(invocation, open_paren)
    by_camel = {_camel(field["field"]): field for field in schema}
    server = tree.read(SERVER_SWIFT)
    restore = re.search(r"let faceRestorationModel =\s*request\.restoreFaces \? "
                        r"EverythingZoo\.availableSpecifications\[0\]\.file : nil", server)
    if restore is None:
        raise DerivationError(f"{SERVER_SWIFT}: restore_faces no longer selects "
                              "EverythingZoo.availableSpecifications[0]")

    found_fields = {}
    for label, expression, offset in _split_arguments(arguments):
        line = line_of(invocation, open_paren + 1 + offset)
        where = f"{INVOCATION_SWIFT}:{line}"
        field = by_camel.get(label)
        if field is None:
            raise DerivationError(f"{where}: {label} is not a field of GenerationConfiguration "
                                  f"({CONFIG_FBS})")
        entry = {"field": field["field"], "source": where}
        origin = expression
        if re.fullmatch(r"\w+", expression) and expression in locals_:
            origin, local_line = locals_[expression]
            entry["source"] += f" (let {expression}: {INVOCATION_SWIFT}:{local_line})"
        if re.fullmatch(r"-?\d+", expression):
            entry["conversion"], entry["constant"] = "constant", int(expression)
        elif expression == "modelSpecification.file":
            entry["key"], entry["conversion"] = flags["modelParameter"][0], "model"
        elif expression == "faceRestorationModel":
            entry["key"], entry["conversion"] = "restore_faces", "face_restoration"
            entry["source"] += f" ({SERVER_SWIFT}:{line_of(server, restore.start())})"
        else:
            if re.fullmatch(r"UInt16\(\w+\)", expression):  # UInt16(startWidth), startWidth = x / 64
                inner = expression[7:-1]
                if inner not in locals_:
                    raise DerivationError(f"{where}: {expression}: no let {inner}")
                origin = f"UInt16({locals_[inner][0]})"
                entry["source"] += f" (let {inner}: {INVOCATION_SWIFT}:{locals_[inner][1]})"
            for pattern, conversion in _EXPRESSIONS:
                matched = re.fullmatch(pattern, origin)
                if matched:
                    variable = matched.group(1)
                    if variable not in flags:
                        raise DerivationError(f"{where}: {variable} is not a parameter of "
                                              f"{PARAMETERS_SWIFT}")
                    entry["key"], entry["conversion"] = flags[variable][0], conversion
                    entry["source"] += f"; key: {PARAMETERS_SWIFT}:{flags[variable][1]}"
                    break
            else:
                raise DerivationError(f"{where}: {label}: {origin!r} is not an expression this "
                                      "script knows: teach it _EXPRESSIONS")
        found_fields[field["field"]] = entry

    result = []
    for field in schema:
        row = {"field": field["field"], "type": field["type"], "schema_default": field["default"],
               "schema_source": field["source"]}
        if field["deprecated"]:
            row["deprecated"] = True
        row.update({k: v for k, v in found_fields.get(field["field"], {}).items() if k != "field"})
        result.append(row)
    return result


# --------------------------------------------------------------------------- defaults, enums


def derive_defaults(tree: SourceTree, schema: list[dict]) -> dict:
    """GenerationConfiguration.default (Defaults.swift): {field: value} for the literal
    arguments; the others (the device's default size, a random seed) are listed apart."""
    source = tree.read(DEFAULTS_SWIFT)
    found = re.search(r"extension GenerationConfiguration \{\s*public static var `default`: "
                      r"GenerationConfiguration \{.*?return GenerationConfiguration\(", source, re.S)
    if found is None:
        raise DerivationError(f"{DEFAULTS_SWIFT}: no GenerationConfiguration.default")
    by_camel = {_camel(field["field"]): field for field in schema}
    values, not_literal = {}, {}
    for label, expression, _ in _split_arguments(balanced_call(source, found.end() - 1)):
        field = by_camel.get(label)
        if field is None:
            raise DerivationError(f"{DEFAULTS_SWIFT}: {label} is not a field of GenerationConfiguration")
        if re.fullmatch(r"-?\d+(\.\d+)?", expression):
            values[field["field"]] = json.loads(expression)
        elif expression in ("true", "false"):
            values[field["field"]] = expression == "true"
        elif expression == "nil":
            values[field["field"]] = None
        elif re.fullmatch(r"\.\w+", expression):
            values[field["field"]] = expression  # an enumeration case, resolved below
        else:
            not_literal[field["field"]] = expression
    data_models = tree.read(DATA_MODELS_SWIFT)
    for field in schema:
        value = values.get(field["field"])
        if isinstance(value, str) and value.startswith("."):
            values[field["field"]] = _swift_cases(data_models, field["type"])[value[1:]]
    return {"values": values, "not_literal": not_literal,
            "source": f"{DEFAULTS_SWIFT}:{line_of(source, found.start())}"}


def _swift_cases(data_models: str, enum_name: str) -> dict[str, int]:
    found = re.search(rf"public enum {enum_name}\b[^{{]*\{{(.*?)\n\}}", data_models, re.S)
    if found is None:
        raise DerivationError(f"{DATA_MODELS_SWIFT}: no enum {enum_name}")
    return {case: int(value) for case, value in re.findall(r"case (\w+) = (-?\d+)", found.group(1))}


def _word_switch(script_models: str, function: str, enum_name: str) -> dict[str, str]:
    """``case "word": return .case`` of a createLora/createControl switch."""
    body = re.search(rf"func {function}\(\).*?let \w+: DataModels\.{enum_name} = \{{(.*?)\}}\(\)",
                     script_models, re.S)
    if body is None:
        raise DerivationError(f"{SCRIPT_MODELS_SWIFT}: no {enum_name} switch in {function}()")
    return dict(re.findall(rf"case {STRING}:\s*return \.(\w+)", body.group(1)))


def derive_enumerations(tree: SourceTree, fbs_enums: dict) -> dict:
    """{enum: {"values": {word: raw value}, "source"}}: the words templates use."""
    parameters = tree.read(PARAMETERS_SWIFT)
    data_models = tree.read(DATA_MODELS_SWIFT)
    scripts = tree.read(SCRIPT_MODELS_SWIFT)
    result = {}
    for enum_name in ("SamplerType", "SeedMode", "CompressionMethod", "ColorCalibration"):
        cases = _swift_cases(data_models, enum_name)
        names = _abbreviations(parameters, enum_name)
        result[enum_name] = {"values": {names[case]: cases[case] for case in cases},
                             "source": f"{PARAMETERS_SWIFT} (commandLineAbbreviation), "
                                       f"{DATA_MODELS_SWIFT}"}
    for enum_name, function in (("LoRAMode", "createLora"), ("ControlMode", "createControl")):
        cases = _swift_cases(data_models, enum_name)
        words = _word_switch(scripts, function, enum_name)
        result[enum_name] = {"values": {word: cases[case] for word, case in words.items()},
                             "source": f"{SCRIPT_MODELS_SWIFT} ({function}), {DATA_MODELS_SWIFT}"}
    for enum_name, values in result.items():
        if sorted(values["values"].values()) != list(range(len(fbs_enums[enum_name]))):
            raise DerivationError(f"{enum_name}: the words do not cover {CONFIG_FBS}'s values "
                                  f"{fbs_enums[enum_name]}")
    # inputOverride: its description, case-insensitively (api_table.json control_inputs).
    cases = _swift_cases(data_models, "ControlInputType")
    descriptions = re.search(r"extension ControlInputType: CustomStringConvertible \{(.*?)\n\}",
                             tree.read(DEFAULTS_SWIFT), re.S)
    if descriptions is None:
        raise DerivationError(f"{DEFAULTS_SWIFT}: no ControlInputType descriptions")
    names = dict(re.findall(rf"case \.(\w+):\s*return {STRING}", descriptions.group(1)))
    result["ControlInputType"] = {
        "values": {decode_swift_string(names[case]).lower(): value for case, value in cases.items()},
        "source": f"{SCRIPT_MODELS_SWIFT} (createControl), {DEFAULTS_SWIFT}, {DATA_MODELS_SWIFT}"}
    return result


def derive_entries(tree: SourceTree, tables: dict) -> dict:
    """How a ``loras``/``controls`` entry's JSON fields become LoRA/Control fields
    (ScriptModels.swift createLora/createControl): {"json": the entry's field} and, for
    a word the app looks up, {"enumeration": the Swift enum} (unknown words: raw value 0)."""
    source = tree.read(SCRIPT_MODELS_SWIFT)
    result = {}
    for key, table, function, call in (("loras", "LoRA", "createLora", r"DataModels\.LoRA\("),
                                       ("controls", "Control", "createControl", r"return Control\(")):
        body = re.search(rf"func {function}\(\)", source)
        found = re.search(call, source[body.end():]) if body else None
        if found is None:
            raise DerivationError(f"{SCRIPT_MODELS_SWIFT}: no {table}(...) in {function}()")
        open_paren = body.end() + found.end() - 1
        # Locals computed from an entry field: let mode: DataModels.LoRAMode = { switch self.mode ...
        words = {}
        for local in re.finditer(r"let (\w+): (?:DataModels\.)?(\w+) = \{(.*?)\}\(\)",
                                 source[body.end():open_paren], re.S):
            field = re.search(r"(?:switch|if) (?:self\.)?(\w+)(?:\.lowercased\(\))?", local.group(3))
            if field is None:
                raise DerivationError(f"{SCRIPT_MODELS_SWIFT}: {function}(): what does "
                                      f"{local.group(1)} read?")
            words[local.group(1)] = (field.group(1), local.group(2))
        schema = {_camel(field["field"]): field["field"] for field in tables[table]}
        fields = {}
        for label, expression, offset in _split_arguments(balanced_call(source, open_paren)):
            if label not in schema:
                raise DerivationError(f"{SCRIPT_MODELS_SWIFT}: {label} is not a field of {table}")
            entry = {"json": expression}
            if expression in words:
                entry = {"json": words[expression][0], "enumeration": words[expression][1]}
            entry["source"] = f"{SCRIPT_MODELS_SWIFT}:{line_of(source, open_paren + 1 + offset)}"
            fields[schema[label]] = entry
        result[key] = {"table": table, "fields": fields}
    return result


def derive_face_restoration(tree: SourceTree) -> str:
    source = tree.read(EVERYTHING_ZOO)
    found = re.search(r"builtinSpecifications: \[Specification\] = \[\s*Specification\([^)]*?file: "
                      + STRING, source, re.S)
    if found is None:
        raise DerivationError(f"{EVERYTHING_ZOO}: no first builtin specification")
    return decode_swift_string(found.group(1))


def derive_table(tree: SourceTree) -> dict:
    tables, enums = read_schema(tree.read(CONFIG_FBS))
    flags = parameter_flags(tree.read(PARAMETERS_SWIFT))
    return {
        "about": "How a template's JSON keys become Draw Things' GenerationConfiguration "
                 "FlatBuffer, derived by tools/derive_drawthings_grpc.py from Draw Things' "
                 "source; do not edit by hand.",
        "upstream": {"draw-things-community": tree.commit()},
        "fields": derive_fields(tree, tables["GenerationConfiguration"], flags),
        "defaults": derive_defaults(tree, tables["GenerationConfiguration"]),
        "enumerations": derive_enumerations(tree, enums),
        "entries": derive_entries(tree, tables),
        "face_restoration_file": derive_face_restoration(tree),
    }


# --------------------------------------------------------------------------- generated code


def _tool_versions() -> dict:
    flatc = shutil.which("flatc")
    if flatc is None:
        raise DerivationError("flatc is not on PATH (Debian/Ubuntu: apt-get install "
                              "flatbuffers-compiler; macOS: brew install flatbuffers)")
    protoc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "--version"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return {"flatc": subprocess.run([flatc, "--version"], capture_output=True, text=True,
                                    check=True).stdout.strip(),
            "protoc": protoc, "grpc_tools": importlib.metadata.version("grpcio-tools")}


def generate_code(tree: SourceTree, output: Path) -> None:
    """Regenerate the generated/ folder into ``output``."""
    versions = _tool_versions()
    package_path = Path(*PACKAGE.split("."))
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        (work / package_path).mkdir(parents=True)
        (work / package_path / "imageService.proto").write_text(tree.read(PROTO), encoding="utf-8")
        (work / "out").mkdir()
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{work}",
                        f"--python_out={work / 'out'}", f"--grpc_python_out={work / 'out'}",
                        str(work / package_path / "imageService.proto")], check=True)
        schema = (f"namespace {PACKAGE}.config;\n"
                  "attribute \"primary\";\nattribute \"indexed\";\n" + tree.read(CONFIG_FBS))
        (work / "config.fbs").write_text(schema, encoding="utf-8")
        subprocess.run(["flatc", "--python", "-o", str(work / "out"), str(work / "config.fbs")],
                       check=True)
        if output.exists():
            shutil.rmtree(output)
        (output / "config").mkdir(parents=True)
        for name in ("imageService_pb2.py", "imageService_pb2_grpc.py"):
            shutil.copy(work / "out" / package_path / name, output / name)
        for module in sorted((work / "out" / package_path / "config").glob("*.py")):
            if module.name != "__init__.py":
                shutil.copy(module, output / "config" / module.name)
    (output / "config" / "__init__.py").write_text(
        '"""FlatBuffers code for config.fbs (see ../__init__.py)."""\n', encoding="utf-8")
    (output / "draw_things_root_ca.crt").write_text(tree.read(ROOT_CA), encoding="utf-8")
    commit = tree.commit()
    (output / "__init__.py").write_text(GENERATED_HEADER.format(
        commit=commit["commit"], date=commit["date"], proto=PROTO, fbs=CONFIG_FBS, root_ca=ROOT_CA,
        package=PACKAGE, **versions), encoding="utf-8")


def _same_tree(left: Path, right: Path) -> list[str]:
    names = {p.relative_to(left) for p in left.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    names |= {p.relative_to(right) for p in right.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return sorted(str(name) for name in names
                  if not (left / name).is_file() or not (right / name).is_file()
                  or (left / name).read_bytes() != (right / name).read_bytes())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("draw_things_community", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them")
    arguments = parser.parse_args(argv)
    tree = SourceTree(arguments.draw_things_community)
    try:
        table = derive_table(tree)
        text = json.dumps(table, indent=1, ensure_ascii=False) + "\n"
        if arguments.check:
            with tempfile.TemporaryDirectory() as temporary:
                generate_code(tree, Path(temporary) / "generated")
                differences = _same_tree(Path(temporary) / "generated", GENERATED)
            if TABLE.read_text(encoding="utf-8") != text:
                differences.append(str(TABLE.relative_to(PROJECT)))
            for name in differences:
                print(f"differs: {name}")
            return 1 if differences else 0
        generate_code(tree, GENERATED)
        TABLE.write_text(text, encoding="utf-8")
    except (DerivationError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mapped = sum(1 for field in table["fields"] if "key" in field)
    print(f"{GENERATED.relative_to(PROJECT)}/ and {TABLE.relative_to(PROJECT)}: "
          f"{len(table['fields'])} GenerationConfiguration fields, {mapped} set from a key, "
          f"from draw-things-community {table['upstream']['draw-things-community']['commit'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
