"""segment.py's CUDA path on a machine with an NVIDIA GPU: device choice, the batch
size from the GPU's free memory, lean vs stock masks on CUDA, CUDA vs CPU masks,
segment.py end to end in float32, bfloat16 and float16 (and a re-run that does
nothing), and the GPU's energy per image from NVML (engine/energy.py): idle power, then
segment.py on 8 images and the model alone in this process, gross and net of idle, and
what segment.py logged itself (its meter on its GPU, one window per image).
Random-weight vit_tiny, as in the tests (its joules are a toy model's, not vit_h's).
Prints one JSON line per check; exits 1 when a check fails. The energy check needs
nvidia-ml-py (the energy extra).

    .venv/bin/python tools/cuda_check.py                     # needs CUDA and the segment extra
    CHECK_DEVICE=cpu .venv/bin/python tools/cuda_check.py    # the script itself, anywhere
    .venv/bin/python bench/segment.py                        # then lean vs stock timings on CUDA
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
# "cpu" for a smoke test of this script on a machine without a GPU.
GPU = os.environ.get("CHECK_DEVICE", "cuda")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from masks import full_mask, mask_from_polygons  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.utils.amg import rle_to_mask  # noqa: E402

from drawpipe.drawthings.simulator import render_scene  # noqa: E402
from drawpipe.engine.energy import CounterUnavailable, EnergyMeter, NvmlCounter  # noqa: E402
from drawpipe.engine.metrics import read_logs  # noqa: E402
from drawpipe.sam.mask_generator import LeanMaskGenerator, choose_points_per_batch  # noqa: E402
from drawpipe.sam.models import (Segmenter, choose_device, free_memory_bytes,  # noqa: E402
                                 load_sam, save_random_checkpoint)
from drawpipe.sam.settings import GeneratorSettings, ModelSettings  # noqa: E402
from drawpipe.settings import default  # noqa: E402

FAILED = []


def report(name, ok=True, **figures):
    ok = bool(ok)
    print(json.dumps({"check": name, "ok": ok, **figures}), flush=True)
    if not ok:
        FAILED.append(name)


def best_iou(mask, others):
    return max(np.count_nonzero(mask & o) / max(1, np.count_nonzero(mask | o)) for o in others)


def by_point(pairs):
    grouped = {}
    for point, mask in pairs:
        grouped.setdefault((round(float(point[0]), 2), round(float(point[1]), 2)), []).append(mask)
    return grouped


def compare(reference, other):
    """IoU of each reference mask with the best mask of the same point in other."""
    ious, missing = [], 0
    for point, masks in reference.items():
        for mask in masks:
            if point not in other:
                missing += 1
                continue
            ious.append(best_iou(mask, other[point]))
    return {"pairs": len(ious), "missing_points": missing,
            "mean_iou": round(float(np.mean(ious)), 5) if ious else None,
            "min_iou": round(float(np.min(ious)), 5) if ious else None}


def agree(comparison, lowest_iou):
    return (comparison["pairs"] > 0 and comparison["missing_points"] == 0
            and comparison["min_iou"] >= lowest_iou)


ENERGY_IMAGES = 8
IDLE_SECONDS = 5.0


def energy_check(work: Path, checkpoint: Path, segmenter: Segmenter) -> None:
    """J per image from NVML's total-energy counter of cuda:0: idle power over a few
    seconds, then one window around segment.py on ENERGY_IMAGES 1024 px images (start-up
    and model loading included) and one around the model alone in this process, both with
    the default generator settings and granularity (what a user runs); ``segmenter``:
    main's, on the same random-weight checkpoint."""
    try:
        meter = EnergyMeter(NvmlCounter((0,)))
    except CounterUnavailable as exc:
        report("energy (nvml)", ok=GPU != "cuda", reason=str(exc))
        return
    idle_w = meter.measure_idle(IDLE_SECONDS)
    root = work / "energy"
    images = []
    for number in range(1, ENERGY_IMAGES + 1):
        path = root / "UPSCALED_IMAGES" / "Peru" / "family" / f"Peru_family_{number}_upscaled.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        scene = render_scene(number, "a family at home", 1024, 1024)
        scene.save(path)
        images.append(np.asarray(scene.convert("RGB")))
    command = [sys.executable, str(REPO / "segment.py"), "--root", str(root),
               "--checkpoint", str(checkpoint), "--no-progress"]
    if GPU == "cpu":
        command += ["--device", "cpu"]
    with meter.open_window() as run_window:
        run = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=300, cwd=REPO)
    # The model alone, on the same images, doing what segment.py's default does.
    granularity = default("granularity")
    segmenter.find_masks(images[0], granularity)  # warm-up: kernels chosen and loaded
    if GPU == "cuda":
        torch.cuda.synchronize()
    with meter.open_window() as model_window:
        for image in images:
            segmenter.find_masks(image, granularity)
        if GPU == "cuda":
            torch.cuda.synchronize()
    meter.close()

    def per_image(reading):
        gross = reading.energy_j
        net = None if gross is None or idle_w is None else gross - idle_w * reading.seconds
        return {"seconds": round(reading.seconds, 2),
                "j_per_image_gross": None if gross is None else round(gross / ENERGY_IMAGES, 2),
                "j_per_image_net": None if net is None else round(net / ENERGY_IMAGES, 2),
                "error": reading.error}

    run_figures, model_figures = per_image(run_window.reading), per_image(model_window.reading)
    # What segment.py itself logged: its own meter on its own GPU, a window per image.
    logged = read_logs(root / "logs", "segment")[0]
    logged_j = [float(row["energy_j"]) for row in logged if row.get("energy_j")]
    logged_figures = {"meters": sorted({row.get("energy_meter", "") for row in logged}),
                      "rows": len(logged),
                      "j_per_image_gross": round(sum(logged_j) / len(logged_j), 2)
                      if logged_j else None,
                      "meter_line": [line for line in run.stderr.splitlines()
                                     if line.startswith("energy: ")][:1]}
    logged_ok = GPU != "cuda" or (len(logged_j) == ENERGY_IMAGES and all(
        "nvml" in row["energy_meter"] and row["energy_scope"] == "local" for row in logged))
    report("energy (nvml)",
           ok=run.returncode == 0 and run_window.reading.energy_j is not None
           and model_window.reading.energy_j is not None and logged_ok,
           gpu=meter.counter.scope, idle_w=None if idle_w is None else round(idle_w, 1),
           images=ENERGY_IMAGES, segment_py=run_figures, segment_py_log=logged_figures,
           model_only=model_figures, segment_exit=run.returncode,
           stderr_tail=run.stderr.strip().splitlines()[-2:])


