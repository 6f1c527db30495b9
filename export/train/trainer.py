"""`lr-onnx train`: fit LatentRouter on a native dataset (method.md §3-4), straight top to bottom.

    data -> split (fit / cal / val / test) -> features (cached) -> profiles from R_cal
    -> model -> AdamW epochs over R_fit with pool dropout -> early stopping on the
    validation selected utility -> RUN_DIR (safetensors weights + JSON, no pickle)

Same seed, same result: CPU training is deterministic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...runtime.errors import DataError
from ...runtime.features import HAS_IMAGE_COL, TEXT_DIM, without_images
from ...runtime.memory import COLUMNS
from ...version import __version__
from ..data.format import RoutingData, load_dataset
from ...runtime.profiles import ProfileSpace, model_features
from .slices import FEW_SHOT_DRAWS, SLICES, build_profiles, few_shot_profiles
from ..data.splits import SPLIT_SEED, check_trainable, ensure_splits, split_masks
from .rundir import CONFIG, RunDir, WEIGHTS
from .losses import losses, WeightAverage


@dataclass
class TrainConfig:
    setting: str = "performance"  # performance (w_c = 0) or cost (w_c = 0.03)
    epochs: int = 20  # method.md: 10 / 3; the weight average needs a few more epochs to settle
    patience: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    clip_norm: float = 5.0
    seed: int = SPLIT_SEED
    slices: int = SLICES  # k-means slices; capped at |R_cal| / 50 (method.md says 8, see `SlicePrior`)
    slice_prior: bool = True  # give the network each model's score on the query's slices (lr-onnx addition)
    memory: bool = True  # the capability memory (runtime/memory.py, issue 21); settings chosen on validation
    memory_per_source: bool = True  # on a merge, the memory's k, kappa, tau per source (export.train.memory)
    memory_align: bool = True  # may stretch the memory's space toward the outcomes, if validation's test says so
    pool_dropout: float = 0.5  # §3.4: share of rows that get a random sub-pool
    few_shot: float = 0.25  # §3.4: per-batch chance that a model's profile is a small-sample bootstrap
    text_only: bool = False  # ablation: zero the image part of the query features
    layers: int = 2  # 0 = no-communication ablation (A0)
    hidden: int = 48  # H (method.md §2.6)
    query_tokens: int = 4  # Q
    dropout: float = 0.1
    std_floor: float = 0.5  # floor each block's feature std at this quantile of the block (0 = method.md)
    ema: float = 0.99  # validate and keep an exponential moving average of the weights (0 = off)
    nll_sigma_floor: float = 0.05  # method.md clamps sigma at 1e-4 in the NLL; on 0/1 outcomes sigma then
    #                                collapses and the NLL explodes (dcrouter: 0.5 -> 6,800 by epoch 13)
    loss_weights: dict = field(
        default_factory=lambda: {"nll": 1.0, "pair": 0.35, "list": 0.65, "util": 0.25, "mean": 0.10, "res": 0.05}
    )

    @property
    def w_c(self) -> float:
        return 0.03 if self.setting == "cost" else 0.0

    @classmethod
    def of_run(cls, train: dict) -> "TrainConfig":  # config.json's `train` entry, keys it does not know left out
        return cls(**{k: v for k, v in train.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainingSet:
    """Everything the model and the baselines share: features, outcomes, split, profiles."""

    data: RoutingData
    q: np.ndarray  # [N, D_q] raw query features
    masks: dict  # train / val / test / fit / cal row masks
    space: ProfileSpace
    raw_profiles: np.ndarray  # [K, S + 7]
    e_bar: np.ndarray  # [K] expected cost per model (calib_mean)
    q_mean: np.ndarray
    q_std: np.ndarray
    cost_model: list | None = None  # per model: prices, image-token rule, output tokens (runtime.costs)
    row_cost: np.ndarray | None = None  # [N, K] predicted USD per query (None: per-model constants only)
    memory: object | None = None  # runtime.memory.Memory of the training rows (None: no memory)
    mem_cols: np.ndarray | None = None  # [N, K, 3] memory columns, training rows leave-one-out
    memory_size: float = 1.0
    memory_align: float = 0.0  # strength of the memory space's outcome-aligned stretch (0: PCA alone)

    def attach_memory(self, settings, size: float = 1.0, per_source: dict | None = None, align: float = 0.0) -> None:
        """Build the run's capability memory with these settings (`export.train.memory`) and every row's columns."""
        from .memory import fit_memory, memory_columns

        self.memory = fit_memory(self, settings, size, per_source=per_source, align=align)
        self.memory_size, self.memory_align = size, align
        self.mem_cols = memory_columns(self, self.memory)

    @property
    def cost_hat(self) -> np.ndarray:
        """[K] normalised expected cost c_hat = e_bar / s_c (the per-model constant)."""
        return self.e_bar / self.space.cost_scale

    def utility(self, w_c: float) -> np.ndarray:
        """[N, K] what routing a query to a model earns (§4.1): its score less w_c x its cost / the cost scale."""
        Y, C = (np.nan_to_num(a).astype(np.float32) for a in (self.data.Y, self.data.C))
        return Y - w_c * C / self.space.cost_scale

    def c_hat_rows(self, rows: np.ndarray) -> np.ndarray:
        """[n, K] normalised expected cost of each query: predicted per query where a model has a cost rule,
        the per-model constant otherwise. The router's cost input and the policy both use it."""
        if self.row_cost is None:
            return np.broadcast_to(self.cost_hat, (len(rows), len(self.e_bar))).astype(np.float32)
        return (self.row_cost[rows] / self.space.cost_scale).astype(np.float32)

    def feat_rows(self, rows: np.ndarray) -> np.ndarray:
        """[n, K, P_in] model features per query: the profiles, the memory's columns (if any), then that query's
        normalised expected cost."""
        return model_features(
            self.model_feat(), self.c_hat_rows(rows), None if self.mem_cols is None else self.mem_cols[rows]
        )

    def model_feat(self) -> np.ndarray:
        """[K, P_in]: each model's standardised profile, then its normalised expected cost (same for every row)."""
        return self.space.model_feat(self.raw_profiles, self.e_bar)


