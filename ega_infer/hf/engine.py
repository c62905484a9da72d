"""Catalog-constrained beam search over a Hugging Face Llama / Qwen3 causal LM.

For prompts ``x_n`` and a catalog of semantic IDs ``(c_0, .., c_{L-1})`` (level ``l``'s code ``c``
is token ``offsets[l] + c``), each prompt keeps its ``B`` best partial IDs level by level::

    score(c_0 .. c_l) = sum_{j <= l} logp_j(c_j | x_n, c_<j)
    renormalize=False: logp_j = log_softmax over the whole vocabulary (float32), then masked
    renormalize=True : logp_j = log_softmax over the trie children of c_<j   (of the logits)

which is transformers' ``generate(num_beams=B, num_return_sequences=B,
prefix_allowed_tokens_fn=<trie>, renormalize_logits=..., length_penalty=0.0,
max_new_tokens=L, do_sample=False)`` without its filler rows: the same candidates, kept by the
same rule (top ``B`` of the accumulated float32 scores per prompt, in the same order of float
additions), so the same beams in the same order. ``renormalize=False`` is transformers' default
and the engine's. In detail:

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

* the backend of every op is resolved once per call (``ops.resolve_backends``) and the concrete
  names are passed down;
* the prompts are packed back to back (no padding) and prefilled once, in one pass
  (``prefill_attention``, causal); level 0 is scored from each prompt's last position;
* each level's step is one ``beam_step`` over all beams of all prompts (trie log-softmax, beam
  score, exact top-``B``, trie child); with ``renormalize=True`` only the level's slice of the
  LM head is computed (the other tokens are never allowed, so the slice's log-softmax over the
  children is exact); with ``False`` the full-vocabulary log-softmax is computed a bounded chunk
  of rows at a time and only the level's slice is kept;
* a level keeps at most as many beams as the catalog can fill (``DeviceTrie.beam_capacity``:
  its distinct prefixes of that depth, and the previous width times the widest node's
  children), so a width beyond the catalog costs nothing and is never allocated;
* levels 1 .. L-1 decode one token per beam: the beams of a prompt read its prompt keys/values in
  place (``decode_attention`` with ``ctx_len`` = prompt length, never a copy per beam) plus a
  per-beam cache of at most ``L - 1`` generated positions, reordered by parent after each step.
  RoPE positions continue from the prompt length.

Items whose semantic IDs collide share one trie leaf: the search returns each ID once. Building
a trie of such a catalog warns (``SidCollisionWarning``); ``return_items=True`` maps each ID back
to all of its catalog rows, and ``disambiguate_sids`` appends the level that separates them (for
a model trained with it).

Ties: our top-k orders equal scores by (parent beam, code); transformers' ``torch.topk`` leaves
the order of exactly equal scores unspecified. The tests use models whose log-probabilities are
spread widely enough (``initializer_range`` 0.3-0.5) that no two candidates tie.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch

from ..catalog.device_build import build_trie_device
from ..catalog.trie import DeviceTrie, TrieArrays
from ..exceptions import CatalogError, CheckpointError, ConfigError, FieldError, SidCollisionWarning
from ..ops import OpBackends, beam_step, resolve_backends
from ..ops._dispatch import BACKENDS, Backend
from ._checks import as_int, int_matrix, is_flag, kind, show
from .config import CausalLMConfig
from .model import CausalLM
from .sid_layout import SidLayout
from .weights import load_hf_state_dict

__all__ = ["CausalLMEngine", "BeamList", "ItemBeamList", "DEFAULT_MAX_BEAMS"]

BeamList = list[tuple[tuple[int, ...], float]]
ItemBeamList = list[tuple[tuple[int, ...], float, tuple[int, ...]]]

DEFAULT_MAX_BEAMS = 4096
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOGITS_CHUNK_BYTES = 1 << 26  # renormalize=False: float32 full-vocabulary rows per chunk (64 MiB)
_PROMPTS_EXPECTED = ("a 2-D integer array or tensor [prompts, tokens], or a list of token-id "
                     "sequences (lists, tuples, 1-D integer arrays or tensors)")


class CausalLMEngine:
    """A causal LM whose beams are constrained to a catalog of semantic IDs.

    Build it with :meth:`from_hf`.

    Parameters
    ----------
    model : the ``CausalLM`` to serve (its device and dtype are the engine's).
    sid_layout : where each level's codes sit in the vocabulary.
    backend : the kernels of every op, "auto" (CUDA / Triton on a GPU, the PyTorch references on
        the CPU), "torch", "triton" or "cuda"; resolved once per ``beam_search`` call.
    max_beams : the largest ``num_beams`` a call may ask for (``FieldError`` above it); bounds
        the memory of a call (see :meth:`beam_search`).

    Raises
    ------
    FieldError : ``model`` is not a ``CausalLM``, ``sid_layout`` is not a ``SidLayout`` or reaches
        past the vocabulary, its levels do not fit ``max_position_embeddings``, or ``max_beams``
        is not an int >= 1.
    ConfigError : ``backend`` is not one of "auto", "torch", "triton", "cuda".
    """

    def __init__(self, model: CausalLM, sid_layout: SidLayout, *, backend: Backend = "auto",
                 max_beams: int = DEFAULT_MAX_BEAMS) -> None:
        if not isinstance(model, CausalLM):
            raise FieldError("model", f"is {kind(model)}", "a CausalLM")
        config = model.config
        _check_layout(sid_layout, config)
        _check_backend(backend)
        self.max_beams = _positive_int("max_beams", max_beams)
        self.model = model.eval()
        self.config = config
        self.layout = sid_layout
        self.backend = backend
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype

    @classmethod
    def from_hf(cls, model_dir: str | os.PathLike, sid_layout: SidLayout,
                device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None, *,
                backend: Backend = "auto", max_beams: int = DEFAULT_MAX_BEAMS) -> CausalLMEngine:
        """Load a ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` directory saved by transformers.

        Parameters
        ----------
        model_dir : directory with config.json and model.safetensors (or its sharded index).
        sid_layout : where each level's codes sit in the vocabulary.
        device : where the model runs: "cpu", "cuda" or "cuda:i" (a str or torch.device).
        dtype : float32, bfloat16 or float16 (a torch dtype or its name); None takes the
            ``dtype`` recorded in config.json, else float32.
        backend, max_beams : as in the constructor.

        Raises
        ------
        CheckpointError : the directory or a file is missing or unreadable (config.json not
            JSON), or the tensors do not fit the config (missing, extra, wrong shape or dtype).
        ConfigError : config.json holds a null or wrong-typed value (``ConfigFileError``, also a
            ``CheckpointError``, naming the key), or a feature not implemented (RoPE scaling,
            sliding window...); ``backend`` is unknown.
        FieldError : ``model_dir`` is not a path, ``device`` or ``dtype`` is not one of the
            above (or the device is not there), ``sid_layout`` or ``max_beams`` is wrong.
        """
        if not isinstance(model_dir, (str, os.PathLike)) or isinstance(model_dir, bytes):
            raise FieldError("model_dir", f"is {show(model_dir)} ({kind(model_dir)})",
                             "the path of a model directory (a str or os.PathLike)")
        if not isinstance(sid_layout, SidLayout):
            raise FieldError("sid_layout", f"is {kind(sid_layout)}", "a SidLayout")
        _check_backend(backend)
        _positive_int("max_beams", max_beams)
        device = _device(device)
        requested = _dtype(dtype)
        path = Path(model_dir)
        if not path.is_dir():
            problem = "is a file, not a directory" if path.exists() else "no such directory"
            raise CheckpointError(f"{path}: {problem} (a Hugging Face model directory holds "
                                  "config.json and model.safetensors)")
        config = CausalLMConfig.from_file(path)
        _check_layout(sid_layout, config)
        if requested is None:
            requested = _DTYPES[config.dtype] if config.dtype is not None else torch.float32
        state = load_hf_state_dict(path, config, requested)
        with torch.device("meta"):
            model = CausalLM(config)
        model.load_state_dict(state, strict=True, assign=True)
        model.to(device)
        model.requires_grad_(False)
        return cls(model, sid_layout, backend=backend, max_beams=max_beams)

    # -- the catalog ----------------------------------------------------------------------------
    def build_trie(self, sids) -> DeviceTrie:
        """The catalog trie of ``sids [n_items, levels]`` on the engine's device (reusable: pass
        it to :meth:`beam_search` in place of the array to skip the build).

        Items with equal IDs share one leaf (its rows in catalog order, what
        ``return_items=True`` returns): a ``SidCollisionWarning`` says how many.

        Raises
        ------
        FieldError : ``sids`` is not a non-empty 2-D integer matrix with one column per level
            (ragged rows, floats, strings, bools, None...).
        CatalogError : a code lies outside its level's codebook (field ``sids[row, level]``).
        """
        return self._build_trie(sids, stacklevel=3)

    def _build_trie(self, sids, stacklevel: int) -> DeviceTrie:
        codes = self._codes(sids)
        n = codes.shape[0]
        if self.device.type == "cpu":  # the C++ build: a few times faster than batched torch ops
            arrays = TrieArrays.build(codes.numpy(), np.zeros(n, dtype=np.bool_),
                                      np.zeros(n, dtype=np.float32), self.layout.sizes)
            trie = DeviceTrie(arrays, self.layout.sizes, self.device)
        else:
            arrays = build_trie_device(
                codes, torch.zeros(n, dtype=torch.bool, device=self.device),
                torch.zeros(n, dtype=torch.float32, device=self.device), self.layout.sizes,
            )
            trie = DeviceTrie.from_tensors(arrays, self.layout.sizes, self.device)
        distinct = trie.level_nodes[-1]
        if distinct < n:
            counts = torch.diff(trie.leaf_ptr)
            shared = int(counts[counts > 1].sum())
            warnings.warn(
                f"sids: {shared} of {n} items share their semantic ID with another item "
                f"({distinct} distinct IDs): a beam search returns each ID once, not each item. "
                "Pass return_items=True to get the catalog rows of each returned ID, or append "
                "a disambiguation level with ega_infer.hf.disambiguate_sids(sids) so that every "
                "item has its own ID (usable only with a model trained with that level)",
                SidCollisionWarning, stacklevel=stacklevel)
        return trie

    def _codes(self, sids) -> torch.Tensor:
        """``sids`` checked: int64 ``[n_items, levels]`` on the engine's device."""
        levels, sizes = self.layout.levels, self.layout.sizes
        codes = int_matrix(sids, "sids", levels)
        if codes.shape[0] == 0:
            raise FieldError("sids", "is empty (no items)", f"at least one row of {levels} codes")
        if isinstance(codes, np.ndarray):
            bad = (codes < 0) | (codes >= np.asarray(sizes))
            if bad.any():
                row, level = (int(i) for i in np.argwhere(bad)[0])
                _bad_code(row, level, codes[row, level], sizes[level])
            return torch.from_numpy(codes.astype(np.int64)).to(self.device)
        codes = codes.to(device=self.device)
        bad = (codes < 0) | (codes >= torch.tensor(sizes, device=self.device))
        if bool(bad.any()):  # one host sync, as the trie build has anyway
            row, level = (int(i) for i in bad.nonzero()[0])
            _bad_code(row, level, codes[row, level], sizes[level])
        return codes.long()

    def _trie(self, sids) -> DeviceTrie:
        if not isinstance(sids, DeviceTrie):
            return self._build_trie(sids, stacklevel=4)  # warns at beam_search's caller
        if (tuple(sids.codebook_sizes) != self.layout.sizes
                or torch.device(sids.device) != self.device):
            raise FieldError("sids", f"is a trie of sizes {tuple(sids.codebook_sizes)} on "
                             f"{sids.device}",
                             f"a trie of sizes {self.layout.sizes} on {self.device} "
                             "(this engine's build_trie)")
        return sids

    # -- decoding -------------------------------------------------------------------------------
    @overload
    def beam_search(self, prompts, sids, num_beams: int, renormalize: bool = False, *,
                    return_items: Literal[False] = False) -> list[BeamList]: ...

    @overload
    def beam_search(self, prompts, sids, num_beams: int, renormalize: bool = False, *,
                    return_items: Literal[True]) -> list[ItemBeamList]: ...

    def beam_search(self, prompts, sids, num_beams: int, renormalize: bool = False, *,
                    return_items: bool = False):
        """The ``num_beams`` best catalog items of each prompt, best first.

        ``score = sum_l logp_l(c_l | prompt, c_<l)``, ``logp`` the full-vocabulary float32
        log-softmax masked to the trie (``renormalize=False``, the default, as in transformers'
        ``generate``), or the log-softmax over each node's children (``True``).

        Parameters
        ----------
        prompts : a 2-D integer array or tensor ``[N, T]`` (one prompt per row), or a list of
            token-id sequences (lists, tuples, 1-D integer arrays or tensors; lengths may
            differ). Each prompt holds at least 1 and at most ``max_position_embeddings -
            levels + 1`` token ids in ``[0, vocab_size)``.
        sids : int array-like or tensor ``[n_items, levels]`` of codes (the catalog), or a trie
            from :meth:`build_trie`.
        num_beams : beams kept per prompt at every level, ``1 <= num_beams <= max_beams`` (an
            int or numpy int). A level keeps at most what the catalog can fill there (its
            distinct prefixes of that depth, the previous width times the widest node's
            children): more costs nothing.
        renormalize : False (default): log-softmax over the whole vocabulary, then masked
            (transformers' default with ``prefix_allowed_tokens_fn``). True: log-softmax over
            the allowed children (``renormalize_logits=True``).
        return_items : also return, per beam, the catalog rows whose ID it is (several when IDs
            collide; rows of the ``sids`` the trie was built from, in catalog order).

        Returns
        -------
        Per prompt, a list of ``(codes, score)`` (``codes`` a tuple of ``levels`` ints, ``score``
        the sum of the chosen tokens' log-probabilities), or ``(codes, score, rows)`` with
        ``return_items``, sorted best first; at most ``num_beams`` entries, only catalog items
        (fewer when fewer items are reachable).

        Memory
        ------
        With ``N`` prompts of ``T`` tokens in all (``S`` the longest), ``B`` beams (as clamped),
        ``L`` levels, vocabulary ``V``, the model's ``n_layers`` layers of hidden size ``d``,
        MLP size ``I``, ``Hq`` / ``Hkv`` heads of size ``D``, and ``e`` bytes per weight element,
        a call holds about::

            prompt keys/values       2 * n_layers * (T + N * S) * Hkv * D * e
            beam keys/values         2 * n_layers * N * B * (L - 1) * Hkv * D * e
            one layer's activations  max(T, N * B) * (2 * d + (Hq + 2 * Hkv) * D + 2 * I) * e
            level scores             N * B * max(sizes) * 16   (logits, candidates, top-k)
            renormalize=False        + 64 MiB of full-vocabulary rows at a time (V * 4 per row)

        plus the attention ops' workspace: the PyTorch references hold float32 scores of
        ``Hq * len**2`` per prompt (prefill) and ``N * B * Hq * (S + L)`` (decode). ``max_beams``
        bounds ``B``.

        Raises
        ------
        FieldError : a prompt is empty, too long, not a sequence of integers (floats, strings,
            bools, None, nested lists) or holds a token outside the vocabulary (field
            ``prompts[i]``), ``prompts`` is not a batch (``prompts``); ``num_beams`` is not an
            int in ``[1, max_beams]``; ``renormalize`` or ``return_items`` is not a bool;
            ``sids`` is not a non-empty integer ``[n_items, levels]`` matrix, or is a trie of
            another layout or device.
        CatalogError : a code lies outside its level's codebook (field ``sids[row, level]``).
        BackendUnavailableError : the engine's explicit backend cannot run this call.
        """
        beams = as_int(num_beams)
        if beams is None or beams < 1:
            raise FieldError("num_beams", f"is {show(num_beams)} ({kind(num_beams)})",
                             "an int >= 1")
        if beams > self.max_beams:
            raise FieldError("num_beams", f"is {beams}",
                             f"at most max_beams={self.max_beams} (CausalLMEngine(max_beams=...) "
                             "raises the bound)")
        if not is_flag(renormalize):
            raise FieldError("renormalize", f"is {show(renormalize)} ({kind(renormalize)})",
                             "True or False")
        if not is_flag(return_items):
            raise FieldError("return_items", f"is {show(return_items)} ({kind(return_items)})",
                             "True or False")
        renormalize, return_items = bool(renormalize), bool(return_items)
        tokens, lengths = self._pack(prompts)
        trie = self._trie(sids)
        n = len(lengths)
        if n == 0:
            return []
        widths = self.beam_widths(trie, beams)
        ops = resolve_backends(self.backend, self.device, head_dim=self.config.head_dim,
                               vocab=max(self.layout.sizes), beams=max(widths),
                               renormalize=renormalize)
        with torch.inference_mode():
            scores, codes, leaf = self._search(tokens, lengths, trie, widths, renormalize, ops)
            alive = scores > float("-inf")
            rows = self._rows(trie, leaf, alive) if return_items else None
        score_list, code_list, alive = scores.tolist(), codes.tolist(), alive.tolist()
        out = []
        for i in range(n):
            kept = [b for b in range(widths[-1]) if alive[i][b]]
            if rows is None:
                out.append([(tuple(code_list[i][b]), score_list[i][b]) for b in kept])
            else:
                out.append([(tuple(code_list[i][b]), score_list[i][b], rows[i][b]) for b in kept])
        return out

    def beam_widths(self, trie: DeviceTrie, num_beams: int) -> list[int]:
        """The beams each level keeps for ``num_beams``: at most what the catalog can fill
        (``DeviceTrie.beam_capacity``), the last one the most results a prompt can get."""
        widths, width = [], 1
        for level in range(self.layout.levels):
            width = trie.beam_capacity(level, width, num_beams)
            widths.append(width)
        return widths

    def _search(self, tokens: torch.Tensor, lengths: list[int], trie: DeviceTrie,
                widths: list[int], renormalize: bool, ops: OpBackends):
        """``(scores [N, W], codes [N, W, L], leaf [N, W])`` of the final beams (score -inf: no
        beam; leaf: the depth-L node, -1 for none)."""
        model, device, levels = self.model, self.device, self.layout.levels
        n = len(lengths)
        length_t = torch.tensor(lengths, device=device)
        cu = torch.zeros(n + 1, dtype=torch.long, device=device)
        torch.cumsum(length_t, 0, out=cu[1:])
        starts = torch.repeat_interleave(cu[:-1], length_t, output_size=tokens.numel())
        positions = torch.arange(tokens.numel(), device=device) - starts
        hidden, keys, values = model.prefill(tokens, positions, cu, cu[1:] - 1,
                                             backend=ops.prefill_attention)

        step = beam_step(
            self._level_logits(hidden, 0, renormalize), torch.zeros(n, 1, device=device),
            torch.zeros(n, dtype=torch.long, device=device), trie.child_ptr[0],
            trie.node_code[0], trie.node_max_bid[0], k=widths[0], renormalize=renormalize,
            backend=ops.beam_step,
        )
        scores, node, codes = step.scores, step.child, step.token[..., None]
        if levels == 1:
            return scores, codes, node

        ctx_k = self._padded(keys, lengths, positions)
        ctx_v = self._padded(values, lengths, positions)
        hkv, hd = self.config.num_kv_heads, self.config.head_dim
        own_k = [k.new_empty(n, widths[0], hkv, 0, hd) for k in keys]
        own_v = [v.new_empty(n, widths[0], hkv, 0, hd) for v in values]
        rows = torch.arange(n, device=device)[:, None]
        for level in range(1, levels):
            token = codes[..., -1] + self.layout.offsets[level - 1]
            position = (length_t + (level - 1))[:, None].expand_as(token)
            hidden, own_k, own_v = model.decode(token, position, ctx_k, ctx_v, length_t, own_k,
                                                own_v, backend=ops.decode_attention)
            step = beam_step(
                self._level_logits(hidden.reshape(token.numel(), -1), level, renormalize),
                scores, node.reshape(-1), trie.child_ptr[level], trie.node_code[level],
                trie.node_max_bid[level], k=widths[level], renormalize=renormalize,
                backend=ops.beam_step,
            )
            parent = step.parent
            if level < levels - 1:
                own_k = [k[rows, parent] for k in own_k]
                own_v = [v[rows, parent] for v in own_v]
            codes = torch.cat([codes[rows, parent], step.token[..., None]], dim=-1)
            scores, node = step.scores, step.child
        return scores, codes, node

    def _level_logits(self, hidden: torch.Tensor, level: int, renormalize: bool) -> torch.Tensor:
        """``[R, sizes[level]]``: the level's logits (renormalised over the children later), or
        its slice of the float32 full-vocabulary log-softmax (only masked later), computed a
        bounded chunk of rows at a time."""
        start, stop = self.layout.token_range(level)
        if renormalize:
            return self.model.logits(hidden, start, stop)
        rows = hidden.shape[0]
        chunk = max(1, _LOGITS_CHUNK_BYTES // (4 * self.config.vocab_size))
        if rows <= chunk:
            return torch.log_softmax(self.model.logits(hidden).float(), dim=-1)[:, start:stop]
        out = hidden.new_empty(rows, stop - start, dtype=torch.float32)
        for first in range(0, rows, chunk):
            part = self.model.logits(hidden[first:first + chunk]).float()
            out[first:first + chunk] = torch.log_softmax(part, dim=-1)[:, start:stop]
        return out

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

    @staticmethod
    def _rows(trie: DeviceTrie, leaf: torch.Tensor, alive: torch.Tensor) -> list[list[tuple]]:
        """Per prompt and beam, the catalog rows of the beam's leaf (``()`` for no beam)."""
        safe = leaf.clamp(min=0)
        start = trie.leaf_ptr[safe]
        count = torch.where(alive, trie.leaf_ptr[safe + 1] - start, 0).reshape(-1)
        first = torch.cumsum(count, 0) - count
        total = int(count.sum())
        index = (torch.repeat_interleave(start.reshape(-1), count, output_size=total)
                 + torch.arange(total, device=leaf.device)
                 - torch.repeat_interleave(first, count, output_size=total))
        items = trie.leaf_items[index].tolist()
        shape, out, at = leaf.shape, [], 0
        counts = count.tolist()
        for i in range(shape[0]):
            row = []
            for b in range(shape[1]):
                c = counts[i * shape[1] + b]
                row.append(tuple(items[at:at + c]))
                at += c
            out.append(row)
        return out

    def _pack(self, prompts) -> tuple[torch.Tensor, list[int]]:
        """All prompt tokens back to back ``[T]`` (int64, on the device) and the lengths."""
        vocab = self.config.vocab_size
        limit = self.config.max_position_embeddings - (self.layout.levels - 1)
        if isinstance(prompts, (np.ndarray, torch.Tensor)):
            if prompts.ndim != 2:
                raise FieldError("prompts", f"has shape {tuple(prompts.shape)}",
                                 _PROMPTS_EXPECTED + " (wrap one prompt: [prompt])")
            batch = _int_array(prompts, "prompts")
            if batch.shape[0] == 0:
                return torch.zeros(0, dtype=torch.long, device=self.device), []
            if batch.shape[1] == 0:
                raise FieldError("prompts[0]", "is empty", "at least one token id")
            if _out_of_range(batch, vocab):
                i = int(np.flatnonzero(((batch < 0) | (batch >= vocab)).any(axis=1))[0])
                _check_range(batch[i], i, vocab)
            _check_length(batch.shape[1], 0, limit, self.config.max_position_embeddings,
                          self.layout.levels)
            tokens = torch.from_numpy(batch.astype(np.int64).reshape(-1))
            return tokens.to(self.device), [batch.shape[1]] * batch.shape[0]
        if not isinstance(prompts, (list, tuple)):
            raise FieldError("prompts", f"is {show(prompts)} ({kind(prompts)})", _PROMPTS_EXPECTED)
        if prompts and all(as_int(p) is not None for p in prompts):
            raise FieldError("prompts", f"is {show(prompts)}, one flat list of token ids",
                             _PROMPTS_EXPECTED + " (wrap one prompt: [prompt])")
        parts, lengths = [], []
        for i, prompt in enumerate(prompts):
            ids = _prompt(prompt, i, vocab)
            _check_length(ids.size, i, limit, self.config.max_position_embeddings,
                          self.layout.levels)
            parts.append(ids)
            lengths.append(int(ids.size))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(flat).to(self.device), lengths


def _prompt(prompt, i: int, vocab: int) -> np.ndarray:
    """Prompt ``i`` as int64 token ids, or a FieldError naming ``prompts[i]``."""
    field = f"prompts[{i}]"
    if isinstance(prompt, (np.ndarray, torch.Tensor)):
        if prompt.ndim != 1:
            raise FieldError(field, f"has shape {tuple(prompt.shape)}",
                             "a 1-D sequence of token ids")
        ids = _int_array(prompt, field)
    elif isinstance(prompt, (list, tuple)):
        values = []
        for j, token in enumerate(prompt):
            value = as_int(token)
            if value is None:
                raise FieldError(field, f"holds {show(token)} ({kind(token)}) at {j}",
                                 "token ids (ints)")
            if not 0 <= value < vocab:
                raise FieldError(field, f"holds token id {value} at {j}", f"ids in [0, {vocab})")
            values.append(value)
        ids = np.array(values, dtype=np.int64)
    else:
        raise FieldError(field, f"is {show(prompt)} ({kind(prompt)})",
                         "a sequence of token ids (list, tuple, 1-D integer array or tensor; "
                         "prompts is a list of them)")
    if ids.size == 0:
        raise FieldError(field, "is empty", "at least one token id")
    if _out_of_range(ids, vocab):
        _check_range(ids, i, vocab)
    return ids.astype(np.int64, copy=False)


def _int_array(value, field: str) -> np.ndarray:
    """An integer array or tensor as a numpy array (CPU), or a FieldError naming ``field``."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise FieldError(field, f"has dtype {value.dtype}", "integer token ids")
        return value.detach().cpu().numpy()
    if not np.issubdtype(value.dtype, np.integer):
        raise FieldError(field, f"has dtype {value.dtype}", "integer token ids")
    return value


def _out_of_range(ids: np.ndarray, vocab: int) -> bool:
    return bool(ids.size) and (int(ids.min()) < 0 or int(ids.max()) >= vocab)


def _check_range(ids: np.ndarray, i: int, vocab: int) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        raise FieldError(f"prompts[{i}]", f"holds token id {int(ids[bad[0]])} at {int(bad[0])}",
                         f"ids in [0, {vocab})")


def _check_length(length: int, i: int, limit: int, positions: int, levels: int) -> None:
    if length > limit:
        raise FieldError(f"prompts[{i}]", f"has {length} tokens",
                         f"at most {limit}: max_position_embeddings {positions} must hold the "
                         f"prompt and the {levels - 1} generated codes fed back")


def _bad_code(row: int, level: int, code, size: int) -> None:
    raise CatalogError(f"sids[{row}, {level}]", f"= {int(code)} is out of range",
                       f"a code in [0, {size}) of level {level}")


def _positive_int(field: str, value) -> int:
    number = as_int(value)
    if number is None or number < 1:
        raise FieldError(field, f"is {show(value)} ({kind(value)})", "an int >= 1")
    return number


def _check_backend(backend) -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ConfigError("backend", f"is {show(backend)}", f"one of {BACKENDS}")


def _check_layout(layout, config: CausalLMConfig) -> None:
    if not isinstance(layout, SidLayout):
        raise FieldError("sid_layout", f"is {kind(layout)}", "a SidLayout")
    if layout.end > config.vocab_size:
        raise FieldError("sid_layout", f"reaches token id {layout.end - 1}",
                         f"token ids below the model's vocab_size {config.vocab_size}")
    if layout.levels > config.max_position_embeddings:
        raise FieldError("sid_layout", f"has {layout.levels} levels",
                         f"at most max_position_embeddings {config.max_position_embeddings} "
                         "(a 1-token prompt and the generated codes must fit)")


def _device(device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise FieldError("device", f"is {show(device)} ({kind(device)})",
                         "'cpu', 'cuda' or 'cuda:i' (a str or torch.device)")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise FieldError("device", f"is {device!r}", "'cpu', 'cuda' or 'cuda:i'") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise FieldError("device", f"is {device}", "'cpu', 'cuda' or 'cuda:i'")
    if not torch.cuda.is_available():
        raise FieldError("device", f"is {device}", "'cpu' (torch sees no CUDA GPU here)")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise FieldError("device", f"is {device}",
                         f"a GPU index below {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise FieldError("dtype", f"is {show(dtype)}", f"one of {sorted(_DTYPES)} or None")
        return _DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or dtype not in _DTYPES.values():
        raise FieldError("dtype", f"is {show(dtype)}",
                         "torch.float32, torch.bfloat16, torch.float16, their names, or None")
    return dtype
