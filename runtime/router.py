"""`Router`: load a bundle, turn an image+question query into per-model utilities, pick a model.

    from lr_onnx import Router
    router = Router.load()                      # the bundle shipped in assets/
    decision = router.route(["receipt.png"], "What is the total?")
    decision.model, decision.candidates[0].mu

Sessions are created lazily on first use and shared across threads; the pool,
prices and preprocessing come from the bundle's manifest. No torch anywhere.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Unpack

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import BundleError, LrOnnxError, LrOnnxWarning, OptionError
from .features import QUERY_DIM, encode_raw_queries, n_words, query_features
from .options import RouteArgs, resolve_lambda, resolve_options
from .policy import choose, explore_rows
from .prefetch import prefetched
from .costs import query_costs
from .preprocess import DEFAULT_MAX_IMAGE_BYTES, load_tokenizer, prepare_query, tokenize
from .added_models import LocalPrior, memory_estimates, untrained_answer
from .memory import COLUMNS, Memory, global_means
from .manifest import IMAGE_ENCODER, ROUTER, TEXT_ENCODER
from .profiles import model_features, pool_features
from .sessions import BundleSessions, run
from .decision import Candidate, Decision, Prepared, RouteOptions, ranked_candidates  # noqa: F401  (Router's API)
from .validate import as_iterable, as_list, as_query, clean_question, integer

if TYPE_CHECKING:
    from .decisionlog import DecisionLog

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "bundle"


class Router:
    def __init__(self, bundle: Bundle, *, provider: str = "auto", threads: int | None = None, spinning: bool = False):
        self.bundle = bundle
        self.provider, self.threads, self.spinning = provider, threads, spinning
        m = bundle.manifest
        self.image_spec, self.text_spec = m.image, m.text
        self.pool, self.names = m.pool, m.model_names
        self._added = np.array([bool(p.extra.get("added_with")) for p in m.pool])  # models the network never saw
        self._priors = LocalPrior.of_pool(
            [(p.name, p.extra.get("added_with")) for p in m.pool], str(bundle.path)
        )  # their estimates' per-query prior, if fitted
        self.expected_cost = np.array([p.expected_cost_usd for p in m.pool], np.float64)
        self.model_feat = pool_features(m.pool)  # [K, W + 1] profile, cost
        per_query = any(p.output_tokens is not None and p.image_tokens for p in m.pool)
        self._pricing = [p.pricing() for p in m.pool] if per_query else None  # None: every model's constant
        self.default_lambda = m.lambdas.default
        self.presets = {k: v.lam for k, v in m.lambdas.presets.items()}
        self.space = m.profile_space
        self.coverage_threshold = None if m.coverage is None else m.coverage.threshold
        width = self.model_feat.shape[1] + (COLUMNS if m.memory is not None else 0)  # the memory adds its columns
        self.sessions = BundleSessions(
            bundle, {"query": QUERY_DIM, "model_feat": width}, provider=provider, threads=threads, spinning=spinning
        )
        self._memory: Memory | None = None
        self._memory_keys = self._tokenizer = None  # made on first use
        self._lock = threading.Lock()
        self.log: DecisionLog | None = None  # every decision appended to it (`start_log`)
        self._rng = np.random.default_rng()
        if (failed := bundle.parity_failure()) is not None:
            warnings.warn(failed, LrOnnxWarning, stacklevel=3)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        provider: str = "auto",
        threads: int | None = None,
        spinning: bool = False,
        verify: bool = True,
    ) -> "Router":
        """Load a bundle folder (None = the default bundle shipped in assets/); hashes are checked first."""
        return cls(
            load_bundle(DEFAULT_BUNDLE if path is None else path, verify=verify),
            provider=provider,
            threads=threads,
            spinning=spinning,
        )

    # ------------------------------------------------------------------ sessions (runtime.sessions.BundleSessions)
    def session(self, name: str, *, small: bool = False) -> Any:
        """The graph's session, created and checked on first use (`small`: its single-threaded twin)."""
        return self.sessions.get(name, small=small)

    def _session_for(self, name: str, rows: int) -> Any:
        return self.sessions.for_rows(name, rows)

    def bound_providers(self) -> dict[str, list[str]]:
        return self.sessions.bound_providers()

    @property
    def has_memory(self) -> bool:
        return self.bundle.manifest.memory is not None

    def memory(self) -> Memory | None:
        """The bundle's capability memory (runtime/memory.py), read and hash-checked on first use; None without one."""
        if self._memory is None and self.has_memory:
            with self._lock:
                if self._memory is None:
                    from .sessions import ort

                    mem = Memory.from_bundle(self.bundle)
                    # the keys as an OrtValue made once: fed as a numpy array, every search copied all N x d of them
                    self._memory_keys = ort().OrtValue.ortvalue_from_numpy(mem.keys)
                    self._memory = mem
        return self._memory

    def memory_search(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices) `[B, k]` of each query's nearest memory rows, by memory.onnx (the keys fed once as
        an OrtValue on the CPU). Needs a bundle with a memory."""
        mem = self.memory()
        assert mem is not None
        sess = self._session_for("memory", len(q))
        cpu = sess.get_providers()[0] == "CPUExecutionProvider"
        sims, idx = run(
            sess, {"query": np.ascontiguousarray(q, np.float32), "keys": self._memory_keys if cpu else mem.keys}
        )
        return sims, idx

    def memory_breadth(self) -> int:
        """How many neighbours memory.onnx returns: its k, fixed at export (at most the memory's rows). Needs a memory."""
        return int(self.memory_search(np.zeros((1, QUERY_DIM), np.float32))[0].shape[1])

    def memory_columns(self, q: np.ndarray, found: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
        """`[B, K, COLUMNS]` the memory's columns for feature rows `q` and the pool: the k nearest labelled queries
        (`found` by `memory_search`, searched here when not given), their outcomes gathered in numpy
        (`Memory.columns`). None without a memory."""
        mem = self.memory()
        if mem is None:
            return None
        found = self.memory_search(q) if found is None else found
        return mem.columns(None, self.names, prior=[p.prior for p in self.pool], found=found)

    def labelled(self, found: Any) -> np.ndarray | None:
        """`[B, K]` labelled outcomes per pool model among the neighbours `found` by `memory_search` (Thompson's n);
        None without a memory."""
        mem = self.memory()
        return None if mem is None or found is None else mem.labelled(found, self.names)

    def global_means(self) -> np.ndarray:
        """`[K]` each model's mean score over the labelled queries the router knows it from (`memory.global_means`)."""
        return global_means(self.memory(), self.names, [p.prior for p in self.pool])

    @property
    def trained(self) -> list[bool]:
        """`[K]` whether the network was trained with each pool model (False: added later with `models add`)."""
        return [not a for a in self._added]

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self.bundle.read(self.text_spec.tokenizer_file), self.text_spec)
        return self._tokenizer

    # ------------------------------------------------------------------ features
    def prepare(
        self,
        images: list[Any],
        question: str,
        *,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_request_bytes: int | None = None,
    ) -> "Prepared":
        """One query's CPU-side preprocessing, before any graph runs (`preprocess.prepare_query`). Separate from
        `encode` so a server can decode requests as they arrive while the previous batch is in the encoders. A router
        that reads no images (`Manifest.reads_images`) still decodes them (checks, sizes for costs) but makes no
        tensors: `encode` then reads each question as asked without its images (`features.without_images`) and the
        image encoder never runs."""
        return prepare_query(
            images,
            clean_question(question),
            self.image_spec,
            max_image_bytes=max_image_bytes,
            max_request_bytes=max_request_bytes,
            tensors=self.bundle.manifest.reads_images,
        )

    def encode(self, prepared: list["Prepared"]) -> np.ndarray:
        """Raw query features `[B, D_q]` of prepared queries: the text and image encoders once for the batch."""
        text, image = self.encode_raw(prepared)
        return query_features(text, image, [len(p.tensors) for p in prepared], [n_words(p.question) for p in prepared])

    def encode_raw(self, prepared: list["Prepared"]) -> tuple[np.ndarray, np.ndarray]:
        """(text vectors `[B, 384]`, pooled image vectors `[B, 1280]`): the encoders' outputs before `query_features`
        (export parity compares them with PyTorch's)."""

        def text(questions: list[str]) -> np.ndarray:
            ids, mask = tokenize(self.tokenizer(), questions)
            return np.asarray(run(self.session(TEXT_ENCODER), {"input_ids": ids, "attention_mask": mask})[0])

        def image(tensors: Any) -> np.ndarray:
            return np.asarray(run(self.session(IMAGE_ENCODER), {"pixels": np.stack(tensors)})[0])

        return encode_raw_queries([p.question for p in prepared], [list(p.tensors) for p in prepared], text, image)

    def features(self, queries: list[tuple[list[Any], str]], meta: list[Any] | None = None) -> np.ndarray:
        """Raw query features `[B, D_q]` for (images, question) pairs; `meta` (if given) collects each query's
        (question, original image sizes), which per-query expected costs need (`decide`)."""
        prepared = [self.prepare(images, q) for images, q in queries]
        if meta is not None:
            meta.extend(p.meta for p in prepared)
        return self.encode(prepared)

    # ------------------------------------------------------------------ scoring and routing
    def query_costs(self, meta: list[Any] | None, n: int) -> np.ndarray:
        """`[B, K]` expected USD per query and model (`runtime.costs.query_costs`)."""
        return query_costs(self._pricing, self.expected_cost, meta, n)

    def score_features(
        self, q: np.ndarray, avail: np.ndarray, c_hat: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The router graph on feature rows; `c_hat` `[B, K]` (normalised per-query expected costs) replaces the
        per-model constant in the model features' cost column."""
        B = q.shape[0]
        q = np.ascontiguousarray(q, np.float32)
        mem = self.memory()
        found = None if mem is None else self.memory_search(q)  # kept for --explain (which setting read each row)
        cols = self.memory_columns(q, found)
        mf = model_features(self.model_feat, c_hat, cols, rows=B)
        mu, sigma, delta, mt = run(self._session_for(ROUTER, B), {"query": q, "model_feat": mf, "avail": avail})
        if (
            mem is not None and cols is not None and self._added.any()
        ):  # models the network never trained on: the memory's answer
            est = memory_estimates(cols, self.names, self.global_means(), mem.settings.kappa, self._priors)
            mu, mt, delta = untrained_answer(mu, mt, delta, est, self._added)
        for label, v in (("mu", mu), ("sigma", sigma), ("mu_tilde", mt)):
            bad = avail & ~np.isfinite(v)
            if bad.any():  # never a decision: a broken graph or profile must not pick "the first model"
                k = int(np.flatnonzero(bad.any(axis=0))[0])
                raise BundleError(
                    f"{self.bundle.path}: the router produced a non-finite {label} for model "
                    f"{self.names[k]!r}; the bundle's graph or profiles are broken"
                )
        return {"mu": mu, "sigma": sigma, "delta": delta, "mu_tilde": mt, "memory": cols, "memory_found": found}

    def score(self, images: Any, question: str, models: str | Iterable[str] | None = None) -> dict[str, Any]:
        """Per-model mu, sigma, mu_tilde, expected cost and utility at the default lambda (available models only)."""
        d = self.route(images, question, models=models)
        return {
            c.name: {
                "mu": c.mu,
                "sigma": c.sigma,
                "mu_tilde": c.mu_tilde,
                "expected_cost": c.expected_cost,
                "utility": c.utility,
            }
            for c in sorted(d.candidates, key=lambda c: self.names.index(c.name))
        }

    def resolve_lambda(self, lam: float | str | None) -> float:
        """None -> the bundle's default; a preset name -> its value; a number passes through (`runtime.options`)."""
        return resolve_lambda(lam, self.presets, self.default_lambda)

    def route(
        self, images: Any, question: str, *, options: RouteOptions | None = None, **kw: Unpack[RouteArgs]
    ) -> Decision:
        """Route one query (`route_many`); the routing options (`runtime.options.RouteArgs`) by keyword."""
        return self.route_many([(as_list(images), question)], options=options, **kw)[0]

    def route_many(
        self, queries: Any, *, batch_size: int = 64, options: RouteOptions | None = None, **kw: Unpack[RouteArgs]
    ) -> list[Decision]:
        """Route (images, question) pairs in batches; one Decision per query, in order. The options are resolved
        here (`options`), or were resolved once by the caller and given as `options` (then give no other option)."""
        if options is not None and any(v is not None and v is not False for v in kw.values()):
            raise OptionError("give either options= or the individual routing options, not both")
        opts = options if options is not None else self.options(**kw)
        batch_size = integer(batch_size, "batch_size", lo=1, hi=1 << 20)
        queries = [as_query(x) for x in as_iterable(queries)]
        chunks = [queries[s : s + batch_size] for s in range(0, len(queries), batch_size)]
        out: list[Decision] = []
        for _, prepared in prefetched(chunks, lambda chunk: [self.prepare(im, q) for im, q in chunk]):
            out += self.route_prepared(prepared, opts)
        return out

    def route_prepared(self, prepared: list[Prepared], opts: "RouteOptions") -> list[Decision]:
        """Decisions for prepared queries (`prepare`), one options for all: the encoders and ONE router call."""
        if not prepared:
            return []
        return self.decide(self.encode(prepared), [opts] * len(prepared), meta=[p.meta for p in prepared])

    def options(self, **kw: Unpack[RouteArgs]) -> RouteOptions:
        """Validate one request's routing options once (`runtime.options.resolve_options`)."""
        return resolve_options(self.names, self.presets, self.default_lambda, **kw)

    def start_log(
        self,
        folder: str | os.PathLike[str],
        *,
        content: bool = False,
        max_file_mb: float | None = None,
        keep_files: int = 0,
    ) -> "DecisionLog":
        """Log every decision from now on into `folder` (`runtime.decisionlog`); returns the log (close it at the end:
        `close` waits for the last records to be written)."""
        from .decisionlog import DEFAULT_MAX_FILE_MB, DecisionLog

        if self.log is not None:
            self.log.close()
        self.log = DecisionLog(
            folder, content=content, max_file_mb=max_file_mb or DEFAULT_MAX_FILE_MB, keep_files=keep_files
        )
        return self.log

    def seed(self, seed: int) -> None:
        """Make exploration's draws reproducible (benchmarks, tests)."""
        self._rng = np.random.default_rng(seed)

    def log_ids(self) -> tuple[str, str]:
        """(bundle, space): short digests a log record names (`Bundle.digest`, `Bundle.space_digest`); only records
        in the bundle's own space can join its memory."""
        return self.bundle.digest[:16], self.bundle.space_digest[:16]

    def decide(
        self,
        q: np.ndarray,
        opts: list["RouteOptions"],
        timings: dict[str, Any] | None = None,
        meta: list[Any] | None = None,
    ) -> list[Decision]:
        """Decisions for feature rows `q [B, D_q]`, each row with its own options, in ONE router call
        (how the server batches requests that ask for different pools and lambdas). `meta` (from `features`)
        gives per-query expected costs; without it every model costs its per-model constant."""
        t0 = time.perf_counter()
        avail = np.stack([o.avail for o in opts])
        lam = np.array([o.lam for o in opts], np.float64)
        cost = self.query_costs(meta, len(q))
        for i, o in enumerate(opts):  # a per-query budget: models whose expected cost for THIS query exceeds it
            if o.max_cost is not None:
                within = avail[i] & (cost[i] <= o.max_cost)
                if not within.any():
                    raise OptionError(
                        f"no model's expected cost fits max_cost {o.max_cost:g} USD for this query "
                        f"(cheapest available: {cost[i][avail[i]].min():.3g})"
                    )
                avail[i] = within
        c_hat = cost / self.space.cost_scale
        sc = self.score_features(q, avail, c_hat)
        from .explain import explain
        from .profiles import centroid_similarity

        sims = (
            centroid_similarity(q, self.space.centroids)
            if self.coverage_threshold is not None or self.log is not None
            else None
        )
        cover = self.coverage(q, None if sc["memory"] is None else sc["memory"][:, 0, 2], sims=sims)
        choice = choose(sc["mu_tilde"], c_hat, avail, lam)
        prop = np.ones(len(q))
        if any(o.explore is not None for o in opts):
            with self._lock:  # one generator, shared by the threads of a server
                prop = explore_rows(
                    [o.explore for o in opts],
                    choice,
                    sc["mu_tilde"],
                    sc["sigma"],
                    c_hat,
                    avail,
                    lam,
                    self._rng,
                    self.labelled(sc["memory_found"]),
                )
        out = []
        for i, o in enumerate(opts):
            cands = ranked_candidates(
                self.names, {k: sc[k][i] for k in ("mu", "sigma", "mu_tilde")}, cost[i], c_hat[i], avail[i], o.lam
            )
            found = sc["memory_found"]
            why = (
                explain(
                    self,
                    q[i],
                    cands,
                    None if sc["memory"] is None else sc["memory"][i],
                    None if found is None else (found[0][i : i + 1], found[1][i : i + 1]),
                )
                if o.explain
                else {}
            )
            out.append(
                Decision(
                    self.names[choice[i]] if choice[i] >= 0 else None,
                    float(o.lam),
                    cands,
                    tuple(n for k, n in enumerate(self.names) if not avail[i, k]),
                    why,
                    cover[i],
                    propensity=float(prop[i]),
                )
            )
        if self.log is not None and sims is not None:  # (sims are computed whenever a log is attached)
            from .decisionlog import log_decisions

            out = log_decisions(self, out, q, sims, opts, meta)
        if timings is not None:
            timings["router"] = timings.get("router", 0.0) + time.perf_counter() - t0
        return out

    def decide_each(
        self,
        q: np.ndarray,
        opts: list["RouteOptions"],
        timings: dict[str, Any] | None = None,
        meta: list[Any] | None = None,
    ) -> list[Any]:
        """`decide` for batches of independent requests: a row whose own options fail (no model's expected cost
        fits its max_cost) gets its error in its place, and the other rows keep their decisions. The rows are
        encoded already, so a failure costs router calls, never the encoders again."""
        try:
            return self.decide(q, opts, timings, meta)
        except LrOnnxError:
            out: list[Any] = []
            for i, o in enumerate(opts):
                try:
                    out.append(self.decide(q[i : i + 1], [o], meta=None if meta is None else [meta[i]])[0])
                except LrOnnxError as e:
                    out.append(e)
            return out

    def coverage(
        self, q: np.ndarray, closeness: np.ndarray | None = None, sims: np.ndarray | None = None
    ) -> list[dict[str, Any] | None]:
        """Per row: the query's coverage (`runtime.explain.coverage`)."""
        from .explain import coverage

        return coverage(self, q, closeness, sims)