def run_features(data: RoutingData, text_only: bool, *, progress: bool = True) -> np.ndarray:
    """Query features `[N, D_q]` as a run's router sees them: a text-only run (`--text-only`, or chosen by
    `export.train.modality`) sees each question as if asked without its images (`runtime.features.without_images`).
    Training, `models propose` and `models add` all go through here, so their slices agree."""
    from .encoding import encode_dataset

    q = encode_dataset(data, progress=progress)
    return without_images(q) if text_only else q


def load_training_set(
    data_dir: str | Path,
    *,
    slices: int = SLICES,
    text_only: bool = False,
    progress: bool = True,
    exclude: tuple[str, ...] = (),
) -> TrainingSet:
    """Load, split, encode (cached) and build the profiles; `exclude` drops models from the pool entirely."""
    data = load_dataset(data_dir)
    if exclude:
        data = data.without(exclude)
    table = ensure_splits(data)
    masks = split_masks(data, table)
    check_trainable(data, masks, data_dir)
    q = run_features(data, text_only, progress=progress)
    fit, cal = np.flatnonzero(masks["fit"]), np.flatnonzero(masks["cal"])
    assert not set(fit) & set(cal), "R_cal and R_fit must be disjoint"
    train = np.flatnonzero(masks["train"])
    space, raw, e_bar = build_profiles(q, data.Y, data.C, data.A, data.Lat, data.Tok, train, cal, slices)
    q_mean = q[train].mean(axis=0)
    q_std = q[train].std(axis=0)
    q_std[q_std < 1e-12] = 1.0
    from .pricing import cost_entries, image_sizes, needs_sizes, row_costs

    sizes = image_sizes(data) if needs_sizes(data) else None
    entries = cost_entries(data, cal, sizes)
    return TrainingSet(
        data, q, masks, space, raw, e_bar, q_mean, q_std, entries, row_costs(data, entries, sizes, e_bar)
    )


