"""The multimodal mixin: image → vision tower → projector → spliced into the LLM embeddings.

`LlavaMetaModel` is mixed into the decoder (it owns `vision_tower` and `mm_projector`);
`LlavaMetaForCausalLM` is mixed into the causal-LM head class (it owns the splice).

Data flow for one batch (shapes for CLIP-L/336 and a 7B LLM):

    images (B_img, 3, 336, 336) --tower--> (B_img, 576, 1024) --projector--> (B_img, 576, 4096)
    input_ids (B, L) with IMAGE_TOKEN_INDEX at image positions
        --> each image token replaced by its image's 576 feature vectors, labels IGNORE_INDEX there
        --> re-padded (right, or left for generation) and truncated to tokenizer_model_max_length
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.paths import absolute_if_local

from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector

logger = logging.getLogger(__name__)


def strip_projector_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys `...mm_projector.<rest>` → `<rest>` (upstream's `--pretrain_mm_mlp_adapter` rule)."""
    out = {k.split("mm_projector.", 1)[1]: v for k, v in state_dict.items() if "mm_projector." in k}
    if not out:
        raise ValueError(f"no 'mm_projector.' keys in projector file (keys: {sorted(state_dict)[:6]})")
    return out


class LlavaMetaModel:
    """Mixin for the decoder: builds tower (delayed) and projector from the config."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None):
            # Delayed: only the tower's config is read here (meta-device construction).
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            merge = getattr(config, "mm_patch_merge_type", "flat")
            if merge != "flat":
                raise ValueError(f"mm_patch_merge_type={merge!r} is not supported (LLaVA-1.5 uses 'flat')")

    def get_vision_tower(self):
        tower = getattr(self, "vision_tower", None)
        if isinstance(tower, list):  # upstream keeps it in a list under FSDP
            tower = tower[0]
        return tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Attach tower + projector to a language model for training (upstream's entry name).

        Loads the tower weights, records the multimodal keys in the config, builds the
        projector if absent, and loads `model_args.pretrain_mm_mlp_adapter` if given.
        """
        config = self.config
        # absolute when local: the checkpoint loads the same from any working directory (llava/paths.py)
        config.mm_vision_tower = absolute_if_local(model_args.vision_tower)
        config.mm_vision_select_layer = model_args.mm_vision_select_layer
        config.mm_vision_select_feature = model_args.mm_vision_select_feature
        config.mm_patch_merge_type = model_args.mm_patch_merge_type
        if self.get_vision_tower() is None:
            # Outside the seeded random stream the projector is drawn from: under ZeRO-3 the tower's
            # from_pretrained initialises its partitioned weights (random draws) before loading them,
            # which would give a ZeRO-3 run another initial projector than any other run.
            with torch.random.fork_rng(devices=[]):
                tower = build_vision_tower(model_args)
            self.vision_tower = [tower] if fsdp else tower
        else:
            tower = self.get_vision_tower()
            tower.load_model()
        config.use_mm_proj = True
        config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")
        config.mm_hidden_size = tower.hidden_size
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(config)
            # match the LLM's dtype/device (it may have been loaded in bf16)
            ref = self.embed_tokens.weight
            if ref.device.type != "meta":
                self.mm_projector.to(device=ref.device, dtype=ref.dtype)
        else:
            for p in self.mm_projector.parameters():
                p.requires_grad = True
        if model_args.pretrain_mm_mlp_adapter is not None:
            from .checkpoints import load_projector_file  # local: keeps the import graph one-way

            load_projector_file(self.mm_projector, model_args.pretrain_mm_mlp_adapter)


IMAGE_LAYOUTS = ("auto", "per_sample", "per_token")


def image_layout_of(n_tokens: list[int], n_images: int, layout: str = "auto") -> str:
    """Which image belongs to which sample: `per_sample` or `per_token`, checked per sample.

    `n_tokens[i]` is the number of `<image>` tokens of sample i. `auto` reads a batch with
    as many images as samples as `per_sample` (what the training collator builds; any other
    reading would let a text-only sample's placeholder be spliced into a sample with two
    `<image>`), and any other batch as `per_token`. Generation passes `per_token` (a prompt
    may hold several images). Raises ValueError naming the counts and the first bad sample.
    """
    if layout not in IMAGE_LAYOUTS:
        raise ValueError(f"image_layout must be one of {IMAGE_LAYOUTS}, got {layout!r}")
    batch = len(n_tokens)
    if layout == "auto":
        layout = "per_sample" if n_images == batch else "per_token"
    counts = (
        f"got {n_images} images for {sum(n_tokens)} <image> tokens in a batch of {batch} "
        f"({sum(1 for n in n_tokens if n == 0)} text-only samples)"
    )
    if layout == "per_token":
        if n_images != sum(n_tokens):
            raise ValueError(f"{counts}: pass one image per <image> token")
        return layout
    if n_images != batch:
        raise ValueError(f"{counts}: one image per sample needs {batch} images")
    several = next((i for i, n in enumerate(n_tokens) if n > 1), None)
    if several is not None:
        raise ValueError(
            f"{counts}: with one image per sample, sample {several} has {n_tokens[several]} <image> tokens "
            "for its one image; give each image sample exactly one <image> (prompts with several "
            "images need image_layout='per_token')"
        )
    return layout


