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
from dataclasses import dataclass
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

from drawpipe.sam.settings import GeneratorSettings

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
    (x, y, w, h) of the image crop the model saw.
    """

    def __init__(self, mask: np.ndarray, box: tuple[int, int, int, int], area: int,
                 predicted_iou: float, stability_score: float, point: tuple[float, float],
                 crop_box: tuple[int, int, int, int]):
        self._packed = np.packbits(mask, axis=None)
        self.box = box
        self.area = area
        self.predicted_iou = predicted_iou
        self.stability_score = stability_score
        self.point = point
        self.crop_box = crop_box

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
    windowed layers (14 x 14 tokens) are left alone.
    """
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
    """A candidate that passed its crop's NMS."""

    logits: torch.Tensor  # 256 x 256, on the CPU
    iou: float
    stability: float
    box: torch.Tensor  # XYXY, inclusive, in source pixels (from the 1024 px scale)
    point: tuple[float, float]  # in source pixels
    crop_box: tuple[int, int, int, int]  # XYWH
    input_size: tuple[int, int]  # (h, w) of the crop resized for the model
    crop_size: tuple[int, int]  # (h, w) of the crop


@dataclass
class _Candidates:
    """Candidates of one crop that passed the per-batch filters, waiting for NMS."""

    logits: list  # 256 x 256 tensors on the CPU
    iou: list
    stability: list
    boxes: list  # XYXY, inclusive, in the crop's pixels
    points: list  # (x, y) in the crop's pixels
    stored_bytes: int = 0


