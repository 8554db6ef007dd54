"""Upscale every image under GENERATIONS/ to 2048 px with Draw Things' img2img, on one or more Macs.

Examples:
  python upscale.py --root SHARE                 # GENERATIONS/ -> UPSCALED_IMAGES/
  python upscale.py --root SHARE --watch         # keep picking up new images; Ctrl-C stops
  python upscale.py --recipe upscale_fast.json            # one request per image instead of two
  python upscale.py --set strength=0.35                   # every step that sends strength
  python upscale.py --set "refine 2048:steps=12"          # one step, by name or number
  python upscale.py --dry-run                             # to do, done, claimed by whom
  python upscale.py --server http://10.0.0.5:7860 --server http://127.0.0.1:7860
  python upscale.py --server grpcs://gpu-box:7859 --shared-secret-env DT_SECRET   # gRPC, TLS
"""

import argparse
import difflib
import sys
from pathlib import Path

from tqdm import tqdm

from drawpipe import bundled
from drawpipe.cli.common import (CommonSettings, PlanWords, job_states, local_takes,
                                 made_again_from_a_new_input, print_plan, print_rejected,
                                 print_watching, resolve_settings, run_and_summarise, script_main,
                                 share_errors, warning_printer)
from drawpipe.cli.options import add_setting_arguments
from drawpipe.drawthings.payloads import parse_override
from drawpipe.errors import UsageError
from drawpipe.layout import GENERATIONS_FOLDER, natural_key
from drawpipe.settings import GLANCE, QUARANTINE, RUN, SERVER, SHARE, WATCH
from drawpipe.stages.upscale import UpscaleStage, apply_overrides, load_recipe

# drawpipe/settings.py: the flags it takes
SETTINGS = WATCH + ("seed_offset", "settle_seconds") + SHARE + RUN + SERVER + QUARANTINE + GLANCE


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", metavar="FILE",
                        help="the img2img steps: a file, or a bundled recipe's name "
                             "(default creative_upscale.json; see README 'Choosing a recipe')")
    parser.add_argument("--set", action="append", metavar="[STEP:]KEY=VALUE",
                        help="override a Draw Things API key in every step that sends it, or "
                             "in one step (its name or number); VALUE is JSON or text; "
                             "repeatable. Images already upscaled are not redone")
    add_setting_arguments(parser, SETTINGS, folder=GENERATIONS_FOLDER + "/")
    return parser.parse_args(argv)


def run(args, project_dir: Path, stdin=None, stdout=None) -> int:
    """upscale.py: every PNG under <root>/GENERATIONS through the recipe into UPSCALED_IMAGES."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, SETTINGS, stdin, stdout)
    recipe = load_recipe(_recipe_path(args.recipe))
    recipe = apply_overrides(recipe, [parse_override(text, steps=True) for text in args.set or []])
    warn = warning_printer()
    for line in recipe.warnings:
        warn(line)
    settle_seconds = settings.values["settle_seconds"]
    if settle_seconds < 0:
        raise UsageError(f"--settle-seconds must be 0 or more, got {settle_seconds:g}")

    def report_skipped(label: str, reason: str) -> None:
        tqdm.write(f"skipped: {label}: {reason} (never sent)", file=sys.stderr)

    takes = local_takes(settings.root)
    stage = UpscaleStage(settings.root, recipe, settings.server_settings, settings.seed_offset,
                         settle_seconds, on_skipped=None if settings.dry_run else report_skipped,
                         on_warning=warn, takes=takes)
    print(f"recipe {recipe.path}: {len(recipe.steps)} step(s) "
          f"({', '.join(step.name for step in recipe.steps)}) -> "
          f"{recipe.output_size[0]}x{recipe.output_size[1]} px", file=stdout)
    for override, numbers in zip(recipe.overrides, recipe.override_steps):
        print(f"override --set {override.text}: step(s) {', '.join(map(str, numbers))}",
              file=stdout)
    if settings.dry_run:
        return _print_upscale_plan(stage, settings, stdout)
    print_watching(stage.input_folder, settings, stdout)
    summary = run_and_summarise(stage, settings, takes, stdout)
    print_rejected(stage.rejected, stdout)
    if summary.total == 0 and not stage.skipped:
        print(f"no .png images under {stage.input_folder} (run generate.py first, or pass "
              "the right --root)", file=stdout)
    if stage.skipped:
        print(f"{len(stage.skipped)} input(s) skipped, not usable PNG images (never sent):",
              file=stdout)
        for label, reason in stage.skipped.items():
            print(f"  {label}: {reason}", file=stdout)
        print("replace or remove them and run the same command again", file=stdout)
    if stage.ignored:
        print(f"{len(stage.ignored)} file(s) under {GENERATIONS_FOLDER}/ are not .png and were "
              "ignored", file=stdout)
    print(f"upscaled images are in {stage.output_folder}", file=stdout)
    code = summary.exit_code
    return 1 if code == 0 and stage.skipped else code


def _recipe_path(recipe: str | None) -> Path:
    """--recipe FILE as given, else a bundled one by file name (upscale_fast.json) or name
    (upscale_fast); the default recipe without --recipe."""
    if recipe is None:
        return bundled.DEFAULT_RECIPE
    path = Path(recipe).expanduser()
    if not path.exists():
        for candidate in (bundled.PAYLOADS / recipe, bundled.PAYLOADS / f"{recipe}.json"):
            if candidate.is_file():
                return candidate
        names = bundled.recipe_names()
        close = difflib.get_close_matches(Path(recipe).stem, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"--recipe {recipe}: no such file, and no bundled recipe of that name "
                         f"({hint}bundled: {', '.join(names)})")
    return path


def _print_upscale_plan(stage: UpscaleStage, settings: CommonSettings, out) -> int:
    """Per sub-folder of GENERATIONS/: to do, to redo, done, claimed by whom, rejected in
    review; then a total."""
    with share_errors(settings.root):
        jobs = stage.plan()
    states = job_states(settings.root, stage, jobs, settings.lease_seconds)
    folders: dict[str, tuple[list, list]] = {}

    def label_of(input_path: Path) -> str:
        folder = input_path.parent.relative_to(stage.input_folder).as_posix()
        return folder if folder != "." else "(top level)"

    for job, state in zip(jobs, states):
        folder_jobs, folder_states = folders.setdefault(label_of(job.input), ([], []))
        folder_jobs.append(job)
        folder_states.append(state)
    rejected: dict[str, int] = {}
    for label in stage.rejected:
        folder = label_of(settings.root / label)
        folders.setdefault(folder, ([], []))
        rejected[folder] = rejected.get(folder, 0) + 1
    groups = [(folder, folder_jobs, folder_states)
              for folder, (folder_jobs, folder_states) in sorted(folders.items(), key=lambda item: natural_key(item[0]))]
    words = PlanWords("upscale", "claimed", "to redo", made_again_from_a_new_input)
    counts = print_plan(groups, words, out, rejected)
    for label, reason in stage.skipped.items():
        print(f"  skipped: {label}: {reason}", file=out)
    if stage.ignored:
        print(f"  ignored: {len(stage.ignored)} file(s) that are not .png", file=out)
    waiting = (f"{len(stage.rejected)} rejected in review (upscaled once generate.py has made "
               "their next take), " if stage.rejected else "")
    print(f"dry run: {counts.to_do} image(s) to upscale, {counts.done} already done, {waiting}"
          f"{len(stage.skipped)} skipped, into {stage.output_folder}; nothing was sent",
          file=out)
    return 0


def main(argv=None, project_dir: Path | None = None) -> int:
    """upscale.py (and drawpipe-upscale): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
