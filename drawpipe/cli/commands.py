"""The scripts' bodies: turn parsed arguments into a stage run and an exit code.

Each function takes the parsed arguments and the project folder (for the
bundled payloads/ and prompts/), prints what the user should see, and returns
the exit code; errors are raised as DrawpipeError and printed by cli.run_main.
"""

import dataclasses
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from drawpipe.engine.claims import ClaimStore
from drawpipe.cli.common import CommonSettings, resolve_settings
from drawpipe.sam.checkpoints import default_cache_dir
from drawpipe.errors import ShareLost, UsageError
from drawpipe.layout import CUTOUTS_FOLDER
from drawpipe.stages.generate import GenerateStage
from drawpipe.drawthings.payloads import (check_payload, load_payload, parse_override, sends,
                       with_override)
from drawpipe.stages.prompts import ask_queue, format_queue, load_prompt_sets, load_queue, merge_queue, parse_add
from drawpipe.engine.loop import EngineSettings, Job, job_done, run_stage
from drawpipe.curate.takes import Freshness, Rejections
from drawpipe.stages.upscale import DEFAULT_SETTLE_SECONDS, UpscaleStage, apply_overrides, load_recipe


DEFAULT_RECIPE = "creative_upscale.json"


def engine_settings(settings: CommonSettings, args, servers=None) -> EngineSettings:
    return EngineSettings(
        root=settings.root,
        servers=tuple(servers if servers is not None else settings.servers),
        lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds,
        watch=getattr(args, "watch", False),
        **({"watch_retry_seconds": args.watch_retry_seconds}
           if getattr(args, "watch_retry_seconds", None) is not None else {}),
        server_process_name=settings.server_process_name,
        show_progress=False if args.no_progress else None,
    )


@contextmanager
def share_errors(root: Path):
    """Outside the engine (dry runs, a first look): an OSError reading the share means
    the share failed; say so in one line (errors.ShareLost)."""
    try:
        yield
    except OSError as exc:
        raise ShareLost(root, exc.strerror or str(exc)) from None


def job_states(root: Path, stage, jobs: list[Job], lease_seconds: float) -> list[str]:
    """For --dry-run: "done", "to do" (its output is missing, or stale: rejected, or
    made from an input that changed since), or "claimed by <worker> (<age> s ago)"."""
    store = ClaimStore(root, stage.name, "dry-run", lease_seconds, read_only=True)
    states = []
    with share_errors(root):
        for job in jobs:
            states.append(_job_state(store, stage, job))
    return states


def warning_printer():
    """A ``warn(line)`` printing each distinct warning once, above any progress bar."""
    seen = set()

    def warn(line: str) -> None:
        if line not in seen:
            seen.add(line)
            tqdm.write(f"warning: {line}", file=sys.stderr)

    return warn


def _job_state(store: ClaimStore, stage, job: Job) -> str:
    if job_done(stage, job):
        return "done"
    holder = store.holder(job.key)
    if holder is None:
        return "to do"
    stale = ", stale: will be taken over" if holder["stale"] else ""
    return (f"claimed by {holder.get('worker', '?')} "
            f"({holder['age_seconds']:.0f} s ago{stale})")