@dataclass
class SpliceResult:
    """What `splice_image_features` returns; all tensors on the embedding device."""

    inputs_embeds: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) bool
    position_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX at image features and padding
    truncated: int  # number of samples cut to max_length


def splice_image_features(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_features: list[torch.Tensor] | None,
    embed_tokens: nn.Module,
    *,
    padding_side: str = "right",
    max_length: int | None = None,
    image_layout: str = "auto",
) -> SpliceResult:
    """Replace every IMAGE_TOKEN_INDEX in `input_ids` (B, L) with the next image's features.

    `image_features` is a list of (N_i, D) tensors in batch order, laid out as
    `image_layout` says (see `image_layout_of`): `per_token`, one per `<image>` token
    (text-only samples take none, a sample may hold several), or `per_sample` (upstream's
    training collator), image i belongs to sample i: it is spliced at the sample's one
    `<image>`, or, for a text-only sample, a placeholder consumed without being spliced
    (kept in the graph with zero weight so every projector parameter gets a gradient
    under DDP/ZeRO). Counts that do not fit the layout are a ValueError naming them.
    """
    batch = input_ids.shape[0]
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    rows = [input_ids[i][keep[i]] for i in range(batch)]
    row_labels = [labels[i][keep[i]] for i in range(batch)]
    n_tokens = [int((r == IMAGE_TOKEN_INDEX).sum()) for r in rows]
    features = image_features or []
    text_only_consumes = image_layout_of(n_tokens, len(features), image_layout) == "per_sample"

    embeds, new_labels, truncated = [], [], 0
    next_image = 0
    for ids, lab, n_img in zip(rows, row_labels, n_tokens, strict=True):
        if n_img == 0:
            emb = embed_tokens(ids)
            if text_only_consumes:
                emb = torch.cat([emb, features[next_image][0:0].to(emb.dtype)])
                next_image += 1
            embeds.append(emb)
            new_labels.append(lab)
            continue
        cuts = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [ids.shape[0]]
        text_ids = [ids[cuts[k] + 1 : cuts[k + 1]] for k in range(len(cuts) - 1)]
        text_labels = [lab[cuts[k] + 1 : cuts[k + 1]] for k in range(len(cuts) - 1)]
        text_embeds = torch.split(embed_tokens(torch.cat(text_ids)), [t.shape[0] for t in text_ids])
        pieces, piece_labels = [], []
        for k in range(n_img + 1):
            pieces.append(text_embeds[k])
            piece_labels.append(text_labels[k])
            if k < n_img:
                feat = features[next_image].to(text_embeds[k].dtype)
                next_image += 1
                pieces.append(feat)
                piece_labels.append(
                    torch.full((feat.shape[0],), IGNORE_INDEX, device=lab.device, dtype=lab.dtype)
                )
        embeds.append(torch.cat(pieces))  # out of place: activation checkpointing hooks the embeddings
        new_labels.append(torch.cat(piece_labels))

    if max_length is not None:
        for i, emb in enumerate(embeds):
            if emb.shape[0] > max_length:
                truncated += 1
                embeds[i], new_labels[i] = emb[:max_length], new_labels[i][:max_length]

    longest = max(e.shape[0] for e in embeds)
    dim = embeds[0].shape[1]
    device = embeds[0].device
    out_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=labels.dtype, device=device)
    out_mask = torch.zeros((batch, longest), dtype=torch.bool, device=device)
    out_pos = torch.zeros((batch, longest), dtype=torch.long, device=device)
    padded = []
    for i, (emb, lab) in enumerate(zip(embeds, new_labels, strict=True)):
        n = emb.shape[0]
        span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        pad = longest - n
        if padding_side == "left":
            padded.append(torch.cat([emb.new_zeros((pad, dim)), emb]))
        else:
            padded.append(torch.cat([emb, emb.new_zeros((pad, dim))]))
        out_labels[i, span] = lab
        out_mask[i, span] = True
        out_pos[i, span] = torch.arange(n, device=device)
    out_embeds = torch.stack(padded)
    return SpliceResult(out_embeds, out_mask, out_pos, out_labels, truncated)


def warn_if_truncated(spliced: SpliceResult, config) -> None:
    """Truncation after splicing is upstream's behaviour; here it is never silent."""
    if spliced.truncated:
        logger.warning(
            "%d sample(s) longer than tokenizer_model_max_length=%s after splicing image features were "
            "truncated (their end is lost); raise --model_max_length if this is not intended",
            spliced.truncated,
            getattr(config, "tokenizer_model_max_length", None),
        )


