"""Segment Anything's automatic mask generator, without its waste (imports torch).

``LeanMaskGenerator(sam, settings).generate(image)`` returns the masks that
segment-anything's ``SamAutomaticMaskGenerator`` returns for the same model,
image and settings (the same grid points, filters, NMS and small-region clean-up),
at a fraction of its time and memory. What the stock generator does and this one
does not:

- Stock upsamples every candidate mask of a batch (3 per grid point) to the *input
  image's* size (2048 x 2048 px: 16 MB of float32 each) before it filters anything,
  then computes stability scores, boxes and RLE at that size. Here candidates are
  filtered by predicted IoU on the decoder's 256 x 256 logits, stability scores and
  boxes are computed at the 1024 px scale the encoder saw (in small chunks), and
  only the masks that survive NMS are brought to full resolution, one at a time,
  with exactly stock's two bilinear steps.
- Stock repeats the 64 x 64 x 256 image embedding (and its positional encoding) once
  per grid point and recomputes the first decoder layer's image-side projections for
  every point although they do not depend on the point. Here they are computed once
  per image and broadcast; the output upscaling runs in small sub-batches.
- Stock's encoder materialises each global-attention layer's 4096 x 4096 attention
  map for all heads at once (0.8 GB per map for ViT-B, more for ViT-L/H, with two
  more copies for the relative-position terms and softmax). Here the same sums run
  over blocks of query rows.

All of it is the same arithmetic in the same float32 (unless ``precision`` asks
otherwise), so masks agree with stock's up to float rounding; bench/segment.py
measures the agreement. Stability scores and boxes used for filtering and NMS are
computed at 1024 px instead of at the input's size, so a candidate right at a
threshold can fall the other way.

On Apple's MPS every tensor is float32 (MPS has no float64: segment-anything's
``apply_coords`` returns float64 coordinates, which crash there) and NMS runs on
the CPU.
"""

import math
import types
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.utils.amg import (batched_mask_to_box, build_all_layer_point_grids,
                                        calculate_stability_score, generate_crop_boxes,
                                        is_box_near_crop_edge, remove_small_regions)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops.boxes import batched_nms

from drawpipe.sam.objects import Candidate, ObjectRules, Thresholds, select_objects
from drawpipe.sam.settings import GRANULARITIES, GeneratorSettings

MIB = 1024 * 1024
# Query tokens per block in the encoder's global attention: 256 x 4096 scores per head.
ATTENTION_QUERY_TOKENS = 256
# Grid points per sub-batch of the decoder's output upscaling (~30 MB per point).
UPSCALING_POINTS = 8
# Candidate masks per chunk when upsampled to 1024 px for stability and boxes (4 MB each).
SCORING_MASKS = 8
# Measured with the lean decoder on the CPU (fp32, 256-d decoder): ~15 MB per grid point
# of a batch, transformer and upscaling together. Per point it runs as fast at 16 points
# a batch as at 64 (stock's default, ~40 MB per point there).
DECODER_BYTES_PER_POINT = 16 * MIB
# Objects are told from parts on each mask at the encoder's 1024 px scale sampled every
# 4th pixel (256 x 256 for a square image): enough to tell what lies inside what.
SELECTION_STRIDE_PX = 4
# Stored 256 x 256 logits of the candidates waiting for NMS: above this they are kept
# as float16 (a 2-byte logit moves the 0-crossing of the upsampled mask by far less
# than a pixel), so a degenerate image cannot exhaust memory.
CANDIDATE_STORE_BYTES = 512 * MIB