def notice_printer():
    """A ``notice(line)`` printing a line above any progress bar."""
    def notice(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    return notice


def local_freshness() -> Freshness:
    """This Mac's hash cache for takes.py, in the local cache folder (never the share)."""
    return Freshness(default_cache_dir(os.environ))


def print_rejected(rejected: list[str], out) -> None:
    """Inputs left out because their take was rejected in review."""
    if rejected:
        print(f"{len(rejected)} image(s) rejected in review left out (generate.py makes their "
              "next take)", file=out)


def print_summary(summary, out) -> None:
    for line in summary.lines():
        print(line, file=out)


def generate(args, project_dir: Path, stdin=None, stdout=None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, stdin, stdout)
    prompt_sets = load_prompt_sets(Path(args.prompts) if args.prompts
                                   else project_dir / "prompts" / "variable_sets.json")
    payload_path = Path(args.payload) if args.payload else project_dir / "payloads" / "txt2img.json"
    template, warnings = load_payload(payload_path)
    overrides = [parse_override(text) for text in args.set or []]
    source = str(payload_path)
    for override in overrides:
        if override.step is not None:
            raise UsageError(f"--set {override.text}: generate.py has one template, no steps: "
                             "use --set KEY=VALUE")
        template = with_override(template, override)
    if overrides:
        source = f"{payload_path} with {' '.join('--set ' + o.text for o in overrides)}"
        warnings = check_payload(template, source)
    warn = warning_printer()
    for line in warnings:
        warn(line)

    if args.list_nations:
        for number, nation in enumerate(prompt_sets.nations, 1):
            print(f"{number:3d}. {nation}", file=stdout)
        return 0
    queue = []
    for queue_file in args.queue or []:
        queue += load_queue(Path(queue_file), prompt_sets)
    queue += [parse_add(spec, prompt_sets) for spec in args.add or []]
    if not queue:
        queue = ask_queue(prompt_sets, stdin, stdout)
    queue = merge_queue(queue)
    print(format_queue(queue), file=stdout)

    freshness = local_freshness()
    stage = GenerateStage(settings.root, queue, prompt_sets, template, settings.client,
                          settings.seed_offset, source, tuple(o.text for o in overrides), warn,
                          freshness, notice_printer())
    if overrides:
        print("overrides: " + ", ".join(f"--set {o.text}" for o in overrides), file=stdout)
    if args.dry_run:
        return _print_generate_plan(stage, settings, stdout)
    verdicts = Rejections(settings.root, freshness).verdicts
    verdicts.check_images(lambda image: (settings.root / image).exists())
    for line in verdicts.problems:
        warn(line)
    try:
        summary = run_stage(stage, engine_settings(settings, args))
    finally:
        freshness.save()
    print_summary(summary, stdout)
    print(f"images are in {settings.root / 'GENERATIONS'}", file=stdout)
    return summary.exit_code


def _print_generate_plan(stage: GenerateStage, settings: CommonSettings, out) -> int:
    total_to_make = 0
    for item, jobs in stage.jobs_by_entry():
        states = job_states(settings.root, stage, jobs, settings.lease_seconds)
        done = states.count("done")
        to_do = states.count("to do")
        claimed = len(states) - done - to_do
        total_to_make += to_do + claimed
        print(f"  {item.nation}/{item.category}: {to_do} to make, {done} already done"
              + (f", {claimed} claimed by other workers" if claimed else ""), file=out)
        for job, state in zip(jobs, states):
            if state.startswith("claimed"):
                print(f"    {job.key}: {state}", file=out)
    print(f"dry run: {total_to_make} image(s) to make into {settings.root / 'GENERATIONS'}; "
          "nothing was sent", file=out)
    return 0


def check_positive(value: int, what: str) -> None:
    if value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value}")