class LlavaMetaForCausalLM:
    """Mixin for the causal-LM class: encodes images and splices them into the embeddings."""

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images) -> torch.Tensor:
        """images (B, 3, H, W) or a list/5-D stack of them → projected features (B_img, N, D)."""
        if isinstance(images, list) or images.ndim == 5:
            images = torch.cat([im.unsqueeze(0) if im.ndim == 3 else im for im in images], dim=0)
        features = self.get_vision_tower()(images)
        projector = self.get_model().mm_projector
        weight = next(projector.parameters(), None)
        if weight is not None:
            features = features.to(weight.dtype)
        return projector(features)

    def splice_multimodal(
        self, input_ids, attention_mask, labels, images, padding_side: str, image_layout: str = "auto"
    ) -> tuple[SpliceResult, torch.Tensor | None]:
        """Encode `images` (when given and the model has a tower) and splice them into the embeddings.

        Rows are padded on `padding_side` and cut to `tokenizer_model_max_length` (with a warning);
        `image_layout` says which image belongs to which row (`image_layout_of`).
        Returns the splice and the projected image tokens (B_img, N, D), or None without images.
        """
        projected = None
        if images is not None and self.get_vision_tower() is not None:
            projected = self.encode_images(images)
        spliced = splice_image_features(
            input_ids,
            attention_mask,
            labels,
            None if projected is None else list(projected.unbind(0)),
            self.get_model().embed_tokens,
            padding_side=padding_side,
            max_length=getattr(self.config, "tokenizer_model_max_length", None),
            image_layout=image_layout,
        )
        warn_if_truncated(spliced, self.config)
        return spliced, projected

    def prepare_inputs_labels_for_multimodal(
        self,
        input_ids,
        position_ids,
        attention_mask,
        past_key_values,
        labels,
        images,
        image_sizes=None,
        padding_side: str | None = None,
        return_image_features: bool = False,
    ):
        """Upstream's signature: returns (None, position_ids, attention_mask, past, embeds, labels).

        Inputs are returned unchanged when there is nothing to splice (no tower, no
        images, or a one-token decoding step). `position_ids`, `attention_mask` and
        `labels` come back as None when they went in as None and nothing was padded.
        With `return_image_features=True` a seventh element holds the projected image
        tokens (B_img, N, D) of this forward (for auxiliary losses; no second vision pass).
        """
        tower = self.get_vision_tower()
        if tower is None or images is None or input_ids.shape[1] == 1:
            result = (input_ids, position_ids, attention_mask, past_key_values, None, labels)
            return (*result, None) if return_image_features else result
        spliced, projected = self.splice_multimodal(
            input_ids,
            attention_mask,
            labels,
            images,
            padding_side or getattr(self.config, "tokenizer_padding_side", "right"),
        )
        needs_mask = attention_mask is not None or not bool(spliced.attention_mask.all())
        new_mask = None
        if needs_mask:
            new_mask = spliced.attention_mask
            if attention_mask is not None and attention_mask.dtype != torch.bool:
                new_mask = new_mask.to(attention_mask.dtype)
        new_pos = spliced.position_ids if position_ids is not None else None
        new_labels = spliced.labels if labels is not None else None
        result = (None, new_pos, new_mask, past_key_values, spliced.inputs_embeds, new_labels)
        return (*result, projected) if return_image_features else result

    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """Add `<im_patch>` / `<im_start>` `<im_end>` tokens when the flags ask for them."""
        if model_args.mm_use_im_patch_token:
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))
        if model_args.mm_use_im_start_end:
            added = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))
            if added > 0:
                # new rows start at the mean of the existing embeddings (a neutral starting point)
                for table in (
                    self.get_input_embeddings().weight.data,
                    self.get_output_embeddings().weight.data,
                ):
                    table[-added:] = table[:-added].mean(dim=0, keepdim=True)
            if model_args.tune_mm_mlp_adapter:
                for p in self.get_input_embeddings().parameters():
                    p.requires_grad = True
                for p in self.get_output_embeddings().parameters():
                    p.requires_grad = False
            if model_args.pretrain_mm_mlp_adapter:
                from .checkpoints import load_torch_file  # local: keeps the import graph one-way

                weights = load_torch_file(model_args.pretrain_mm_mlp_adapter)
                if "model.embed_tokens.weight" in weights:
                    src = weights["model.embed_tokens.weight"]
                    dst = self.get_input_embeddings().weight.data
                    if src.shape == dst.shape:
                        dst.copy_(src)
                    elif src.shape[0] == added:
                        dst[-added:] = src
                    else:
                        raise ValueError(
                            f"embed_tokens in {model_args.pretrain_mm_mlp_adapter} has shape "
                            f"{tuple(src.shape)}; "
                            f"expected {tuple(dst.shape)} or ({added}, D)"
                        )
        elif model_args.mm_use_im_patch_token and model_args.tune_mm_mlp_adapter:
            for p in self.get_input_embeddings().parameters():
                p.requires_grad = False
            for p in self.get_output_embeddings().parameters():
                p.requires_grad = False