def attach_run_memory(P: TrainingSet, run_cfg: dict) -> TrainingSet:
    """Give `P` the memory a run was trained with (settings and size from its config.json; rebuilt, deterministic)."""
    mem = run_cfg.get("memory")
    if mem:
        from ...runtime.memory import MemorySettings

        per_source = {n: MemorySettings.from_dict(st) for n, st in (mem.get("per_source") or {}).items()}
        settings, size, align = MemorySettings.from_dict(mem["settings"]), float(mem.get("size", 1.0)), mem.get("align")
        P.attach_memory(settings, size, per_source, float(align or 0.0))
    return P


def floored_std(q_std: np.ndarray, quantile: float) -> np.ndarray:
    """Per-dimension std for the router's standardisation, floored at a quantile of its block (text, image).

    EfficientNet features span 200x in std (5e-4 to 0.1); dividing by the smallest amplifies
    dimensions that carry little but noise. Flooring at the block median improves routing on the
    demo benchmark (README, "Routing quality"); the raw features and the baselines are unchanged.
    """
    out = q_std.astype(np.float32).copy()
    if quantile > 0:
        for block in (slice(0, TEXT_DIM), slice(TEXT_DIM, HAS_IMAGE_COL)):
            out[block] = np.maximum(out[block], np.quantile(out[block], quantile))
    return out


