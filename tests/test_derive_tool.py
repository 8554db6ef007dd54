"""tools/derive_drawthings_api.py on small upstream trees shaped like the real ones.

The Swift below is cut down from Draw Things' files (same constructs, fewer
entries), so the test shows the script reads those constructs, follows a change
upstream, and stops with a clear error when one it relies on disappears.
"""

import json
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_DIR

TOOL = PROJECT_DIR / "tools" / "derive_drawthings_api.py"

SWIFT = {
    "Libraries/Invocation/Sources/Parameters.swift": '''
extension SeedMode: CommandLineAbbreviatable {
  public var commandLineAbbreviation: String {
    switch self {
    case .legacy:
      return "Legacy"
    case .scaleAlike:
      return "Scale Alike"
    }
  }
}

extension SamplerType: CommandLineAbbreviatable {
  public var commandLineAbbreviation: String {
    switch self {
    case .eulerA:
      return "Euler a"
    case .TCD:
      return "TCD"
    }
  }
}

public final class Parameters {
  let lorasParameter: JSONParameter<[JSLoRA]>
  public init() {
    modelParameter = StringParameter(
      title: "model", explanation: modelExplanation, defaultValue: nil, commandLineFlag: "model")
    widthParameter = IntParameter(
      titleKey: "width", explanationKey: nil, defaultValue: 512,
      range: 128...8192, commandLineFlag: "width")
    seedParameter = IntParameter(
      titleKey: "seed", explanationKey: "seed_explain_cli", defaultValue: 0,
      range: -1...Int(UInt32.max),
      commandLineFlag: "seed")
    guidanceScaleParameter = DoubleParameter(
      titleKey: "guidance", explanationKey: nil, defaultValue: 4.5, range: 0...50,
      commandLineFlag: "guidance-scale", additionalJsonKeys: ["cfg_scale"])
    samplerParameter = EnumParameter<SamplerType>(
      titleKey: "sampler", explanationKey: nil, defaultValue: .eulerA,
      commandLineFlag: "sampler", additionalJsonKeys: ["sampler_name", "sampler_index"])
    seedModeParameter = EnumParameter<SeedMode>(
      titleKey: "seed_mode", explanationKey: nil, defaultValue: .legacy, commandLineFlag: "seed-mode")
    hiresFixParameter = BoolParameter(
      titleKey: "high_resolution_fix", explanationKey: nil, commandLineFlag: "hires-fix",
      additionalJsonKeys: ["enable_hr"], defaultValue: false)
    lorasParameter = JSONParameter(
      title: "loras", explanationKey: nil, defaultValue: [], commandLineFlag: "loras")
  }

  public func allParameters() -> [Parameter] {
    return [
      modelParameter,
      widthParameter,
      seedParameter,
      guidanceScaleParameter,
      samplerParameter,
      seedModeParameter,
      hiresFixParameter,
      lorasParameter,
    ]
  }
}
''',
    "Libraries/Invocation/Sources/ParameterTypes.swift": '''
public final class EnumParameter<T> {
  public func decode(from container: KeyedDecodingContainer<JSONKey>, forKey key: JSONKey) throws {
    let string = try container.decode(String.self, forKey: key)
    guard let value = T.allCases.first(where: { $0.commandLineAbbreviation == string }) else {
      throw
        "Invalid value for \\(key.stringValue) (options: \\(T.allCases.map(\\.commandLineAbbreviation)))"
    }
  }
}
public class StringParameter {
  func decode() { value = try container.decode(String?.self, forKey: key) }
}
public class DoubleParameter {
  func validate() throws {
    try Validation.validate(range.contains(value), errorMessage:
        "Value for \\(title) must be between \\(range.lowerBound) and \\(range.upperBound), inclusive (was \\(value))")
  }
  func decode() { value = try container.decodeIfPresent(Double.self, forKey: key) ?? value }
}
class BoolParameter {
  func decode() { if let decodedValue = try container.decodeIfPresent(Bool.self, forKey: key) {} }
}
public final class IntParameter {
  func decode() { value = try container.decodeIfPresent(Int.self, forKey: key) ?? value }
}
final class JSONParameter<T: Codable> {
  func decode() { guard let value = try container.decodeIfPresent(T.self, forKey: key) else { return } }
}
''',
    "Libraries/DataModels/PreGeneratedSPM/config_data_model_generated.swift": '''
public enum SamplerType: Int8, DflatFriendlyValue, CaseIterable {
  case eulerA = 1
  case TCD = 9
}

public enum SeedMode: Int8, DflatFriendlyValue, CaseIterable {
  case legacy = 0
  case scaleAlike = 2
}

public enum ControlInputType: Int8, DflatFriendlyValue, CaseIterable {
  case unspecified = 0
  case tile = 15
}
''',
    "Libraries/DataModels/Sources/Defaults.swift": '''
extension ControlInputType: CustomStringConvertible {
  public var description: String {
    switch self {
    case .unspecified:
      return ""
    case .tile:
      return "Tile"
    }
  }
}
''',
    "Libraries/HTTPAPIServer/Sources/ServerModels.swift": '''
      throw
        "More than one key for \\(parameter.title) specified (must only specify one of \\(keyStrings))"
        throw "Data in init_images did not represent a valid image"
    let otherKeys = ["restore_faces", "init_images"].map { JSONKey($0) }
      throw "Unrecognized keys: \\(keysRemaining.map(\\.stringValue))"
''',
    "Libraries/HTTPAPIServer/Sources/HTTPAPIServer.swift": '''
              "init_images height doesn't match \\(firstImage.shape[1]) from the parameter \\(parameters.heightParameter.value)"
              "init_images width doesn't match \\(firstImage.shape[2]) from the parameter \\(parameters.widthParameter.value)"
          request.images == nil, errorMessage: "init_images is not supported for text-to-image")
''',
    "Libraries/Invocation/Sources/Invocation.swift": '''
      parameters.modelParameter.value, errorMessage: "Missing 'model' parameter")
      throw "Unrecognized model name \\"\\(model)\\" (see --help for a list of available models)"
          errorMessage: "Model names may not have any '/' or '\\' characters in them")
          errorMessage: "Missing file: \\(file) (in CLI, see --help to see the lists of files)")
      errorMessage: "Missing files for model, see --help for a list of which files this model needs"
      parameters.promptParameter.value, errorMessage: "Missing prompt")
''',
    "Libraries/Scripting/Sources/ScriptModels.swift": '''
public final class JSLoRA: Codable {
  let file: String?
  let weight: Float32
  let mode: String?
  public init(lora: LoRA) {
  }
}

public final class JSControl: Codable {
  let file: String?
  let weight: Float32
  let inputOverride: String
  let targetBlocks: [String]
  public init(control: DataModels.Control) {
  }
}
''',
    "Libraries/SwiftDiffusion/Sources/Samplers/Sampler.swift": '''
public enum ModelVersion: String, Codable {
  case v1 = "v1"
  case sdxlBase = "sdxl_base_v0.9"
  case sdxlRefiner = "sdxl_refiner_v0.9"
}
''',
    "Libraries/ModelZoo/Sources/ModelZoo.swift": '''
  public static let builtinSpecifications: [Specification] = [
    Specification(
      name: "SDXL Base (v1.0)", file: "sd_xl_base_1.0_f16.ckpt", prefix: "", version: .sdxlBase),
    Specification(
      name: "SD v1.5", file: "sd_v1.5_f16.ckpt", prefix: "", version: .v1),
  ]

  public static func isCompatibleRefiner(_ version: ModelVersion, refinerVersion: ModelVersion)
    -> Bool
  {
    if [.sdxlBase, .sdxlRefiner].contains(version)
      && [.sdxlBase, .sdxlRefiner].contains(refinerVersion)
    {
      return true
    }
    return false
  }
}
''',
    "Libraries/ModelZoo/Sources/ControlNetZoo.swift": '''
  public static let builtinSpecifications: [Specification] = [
    Specification(
      name: "Tile (SD v1.x, ControlNet 1.1)", file: "controlnet_tile_1.x_v1.1_f16.ckpt",
      modifier: .tile, version: .v1, type: .controlnet),
  ]
''',
    "Libraries/ModelZoo/Sources/LoRAZoo.swift": '''
  static let builtinSpecifications: [Specification] = [
    Specification(
      name: "TCD SDXL Base (1.0)", file: "tcd_sd_xl_base_1.0_lora_f16.ckpt",
      prefix: "", version: .sdxlBase, isConsistencyModel: true),
  ]
''',
    "Libraries/ModelZoo/Sources/UpscalerZoo.swift": '''
  static let builtinSpecifications: [Specification] = [
    Specification(name: "Real-ESRGAN X2+", file: "realesrgan_x2plus_f16.ckpt", scaleFactor: .x2),
    Specification(
      name: "4x UltraSharp", file: "4x_ultrasharp_f16.ckpt"),
  ]
''',
}

