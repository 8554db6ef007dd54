"""Cut every object out of the upscaled images with Segment Anything, resumably, on one or more Macs.

Every PNG under ROOT/UPSCALED_IMAGES/ becomes a folder ROOT/CUTOUTS/<same sub-folders>/<stem>/
of square transparent PNGs, one per object (<stem>_cutout_<k>.png, largest first), and
cutouts.json (bbox, area, scores, outline polygons of each).

Examples:
  python segment.py --root SHARE --checkpoint sam_vit_h_4b8939.pth
  python segment.py --root SHARE --download        # vit_b, fetched into the cache
  python segment.py --model vit_l --download --device mps   # the cache's sam_vit_l_0b3195.pth
  python segment.py --points-per-side 16 --max-cutouts 12 --watch
  python segment.py --dry-run                               # to do, done, claimed by whom
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from drawpipe.cli.common import (PlanWords, check_positive, job_states, local_takes,
                                 made_again_from_a_new_input, print_plan, print_rejected,
                                 print_watching, resolve_settings, run_and_summarise, script_main,
                                 share_errors)
from drawpipe.cli.options import add_setting_arguments
from drawpipe.engine.jobs import job_done
from drawpipe.errors import CheckpointError, UsageError
from drawpipe.files import default_cache_dir
from drawpipe.layout import CUTOUTS_FOLDER, UPSCALED_FOLDER
from drawpipe.sam.checkpoints import OFFICIAL_CHECKPOINTS
from drawpipe.settings import CUTOUTS, GENERATOR, GLANCE, RUN, SHARE, WATCH

# drawpipe/settings.py: the flags it takes (no server: SAM runs on this Mac)
SETTINGS = ("device", "precision") + GENERATOR + CUTOUTS + WATCH + SHARE + RUN + GLANCE


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="FILE", help="SAM weights (default: the "
                        "official file of --model in the cache folder)")
    parser.add_argument("--model", choices=tuple(OFFICIAL_CHECKPOINTS),
                        help="default: named in the checkpoint's file name, else vit_b")
    add_setting_arguments(parser, ("device", "precision"))
    parser.add_argument("--download", action="store_true", help="fetch the official "
                        "checkpoint if missing (resumable, SHA-256 checked)")
    parser.add_argument("--download-from", metavar="URL", help="a mirror holding the "
                        "official file names (default: Meta's own address)")
    parser.add_argument("--cache-dir", metavar="FOLDER", help="checkpoints go to FOLDER/sam/ "
                        "(default $DRAWPIPE_CACHE_DIR, else ~/.cache/drawpipe)")
    add_setting_arguments(parser, GENERATOR + CUTOUTS + WATCH, folder=UPSCALED_FOLDER + "/")
    parser.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)  # make demo
    add_setting_arguments(parser, SHARE + RUN + GLANCE)
    return parser.parse_args(argv)


def run(args, project_dir: Path, stdin=None, stdout=None) -> int:
    """segment.py: every PNG under <root>/UPSCALED_IMAGES -> a folder of SAM cut-outs in CUTOUTS."""
    from drawpipe.sam.checkpoints import download_checkpoint
    from drawpipe.sam.models import MODEL_TYPES, missing_checkpoint_message
    from drawpipe.sam.settings import ModelSettings
    from drawpipe.stages.segment import SegmentStage

    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, SETTINGS, stdin, stdout)
    cache_dir = (Path(args.cache_dir).expanduser() if args.cache_dir
                 else default_cache_dir(os.environ)) / "sam"
    generator = _generator_settings(settings.values)
    cutouts = _cutout_settings(settings.values)
    if args.demo:
        model_type, checkpoint = _demo_checkpoint(args, cache_dir, stdout)
        if checkpoint is None:
            return 0
        if args.points_per_side is None:
            # A 32 x 32 grid takes minutes per image on a CPU; 16 x 16 shows the step.
            generator = dataclasses.replace(generator, points_per_side=16)
    else:
        model_type, checkpoint = _segment_checkpoint(args.model, args.checkpoint, cache_dir)
    official = MODEL_TYPES[model_type].official
    if not checkpoint.is_file() and args.download and not settings.dry_run:
        if official is None:
            raise UsageError(f"--download: {model_type} has no published checkpoint")
        url = _download_url(official, args.download_from)
        print(f"downloading {url} -> {checkpoint}", file=stdout, flush=True)
        download_checkpoint(url, checkpoint, official.sha256, show_progress=settings.show_progress)
    if not checkpoint.is_file() and not settings.dry_run:
        raise CheckpointError(missing_checkpoint_message(model_type, checkpoint))
    model = ModelSettings(model_type, checkpoint, settings.values["device"],
                          settings.values["precision"])
    takes = local_takes(settings.root)
    stage = SegmentStage(settings.root, model, generator, cutouts, takes)
    output_folder = settings.root / CUTOUTS_FOLDER
    if settings.dry_run:
        with share_errors(settings.root):
            jobs = stage.plan()
        states = job_states(settings.root, stage, jobs, settings.lease_seconds)
        words = PlanWords("segment", "claimed", "to redo", made_again_from_a_new_input)
        counts = print_plan([(None, jobs, states)], words, stdout)
        waiting = (f", {len(stage.rejected)} rejected in review (cut out once generate.py and "
                   "upscale.py have made their next take)" if stage.rejected else "")
        print(f"dry run: {counts.to_do} image(s) to segment into {output_folder}, "
              f"{counts.done} already done{waiting}; nothing was loaded or written"
              + ("" if checkpoint.is_file() else f" (the checkpoint {checkpoint} is missing)"),
              file=stdout)
        return 0
    device = model.device
    with share_errors(settings.root):
        something_to_do = any(not job_done(stage, job) for job in stage.plan())
    if something_to_do:
        # Load now: a bad checkpoint stops the run before any claim is taken. Loaded once;
        # every job of this process uses it.
        device = stage.segmenter().device
    print(f"SAM {model_type} from {checkpoint} on {device}, "
          f"{generator.points_per_side} x {generator.points_per_side} points", file=stdout)
    print_watching(settings.root / UPSCALED_FOLDER, settings, stdout)
    summary = run_and_summarise(stage, settings, takes, stdout)
    print_rejected(stage.rejected, stdout)
    print(f"cut-outs are in {output_folder}", file=stdout)
    return summary.exit_code


def _generator_settings(values: dict):
    """GeneratorSettings from the resolved settings (SAM's defaults where none was given)."""
    from drawpipe.sam.settings import GeneratorSettings

    chosen = {name: values[name] for name in GENERATOR}
    for name in ("points_per_side", "points_per_batch"):
        if chosen[name] is not None:
            check_positive(chosen[name], "--" + name.replace("_", "-"))
    for name in ("crop_n_layers", "min_mask_region_area"):
        if chosen[name] < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {chosen[name]}")
    return GeneratorSettings(**chosen)


def _cutout_settings(values: dict):
    """CutoutSettings from the resolved settings, checked."""
    from drawpipe.sam.settings import CutoutSettings

    margin, min_area_fraction = values["margin"], values["min_area_fraction"]
    if not 0 <= margin <= 1:
        raise UsageError(f"--margin is a fraction of the object's size, 0 to 1; got {margin:g}")
    if not 0 <= min_area_fraction < 1:
        raise UsageError(f"--min-area-fraction must be 0 or more and below 1, got "
                         f"{min_area_fraction:g}")
    if values["max_cutouts"] is not None:
        check_positive(values["max_cutouts"], "--max-cutouts")
    return CutoutSettings(margin_fraction=margin, min_area_fraction=min_area_fraction,
                          max_cutouts=values["max_cutouts"],
                          keep_background=values["keep_background"])


def _segment_checkpoint(model_type: str | None, checkpoint: str | None,
                        cache_dir: Path) -> tuple[str, Path]:
    """(model type, checkpoint path) from --model and --checkpoint: the type named in the
    checkpoint's file name when --model is not given; the official file in the cache
    when --checkpoint is not given (vit_b when neither is)."""
    from drawpipe.sam.models import MODEL_TYPES, model_type_for

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        model_type = model_type or model_type_for(path)
        if model_type is None and not path.is_file():  # the first thing to say
            raise CheckpointError(f"SAM checkpoint {path} not found: check the path, or leave "
                                  "out --checkpoint and add --download to fetch an official "
                                  f"one (--model {', '.join(OFFICIAL_CHECKPOINTS)})")
        if model_type is None:
            raise UsageError(f"cannot tell the model type from the file name {path.name}: "
                             f"pass --model ({', '.join(OFFICIAL_CHECKPOINTS)})")
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
    from drawpipe.errors import DownloadFailed
    from drawpipe.sam.checkpoints import download_checkpoint
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


def main(argv=None, project_dir: Path | None = None) -> int:
    """segment.py (and drawpipe-segment): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