def upscale(args, project_dir: Path, stdin=None, stdout=None) -> int:
    """upscale.py: every PNG under <root>/GENERATIONS through the recipe into UPSCALED_IMAGES."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, stdin, stdout)
    recipe = load_recipe(_recipe_path(args.recipe, project_dir))
    if args.set:
        recipe = apply_overrides(recipe, [parse_override(text) for text in args.set])
    warn = warning_printer()
    for line in recipe.warnings:
        warn(line)
    settle_seconds = args.settle_seconds if args.settle_seconds is not None else DEFAULT_SETTLE_SECONDS
    if settle_seconds < 0:
        raise UsageError(f"--settle-seconds must be 0 or more, got {settle_seconds:g}")

    def report_skipped(label: str, reason: str) -> None:
        tqdm.write(f"skipped: {label}: {reason} (never sent)", file=sys.stderr)

    freshness = local_freshness()
    stage = UpscaleStage(settings.root, recipe, settings.client, settings.seed_offset,
                         settle_seconds, on_skipped=None if args.dry_run else report_skipped,
                         on_warning=warn, freshness=freshness)
    print(f"recipe {recipe.path}: {len(recipe.steps)} step(s) "
          f"({', '.join(step.name for step in recipe.steps)}) -> "
          f"{recipe.output_size[0]}x{recipe.output_size[1]} px", file=stdout)
    for override in recipe.overrides:
        numbers = [str(n) for n, step in enumerate(recipe.steps, 1)
                   if sends(step.payload, override.key)
                   and step.payload[override.key] == override.value]
        print(f"override --set {override.text}: step(s) {', '.join(numbers)}", file=stdout)
    if args.dry_run:
        return _print_upscale_plan(stage, settings, stdout)
    try:
        summary = run_stage(stage, engine_settings(settings, args))
    finally:
        freshness.save()
    print_summary(summary, stdout)
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
        print(f"{len(stage.ignored)} file(s) under GENERATIONS/ are not .png and were ignored",
              file=stdout)
    print(f"upscaled images are in {stage.output_folder}", file=stdout)
    code = summary.exit_code
    return 1 if code == 0 and stage.skipped else code


def _recipe_path(recipe: str | None, project_dir: Path) -> Path:
    """--recipe FILE as given, else a bundled one by file name (upscale_fast.json)."""
    bundled = project_dir / "payloads"
    if recipe is None:
        return bundled / DEFAULT_RECIPE
    path = Path(recipe).expanduser()
    if not path.exists():
        for candidate in (bundled / recipe, bundled / f"{recipe}.json"):
            if candidate.is_file():
                return candidate
    return path


def _print_upscale_plan(stage: UpscaleStage, settings: CommonSettings, out) -> int:
    """Per sub-folder of GENERATIONS/: to do, done, claimed by whom; then a total."""
    with share_errors(settings.root):
        jobs = stage.plan()
    states = job_states(settings.root, stage, jobs, settings.lease_seconds)
    folders: dict[str, list[tuple[Job, str]]] = {}
    for job, state in zip(jobs, states):
        folder = job.input.parent.relative_to(stage.input_folder).as_posix()
        folders.setdefault(folder, []).append((job, state))
    total_to_do = total_done = 0
    for folder, entries in folders.items():
        folder_states = [state for _, state in entries]
        done = folder_states.count("done")
        to_do = folder_states.count("to do")
        claimed = len(folder_states) - done - to_do
        total_to_do += to_do + claimed
        total_done += done
        print(f"  {folder if folder != '.' else '(top level)'}: {to_do} to upscale, "
              f"{done} already done" + (f", {claimed} claimed" if claimed else ""), file=out)
        for job, state in entries:
            if state.startswith("claimed"):
                print(f"    {job.key}: {state}", file=out)
    for label, reason in stage.skipped.items():
        print(f"  skipped: {label}: {reason}", file=out)
    if stage.ignored:
        print(f"  ignored: {len(stage.ignored)} file(s) that are not .png", file=out)
    print(f"dry run: {total_to_do} image(s) to upscale, {total_done} already done, "
          f"{len(stage.skipped)} skipped, into {stage.output_folder}; nothing was sent",
          file=out)
    return 0


def segment(args, project_dir: Path, stdin=None, stdout=None) -> int:
    """segment.py: every PNG under <root>/UPSCALED_IMAGES -> a folder of SAM cut-outs in CUTOUTS."""
    from drawpipe.sam import models as segmentation
    from drawpipe.sam.checkpoints import download_checkpoint

    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, stdin, stdout)
    cache_dir = (Path(args.cache_dir).expanduser() if args.cache_dir
                 else default_cache_dir(os.environ)) / "sam"
    generator = _generator_settings(args)
    cutouts = _cutout_settings(args)
    if args.demo:
        model_type, checkpoint = _demo_checkpoint(args, cache_dir, stdout)
        if checkpoint is None:
            return 0
        if args.points_per_side is None:
            # A 32 x 32 grid takes minutes per image on a CPU; 16 x 16 shows the step.
            generator = dataclasses.replace(generator, points_per_side=16)
    else:
        model_type, checkpoint = _segment_checkpoint(args.model, args.checkpoint, cache_dir)
    official = segmentation.MODEL_TYPES[model_type].official
    if not checkpoint.is_file() and args.download and not args.dry_run:
        if official is None:
            raise UsageError(f"--download: {model_type} has no published checkpoint")
        url = _download_url(official, args.download_from)
        print(f"downloading {url} -> {checkpoint}", file=stdout, flush=True)
        download_checkpoint(url, checkpoint, official.sha256,
                            show_progress=False if args.no_progress else None)
    if not checkpoint.is_file() and not args.dry_run:
        raise segmentation.CheckpointError(
            segmentation.missing_checkpoint_message(model_type, checkpoint))
    model = segmentation.ModelSettings(model_type, checkpoint, args.device, args.precision)
    freshness = local_freshness()
    stage = segmentation.SegmentStage(settings.root, model, generator, cutouts, freshness)
    output_folder = settings.root / CUTOUTS_FOLDER
    if args.dry_run:
        with share_errors(settings.root):
            jobs = stage.plan()
        states = job_states(settings.root, stage, jobs, settings.lease_seconds)
        for job, state in zip(jobs, states):
            if state.startswith("claimed"):
                print(f"  {job.key}: {state}", file=stdout)
        to_do = len(jobs) - states.count("done")
        print(f"dry run: {to_do} image(s) to segment into {output_folder}, "
              f"{states.count('done')} already done; nothing was loaded or written"
              + ("" if checkpoint.is_file() else f" (the checkpoint {checkpoint} is missing)"),
              file=stdout)
        return 0
    device = args.device
    with share_errors(settings.root):
        something_to_do = any(not job_done(stage, job) for job in stage.plan())
    if something_to_do:
        # Load now: a bad checkpoint stops the run before any claim is taken. Loaded once;
        # every job of this process uses it.
        device = stage.segmenter().device
    print(f"SAM {model_type} from {checkpoint} on {device}, "
          f"{generator.points_per_side} x {generator.points_per_side} points", file=stdout)
    engine = dataclasses.replace(engine_settings(settings, args, servers=[None]),
                                 server_process_name=None)
    try:
        summary = run_stage(stage, engine)
    finally:
        freshness.save()
    print_summary(summary, stdout)
    print_rejected(stage.rejected, stdout)
    print(f"cut-outs are in {output_folder}", file=stdout)
    return summary.exit_code


def _generator_settings(args):
    """GeneratorSettings from the flags the user set; the rest keep SAM's defaults."""
    from drawpipe.sam.models import GeneratorSettings

    names = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
             "stability_score_offset", "box_nms_thresh", "crop_n_layers", "min_mask_region_area")
    chosen = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for name in ("points_per_side", "points_per_batch"):
        if name in chosen:
            check_positive(chosen[name], "--" + name.replace("_", "-"))
    for name in ("crop_n_layers", "min_mask_region_area"):
        if chosen.get(name, 0) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {chosen[name]}")
    return GeneratorSettings(**chosen)