COMMUNITY = {
    "models.txt": "juggernaut-xl-v9\n",
    "uncurated_models.txt": "",
    "controlnets.txt": "union-sdxl\nnot-converted\n",
    "loras.txt": "more-details\n",
    "models/juggernaut-xl-v9/metadata.json": {
        "version": "sdxl_base_v0.9", "name": "Juggernaut XL v9", "file": "juggernaut_xl_v9_f16.ckpt",
        "converted": {"juggernaut_xl_v9_f16.ckpt": "0", "juggernaut_xl_v9_q6p_q8p.ckpt": "0",
                      "juggernaut_xl_v9_clip_vit_l14_f16.ckpt": "0"}},
    "controlnets/union-sdxl/metadata.json": {
        "version": "sdxl_base_v0.9", "file": "controlnet_union_sdxl_f16.ckpt",
        "name": "Union (SDXL)", "type": "controlnetunion", "converted": {}},
    "controlnets/not-converted/metadata.json": {
        "version": "v1", "file": "controlnet_nothing_f16.ckpt", "name": "x"},
    "loras/more-details/metadata.json": {
        "version": "v1", "name": "Add More Details", "file": "add_more_details_lora_f16.ckpt",
        "converted": {"add_more_details_lora_f16.ckpt": "0"}},
}