class LeanMaskGenerator:
    """``generate(image)`` -> the automatic mask generator's masks, largest first.

    ``sam``: a segment-anything ``Sam`` in eval mode on its device (its encoder is made
    lean in place); ``precision``: "float32", or "bfloat16"/"float16" to run the
    encoder and decoder under autocast where the device is fast at it.
    """

    def __init__(self, sam, settings: GeneratorSettings, precision: str = "float32",
                 points_per_batch: int = 64):
        self.sam = sam
        self.settings = settings
        self.precision = precision
        self.points_per_batch = points_per_batch
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
    def generate(self, image: np.ndarray) -> list[FoundMask]:
        """``image``: H x W x 3 uint8 RGB. Returns the masks sorted by area, largest first."""
        settings = self.settings
        orig_h, orig_w = image.shape[:2]
        crop_boxes, layer_indexes = generate_crop_boxes(
            (orig_h, orig_w), settings.crop_n_layers, settings.crop_overlap_ratio)
        survivors: list[_Survivor] = []
        for crop_box, layer_index in zip(crop_boxes, layer_indexes):
            survivors += self._process_crop(image, crop_box, layer_index)
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

    def _process_crop(self, image: np.ndarray, crop_box: list[int],
                      layer_index: int) -> list[_Survivor]:
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
        store = _Candidates([], [], [], [], [])
        for start in range(0, len(points), self.points_per_batch):
            batch_points = points[start:start + self.points_per_batch]
            coords = torch.as_tensor((batch_points * scale).astype(np.float32), device=self.device)
            with self._autocast():
                logits, iou = session.decode(coords)
            logits = logits.float().flatten(0, 1)  # B*3 x 256 x 256
            iou = iou.float().flatten(0, 1)
            batch_points = np.repeat(batch_points, 3, axis=0)
            if settings.pred_iou_thresh > 0.0:
                keep = (iou > settings.pred_iou_thresh).nonzero().flatten()
                logits, iou = logits[keep], iou[keep]
                batch_points = batch_points[keep.cpu().numpy()]
            self._score(logits, iou, batch_points, (input_h, input_w), (crop_h, crop_w),
                        crop_box, (orig_h, orig_w), store)
            del logits, iou
        del session, features

        if not store.iou:
            return []
        boxes = torch.stack(store.boxes).float()
        scores = torch.tensor(store.iou)
        keep = batched_nms(boxes, scores, torch.zeros(len(boxes)),
                           iou_threshold=settings.box_nms_thresh).tolist()
        offset = torch.tensor([x0, y0, x0, y0])
        crop_xywh = (x0, y0, x1 - x0, y1 - y0)
        return [_Survivor(store.logits[i], store.iou[i], store.stability[i],
                          store.boxes[i] + offset,
                          (store.points[i][0] + x0, store.points[i][1] + y0), crop_xywh,
                          (input_h, input_w), (crop_h, crop_w)) for i in keep]

    def _score(self, logits, iou, points, input_size, crop_size, crop_box, orig_size,
               store: _Candidates) -> None:
        """Stability scores and boxes at the model's 1024 px scale, in small chunks;
        keeps the candidates that pass in ``store``."""
        settings = self.settings
        input_h, input_w = input_size
        crop_h, crop_w = crop_size
        image_size = self.sam.image_encoder.img_size
        to_crop = torch.tensor([crop_w / input_w, crop_h / input_h] * 2)
        threshold = self.sam.mask_threshold
        for start in range(0, logits.shape[0], SCORING_MASKS):
            chunk = logits[start:start + SCORING_MASKS]
            upscaled = F.interpolate(chunk[:, None], (image_size, image_size), mode="bilinear",
                                     align_corners=False)[:, 0, :input_h, :input_w]
            stability = calculate_stability_score(upscaled, threshold,
                                                  settings.stability_score_offset)
            keep = torch.ones_like(stability, dtype=torch.bool)
            if settings.stability_score_thresh > 0.0:
                keep &= stability >= settings.stability_score_thresh
            if not keep.any():
                continue
            boxes = batched_mask_to_box(upscaled > threshold).cpu().float()
            # Inclusive input-frame box -> the crop's pixels: pixel i covers [i, i+1) * scale.
            boxes = torch.stack([boxes[:, 0] * to_crop[0], boxes[:, 1] * to_crop[1],
                                 (boxes[:, 2] + 1) * to_crop[2] - 1,
                                 (boxes[:, 3] + 1) * to_crop[3] - 1], dim=1).round()
            keep = keep.cpu() & ~is_box_near_crop_edge(boxes, crop_box,
                                                       [0, 0, orig_size[1], orig_size[0]])
            for index in keep.nonzero().flatten().tolist():
                # A copy, not a view: a view would keep the whole batch's logits alive.
                kept = chunk[index].to("cpu", copy=True)
                if store.stored_bytes > CANDIDATE_STORE_BYTES:
                    kept = kept.half()
                store.stored_bytes += kept.numel() * kept.element_size()
                store.logits.append(kept)
                store.iou.append(float(iou[start + index]))
                store.stability.append(float(stability[index]))
                store.boxes.append(boxes[index])
                store.points.append(tuple(float(v) for v in points[start + index]))
            del upscaled

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
                           item.point, item.crop_box)

    def _remove_small_regions(self, found: list[FoundMask], orig_h: int,
                              orig_w: int) -> list[FoundMask]:
        """Stock's postprocess_small_regions: fill small holes, drop small islands, then
        NMS again preferring masks that needed no change."""
        area = self.settings.min_mask_region_area
        cleaned, scores = [], []
        for mask in found:
            x, y, w, h = mask.box
            # A one-pixel frame of background, except along the image's own edges,
            # so background regions that reach the box's edge stay connected to the
            # background around it, as in the whole image.
            pad = (int(y > 0), int(y + h < orig_h), int(x > 0), int(x + w < orig_w))
            padded = np.pad(mask.mask, ((pad[0], pad[1]), (pad[2], pad[3])))
            padded, changed_holes = remove_small_regions(padded, area, mode="holes")
            padded, changed_islands = remove_small_regions(padded, area, mode="islands")
            changed = changed_holes or changed_islands
            if changed:
                cleaned.append(_found_mask(padded, x - pad[2], y - pad[0], mask.predicted_iou,
                                           mask.stability_score, mask.point, mask.crop_box))
            else:
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


def _found_mask(mask: np.ndarray, offset_x: int, offset_y: int, iou: float, stability: float,
                point, crop_box) -> FoundMask:
    """A FoundMask from ``mask`` (bool) whose top-left pixel is (offset_x, offset_y) in the
    source image, trimmed to the mask's box."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return FoundMask(np.zeros((0, 0), dtype=bool), (offset_x, offset_y, 0, 0), 0, iou,
                         stability, point, tuple(crop_box))
    columns = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    inside = np.ascontiguousarray(mask[top:bottom, left:right])
    return FoundMask(inside, (int(offset_x + left), int(offset_y + top), int(right - left),
                              int(bottom - top)), int(inside.sum()), float(iou),
                     float(stability), (float(point[0]), float(point[1])), tuple(crop_box))
