"""What training minimises (method.md §5: the NLL, ranking, utility and pool-dropout terms), and the weight average
that early stopping compares."""

from __future__ import annotations


class WeightAverage:
    """Bias-corrected exponential moving average of the weights (as Adam corrects its moments).

    A plain EMA started from the initial weights keeps decay**t of them: with decay 0.99 and the ~43
    steps of one epoch on 6,000 demo queries, 65% of each averaged weight was still the random
    initialisation, so early stopping compared mostly-untrained snapshots and could keep one. Here the
    average starts from zero and is divided by 1 - decay**t: a weighted mean of the trained weights only.
    """

    def __init__(self, net, decay: float):
        self.net, self.decay, self.steps = net, decay, 0
        self.sums = {k: v.detach().clone().zero_() for k, v in net.named_parameters()}

    def update(self, net) -> None:
        self.steps += 1
        for k, v in net.named_parameters():
            self.sums[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    def averaged(self) -> dict:
        """A full state dict: averaged parameters, the live buffers (constants such as the standardisation)."""
        scale = 1.0 / (1.0 - self.decay ** max(self.steps, 1))
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        state.update({k: v * scale for k, v in self.sums.items()})
        return state


def losses(mu, sigma, delta, mu_t, y, u, avail, c_hat, w_c: float, weights: dict, sigma_floor: float = 1e-4):
    """The six loss terms of §4.2 as masked means (an empty set contributes 0); sigma is clamped at
    `sigma_floor` inside the NLL only (the model's own sigma output is untouched)."""
    import torch

    om = avail.float()
    n = om.sum().clamp(min=1.0)
    s = mu_t - w_c * c_hat  # route score [B, K]
    sig = sigma.clamp(min=sigma_floor)
    z = (y - mu) / sig
    l_nll = ((0.5 * z * z + torch.log(sig)) * om).sum() / n
    # pairwise ranking over ordered pairs of available models
    ds = s.unsqueeze(2) - s.unsqueeze(1)  # [B, K, K] s_j - s_k
    target = (u.unsqueeze(2) > u.unsqueeze(1)).float()
    pm = (avail.unsqueeze(2) & avail.unsqueeze(1)).float()
    eye = torch.eye(s.shape[1], device=s.device).unsqueeze(0)
    pm = pm * (1 - eye)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ds, target, reduction="none")
    l_pair = (bce * pm).sum() / pm.sum().clamp(min=1.0)
    # listwise: soft target from utilities at temperature 0.05
    NEG = -1e4
    row = avail.any(dim=1).float()
    tgt = torch.softmax(torch.where(avail, u / 0.05, torch.full_like(u, NEG)), dim=1)
    logp = torch.log_softmax(torch.where(avail, s, torch.full_like(s, NEG)), dim=1)
    l_list = (-(tgt * logp * om).sum(dim=1) * row).sum() / row.sum().clamp(min=1.0)
    l_util = (((s - u) ** 2) * om).sum() / n
    l_mean = (((mu - y) ** 2) * om).sum() / n
    l_res = ((delta**2) * om).sum() / n
    terms = {"nll": l_nll, "pair": l_pair, "list": l_list, "util": l_util, "mean": l_mean, "res": l_res}
    return sum(weights[k] * v for k, v in terms.items()), terms
