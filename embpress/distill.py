"""Knowledge distillation: train a student encoder to reproduce a teacher's embeddings.

The default run makes ``all-MiniLM-L6-v2-mpnet-distilled``: all-MiniLM-L6-v2 (6 layers, 384-d)
followed by a Dense projection 384→768 (and a Normalize, as the teacher has one), trained with a
mean-squared-error loss to output all-mpnet-base-v2's embeddings (12 layers, 768-d).

* **Texts**: training splits only: STS-B ``sts-train.csv`` sentences and the train queries of
  scifact and nfcorpus (``qrels/train.tsv``), de-duplicated, with every text that occurs anywhere
  in the test side of a dataset card (queries, documents, sentences) removed. A seeded sample of
  ``max_texts`` of them, a share per source proportional to its size; ``holdout`` of them are kept
  out of training to measure how close the student gets to the teacher.
* **Targets**: the teacher's embeddings of those texts, computed once through the embedding cache
  (``$EMBPRESS_CACHE/embeddings/<teacher>/<source>/train-distill-*``), as are the student's
  starting embeddings.
* **Initialisation** (``init="lstsq"``): the projection starts as the ridge-regression map from the
  student's embeddings to the teacher's, so the short CPU run spends its steps on the encoder
  (``init="random"`` keeps PyTorch's default initialisation).
* **Training**: AdamW, linear warm-up then decay, ``epochs`` over the training texts or ``steps``.
* **Result**: saved with sentence-transformers in ``$EMBPRESS_CACHE/models/<name>`` plus
  ``embpress-distill.json`` (settings, losses, held-out cosine before and after); from then on
  ``<name>`` is a model like any other (``embpress run -m <name>``, ``<name>@int8-dynamic``).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import settings
from .data import card_names, load_dataset, load_training_split
from .embed import embed
from .errors import EmbpressError
from .tasks import task_of
from .models import DISTILL_MARKER, REGISTRY, load_encoder, model_info, quiet_third_party_logs, resolve_model

log = logging.getLogger("embpress")

DISTILLED_NAME = "all-MiniLM-L6-v2-mpnet-distilled"
SOURCES = ("stsbenchmark", "scifact", "nfcorpus")


# ---------------------------------------------------------------------------- texts
def _test_texts() -> set[str]:
    """Every text on the test side of every dataset card: what training must never see."""
    seen: set[str] = set()
    for name in card_names():
        ds = load_dataset(name)
        for texts, _ in task_of(ds.task).parts(ds).values():
            seen.update(texts)
    return seen


def training_texts(sources=SOURCES) -> tuple[dict[str, list[str]], int]:
    """Per source, its training-split texts (queries or sentences), de-duplicated and without any
    test text; and how many texts were dropped because a test split holds them too."""
    test = _test_texts()
    out, dropped = {}, 0
    for name in sources:
        ds = load_training_split(name)
        texts = task_of(ds.task).query_texts(ds)
        unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
        kept = [t for t in unique if t not in test]
        dropped += len(unique) - len(kept)
        out[name] = kept
    return out, dropped


def sample_texts(per_source: dict[str, list[str]], max_texts: int | None, seed: int) -> dict[str, list[str]]:
    """A seeded sample of ``max_texts`` texts, each source's share proportional to its size."""
    rng = np.random.default_rng(seed)
    total = sum(len(v) for v in per_source.values())
    out = {}
    for name, texts in per_source.items():
        k = len(texts) if not max_texts or max_texts >= total else max(1, round(max_texts * len(texts) / total))
        out[name] = [texts[i] for i in sorted(rng.permutation(len(texts))[:k])]
    return out