def train(
    data_dir: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    prepared: TrainingSet | None = None,
    progress: bool = True,
) -> dict:
    """Train and write RUN_DIR; returns the training summary."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from .model import LatentRouter, RouterConfig

    t0 = time.perf_counter()
    P = prepared or load_training_set(data_dir, slices=cfg.slices, text_only=cfg.text_only, progress=progress)
    d = P.data
    selection = None
    if cfg.memory and P.memory is None:
        from .memory import choose_memory

        selection = choose_memory(P, per_source=cfg.memory_per_source, align=cfg.memory_align)
    elif not cfg.memory:
        P.memory, P.mem_cols = None, None
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    rcfg = RouterConfig(
        query_dim=P.q.shape[1],
        model_dim=P.feat_rows(np.arange(1)).shape[-1],
        layers=cfg.layers,
        hidden=cfg.hidden,
        query_tokens=cfg.query_tokens,
        dropout=cfg.dropout,
        slices=P.space.S if cfg.slice_prior else 0,
        memory=COLUMNS if P.memory is not None else 0,
    )
    net = LatentRouter(rcfg)
    net.q_mean.copy_(torch.from_numpy(P.q_mean))
    net.q_std.copy_(torch.from_numpy(floored_std(P.q_std, cfg.std_floor)))
    if rcfg.slices:  # the frozen slices and profile standardisation, inside the graph
        cols = slice(1, P.space.S + 1)
        net.slice_prior.centroids.copy_(torch.from_numpy(P.space.centroids))
        net.slice_prior.score_mean.copy_(torch.from_numpy(P.space.mean[cols]))
        net.slice_prior.score_std.copy_(torch.from_numpy(P.space.std[cols]))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    Y = np.nan_to_num(d.Y).astype(np.float32)
    U = P.utility(cfg.w_c)
    fit = np.flatnonzero(P.masks["fit"] & d.A.any(axis=1))
    val = np.flatnonzero(P.masks["val"] & d.A.any(axis=1))
    boot = torch.from_numpy(few_shot_profiles(P, cfg.seed)) if cfg.few_shot > 0 else None
    ema = WeightAverage(net, cfg.ema) if cfg.ema > 0 else None
    rng = np.random.default_rng(cfg.seed)
    best, best_state, bad, curves = -np.inf, None, 0, []
    bar = tqdm(range(cfg.epochs), desc="training", disable=not progress, leave=False)
    for epoch in bar:
        net.train()
        order = rng.permutation(fit)
        sums: dict[str, float] = {}
        for s in range(0, len(order), cfg.batch_size):
            rows = order[s : s + cfg.batch_size]
            avail = torch.from_numpy(d.A[rows].copy())
            drop = rng.random(len(rows)) < cfg.pool_dropout  # §3.4 pool dropout
            keep = rng.random(avail.shape) < 0.5
            for i in np.flatnonzero(drop):
                k = keep[i] & d.A[rows[i]]
                if k.sum() >= 2:
                    avail[i] = torch.from_numpy(k)
            q = torch.from_numpy(P.q[rows])
            mf = torch.from_numpy(P.feat_rows(rows))  # [B, K, P_in], per-query cost
            if boot is not None:  # §3.4 few-shot profiles
                swap = rng.random(d.k) < cfg.few_shot
                draw = rng.integers(0, FEW_SHOT_DRAWS, d.k)
                if swap.any():
                    thin = boot[torch.arange(d.k), torch.from_numpy(draw)]  # [K, P_in]
                    sw = torch.from_numpy(swap)
                    W = P.space.width
                    mf[:, sw, :W] = thin[sw, :W]  # the profile, not memory or cost
            mu, sigma, delta, mt = net(q, mf, avail)
            loss, terms = losses(
                mu,
                sigma,
                delta,
                mt,
                torch.from_numpy(Y[rows]),
                torch.from_numpy(U[rows]),
                avail,
                torch.from_numpy(P.c_hat_rows(rows)),
                cfg.w_c,
                cfg.loss_weights,
                cfg.nll_sigma_floor,
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_norm)
            opt.step()
            if ema is not None:
                ema.update(net)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(rows)
        if ema is not None:
            live = {k: v.detach().clone() for k, v in net.state_dict().items()}
            net.load_state_dict(ema.averaged())
        v_util = validation_utility(net, P, val, U, cfg.w_c)
        curves.append({"epoch": epoch + 1, "val_utility": v_util, **{k: v / len(fit) for k, v in sums.items()}})
        bar.set_postfix(
            loss=f"{sum(cfg.loss_weights[k] * v for k, v in sums.items()) / len(fit):.3f}", val=f"{v_util:.4f}"
        )
        if v_util > best + 1e-9:
            best, bad = v_util, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        if ema is not None:
            net.load_state_dict(live)
        if bad >= cfg.patience:
            break
    bar.close()
    net.load_state_dict(best_state)
    blend = choose_blend(net, P, val) if rcfg.memory else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_splits(d, directory=out)  # the split this run used, for the record
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / WEIGHTS))
    summary = {
        "best_val_utility": best,
        "epochs_run": len(curves),
        "seconds": time.perf_counter() - t0,
        "train_rows": int(len(fit)),
        "val_rows": int(len(val)),
        "blend": blend["chosen"] if blend else None,  # the network's strength, and validation as the router routes it
        "val_utility_routed": validation_utility(net, P, val, U, cfg.w_c) if blend else best,
        "memory_align": P.memory_align if P.memory is not None else None,
    }
    from .memory import config_entry

    memory = config_entry(P, blend) if P.memory is not None else None
    run = RunDir(out)
    if selection is not None:
        run.write_json("memory_selection.json", selection, indent=1)
    run.write_json(
        CONFIG,
        {
            "lr_onnx_version": __version__,
            "data": str(Path(data_dir).resolve()),
            "router": rcfg.to_dict(),
            "train": asdict(cfg),
            "memory": memory,
            "summary": summary,
        },
    )
    run.write_profiles(
        {
            "models": d.models,
            "space": P.space.to_dict(),
            "raw_profiles": P.raw_profiles.tolist(),
            "e_bar": P.e_bar.tolist(),
            "cost_estimator": "calib_mean",
            "cost_model": P.cost_model,
        }
    )
    run.write_json("curves.json", curves)
    from .encoding import ENCODER_VERSION, IMAGE_SPEC, TEXT_SPEC

    run.write_json(
        "preprocessing.json",
        {"encoder_version": ENCODER_VERSION, "image": IMAGE_SPEC.to_dict(), "text": TEXT_SPEC.to_dict()},
    )
    return summary


def load_router(run_dir: str | Path):
    """(LatentRouter in eval mode, run config) from a run folder written by `train`."""
    from safetensors.torch import load_file

    from .model import LatentRouter, RouterConfig

    run = RunDir.of(run_dir)
    if not run.trained:
        raise DataError(f"{run.path}: not a run folder (needs {WEIGHTS} and {CONFIG} from lr-onnx train)")
    cfg = run.config()
    net = LatentRouter(RouterConfig.from_dict(cfg["router"]))
    net.load_state_dict(load_file(str(run.weights)))
    return net.eval(), cfg


def predict(
    net,
    P: TrainingSet,
    rows: np.ndarray,
    avail: np.ndarray | None = None,
    batch: int = 512,
    with_mu: bool = False,
    model_feat: np.ndarray | None = None,
    mem_cols: np.ndarray | None = None,
):
    """mu_tilde and sigma `[n, K]` for the given rows (eval mode, no grad); mu too with `with_mu`.
    `model_feat` `[K, P_in]` replaces the run's own pool (with `avail` to match, and `mem_cols` `[n, K, 3]` when the
    router has a memory), e.g. after adding a model."""
    import torch

    net.eval()
    A = P.data.A[rows] if avail is None else avail
    outs_mt, outs_sig, outs_mu = [], [], []
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            r = rows[s : s + batch]
            if model_feat is None:
                mf = P.feat_rows(r)
            else:
                mf = model_features(
                    model_feat, None, None if mem_cols is None else mem_cols[s : s + batch], rows=len(r)
                )
            mu, sigma, delta, mt = net(
                torch.from_numpy(P.q[r]), torch.from_numpy(mf), torch.from_numpy(np.ascontiguousarray(A[s : s + batch]))
            )
            outs_mt.append(mt.numpy())
            outs_sig.append(sigma.numpy())
            outs_mu.append(mu.numpy())
    out = np.concatenate(outs_mt), np.concatenate(outs_sig)
    return (*out, np.concatenate(outs_mu)) if with_mu else out


BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_blend(net, P: TrainingSet, val: np.ndarray) -> dict:
    """Set how far the network may correct the memory (`MemoryBlend.blend`) to the value that routes validation best
    (score at lambda 0 + nAUC); 0 is the memory alone, so on small or noisy data the router is never worse than its
    memory on validation. Returns every value's validation numbers and the one kept."""
    from .memory import routing_value

    trials = []
    for b in BLENDS:
        net.memory.blend.fill_(b)
        s0, na = routing_value(predict(net, P, val)[0], P, val)
        trials.append({"blend": b, "val_score_at_lambda0": s0, "val_nauc": na})
    best = max(trials, key=lambda t: (t["val_score_at_lambda0"] + t["val_nauc"], t["blend"]))
    net.memory.blend.fill_(best["blend"])
    return {"chosen": best["blend"], "trials": trials}


def validation_utility(net, P: TrainingSet, rows: np.ndarray, U: np.ndarray, w_c: float) -> float:
    """V = mean utility of the routed model on validation rows (§4.3), cost term included."""
    return float(routed_utility(net, P, rows, U, w_c).mean())


def routed_utility(net, P: TrainingSet, rows: np.ndarray, U: np.ndarray, w_c: float) -> np.ndarray:
    """Each row's utility `U` of the model the router picks at lambda = w_c (rows with no model available left out)."""
    from ...runtime.policy import choose

    mt, _ = predict(net, P, rows)
    choice = choose(mt, P.c_hat_rows(rows), P.data.A[rows], w_c)
    ok = choice >= 0
    return U[rows[ok], choice[ok]]