class FoundMask:
    """One object mask, in the source image's pixels.

    ``mask``: h x w bool, the mask inside ``box`` only (kept bit-packed: a mask whose
    box spans a 2048 px image is 512 KB, not 4 MB); ``box``: (x, y, w, h) with
    exclusive extents (a mask covering 256 columns has w = 256); ``area``: mask
    pixels; ``point``: the grid point (x, y) that prompted it; ``crop_box``:
    (x, y, w, h) of the image crop the model saw; ``level``: which of SAM's three
    outputs for the point it is (objects.LEVEL_NAMES: 0 sub-part, 1 part, 2 whole);
    ``parts``: for an object (granularity objects), its parts as FoundMasks;
    ``label``: its name (labels.Label) once the stage has named it.
    """

    def __init__(self, mask: np.ndarray, box: tuple[int, int, int, int], area: int,
                 predicted_iou: float, stability_score: float, point: tuple[float, float],
                 crop_box: tuple[int, int, int, int], level: int | None = None):
        self._packed = np.packbits(mask, axis=None)
        self.box = box
        self.area = area
        self.predicted_iou = predicted_iou
        self.stability_score = stability_score
        self.point = point
        self.crop_box = crop_box
        self.level = level
        self.parts: list[FoundMask] = []
        self.label = None  # labels.Label, when segment.py --label named it

    @property
    def mask(self) -> np.ndarray:
        _, _, w, h = self.box
        return np.unpackbits(self._packed, count=w * h).reshape(h, w).astype(bool)


def choose_points_per_batch(available_bytes: int, budget_fraction: float = 0.1,
                            largest: int = 32, smallest: int = 4) -> int:
    """Grid points per decoder batch for a machine with ``available_bytes`` free.

    Each point of a batch costs DECODER_BYTES_PER_POINT; this spends at most
    ``budget_fraction`` of what is free, between ``smallest`` and ``largest`` (past
    ~16 points a batch is no faster per point, only bigger).
    """
    fitting = int(available_bytes * budget_fraction // DECODER_BYTES_PER_POINT)
    return max(smallest, min(largest, fitting))


def make_encoder_lean(sam) -> None:
    """Make ``sam``'s global-attention layers compute attention in blocks of query rows.

    Same sums, same order within each row; only the peak memory changes. The
    windowed layers (14 x 14 tokens) are left alone, and so is an encoder without
    global attention (MobileSAM's TinyViT attends within 7 x 7 and 14 x 14 windows only).
    """
    from segment_anything.modeling import ImageEncoderViT

    if not isinstance(sam.image_encoder, ImageEncoderViT):
        return
    for block in sam.image_encoder.blocks:
        if block.window_size == 0:
            block.attn.forward = types.MethodType(_blocked_attention_forward, block.attn)


def _blocked_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """segment-anything's image_encoder.Attention.forward, one block of query rows at a
    time. ``x``: B x H x W x C."""
    batch, height, width, _ = x.shape
    tokens = height * width
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)
    heads_times_batch, _, dim = q.shape
    keys_t = k.transpose(-2, -1)
    if self.use_rel_pos:
        rel_h_table = get_rel_pos(height, height, self.rel_pos_h)  # H x H x C
        rel_w_table = get_rel_pos(width, width, self.rel_pos_w)  # W x W x C
    out = torch.empty_like(q)
    rows_per_block = max(1, ATTENTION_QUERY_TOKENS // width)
    for row0 in range(0, height, rows_per_block):
        row1 = min(height, row0 + rows_per_block)
        q_block = q[:, row0 * width:row1 * width]
        attn = (q_block * self.scale) @ keys_t
        if self.use_rel_pos:
            r_q = q_block.reshape(heads_times_batch, row1 - row0, width, dim)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h_table[row0:row1])
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w_table)
            attn = (attn.view(heads_times_batch, row1 - row0, width, height, width)
                    + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
                    ).view(heads_times_batch, (row1 - row0) * width, tokens)
        attn = attn.softmax(dim=-1)
        out[:, row0 * width:row1 * width] = attn @ v
    x = (out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
         .reshape(batch, height, width, -1))
    return self.proj(x)


def _separate_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _recombine_heads(x: torch.Tensor) -> torch.Tensor:
    b, n_heads, n_tokens, c_per_head = x.shape
    return x.transpose(1, 2).reshape(b, n_tokens, n_heads * c_per_head)