def git_tree(folder: Path, files: dict) -> Path:
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    quiet = {"check": True, "capture_output": True, "cwd": folder}
    subprocess.run(["git", "init", "-q"], **quiet)
    subprocess.run(["git", "add", "-A"], **quiet)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"],
                   **quiet)
    return folder


def derive(tmp_path: Path, swift: dict = SWIFT) -> subprocess.CompletedProcess:
    upstream = git_tree(tmp_path / "draw-things-community", swift)
    community = git_tree(tmp_path / "community-models", COMMUNITY)
    return subprocess.run([sys.executable, str(TOOL), str(upstream), str(community), "-o",
                           str(tmp_path / "table.json")], capture_output=True, text=True)


def test_the_table_is_derived_from_the_sources(tmp_path):
    result = derive(tmp_path)
    assert result.returncode == 0, result.stderr
    table = json.loads((tmp_path / "table.json").read_text())

    assert [p["key"] for p in table["parameters"]] == [
        "model", "width", "seed", "guidance_scale", "sampler", "seed_mode", "hires_fix", "loras"]
    by_key = {p["key"]: p for p in table["parameters"]}
    assert by_key["seed"]["range"] == [-1, 4294967295]
    assert by_key["guidance_scale"] == {
        "key": "guidance_scale", "type": "double", "null": "keeps", "aliases": ["cfg_scale"],
        "title": "guidance", "title_is_localized": True, "range": [0.0, 50.0],
        "source": "Libraries/Invocation/Sources/Parameters.swift:36"}
    assert by_key["model"]["null"] == "sets_nil" and by_key["model"]["title_is_localized"] is False
    assert by_key["sampler"]["null"] == "rejected"
    assert table["enumerations"] == {"SamplerType": ["Euler a", "TCD"],
                                     "SeedMode": ["Legacy", "Scale Alike"]}
    assert table["entry_types"]["JSControl"]["targetBlocks"]["required"] is True
    assert table["entry_types"]["JSLoRA"]["mode"]["required"] is False
    assert table["control_inputs"] == ["", "Tile"]
    assert table["extra_keys"]["keys"] == ["restore_faces", "init_images"]
    assert table["messages"]["file_name_with_slash"]["format"] == (
        "Model names may not have any '/' or '' characters in them")  # Swift's \\' is '
    assert table["messages"]["unrecognized_model"]["format"] == (
        'Unrecognized model name "{model}" (see --help for a list of available models)')
    assert table["refiner_groups"] == [["sdxl_base_v0.9", "sdxl_refiner_v0.9"]]

    files = table["files"]
    assert files["upscalers"]["realesrgan_x2plus_f16.ckpt"]["scale_factor"] == 2
    assert files["upscalers"]["4x_ultrasharp_f16.ckpt"]["scale_factor"] == 4
    assert files["models"]["juggernaut_xl_v9_q6p_q8p.ckpt"] == {
        "name": "Juggernaut XL v9 (8-bit)", "version": "sdxl_base_v0.9",
        "source": "community-models/models/juggernaut-xl-v9/metadata.json"}
    assert "juggernaut_xl_v9_clip_vit_l14_f16.ckpt" not in files["models"]  # a text encoder
    assert files["controlnets"]["controlnet_union_sdxl_f16.ckpt"]["type"] == "controlnetunion"
    assert "controlnet_nothing_f16.ckpt" not in files["controlnets"]  # not converted: not published
    assert files["loras"]["add_more_details_lora_f16.ckpt"]["version"] == "v1"
    assert len(table["upstream"]["draw-things-community"]["commit"]) == 40


def test_a_new_upstream_key_appears_in_the_table(tmp_path):
    swift = dict(SWIFT)
    parameters = swift["Libraries/Invocation/Sources/Parameters.swift"]
    swift["Libraries/Invocation/Sources/Parameters.swift"] = parameters.replace(
        '''  }

  public func allParameters()''', '''    teaCacheParameter = BoolParameter(
      titleKey: "tea_cache", explanationKey: nil, commandLineFlag: "tea-cache",
      defaultValue: false)
  }

  public func allParameters()''').replace("      lorasParameter,\n",
                                           "      lorasParameter,\n      teaCacheParameter,\n")
    assert derive(tmp_path, swift).returncode == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["parameters"][-1]["key"] == "tea_cache"


def test_a_construct_that_disappeared_upstream_stops_the_script(tmp_path):
    swift = dict(SWIFT)
    swift["Libraries/Invocation/Sources/ParameterTypes.swift"] = swift[
        "Libraries/Invocation/Sources/ParameterTypes.swift"].replace(
        "value = try container.decode(String?.self, forKey: key)",
        "value = try container.decodeIfPresent(String.self, forKey: key) ?? value")

    result = derive(tmp_path, swift)

    assert result.returncode == 1
    assert result.stderr == (
        "error: Libraries/Invocation/Sources/ParameterTypes.swift: StringParameter no longer "
        "decodes with `value = try container.decode(String?.self, forKey: key)`: re-check the "
        "null rules\n")
    assert not (tmp_path / "table.json").exists()