def _cutout_settings(args):
    """CutoutSettings from the flags the user set; the rest keep their defaults."""
    from drawpipe.sam.models import CutoutSettings

    chosen = {"keep_background": args.keep_background}
    if args.margin is not None:
        if not 0 <= args.margin <= 1:
            raise UsageError(f"--margin is a fraction of the object's size, 0 to 1; got {args.margin:g}")
        chosen["margin_fraction"] = args.margin
    if args.min_area_fraction is not None:
        if not 0 <= args.min_area_fraction < 1:
            raise UsageError(f"--min-area-fraction must be 0 or more and below 1, got "
                             f"{args.min_area_fraction:g}")
        chosen["min_area_fraction"] = args.min_area_fraction
    if args.max_cutouts is not None:
        check_positive(args.max_cutouts, "--max-cutouts")
        chosen["max_cutouts"] = args.max_cutouts
    return CutoutSettings(**chosen)


def _segment_checkpoint(model_type: str | None, checkpoint: str | None,
                        cache_dir: Path) -> tuple[str, Path]:
    """(model type, checkpoint path) from --model and --checkpoint: the type named in the
    checkpoint's file name when --model is not given; the official file in the cache
    when --checkpoint is not given (vit_b when neither is)."""
    from drawpipe.sam.models import MODEL_TYPES, model_type_for

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        model_type = model_type or model_type_for(path)
        if model_type is None:
            raise UsageError(f"cannot tell the model type from the file name {path.name}: "
                             f"pass --model ({', '.join(MODEL_TYPES)})")
        return model_type, path
    model_type = model_type or "vit_b"
    official = MODEL_TYPES[model_type].official
    if official is None:
        raise UsageError(f"--model {model_type} has no published checkpoint: pass --checkpoint")
    return model_type, cache_dir / official.file_name


def _demo_checkpoint(args, cache_dir: Path, out) -> tuple[str | None, Path | None]:
    """For make demo: --checkpoint if given, else an official checkpoint already in the
    cache (smallest first), else vit_b downloaded; (None, None) when none can be had
    (then one line says how to add the step)."""
    from drawpipe.sam.checkpoints import DownloadFailed, download_checkpoint
    from drawpipe.sam.models import MODEL_TYPES

    if args.checkpoint is not None:
        return _segment_checkpoint(args.model, args.checkpoint, cache_dir)
    for model_type in ("vit_b", "vit_l", "vit_h"):
        path = cache_dir / MODEL_TYPES[model_type].official.file_name
        if path.is_file():
            return model_type, path
    official = MODEL_TYPES["vit_b"].official
    path = cache_dir / official.file_name
    url = _download_url(official, args.download_from)
    print(f"no SAM checkpoint in {cache_dir}: downloading {url} (375 MB)", file=out, flush=True)
    try:
        download_checkpoint(url, path, official.sha256, retries=1,
                            show_progress=False if args.no_progress else None)
    except DownloadFailed as exc:
        source = "" if url == official.url else f" from {official.url}"
        print(f"segment step skipped: cannot download {url} ({exc.reason}); to add it, put "
              f"{official.file_name}{source} into {cache_dir}/ and run make demo again", file=out)
        return None, None
    return "vit_b", path


def _download_url(official, mirror: str | None) -> str:
    """The official address, or the same file name under --download-from."""
    return official.url if mirror is None else mirror.rstrip("/") + "/" + official.file_name