class _DecoderSession:
    """SAM's prompt encoder + mask decoder for point prompts on one image embedding.

    The arithmetic of segment-anything's ``MaskDecoder.predict_masks`` with
    ``multimask_output=True``; what does not depend on the point (the image tokens,
    their positional encoding, the first layer's image-side projections) is
    computed once here instead of once per point.
    """

    def __init__(self, sam, features: torch.Tensor):
        self.sam = sam
        decoder = sam.mask_decoder
        self.decoder = decoder
        self.transformer = decoder.transformer
        prompt_encoder = sam.prompt_encoder
        # Point prompts without a mask prompt: the dense prompt is the no-mask embedding.
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = features + dense  # 1 x C x h x w
        self.embedding_shape = src.shape
        self.src = src.flatten(2).permute(0, 2, 1)  # 1 x hw x C
        self.pos = prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)  # 1 x hw x C
        first = self.transformer.layers[0]
        keys_with_pe = self.src + self.pos
        to_image = first.cross_attn_token_to_image
        self.first_k = _separate_heads(to_image.k_proj(keys_with_pe), to_image.num_heads)
        self.first_v = _separate_heads(to_image.v_proj(self.src), to_image.num_heads)
        to_token = first.cross_attn_image_to_token
        self.first_q = _separate_heads(to_token.q_proj(keys_with_pe), to_token.num_heads)

    def decode(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``coords``: B x 2 float32 points in the model's input frame (1024 px scale).
        Returns (B x 3 x 256 x 256 mask logits, B x 3 predicted IoU)."""
        batch = coords.shape[0]
        labels = torch.ones((batch, 1), dtype=torch.int, device=coords.device)
        sparse, _ = self.sam.prompt_encoder(points=(coords[:, None, :], labels), boxes=None,
                                            masks=None)
        decoder = self.decoder
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)

        queries, keys = self._first_layer(tokens)
        for layer in self.transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=self.pos)
        transformer = self.transformer
        attn_out = transformer.final_attn_token_to_image(
            q=queries + tokens, k=keys + self.pos, v=keys)
        queries = transformer.norm_final_attn(queries + attn_out)

        iou_pred = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]
        mask_tokens_out = queries[:, 1:1 + decoder.num_mask_tokens, :]
        # multimask_output=True keeps mask tokens 1..3; token 0 is the single-mask output.
        hyper_in = torch.stack(
            [decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
             for i in range(1, decoder.num_mask_tokens)], dim=1)
        _, channels, height, width = self.embedding_shape
        masks = []
        for start in range(0, batch, UPSCALING_POINTS):
            stop = min(batch, start + UPSCALING_POINTS)
            src = keys[start:stop].transpose(1, 2).reshape(stop - start, channels, height, width)
            upscaled = decoder.output_upscaling(src)
            b, c, h, w = upscaled.shape
            masks.append((hyper_in[start:stop] @ upscaled.view(b, c, h * w)).view(b, -1, h, w))
            del src, upscaled
        return torch.cat(masks), iou_pred

    def _first_layer(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TwoWayAttentionBlock.forward with skip_first_layer_pe, keys = the shared image tokens."""
        layer = self.transformer.layers[0]
        queries = layer.self_attn(q=tokens, k=tokens, v=tokens)
        queries = layer.norm1(queries)

        to_image = layer.cross_attn_token_to_image
        q = _separate_heads(to_image.q_proj(queries + tokens), to_image.num_heads)
        attn = torch.softmax((q @ self.first_k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
        attn_out = to_image.out_proj(_recombine_heads(attn @ self.first_v))
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))

        to_token = layer.cross_attn_image_to_token
        k = _separate_heads(to_token.k_proj(queries + tokens), to_token.num_heads)
        v = _separate_heads(to_token.v_proj(queries), to_token.num_heads)
        attn = torch.softmax((self.first_q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1]), dim=-1)
        attn_out = to_token.out_proj(_recombine_heads(attn @ v))  # B x hw x C
        keys = layer.norm4(self.src + attn_out)
        return queries, keys


