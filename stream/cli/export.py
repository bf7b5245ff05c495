"""`lamstream export stats`: aggregate statistics of feedback, optionally differentially private."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.cli._common import FeedbackOpt, JsonOpt, command, errors
from stream.feedback.source import load_feedback
from stream.feedback.stats_export import export_stats

export_app = typer.Typer(no_args_is_help=True,
                         help="Feedback aggregates, optionally differentially private.")


@command(export_app, "stats")
def export_stats_command(
    feedback: FeedbackOpt,
    epsilon: Annotated[float | None, typer.Option(
        help="Privacy budget of this export; unset: exact values, no privacy.")] = None,
    delta: Annotated[float, typer.Option(
        help="With --epsilon: chance that a name (version, policy, type, item) only one user "
        "contributed to is shown; sets the histograms' suppression thresholds.")] = 1e-6,
    max_per_user: Annotated[int, typer.Option(
        help="With --epsilon: records kept per user_key (picked by a hash of rec_id).")] = 20,
    max_reward: Annotated[float, typer.Option(
        help="With --epsilon: each record's reward is clamped to [0, this].")] = 5.0,
    top: Annotated[int, typer.Option(help="How many most-engaged items to show.")] = 10,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the noise, for tests: anyone who knows it can remove the noise. "
        "Unset: noise from the OS's CSPRNG.")] = None,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON object to this "
                                             "file.")] = None,
) -> None:
    """Feedback statistics, optionally differentially private.

    Records per model version and policy, rewarded count, reward sum and mean (overall and
    per model version), engagements per type, explored fraction and the top engaged items.
    With --epsilon, every released value is (epsilon, delta)-differentially private with
    respect to one user_key (see the README's privacy section).
    """
    with errors():
        result = export_stats(load_feedback(feedback), epsilon=epsilon, delta=delta,
                              max_per_user=max_per_user, max_reward=max_reward, top=top,
                              seed=seed)
        if out is not None:
            out.write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print(result)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k or '(none)'} {v}" for k, v in values.items()) or "-"


def _print(result: dict[str, Any]) -> None:
    s = result["stats"]
    if result["epsilon"] is None:
        typer.echo(f"{s['records']} feedback records (exact, not private)")
    else:
        typer.echo(f"{s['records']} feedback records (noisy: epsilon {result['epsilon']:g}, "
                   f"delta {result['delta']:g}, at most {result['max_per_user']} records per "
                   "user)")
    typer.echo(f"records per model version: {_pairs(s['records_per_model_version'])}")
    typer.echo(f"records per policy: {_pairs(s['records_per_policy'])}")
    typer.echo(f"rewarded {s['rewarded']}, reward sum {s['reward_sum']}, mean reward "
               f"{s['mean_reward']}")
    typer.echo(f"mean reward per model version: {_pairs(s['mean_reward_per_model_version'])}")
    typer.echo(f"engagements per type: {_pairs(s['engagements_per_type'])}")
    typer.echo(f"explored {s['explored']} (fraction {s['explored_fraction']})")
    typer.echo("top items: " + (", ".join(f"{t['item_id']} {t['count']}"
                                          for t in s["top_items"]) or "-"))
    if result["epsilon_split"]:
        typer.echo(f"epsilon split: {result['epsilon_split']}")
    for line in result["protected"]:
        typer.echo(f"protected: {line}")
    for line in result["not_protected"]:
        typer.echo(f"not protected: {line}")