# ---------------------------------------------------------------------------- the run
def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """W, b minimising |xW + b - y|² + alpha·mean(eig)·|W|²."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    gram = xc.T @ xc
    gram[np.diag_indices_from(gram)] += alpha * np.trace(gram) / len(gram)
    w = np.linalg.solve(gram, xc.T @ (y - ym))
    return w, ym - xm @ w


def _closeness(model, texts: list[str], targets: np.ndarray, batch_size: int) -> dict:
    """MSE (the training loss) and mean cosine of the model's embeddings to the targets."""
    v = np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False),
                   dtype=np.float64)
    t = targets.astype(np.float64)
    cos = (v * t).sum(1) / np.maximum(np.linalg.norm(v, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
    return {"mse": float(((v - t) ** 2).mean()), "cosine": float(cos.mean())}


@dataclass
class _Texts:
    """The distillation texts: teacher targets and student starting points, split by index."""
    texts: list[str]
    targets: np.ndarray
    start: np.ndarray
    train: np.ndarray
    hold: np.ndarray
    chosen: dict[str, list[str]]
    dropped: int
    seconds: float


def _texts(t_info, s_info, sources, max_texts, holdout: int, batch_size: int, seed: int, progress: bool,
           echo) -> _Texts:
    """Training-split texts of the sources (no test text), embedded by teacher and student (cached:
    a second run with the same texts encodes nothing), shuffled and split into train and held-out."""
    t0 = time.perf_counter()
    per_source, dropped = training_texts(sources)
    chosen = sample_texts(per_source, max_texts, seed)
    texts, targets, start = [], [], []
    for src, src_texts in chosen.items():
        ids = [str(i) for i in range(len(src_texts))]
        texts += src_texts
        targets.append(np.asarray(embed(t_info, src, "train", "distill", src_texts, ids, progress=progress)))
        start.append(np.asarray(embed(s_info, src, "train", "distill", src_texts, ids, progress=progress)))
    order = np.random.default_rng(seed).permutation(len(texts))
    n_hold = min(holdout, len(texts) // 5)
    hold, train = order[:n_hold], order[n_hold:]
    if len(train) < batch_size:
        raise EmbpressError(f"only {len(train)} training texts for batch size {batch_size}; raise max_texts")
    out = _Texts(texts, np.concatenate(targets), np.concatenate(start), train, hold, chosen, dropped,
                 time.perf_counter() - t0)
    echo(f"distill: {len(train)} training and {n_hold} held-out texts "
         f"({', '.join(f'{k} {len(v)}' for k, v in chosen.items())}; {dropped} dropped as test texts); "
         f"teacher {t_info.entry.name} targets ready in {out.seconds:.0f} s")
    return out


def _student(s_info, t_info, data: _Texts, init: str, seed: int):
    """The student + a Dense layer to the teacher's dimension (ridge-fitted to the targets, or
    random), normalised when the teacher is; returns (model, the Dense layer)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize
    torch.manual_seed(seed)
    base = load_encoder(s_info)
    dim_in, dim_out = data.start.shape[1], data.targets.shape[1]
    dense = Dense(dim_in, dim_out, bias=True, activation_function=torch.nn.Identity())
    if init == "lstsq":
        w, b = _ridge(data.start[data.train], data.targets[data.train])
        with torch.no_grad():
            dense.linear.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
            dense.linear.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    mods = [*base, dense] + ([Normalize()] if t_info.normalize else [])
    model = SentenceTransformer(modules=mods, device="cpu")
    model.max_seq_length = base.max_seq_length
    return model, dense


def _fit(model, data: _Texts, batch_size: int) -> dict:
    """Closeness to the teacher on the held-out texts and on a fixed slice of the training texts."""
    probe = data.train[:min(256, len(data.train))]
    return {"heldout": _closeness(model, [data.texts[i] for i in data.hold], data.targets[data.hold], batch_size)
            if len(data.hold) else None,
            "train": _closeness(model, [data.texts[i] for i in probe], data.targets[probe], batch_size)}


def _train(model, dense, data: _Texts, total: int, batch_size: int, lr: float, head_lr: float, seed: int,
           echo) -> tuple[list[float], float]:
    """``total`` AdamW steps of MSE to the teacher (warm-up then linear decay; the Dense layer at its
    own rate); returns (the loss of every step, seconds)."""
    import torch
    import torch.nn.functional as F
    train_texts = [data.texts[i] for i in data.train]
    per_epoch = math.ceil(len(data.train) / batch_size)
    head = {id(p) for p in dense.parameters()}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in head], "lr": lr},
                             {"params": list(dense.parameters()), "lr": head_lr}], weight_decay=0.01)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    tgt = torch.from_numpy(np.ascontiguousarray(data.targets[data.train], dtype=np.float32))
    rng = np.random.default_rng(seed + 1)
    losses: list[float] = []
    log_every = max(1, total // 10)
    prepare = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
    model.train()
    t1 = time.perf_counter()
    perm = rng.permutation(len(data.train))
    for step in range(total):
        pos = (step % per_epoch) * batch_size
        if step and pos == 0:
            perm = rng.permutation(len(data.train))
        idx = perm[pos:pos + batch_size]
        loss = F.mse_loss(model(prepare([train_texts[i] for i in idx]))["sentence_embedding"], tgt[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == total:
            echo(f"distill: step {step + 1}/{total}  loss {np.mean(losses[-log_every:]):.3e}  "
                 f"{(time.perf_counter() - t1) / (step + 1):.2f} s/step")
    model.eval()
    return losses, time.perf_counter() - t1


def distill(*, teacher: str = "all-mpnet-base-v2", student: str = "all-MiniLM-L6-v2", name: str = DISTILLED_NAME,
            sources=SOURCES, max_texts: int | None = 3000, holdout: int = 200, epochs: int = 1,
            steps: int | None = None, batch_size: int = 32, lr: float = 5e-5, head_lr: float = 1e-4,
            init: str = "lstsq", seed: int = 0, progress: bool = True,
            echo: Callable[[str], None] | None = None) -> dict:
    """Train ``student`` (+ a Dense projection) to mimic ``teacher``; save it as model ``name``.
    Returns the report that is also written to ``<model folder>/embpress-distill.json``."""
    _check_name(name)
    if init not in ("lstsq", "random"):
        raise EmbpressError(f"init must be lstsq or random, not {init!r}")
    if batch_size < 1 or epochs < 1 or (steps is not None and steps < 1) or holdout < 0:
        raise EmbpressError("batch size, epochs and steps must be at least 1 and holdout at least 0")
    quiet_third_party_logs()
    echo = echo or (lambda msg: log.info(msg))
    t_info, s_info = model_info(resolve_model(teacher)), model_info(resolve_model(student))
    if s_info.entry.variant:
        raise EmbpressError(f"the student must be a float32 model, not the variant {s_info.entry.name}")
    data = _texts(t_info, s_info, sources, max_texts, holdout, batch_size, seed, progress, echo)
    model, dense = _student(s_info, t_info, data, init, seed)
    before = _fit(model, data, batch_size)
    total = steps or epochs * math.ceil(len(data.train) / batch_size)
    losses, train_s = _train(model, dense, data, total, batch_size, lr, head_lr, seed, echo)
    after = _fit(model, data, batch_size)
    window = max(1, len(losses) // 10)
    dim_in, dim_out = data.start.shape[1], data.targets.shape[1]
    report = {
        "name": name, "teacher": t_info.entry.name, "student": s_info.entry.name, "dim": dim_out,
        "summary": f"{s_info.entry.name} + Dense {dim_in}→{dim_out} distilled from {t_info.entry.name} "
                   f"({len(data.train)} training texts, {total} steps)",
        "settings": {"sources": list(sources), "max_texts": max_texts, "holdout": len(data.hold), "epochs": epochs,
                     "steps": total, "batch_size": batch_size, "lr": lr, "head_lr": head_lr, "init": init,
                     "seed": seed, "loss": "mse", "teacher_weights_sha256": t_info.weights_sha256,
                     "student_weights_sha256": s_info.weights_sha256},
        "texts": {"train": len(data.train), "heldout": len(data.hold),
                  "per_source": {k: len(v) for k, v in data.chosen.items()}, "dropped_as_test_texts": data.dropped},
        "before": before, "after": after,
        "loss_first": float(np.mean(losses[:window])), "loss_last": float(np.mean(losses[-window:])),
        "losses": [round(x, 8) for x in losses],
        "seconds": {"targets": round(data.seconds, 1), "training": round(train_s, 1)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _save(model, name, report)
    return report


def _check_name(name: str) -> None:
    registered = {m.name for m in REGISTRY if m.source != "distilled"}
    if not name or "/" in name or "@" in name or name.startswith(".") or name in registered:
        raise EmbpressError(f"cannot name a distilled model {name!r}: use a plain folder name that is not "
                            f"a registered model ({', '.join(sorted(registered))})")


def _save(model, name: str, report: dict) -> None:
    """Write the student next to its report, replacing an earlier one only once it is complete."""
    dest = settings.cache_dir() / "models" / name
    tmp = dest.with_name(f"{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    (tmp / DISTILL_MARKER).write_text(json.dumps(report, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


def run_cli(args) -> int:
    """``embpress distill``: train, save, print the figures."""
    import sys
    say = (lambda msg: print(msg, file=sys.stderr, flush=True))
    r = distill(teacher=args.teacher, student=args.student, name=args.name, max_texts=args.max_texts or None,
                holdout=args.holdout, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                lr=args.lr, init=args.init, seed=args.seed, progress=not args.no_progress, echo=say)
    b, a = r["before"], r["after"]
    print(f"{r['name']}: {r['summary']}")
    print(f"  training loss (MSE)      {r['loss_first']:.3e} → {r['loss_last']:.3e}")
    if a["heldout"]:
        print(f"  held-out cosine to teacher {b['heldout']['cosine']:.4f} → {a['heldout']['cosine']:.4f} "
              f"({r['texts']['heldout']} texts; MSE {b['heldout']['mse']:.3e} → {a['heldout']['mse']:.3e})")
    print(f"  seconds: teacher targets {r['seconds']['targets']}, training {r['seconds']['training']}")
    print(f"  saved to {settings.cache_dir() / 'models' / r['name']}; use it as `embpress run -m {r['name']}`")
    return 0