class _Survivor(NamedTuple):
    """A candidate that passed its crop's NMS (or, for objects, the object selection)."""

    logits: torch.Tensor  # 256 x 256, on the CPU
    iou: float
    stability: float
    box: torch.Tensor  # XYXY, inclusive, in source pixels (from the 1024 px scale)
    point: tuple[float, float]  # in source pixels
    crop_box: tuple[int, int, int, int]  # XYWH
    input_size: tuple[int, int]  # (h, w) of the crop resized for the model
    crop_size: tuple[int, int]  # (h, w) of the crop
    level: int  # 0, 1, 2: which of the point's three masks


@dataclass
class _Candidates:
    """Candidates of one crop that passed the per-batch filters, waiting for NMS.
    ``stock``: whether each passed SAM's own thresholds (else only the whole level's,
    kept for objects); ``small_masks``: for objects, each mask at the 1024 px scale
    sampled every SELECTION_STRIDE_PX-th pixel, bit-packed along rows."""

    logits: list  # 256 x 256 tensors on the CPU
    iou: list
    stability: list
    boxes: list  # XYXY, inclusive, in the crop's pixels
    point_indexes: list  # the grid point's number
    levels: list
    stock: list
    small_masks: list = field(default_factory=list)
    small_width: int = 0  # columns of a small mask (before packing)
    stored_bytes: int = 0


class _Stored(NamedTuple):
    """For objects: one stored candidate, its grid point's number, its small mask (H x W
    bool) and whether SAM's own rules keep it (thresholds and box NMS)."""

    survivor: _Survivor
    point_index: int
    small_mask: np.ndarray
    kept_as_part: bool


