"""Encoder variants that rewrite a trained encoder's weights without retraining (issue 19).

Written after the model name like the other variants (``all-MiniLM-L6-v2@prune-emb90``); the
names form a small grammar:

| variant | what is done to the float32 weights |
| --- | --- |
| ``prune-emb<S>`` | magnitude pruning: the S % smallest-magnitude entries of the token-embedding table set to 0 |
| ``prune-lin<S>`` | the same in every Linear weight matrix (attention, feed-forward, pooler), each matrix on its own |
| ``prune-all<S>`` | both: the token-embedding table and every Linear weight matrix, each to S % |
| ``prune-…<S>-global`` | one magnitude threshold across all the matrices in scope instead of S % of each |
| ``share<b>`` | weight sharing: each of those matrices' values replaced by one of 2^b shared values (1-d k-means per matrix) |
| ``prune<S>-share<b>`` | Deep Compression's order: ``prune-all<S>``, then the surviving values of each matrix shared |
| ``prune-emb<S>-share<b>`` | the same with any pruning above first (here the table alone), then every matrix shared |
| ``factor<E>`` | the token-embedding table (V×H) replaced by its rank-E SVD factors, a V×E table times an E×H projection |
| ``trim-<dataset>[-<N>]`` | vocabulary trimming (``embpress.vocab_trim``): only the token rows a deployment can know in advance |

S is a whole percentage (1-99), b is 2..8 and E at least 1 and below the hidden size. Biases,
LayerNorms and the position / token-type embeddings are never touched (0.4 % of MiniLM's weights).

**k-means** (weight sharing) is Lloyd's algorithm in one dimension on each matrix's values (the
non-zero ones after pruning), started from 2^b centres spread linearly between the smallest and
largest value (Han et al. found linear initialisation best: it keeps the rare large weights), with
a centre that ends up empty moved to the value furthest from its centre (scikit-learn's rule), run
on the sorted values with prefix sums, so each iteration costs O(2^b log n) and the result is
deterministic. No recovery fine-tune is run: every figure is the transform alone.

**Size on disk** is that of the smallest honest format, chosen per tensor from its actual values
by :func:`stored_bytes` (the arrays a deployment stores, no container overhead):

* positions: dense (zeros stored like any value), CSR with 32-bit or 16-bit column indices and
  32-bit row pointers, or a bitmap of the non-zeros (1 bit per entry);
* values: float32, or (at most 256 distinct non-zero values) b-bit indices bit-packed plus a
  float32 codebook, or the same indices Huffman-coded (plus one code length byte per value);
* the trimmed table's kept-token list as a V-bit bitmap or sorted 16-bit ids, whichever is smaller.

A bitmap costs 1/32 of the dense matrix, so bitmap + values beats dense from ~3 % sparsity on
(at 50 %: 2.1 B per entry against 4; CSR with 32-bit indices, 8 B per non-zero, only equals dense
there) and CSR16 beats the bitmap beyond 93.75 % (2 B per non-zero < 1/8 B per entry).
In memory the variants are what PyTorch runs: pruned and shared matrices dense float32 (no sparse
or codebook kernels, so no speed-up either: ``benchmarks/bench_encoder_pruning.py`` measures
it), the factorised and trimmed tables really smaller.
"""
from __future__ import annotations

import heapq
import math
import re

import numpy as np

from .errors import EmbpressError

#: Set on a model built here: ``encoders.footprint`` then sizes it with :func:`stored_bytes`.
COMPACT_ATTR = "embpress_compact_storage"
KMEANS_ITERS = 100
GRAMMAR = ("prune-{emb,lin,all}<S>[-global], share<b>, prune<S>-share<b> or prune-{emb,lin,all}<S>-share<b>, "
           "factor<E>, trim-<dataset>[-<N>]")
SCOPES = {"emb": "token-embedding table", "lin": "every Linear weight matrix",
          "all": "token-embedding table and every Linear weight matrix"}
_PRUNE = re.compile(r"(prune-(emb|lin|all)(\d+)(-global)?)")
_SHARE = re.compile(r"(?:(prune-(emb|lin|all)(\d+)(-global)?)-|prune(\d+)-)?share(\d+)")
_FACTOR = re.compile(r"factor(\d+)")


