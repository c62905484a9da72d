"""Catalog-constrained beam search over a Hugging Face Llama / Qwen3 causal LM.

For prompts ``x_n`` and a catalog of semantic IDs ``(c_0, .., c_{L-1})`` (level ``l``'s code ``c``
is token ``offsets[l] + c``), each prompt keeps its ``B`` best partial IDs level by level::

    score(c_0 .. c_l) = sum_{j <= l} logp_j(c_j | x_n, c_<j)
    renormalize=True : logp_j = log_softmax over the trie children of c_<j   (of the logits)
    renormalize=False: logp_j = log_softmax over the whole vocabulary (float32), then masked

which is transformers' ``generate(num_beams=B, num_return_sequences=B,
prefix_allowed_tokens_fn=<trie>, renormalize_logits=..., length_penalty=0.0,
max_new_tokens=L, do_sample=False)`` without its filler rows: the same candidates, kept by the
same rule (top ``B`` of the accumulated float32 scores per prompt, in the same order of float
additions), so the same beams in the same order. In detail:

* transformers starts from ``B`` copies of the prompt scored ``[0, -1e9, ..]``; the copies only
  ever yield candidates at ``-1e9 + logp`` (``-1e9`` in float32), below every real candidate, so
  they are the ``-1e9`` filler rows of its output when fewer than ``B`` catalog items are
  reachable. The engine starts from one beam per prompt and returns only the real items.
* Without an EOS token every beam ends at step ``L``, where ``length_penalty=0.0`` divides by 1:
  the output is the last step's top ``B``, best first (``num_beams=1`` is transformers' greedy
  search: the same choice).
* ``renormalize_logits=True`` is ``log_softmax(log_softmax(x) + mask)``; the engine's
  ``log_softmax`` over the children of ``x`` is the same in exact arithmetic (a float32 ulp apart).

How it runs:

* the prompts are packed back to back (no padding) and prefilled once, in one pass
  (``prefill_attention``, causal); level 0 is scored from each prompt's last position;
* each level's step is one ``beam_step`` over all beams of all prompts (trie log-softmax, beam
  score, exact top-``B``, trie child); with ``renormalize=True`` only the level's slice of the
  LM head is computed (the other tokens are never allowed, so the slice's log-softmax over the
  children is exact);
* levels 1 .. L-1 decode one token per beam: the beams of a prompt read its prompt keys/values in
  place (``decode_attention`` with ``ctx_len`` = prompt length, never a copy per beam) plus a
  per-beam cache of at most ``L - 1`` generated positions, reordered by parent after each step.
  RoPE positions continue from the prompt length.

Ties: our top-k orders equal scores by (parent beam, code); transformers' ``torch.topk`` leaves
the order of exactly equal scores unspecified. The tests use models whose log-probabilities are
spread widely enough (``initializer_range`` 0.3-0.5) that no two candidates tie.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..catalog.device_build import build_trie_device
from ..catalog.trie import DeviceTrie, TrieArrays
from ..exceptions import CatalogError, FieldError
from ..ops._dispatch import Backend
from ..ops.beam_step import beam_step
from .config import CausalLMConfig
from .model import CausalLM
from .sid_layout import SidLayout
from .weights import load_hf_state_dict

__all__ = ["CausalLMEngine", "BeamList"]

BeamList = list[tuple[tuple[int, ...], float]]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CausalLMEngine:
    """A causal LM whose beams are constrained to a catalog of semantic IDs.

    Build it with :meth:`from_hf`; ``backend`` picks the kernels of every op ("auto": CUDA /
    Triton on a GPU, the PyTorch references on the CPU).
    """

    def __init__(self, model: CausalLM, sid_layout: SidLayout, *,
                 backend: Backend = "auto") -> None:
        if not isinstance(sid_layout, SidLayout):
            raise FieldError("sid_layout", f"is a {type(sid_layout).__name__}", "a SidLayout")
        vocab = model.config.vocab_size
        if sid_layout.end > vocab:
            raise FieldError("sid_layout", f"reaches token id {sid_layout.end - 1}",
                             f"token ids below the model's vocab_size {vocab}")
        self.model = model.eval()
        self.config = model.config
        self.layout = sid_layout
        self.backend = backend
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype

    @classmethod
    def from_hf(cls, model_dir: str | Path, sid_layout: SidLayout,
                device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None, *,
                backend: Backend = "auto") -> CausalLMEngine:
        """Load a ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` directory saved by transformers.

        Parameters
        ----------
        model_dir : directory with config.json and model.safetensors (or its sharded index).
        sid_layout : where each level's codes sit in the vocabulary.
        device : where the model runs.
        dtype : float32, bfloat16 or float16 (a torch dtype or its name); None takes the
            ``dtype`` recorded in config.json, else float32.

        Raises
        ------
        CheckpointError : a file is missing or unreadable, or the tensors do not fit the config.
        ConfigError : the config uses a feature not implemented (RoPE scaling, sliding window...).
        """
        config = CausalLMConfig.from_file(model_dir)
        dtype = _resolve_dtype(dtype, config)
        state = load_hf_state_dict(model_dir, config, dtype)
        with torch.device("meta"):
            model = CausalLM(config)
        model.load_state_dict(state, strict=True, assign=True)
        model.to(torch.device(device))
        model.requires_grad_(False)
        return cls(model, sid_layout, backend=backend)

    # -- the catalog ----------------------------------------------------------------------------
    def build_trie(self, sids) -> DeviceTrie:
        """The catalog trie of ``sids [n_items, levels]`` on the engine's device (reusable: pass
        it to :meth:`beam_search` in place of the array to skip the build)."""
        codes = _codes(sids, self.layout.levels, self.device)
        n = codes.shape[0]
        if self.device.type == "cpu":  # the C++ build: a few times faster than batched torch ops
            _check_codes(codes, self.layout.sizes)
            arrays = TrieArrays.build(codes.numpy(), np.zeros(n, dtype=np.bool_),
                                      np.zeros(n, dtype=np.float32), self.layout.sizes)
            return DeviceTrie(arrays, self.layout.sizes, self.device)
        arrays = build_trie_device(
            codes, torch.zeros(n, dtype=torch.bool, device=self.device),
            torch.zeros(n, dtype=torch.float32, device=self.device), self.layout.sizes,
        )
        return DeviceTrie.from_tensors(arrays, self.layout.sizes, self.device)

    # -- decoding -------------------------------------------------------------------------------
    @torch.inference_mode()
    def beam_search(self, prompts: Sequence[Sequence[int]], sids, num_beams: int,
                    renormalize: bool = True) -> list[BeamList]:
        """The ``num_beams`` best catalog items of each prompt, best first.

        Parameters
        ----------
        prompts : token-id lists, one per prompt (lengths may differ; each at least 1).
        sids : int array-like ``[n_items, levels]`` of codes (the catalog), or a trie from
            :meth:`build_trie`.
        num_beams : beams kept per prompt at every level (``B >= 1``).
        renormalize : log-softmax over the allowed children (True), or over the whole vocabulary
            then masked (False, transformers' default for ``prefix_allowed_tokens_fn``).

        Returns
        -------
        Per prompt, a list of ``(codes, score)`` (``codes`` a tuple of ``levels`` ints, ``score``
        the sum of the chosen tokens' log-probabilities), sorted best first; at most
        ``num_beams`` entries, only catalog items (fewer when fewer items are reachable).

        Raises
        ------
        FieldError : a prompt is empty or holds a token outside the vocabulary, ``num_beams``
            is not a positive int, ``sids`` has the wrong shape, or a trie of another layout.
        CatalogError : a code lies outside its level's codebook.
        """
        if (isinstance(num_beams, bool) or not isinstance(num_beams, (int, np.integer))
                or num_beams < 1):
            raise FieldError("num_beams", f"is {num_beams!r}", "an int >= 1")
        beams = int(num_beams)
        tokens, lengths = self._pack(prompts)
        trie = sids if isinstance(sids, DeviceTrie) else self.build_trie(sids)
        trie_device = trie.child_ptr[0].device
        if tuple(trie.codebook_sizes) != self.layout.sizes or trie_device != self.device:
            raise FieldError("sids", f"is a trie of sizes {tuple(trie.codebook_sizes)} on "
                             f"{trie_device}", f"sizes {self.layout.sizes} on {self.device}")
        n = len(lengths)
        if n == 0 or trie.leaf_items.numel() == 0:
            return [[] for _ in range(n)]
        scores, codes = self._search(tokens, lengths, trie, beams, bool(renormalize))
        scores, codes = scores.cpu(), codes.cpu()
        alive = (scores > float("-inf")).tolist()
        score_list, code_list = scores.tolist(), codes.tolist()
        return [
            [(tuple(code_list[i][b]), score_list[i][b]) for b in range(beams) if alive[i][b]]
            for i in range(n)
        ]

    def _search(self, tokens: torch.Tensor, lengths: list[int], trie: DeviceTrie, beams: int,
                renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [N, B], codes [N, B, L])`` of the final beams (score -inf: no beam)."""
        model, device, levels = self.model, self.device, self.layout.levels
        n = len(lengths)
        length_t = torch.tensor(lengths, device=device)
        cu = torch.zeros(n + 1, dtype=torch.long, device=device)
        torch.cumsum(length_t, 0, out=cu[1:])
        starts = torch.repeat_interleave(cu[:-1], length_t, output_size=tokens.numel())
        positions = torch.arange(tokens.numel(), device=device) - starts
        hidden, keys, values = model.prefill(tokens, positions, cu, cu[1:] - 1,
                                             backend=self.backend)

        step = beam_step(
            self._level_logits(hidden, 0, renormalize), torch.zeros(n, 1, device=device),
            torch.zeros(n, dtype=torch.long, device=device), trie.child_ptr[0],
            trie.node_code[0], trie.node_max_bid[0], k=beams, renormalize=renormalize,
            backend=self.backend,
        )
        scores, node, codes = step.scores, step.child, step.token[..., None]
        if levels == 1:
            return scores, codes

        ctx_k = self._padded(keys, lengths, positions)
        ctx_v = self._padded(values, lengths, positions)
        hkv, hd = self.config.num_kv_heads, self.config.head_dim
        own_k = [k.new_empty(n, beams, hkv, 0, hd) for k in keys]
        own_v = [v.new_empty(n, beams, hkv, 0, hd) for v in values]
        rows = torch.arange(n, device=device)[:, None]
        for level in range(1, levels):
            token = codes[..., -1] + self.layout.offsets[level - 1]
            position = (length_t + (level - 1))[:, None].expand(n, beams)
            hidden, own_k, own_v = model.decode(token, position, ctx_k, ctx_v, length_t, own_k,
                                                own_v, backend=self.backend)
            step = beam_step(
                self._level_logits(hidden.reshape(n * beams, -1), level, renormalize), scores,
                node.reshape(-1), trie.child_ptr[level], trie.node_code[level],
                trie.node_max_bid[level], k=beams, renormalize=renormalize, backend=self.backend,
            )
            parent = step.parent
            if level < levels - 1:
                own_k = [k[rows, parent] for k in own_k]
                own_v = [v[rows, parent] for v in own_v]
            codes = torch.cat([codes[rows, parent], step.token[..., None]], dim=-1)
            scores, node = step.scores, step.child
        return scores, codes

    def _level_logits(self, hidden: torch.Tensor, level: int, renormalize: bool) -> torch.Tensor:
        """``[R, sizes[level]]``: the level's logits (renormalised over the children later), or
        its slice of the float32 full-vocabulary log-softmax (only masked later)."""
        start, stop = self.layout.token_range(level)
        if renormalize:
            return self.model.logits(hidden, start, stop)
        return torch.log_softmax(self.model.logits(hidden).float(), dim=-1)[:, start:stop]

    def _padded(self, kv: list[torch.Tensor], lengths: list[int], positions: torch.Tensor):
        """Per layer, the packed prompt keys/values ``[T, Hkv, D]`` laid out ``[N, Hkv, S, D]``
        (``S`` = the longest prompt, zero padding after each prompt): one copy per layer and
        prompt, shared by all of the prompt's beams."""
        n, longest = len(lengths), max(lengths)
        if all(length == longest for length in lengths):
            return [t.view(n, longest, *t.shape[1:]).transpose(1, 2).contiguous() for t in kv]
        seq = torch.repeat_interleave(torch.arange(n, device=self.device),
                                      torch.tensor(lengths, device=self.device))
        out = []
        for t in kv:
            padded = t.new_zeros(n, longest, *t.shape[1:])
            padded[seq, positions] = t
            out.append(padded.transpose(1, 2).contiguous())
        return out

    def _pack(self, prompts) -> tuple[torch.Tensor, list[int]]:
        """All prompt tokens back to back ``[T]`` (int64, on the device) and the lengths."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise FieldError("prompts", f"is a {type(prompts).__name__}",
                             "a list of token-id lists")
        vocab = self.config.vocab_size
        flat: list[int] = []
        lengths = []
        for i, prompt in enumerate(prompts):
            ids = np.asarray(prompt)
            if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
                raise FieldError(f"prompts[{i}]", f"is {prompt!r}"[:120],
                                 "a non-empty list of token ids")
            bad = ids[(ids < 0) | (ids >= vocab)]
            if bad.size:
                raise FieldError(f"prompts[{i}]", f"holds token id {int(bad[0])}",
                                 f"ids in [0, {vocab})")
            flat.extend(ids.tolist())
            lengths.append(int(ids.size))
        return torch.tensor(flat, dtype=torch.long, device=self.device), lengths


def _codes(sids, levels: int, device: torch.device) -> torch.Tensor:
    if isinstance(sids, torch.Tensor):
        codes = sids
    else:
        array = np.asarray(sids)
        if array.size == 0:
            array = array.reshape(0, levels).astype(np.int64)
        if not np.issubdtype(array.dtype, np.integer):
            raise FieldError("sids", f"has dtype {array.dtype}", "integer codes")
        codes = torch.from_numpy(array.astype(np.int64, copy=False))
    if codes.dim() != 2 or codes.shape[1] != levels:
        raise FieldError("sids", f"has shape {tuple(codes.shape)}", f"[n_items, {levels}]")
    if codes.dtype not in (torch.int32, torch.int64):
        raise FieldError("sids", f"has dtype {codes.dtype}", "integer codes")
    return codes.to(device=device, dtype=torch.long)


def _check_codes(codes: torch.Tensor, sizes: tuple[int, ...]) -> None:
    """CatalogError naming the first code outside its level's codebook."""
    bad = (codes < 0) | (codes >= torch.tensor(sizes, dtype=codes.dtype))
    if bool(bad.any()):
        row, level = (int(i) for i in bad.nonzero()[0])
        raise CatalogError(f"sids[{row}, {level}]", f"= {int(codes[row, level])} is out of range",
                           f"a code in [0, {sizes[level]}) of level {level}")


def _resolve_dtype(dtype, config: CausalLMConfig) -> torch.dtype:
    if dtype is None:
        return _DTYPES[config.dtype] if config.dtype is not None else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise FieldError("dtype", f"is {dtype!r}", f"one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise FieldError("dtype", f"is {dtype}", "torch.float32, torch.bfloat16 or torch.float16")
    return dtype