class LeanMaskGenerator:
    """``generate(image)`` -> the automatic mask generator's masks, largest first;
    ``generate(image, "objects")`` -> objects, each with its parts (objects.py).

    ``sam``: a segment-anything ``Sam`` in eval mode on its device (its encoder is made
    lean in place); ``precision``: "float32", or "bfloat16"/"float16" to run the
    encoder and decoder under autocast where the device is fast at it.
    """

    def __init__(self, sam, settings: GeneratorSettings, precision: str = "float32",
                 points_per_batch: int = 64, rules: ObjectRules | None = None):
        self.sam = sam
        self.settings = settings
        self.precision = precision
        self.points_per_batch = points_per_batch
        self.rules = rules or ObjectRules()
        self.thresholds = Thresholds(settings.pred_iou_thresh, settings.stability_score_thresh,
                                     settings.whole_pred_iou_thresh,
                                     settings.whole_stability_score_thresh)
        make_encoder_lean(sam)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.point_grids = build_all_layer_point_grids(
            settings.points_per_side, settings.crop_n_layers,
            settings.crop_n_points_downscale_factor)
        self.device = sam.device

    def _autocast(self):
        if self.precision == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))

    @torch.inference_mode()
    def generate(self, image: np.ndarray, granularity: str = "parts") -> list[FoundMask]:
        """``image``: H x W x 3 uint8 RGB. Returns the masks sorted by area, largest first:
        "parts", every mask the stock generator keeps; "objects" (or "all": the same
        masks), the objects, each with ``parts``."""
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
        settings = self.settings
        orig_h, orig_w = image.shape[:2]
        crop_boxes, layer_indexes = generate_crop_boxes(
            (orig_h, orig_w), settings.crop_n_layers, settings.crop_overlap_ratio)
        if granularity != "parts":
            if len(crop_boxes) > 1:
                raise ValueError("objects are found on the whole image only (crop_n_layers 0)")
            return self._objects(image, crop_boxes[0])
        survivors: list[_Survivor] = []
        for crop_box, layer_index in zip(crop_boxes, layer_indexes):
            survivors += self._process_crop(image, crop_box, layer_index)[0]
        if len(crop_boxes) > 1 and survivors:
            # Prefer masks from smaller crops (stock's rule).
            boxes = torch.stack([item.box for item in survivors]).float()
            crop_areas = torch.tensor([item.crop_box[2] * item.crop_box[3] for item in survivors],
                                      dtype=torch.float)
            keep = batched_nms(boxes, 1 / crop_areas, torch.zeros(len(boxes)),
                               iou_threshold=settings.crop_nms_thresh)
            survivors = [survivors[i] for i in keep.tolist()]

        found = [self._full_resolution(item, orig_h, orig_w) for item in survivors]
        if settings.min_mask_region_area > 0:
            found = self._remove_small_regions(found, orig_h, orig_w)
        found = [mask for mask in found if mask.area > 0]
        found.sort(key=lambda mask: mask.area, reverse=True)
        return found

    def _objects(self, image: np.ndarray, crop_box: list[int]) -> list[FoundMask]:
        """The objects of the whole image (objects.select_objects), at full resolution,
        largest first, each with its parts (largest first)."""
        orig_h, orig_w = image.shape[:2]
        stored = self._process_crop(image, crop_box, 0, objects=True)[1]
        candidates = [Candidate(item.small_mask, item.point_index, item.survivor.level,
                                item.survivor.iou, item.survivor.stability, item.kept_as_part)
                      for item in stored]
        groups = select_objects(candidates, self.thresholds, self.rules)

        def full(index: int) -> FoundMask:
            found = self._full_resolution(stored[index].survivor, orig_h, orig_w)
            if self.settings.min_mask_region_area > 0:
                found = self._cleaned(found, orig_h, orig_w)[0]
            return found

        objects = []
        for group in groups:
            found = full(group.index)
            found.parts = sorted((part for i in group.parts if (part := full(i)).area > 0),
                                 key=lambda part: part.area, reverse=True)
            if found.area > 0:
                objects.append(found)
        objects.sort(key=lambda mask: mask.area, reverse=True)
        return objects

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer_index: int,
                      objects: bool = False) -> tuple[list[_Survivor], list[_Stored]]:
        """(the candidates that pass SAM's thresholds and the crop's box NMS, []); with
        ``objects``, ([], every candidate stored - those that pass only the whole
        level's thresholds too)."""
        settings = self.settings
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_h, crop_w = crop.shape[:2]
        orig_h, orig_w = image.shape[:2]

        input_image = self.transform.apply_image(crop)
        input_h, input_w = input_image.shape[:2]
        pixels = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()
        with self._autocast():
            features = self.sam.image_encoder(self.sam.preprocess(pixels[None].float()))
            session = _DecoderSession(self.sam, features)

        # Points in the crop's pixels, then in the model's input frame; float32 for MPS.
        points = self.point_grids[layer_index] * np.array([[crop_w, crop_h]])
        scale = np.array([[input_w / crop_w, input_h / crop_h]])
        store = _Candidates([], [], [], [], [], [], [])
        for start in range(0, len(points), self.points_per_batch):
            batch_points = points[start:start + self.points_per_batch]
            coords = torch.as_tensor((batch_points * scale).astype(np.float32), device=self.device)
            with self._autocast():
                logits, iou = session.decode(coords)
            logits = logits.float().flatten(0, 1)  # B*3 x 256 x 256
            iou = iou.float().flatten(0, 1)
            point_indexes = np.repeat(np.arange(start, start + len(batch_points)), 3)
            levels = np.tile(np.arange(3), len(batch_points))
            keep = torch.ones_like(iou, dtype=torch.bool)
            if settings.pred_iou_thresh > 0.0:
                keep = iou > settings.pred_iou_thresh
            if objects:
                keep |= (torch.as_tensor(levels == 2, device=iou.device)
                         & (iou > settings.whole_pred_iou_thresh))
            keep = keep.nonzero().flatten()
            logits, iou = logits[keep], iou[keep]
            keep = keep.cpu().numpy()
            self._score(logits, iou, point_indexes[keep], levels[keep], (input_h, input_w),
                        (crop_h, crop_w), crop_box, (orig_h, orig_w), store, objects)
            del logits, iou
        del session, features

        survivor_args = dict(crop_box=(x0, y0, x1 - x0, y1 - y0), input_size=(input_h, input_w),
                             crop_size=(crop_h, crop_w))
        offset = torch.tensor([x0, y0, x0, y0])

        def survivor(i: int) -> _Survivor:
            x, y = points[store.point_indexes[i]]
            return _Survivor(store.logits[i], store.iou[i], store.stability[i],
                             store.boxes[i] + offset, (float(x) + x0, float(y) + y0),
                             level=store.levels[i], **survivor_args)

        # SAM's own rules: its thresholds, then box NMS by predicted IoU.
        stock = [i for i, passed in enumerate(store.stock) if passed]
        kept = []
        if stock:
            boxes = torch.stack([store.boxes[i] for i in stock]).float()
            scores = torch.tensor([store.iou[i] for i in stock])
            keep = batched_nms(boxes, scores, torch.zeros(len(boxes)),
                               iou_threshold=settings.box_nms_thresh).tolist()
            kept = [stock[i] for i in keep]
        if not objects:
            return [survivor(i) for i in kept], []
        kept = set(kept)
        return [], [_Stored(survivor(i), store.point_indexes[i],
                            np.unpackbits(store.small_masks[i], axis=-1,
                                          count=store.small_width).astype(bool), i in kept)
                    for i in range(len(store.iou))]

    def _score(self, logits, iou, point_indexes, levels, input_size, crop_size, crop_box,
               orig_size, store: _Candidates, objects: bool) -> None:
        """Stability scores and boxes at the model's 1024 px scale, in small chunks;
        keeps the candidates that pass in ``store`` (with ``objects``, also those of the
        whole level that pass its own thresholds, and every kept one's small mask)."""
        settings = self.settings
        input_h, input_w = input_size
        crop_h, crop_w = crop_size
        image_size = self.sam.image_encoder.img_size
        to_crop = torch.tensor([crop_w / input_w, crop_h / input_h] * 2)
        threshold = self.sam.mask_threshold
        for start in range(0, logits.shape[0], SCORING_MASKS):
            chunk = logits[start:start + SCORING_MASKS]
            chunk_iou = iou[start:start + SCORING_MASKS]
            upscaled = F.interpolate(chunk[:, None], (image_size, image_size), mode="bilinear",
                                     align_corners=False)[:, 0, :input_h, :input_w]
            stability = calculate_stability_score(upscaled, threshold,
                                                  settings.stability_score_offset)
            stock = torch.ones_like(stability, dtype=torch.bool)
            if settings.pred_iou_thresh > 0.0:
                stock &= chunk_iou > settings.pred_iou_thresh
            if settings.stability_score_thresh > 0.0:
                stock &= stability >= settings.stability_score_thresh
            keep = stock.clone()
            if objects:
                whole = torch.as_tensor(levels[start:start + SCORING_MASKS] == 2,
                                        device=stability.device)
                keep |= (whole & (chunk_iou > settings.whole_pred_iou_thresh)
                         & (stability >= settings.whole_stability_score_thresh))
            if not keep.any():
                continue
            binary = upscaled > threshold
            boxes = batched_mask_to_box(binary).cpu().float()
            # Inclusive input-frame box -> the crop's pixels: pixel i covers [i, i+1) * scale.
            boxes = torch.stack([boxes[:, 0] * to_crop[0], boxes[:, 1] * to_crop[1],
                                 (boxes[:, 2] + 1) * to_crop[2] - 1,
                                 (boxes[:, 3] + 1) * to_crop[3] - 1], dim=1).round()
            keep = keep.cpu() & ~is_box_near_crop_edge(boxes, crop_box,
                                                       [0, 0, orig_size[1], orig_size[0]])
            if objects:
                half = SELECTION_STRIDE_PX // 2
                small = binary[:, half::SELECTION_STRIDE_PX, half::SELECTION_STRIDE_PX].cpu().numpy()
                store.small_width = small.shape[2]
            stock = stock.cpu()
            for index in keep.nonzero().flatten().tolist():
                # A copy, not a view: a view would keep the whole batch's logits alive.
                kept = chunk[index].to("cpu", copy=True)
                if store.stored_bytes > CANDIDATE_STORE_BYTES:
                    kept = kept.half()
                store.stored_bytes += kept.numel() * kept.element_size()
                store.logits.append(kept)
                store.iou.append(float(chunk_iou[index]))
                store.stability.append(float(stability[index]))
                store.boxes.append(boxes[index])
                store.point_indexes.append(int(point_indexes[start + index]))
                store.levels.append(int(levels[start + index]))
                store.stock.append(bool(stock[index]))
                if objects:
                    store.small_masks.append(np.packbits(small[index], axis=-1))
            del upscaled, binary

    def _full_resolution(self, item: _Survivor, orig_h: int, orig_w: int) -> FoundMask:
        """Stock's postprocess_masks for one mask: 1024 px, drop the padding, the crop's
        size; then threshold, and keep only the part inside the mask's box."""
        image_size = self.sam.image_encoder.img_size
        low = item.logits.float()[None, None].to(self.device)
        mask = F.interpolate(low, (image_size, image_size), mode="bilinear", align_corners=False)
        mask = mask[..., :item.input_size[0], :item.input_size[1]]
        mask = F.interpolate(mask, item.crop_size, mode="bilinear", align_corners=False)
        mask = (mask[0, 0] > self.sam.mask_threshold).cpu().numpy()
        return _found_mask(mask, item.crop_box[0], item.crop_box[1], item.iou, item.stability,
                           item.point, item.crop_box, item.level)

    def _remove_small_regions(self, found: list[FoundMask], orig_h: int,
                              orig_w: int) -> list[FoundMask]:
        """Stock's postprocess_small_regions: fill small holes, drop small islands, then
        NMS again preferring masks that needed no change."""
        cleaned, scores = [], []
        for mask in found:
            mask, changed = self._cleaned(mask, orig_h, orig_w)
            cleaned.append(mask)
            scores.append(0.0 if changed else 1.0)
        if not cleaned:
            return cleaned
        boxes = torch.tensor([[m.box[0], m.box[1], m.box[0] + m.box[2] - 1,
                               m.box[1] + m.box[3] - 1] for m in cleaned], dtype=torch.float)
        keep = batched_nms(boxes, torch.tensor(scores), torch.zeros(len(boxes)),
                           iou_threshold=max(self.settings.box_nms_thresh,
                                             self.settings.crop_nms_thresh))
        return [cleaned[i] for i in keep.tolist()]

    def _cleaned(self, mask: FoundMask, orig_h: int, orig_w: int) -> tuple[FoundMask, bool]:
        """``mask`` with holes and islands below min_mask_region_area removed, and whether
        anything changed."""
        area = self.settings.min_mask_region_area
        x, y, w, h = mask.box
        # A one-pixel frame of background, except along the image's own edges,
        # so background regions that reach the box's edge stay connected to the
        # background around it, as in the whole image.
        pad = (int(y > 0), int(y + h < orig_h), int(x > 0), int(x + w < orig_w))
        padded = np.pad(mask.mask, ((pad[0], pad[1]), (pad[2], pad[3])))
        padded, changed_holes = remove_small_regions(padded, area, mode="holes")
        padded, changed_islands = remove_small_regions(padded, area, mode="islands")
        if not (changed_holes or changed_islands):
            return mask, False
        return _found_mask(padded, x - pad[2], y - pad[0], mask.predicted_iou,
                           mask.stability_score, mask.point, mask.crop_box, mask.level), True


def _found_mask(mask: np.ndarray, offset_x: int, offset_y: int, iou: float, stability: float,
                point, crop_box, level: int | None = None) -> FoundMask:
    """A FoundMask from ``mask`` (bool) whose top-left pixel is (offset_x, offset_y) in the
    source image, trimmed to the mask's box."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return FoundMask(np.zeros((0, 0), dtype=bool), (offset_x, offset_y, 0, 0), 0, iou,
                         stability, point, tuple(crop_box), level)
    columns = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    inside = np.ascontiguousarray(mask[top:bottom, left:right])
    return FoundMask(inside, (int(offset_x + left), int(offset_y + top), int(right - left),
                              int(bottom - top)), int(inside.sum()), float(iou),
                     float(stability), (float(point[0]), float(point[1])), tuple(crop_box), level)