def _pct(text: str, name: str) -> float:
    s = int(text)
    if not 1 <= s <= 99:
        raise EmbpressError(f"encoder variant {name}: sparsity {s} % is outside 1..99")
    return s / 100


def _prune_settings(m: re.Match, name: str) -> dict:
    return {"scope": m.group(2), "sparsity": _pct(m.group(3), name),
            "granularity": "global" if m.group(4) else "per-matrix"}


def parse_variant(name: str) -> tuple[str, dict] | None:
    """(summary, settings) of the variant a grammar name stands for (``encoders.get_variant`` makes
    the Variant), or None when ``name`` is not of this grammar."""
    if m := _PRUNE.fullmatch(name):
        prune = _prune_settings(m, name)
        return (f"magnitude pruning: {prune['sparsity']:.0%} of the {SCOPES[prune['scope']]}"
                + (" (one global threshold)" if prune["granularity"] == "global" else " (each matrix on its own)")
                + " set to 0", {"method": "magnitude-prune", **prune})
    if m := _SHARE.fullmatch(name):
        bits = int(m.group(6))
        if not 2 <= bits <= 8:
            raise EmbpressError(f"encoder variant {name}: sharing needs 2..8 bits, got {bits}")
        prune = (_prune_settings(m, name) if m.group(2) else
                 {"scope": "all", "sparsity": _pct(m.group(5), name), "granularity": "per-matrix"} if m.group(5)
                 else None)
        return ((f"{prune['sparsity']:.0%} of the {SCOPES[prune['scope']]} pruned, then " if prune else "")
                + f"weight sharing: each matrix's {'surviving ' if prune else ''}values replaced by one of "
                f"{2 ** bits} k-means centres (token-embedding table and Linear weights)",
                {"method": "weight-sharing", "scope": "all", "bits": bits, "prune": prune,
                 "values": "non-zero (after pruning)" if prune else "all",
                 "kmeans": f"1-d Lloyd per matrix, linear init, empty clusters relocated, <= {KMEANS_ITERS} iterations"})
    if m := _FACTOR.fullmatch(name):
        rank = int(m.group(1))
        if rank < 1:
            raise EmbpressError(f"encoder variant {name}: the rank must be at least 1")
        return (f"token-embedding table replaced by its rank-{rank} SVD factors (V×{rank} · {rank}×H)",
                {"method": "svd-factorised-embedding", "rank": rank})
    if name.startswith("trim-"):
        from .vocab_trim import trim_variant
        return trim_variant(name)
    return None


# ---------------------------------------------------------------------------- the transforms
def hf_model(model):
    """The transformers model inside a sentence-transformers one (it owns the input embeddings)."""
    for mod in model.modules():
        if hasattr(mod, "get_input_embeddings") and hasattr(mod, "set_input_embeddings"):
            return mod
    raise EmbpressError(f"{type(model).__name__} holds no transformers model with input embeddings")


