"""What `lamstream simulate` reports beyond the arms: the off-policy check and the curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.policy.ope import evaluate, policy_target, slate_epsilon
from model.policy.policies import parse_policy
from stream.feedback.source import load_feedback


def ope_check(frozen_feedback: Path, random_online: float) -> dict[str, Any]:
    """Off-policy estimate of the random arm's policy (uniform slates from the pool) from the
    frozen arm's logged feedback, next to the value the random arm measured online: what
    `lamstream evaluate policy --feedback FILE --policy epsilon_greedy:1.0` prints."""
    spec = "epsilon_greedy:1.0"
    policy = parse_policy(spec)
    est = evaluate(load_feedback(str(frozen_feedback)), policy_target(policy),
                   bootstrap=300, slate_eps=slate_epsilon(policy))
    out: dict[str, Any] = {"feedback": str(frozen_feedback), "policy": spec,
                           "random_online": random_online}
    for key in ("ips", "snips", "dr", "slate_ips", "slate_snips"):
        e = est[key]
        out[key] = {**e, "contains_online": e["ci_low"] <= random_online <= e["ci_high"]}
    return out


def plot(result: dict[str, Any], per: int, users: int, path: Path) -> None:
    """The learning curve (mean reward per window of `per` rounds) and the exploratory
    fraction, as a PNG."""
    import matplotlib  # the backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1.3]})
    styles = {"learning": ("tab:blue", "-o"), "frozen": ("tab:gray", "--s"),
              "random": ("tab:red", ":^")}
    for arm, res in result["arms"].items():
        xs = [(i + 1) * per for i in range(len(res["window_reward"]))]
        color, style = styles.get(arm, ("k", "-"))
        ax1.plot(xs, res["window_reward"], style, color=color, label=arm)
        ax2.plot(xs, res["explored_fraction"], style, color=color, label=arm)
    ax1.set_ylabel("mean reward per recommendation")
    ax1.set_title(f"lamstream simulate: {users} concurrent users, window = {per} rounds"
                  f" ({per * users} recommendations)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.set_ylabel("exploratory slates")
    ax2.set_xlabel("round (one event per user per round)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