def main():
    work = Path(tempfile.mkdtemp())
    report("environment", ok=choose_device("auto") == GPU, torch=torch.__version__, cuda=torch.cuda.is_available(),
           gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, gpu_device=GPU,
           auto_device=choose_device("auto"),
           tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
           tf32_cudnn=torch.backends.cudnn.allow_tf32)
    free = free_memory_bytes(GPU)
    report("free memory", gpu_free_gib=round(free / 2**30, 1),
           points_per_batch=choose_points_per_batch(free))

    checkpoint = save_random_checkpoint("vit_tiny", work / "sam_vit_tiny_test.pth")
    segmenter = Segmenter(ModelSettings(model_type="vit_tiny", checkpoint=checkpoint),
                          GeneratorSettings())
    params = {p.device.type for p in segmenter.sam.parameters()}
    report("segmenter", ok=segmenter.device == GPU and params == {GPU}, device=segmenter.device, precision=segmenter.precision,
           points_per_batch=segmenter.points_per_batch, parameter_devices=sorted(params))

    # Lean vs stock on CUDA, and lean CUDA vs lean CPU (same settings as the test).
    image = np.asarray(render_scene(3, "a family at home", 512, 384).convert("RGB"))
    height, width = image.shape[:2]
    for settings in (dict(points_per_side=4, stability_score_offset=0.02,
                          stability_score_thresh=0.5, box_nms_thresh=1.0),
                     dict(points_per_side=2, stability_score_thresh=0.0, crop_n_layers=1)):
        results = {}
        for device in (GPU, "cpu"):
            sam = load_sam("vit_tiny", checkpoint, device)
            stock = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle",
                                              pred_iou_thresh=0.0, points_per_batch=7,
                                              **settings).generate(image)
            lean = LeanMaskGenerator(sam, GeneratorSettings(pred_iou_thresh=0.0,
                                                            points_per_batch=5, **settings),
                                     points_per_batch=5).generate(image)
            results[device] = (
                by_point((r["point_coords"][0], rle_to_mask(r["segmentation"])) for r in stock),
                by_point((m.point, full_mask(m, height, width)) for m in lean),
                len(stock), len(lean))
        cuda_stock, cuda_lean, n_stock, n_lean = results[GPU]
        cpu_stock, cpu_lean, n_cpu_stock, n_cpu_lean = results["cpu"]
        # Lean and stock do the same float32 arithmetic on one device: the same masks.
        same = compare(cuda_stock, cuda_lean)
        report("lean vs stock on cuda", ok=n_stock == n_lean and agree(same, 0.999),
               settings=settings, stock=n_stock, lean=n_lean, **same)
        # Across devices the sums run in another order: nearly the same masks.
        lean_devices = compare(cpu_lean, cuda_lean)
        report("lean cuda vs lean cpu", ok=agree(lean_devices, 0.99), settings=settings,
               cuda=n_lean, cpu=n_cpu_lean, **lean_devices)
        stock_devices = compare(cpu_stock, cuda_stock)
        report("stock cuda vs stock cpu", ok=agree(stock_devices, 0.99), settings=settings,
               cuda=n_stock, cpu=n_cpu_stock, **stock_devices)

    # segment.py end to end on CUDA, in each precision, and once on the CPU.
    fast = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
            "0", "--box-nms-thresh", "1.0", "--keep-background", "--min-area-fraction", "0",
            "--max-cutouts", "4", "--no-progress", "--granularity", "parts"]
    roots = {}
    for name, extra in (("cuda float32", []), ("cuda bfloat16", ["--precision", "bfloat16"]),
                        ("cuda float16", ["--precision", "float16"]),
                        ("cpu float32", ["--device", "cpu"])):
        if GPU == "cpu" and name.startswith("cuda"):
            extra = [*extra, "--device", "cpu"]
        root = work / name.replace(" ", "-")
        for number in range(1, 4):
            path = root / "UPSCALED_IMAGES" / "Peru" / "family" / f"Peru_family_{number}_upscaled.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            render_scene(number, "a family at home", 512, 512).save(path)
        command = [sys.executable, str(REPO / "segment.py"), "--root", str(root),
                   "--checkpoint", str(checkpoint), *fast, *extra]
        started = time.monotonic()
        first = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=300, cwd=REPO)
        seconds = time.monotonic() - started
        second = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=300, cwd=REPO)
        records = sorted((root / "CUTOUTS").rglob("cutouts.json"))
        record = json.loads(records[0].read_text()) if records else {}
        logs = sorted((root / "logs").glob("segment-*.csv"))
        device = "cpu" if name.startswith("cpu") else GPU
        # 3 rows: the re-run found everything done and logged nothing.
        log_rows = sum(1 for _ in open(logs[0])) - 1 if logs else 0
        report("segment.py " + name,
               ok=(first.returncode == 0 and second.returncode == 0 and len(records) == 3
                   and record.get("device") == device and log_rows == 3),
               exit=first.returncode, seconds=round(seconds, 1),
               folders=len(records), device=record.get("device"),
               precision=record.get("precision"), rerun_exit=second.returncode,
               rerun_tail=second.stdout.strip().splitlines()[-1:] + second.stderr.strip().splitlines()[-1:],
               log_rows=log_rows,
               stderr_tail=first.stderr.strip().splitlines()[-3:])
        roots[name] = root
    # The cut-outs' masks, CUDA float32 against the CPU, image by image.
    for name in ("cuda float32", "cuda bfloat16", "cuda float16"):
        ious = []
        for record_path in sorted((roots["cpu float32"] / "CUTOUTS").rglob("cutouts.json")):
            other = roots[name] / record_path.relative_to(roots["cpu float32"])
            if not other.exists():
                continue
            a, b = json.loads(record_path.read_text()), json.loads(other.read_text())
            for x, y in zip(a["cutouts"], b["cutouts"]):
                mx = mask_from_polygons(x["polygons"], a["width"], a["height"])
                my = mask_from_polygons(y["polygons"], b["width"], b["height"])
                ious.append(np.count_nonzero(mx & my) / max(1, np.count_nonzero(mx | my)))
        lowest_iou = 0.99 if name.endswith("float32") else 0.98
        report("cut-outs vs cpu", ok=len(ious) > 0 and min(ious) >= lowest_iou, run=name,
               pairs=len(ious),
               mean_iou=round(float(np.mean(ious)), 4) if ious else None,
               min_iou=round(float(np.min(ious)), 4) if ious else None)
    energy_check(work, checkpoint, segmenter)
    shutil.rmtree(work)
    if FAILED:
        print(f"failed: {', '.join(FAILED)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