def matrices(model, scope: str) -> list:
    """The weight Parameters a variant rewrites: the token-embedding table and/or every Linear weight."""
    import torch
    out = []
    if scope in ("emb", "all"):
        out.append(hf_model(model).get_input_embeddings().weight)
    if scope in ("lin", "all"):
        out += [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return out


def magnitude_prune(weights: list, sparsity: float, granularity: str = "per-matrix") -> None:
    """Zero the ``sparsity`` share of smallest-magnitude entries, of each matrix or of all together."""
    import torch
    if granularity == "global":
        mags = np.concatenate([w.detach().abs().flatten().numpy() for w in weights])
        k = int(round(sparsity * mags.size))
        threshold = np.partition(mags, k - 1)[k - 1] if k else -1.0
        del mags
        for w in weights:
            with torch.no_grad():
                w[w.abs() <= threshold] = 0.0
        return
    for w in weights:
        flat = w.detach().view(-1)
        k = int(round(sparsity * flat.numel()))
        if k:
            idx = np.argpartition(flat.abs().numpy(), k - 1)[:k]
            with torch.no_grad():
                flat[torch.from_numpy(idx)] = 0.0


def kmeans_1d(values: np.ndarray, k: int, iters: int = KMEANS_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars from a linear initialisation: (sorted centres float32, each value's
    centre). A centre left without values (linear init puts many in the sparse tails of a weight
    distribution) is moved to the value furthest from its own centre, as scikit-learn relocates
    empty clusters, so all k values are used when there are k distinct ones."""
    x = np.sort(values.astype(np.float64))
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    centres = np.linspace(x[0], x[-1], k)
    for _ in range(iters):
        edges = np.concatenate([[0], np.searchsorted(x, (centres[1:] + centres[:-1]) / 2), [x.size]])
        counts = np.diff(edges)
        full = counts > 0
        new = np.where(full, (prefix[edges[1:]] - prefix[edges[:-1]]) / np.maximum(counts, 1), centres)
        if not full.all():   # the furthest values are the ends of the occupied segments
            ends = np.concatenate([x[edges[:-1][full]], x[edges[1:][full] - 1]])
            dist = np.abs(ends - np.concatenate([new[full], new[full]]))
            taken = set(new[full].tolist())
            spare = list(dict.fromkeys(v for v in ends[np.argsort(-dist, kind="stable")].tolist() if v not in taken))
            spare = spare[:int((~full).sum())]
            new[np.flatnonzero(~full)[:len(spare)]] = spare
        new = np.sort(new)
        if np.array_equal(new, centres):
            break
        centres = new
    centres = centres.astype(np.float32)
    assign = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
    return centres, assign


def share_weights(weights: list, bits: int, pruned: bool = False) -> None:
    """Replace each matrix's values by their k-means centre (2^b per matrix); after pruning, only the
    non-zero values (the zeros are positions, stored apart)."""
    import torch
    for w in weights:
        flat = w.detach().view(-1)
        nz = torch.nonzero(flat).view(-1) if pruned else torch.arange(flat.numel())
        vals = flat[nz].numpy()
        if vals.size == 0:
            continue
        centres, assign = kmeans_1d(vals, min(2 ** bits, vals.size))
        with torch.no_grad():
            flat[nz] = torch.from_numpy(centres[assign])


def factorised_embedding(table, rank: int):
    """A torch Module that looks token ids up in the rank-``rank`` SVD factors of ``table``:
    ``factor`` (V×E, the left singular vectors scaled by the singular values) times ``projection`` (E×H)."""
    import torch

    class FactorisedEmbedding(torch.nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.factor = torch.nn.Parameter(a, requires_grad=False)
            self.projection = torch.nn.Parameter(b, requires_grad=False)

        def forward(self, input_ids):
            return torch.nn.functional.embedding(input_ids, self.factor) @ self.projection

    u, s, vt = np.linalg.svd(table.detach().double().numpy(), full_matrices=False)
    return FactorisedEmbedding(torch.from_numpy((u[:, :rank] * s[:rank]).astype(np.float32)),
                               torch.from_numpy(vt[:rank].astype(np.float32)))


def apply(model, name: str, cfg: dict):
    """Rewrite a float32 sentence-transformers model as the variant ``name`` with settings ``cfg``
    (in place; returns it)."""
    method = cfg["method"]
    if method == "magnitude-prune":
        magnitude_prune(matrices(model, cfg["scope"]), cfg["sparsity"], cfg["granularity"])
    elif method == "weight-sharing":
        if cfg["prune"]:
            magnitude_prune(matrices(model, cfg["prune"]["scope"]), cfg["prune"]["sparsity"],
                            cfg["prune"]["granularity"])
        share_weights(matrices(model, cfg["scope"]), cfg["bits"], pruned=bool(cfg["prune"]))
    elif method == "svd-factorised-embedding":
        hf = hf_model(model)
        table = hf.get_input_embeddings().weight
        if cfg["rank"] >= min(table.shape):
            raise EmbpressError(f"encoder variant {name}: rank {cfg['rank']} is not below the "
                                f"embedding table's {min(table.shape)} columns (nothing to save)")
        hf.set_input_embeddings(factorised_embedding(table, cfg["rank"]))
    elif method == "vocab-trim":
        from .vocab_trim import trim_model
        trim_model(model, hf_model(model), name, cfg)
    else:
        raise AssertionError(method)
    setattr(model, COMPACT_ATTR, True)
    return model


# ---------------------------------------------------------------------------- size on disk
def huffman_bits(counts) -> int:
    """Bits of the Huffman code of symbols occurring ``counts`` times (1 bit each for one symbol)."""
    counts = [int(c) for c in counts if c > 0]
    if len(counts) <= 1:
        return sum(counts)
    heap = [(c, i, 0) for i, c in enumerate(counts)]   # (weight, tie-break, bits below this node)
    heapq.heapify(heap)
    nxt = len(counts)
    while len(heap) > 1:
        (c1, _, b1), (c2, _, b2) = heapq.heappop(heap), heapq.heappop(heap)
        heapq.heappush(heap, (c1 + c2, nxt, b1 + b2 + c1 + c2))  # every symbol below gets one more bit
        nxt += 1
    return heap[0][2]


def _value_options(counts: np.ndarray) -> list[tuple[int, str]]:
    """Ways to store values occurring ``counts`` times: float32, packed codes + codebook, Huffman."""
    m, u = int(counts.sum()), len(counts)
    out = [(4 * m, "float32")]
    if u <= 256:
        bits = max(1, math.ceil(math.log2(u)))
        out.append((math.ceil(m * bits / 8) + 4 * u, f"{bits}-bit codes + codebook"))
        out.append((math.ceil(huffman_bits(counts) / 8) + 5 * u, "Huffman codes + codebook"))
    return out


def tensor_formats(arr: np.ndarray) -> list[tuple[int, str]]:
    """Every format considered for one tensor, as (bytes, name); rows are the first axis."""
    a = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr.reshape(1, -1)
    rows, cols, n = a.shape[0], a.shape[1], a.size
    nonzero = a[a != 0]
    _, counts = np.unique(nonzero, return_counts=True)
    nnz = int(nonzero.size)
    # dense: the zeros are stored like any other value (one more codebook entry if there are any)
    dense_counts = np.append(counts, n - nnz) if nnz < n else counts
    out = [(b, f"dense {v}") for b, v in _value_options(dense_counts)]
    if nnz < n:
        positions = [(math.ceil(n / 8), "bitmap"), (4 * (rows + 1) + 4 * nnz, "CSR32")]
        if cols <= 1 << 16:
            positions.append((4 * (rows + 1) + 2 * nnz, "CSR16"))
        values = _value_options(counts) if nnz else [(0, "")]
        out += [(pb + vb, f"{pn} + {vn}".rstrip(" +")) for pb, pn in positions for vb, vn in values]
    return out


def best_format(arr: np.ndarray) -> tuple[int, str]:
    return min(tensor_formats(arr), key=lambda t: t[0])


def stored_bytes(state: dict) -> dict:
    """What a deployment stores of a state dict, each tensor in its smallest honest format.

    Returns ``bytes``, ``bytes_no_entropy`` (without Huffman coding), ``nonzero_params`` and
    ``formats`` ({tensor name: (bytes, format)}). Trimmed tables' ``remap`` buffers count as the
    kept-token list (a V-bit bitmap or sorted 16-bit ids, the smaller)."""
    import torch
    formats, plain, nonzero = {}, 0, 0
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue
        if name.endswith(".remap"):
            kept = int(t.max()) + 1
            formats[name] = min((math.ceil(t.numel() / 8), "kept-token bitmap"), (2 * kept, "kept-token ids (16-bit)"))
            plain += formats[name][0]
            continue
        arr = t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
        if not t.is_floating_point() or arr.size < 2:
            formats[name] = (t.numel() * t.element_size(), "raw")
            plain += formats[name][0]
            continue
        options = tensor_formats(arr)
        formats[name] = min(options, key=lambda o: o[0])
        plain += min(b for b, f in options if "Huffman" not in f)
        nonzero += int(np.count_nonzero(arr))
    return {"bytes": sum(b for b, _ in formats.values()), "bytes_no_entropy": plain,
            "nonzero_params": nonzero, "formats": formats}


def format_summary(formats: dict) -> str:
    """The formats that won, with how many tensors and bytes each: 'bitmap + float32 ×37 (40.1 MB); …'."""
    groups: dict[str, list[int]] = {}
    for b, f in formats.values():
        g = groups.setdefault(f, [0, 0])
        g[0] += 1
        g[1] += b
    return "; ".join(f"{f} ×{n} ({b / 1e6:.2f} MB)" for f, (n, b) in sorted(groups.items(), key=lambda kv: -kv[1][1]))
